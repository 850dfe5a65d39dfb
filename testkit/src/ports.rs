//! Loopback ports for test servers, picked below the kernel's ephemeral range. A server that is
//! restarted on "its" port must not find that port taken in between, and a port in the
//! ephemeral range can be taken by any outgoing connection, including a client reconnecting to
//! the dead server, which may then connect to itself (TCP self-connect) and read its own bytes.

use std::net::{Ipv4Addr, TcpListener};

/// The kernel's ephemeral port range (default 32768–60999 when it cannot be read).
pub fn ephemeral_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>());
            match (parts.next(), parts.next()) {
                (Some(Ok(low)), Some(Ok(high))) => Some((low, high)),
                _ => None,
            }
        })
        .unwrap_or((32768, 60999))
}

/// A loopback port outside the ephemeral range that was free a moment ago (bound, then
/// released). Falls back to an OS-picked port when the range leaves no room below it.
pub fn reserve_port() -> std::io::Result<u16> {
    let (low, _) = ephemeral_port_range();
    const FLOOR: u16 = 10_000;
    if low > FLOOR + 1000 {
        for _ in 0..64 {
            let mut bytes = [0u8; 2];
            getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
            let port = FLOOR + u16::from_le_bytes(bytes) % (low - FLOOR);
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
