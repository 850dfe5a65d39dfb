//! How the gateway's QUIC endpoints are configured: lean per-connection settings for chat (one
//! client stream, no unidirectional streams, no datagrams, no MTU discovery), the TLS side
//! (ALPN `tern/1`, TLS 1.3, 0-RTT), and connection IDs that name the endpoint that issued them.

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::{
    ConnectionId, ConnectionIdGenerator, EndpointConfig, IdleTimeout, InvalidCid, ServerConfig,
    TransportConfig, VarInt,
};
use ring::hmac;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use super::crypto::ServerCrypto;

/// The ALPN protocol id of Tern over QUIC (and over TLS on TCP).
pub const ALPN: &[u8] = b"tern/1";

/// Length of the connection IDs the gateway issues: one byte naming the endpoint, seven random.
pub const CID_LEN: usize = 8;

/// QUIC transport settings. Defaults suit phones on mobile networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicSettings {
    /// A connection that hears nothing from its peer for this long is dropped without a word
    /// (QUIC's idle timeout; the smaller of the two sides' values applies). Clients keep it
    /// alive with their heartbeat and QUIC keep-alives. Default 90 s, the gateway's idle
    /// timeout.
    pub idle_timeout: Duration,
    /// Largest frame a client may send: the client's stream gets at least this much flow-control
    /// credit, so one whole frame always fits. Default 64 KiB.
    pub max_frame_bytes: usize,
    /// Bytes sent to a client and not yet acknowledged by it, per connection (QUIC's send
    /// window); the gateway's outbound cap applies on top. Memory is used only while data is in
    /// flight. Default 1 MiB.
    pub send_window: u64,
    /// Whether clients may send their first frames in 0-RTT data on resumption (only frames whose
    /// replay is harmless are acted on before the handshake completes). Default true.
    pub zero_rtt: bool,
    /// TLS sessions remembered for resumption (and 0-RTT), per process; the oldest are
    /// forgotten first. A client resumes only at the gateway process that served it before.
    /// Each costs a few hundred bytes. Default 65,536.
    pub session_cache: usize,
    /// Handshakes in progress on one endpoint (I/O thread) from which a new client whose
    /// address is not validated yet gets a stateless Retry instead of connection state: it
    /// comes back with a token that proves it receives at its address (one round trip more),
    /// so a flood of Initials from spoofed addresses costs no memory. 0 = always Retry.
    /// Default 1024.
    pub retry_handshakes: usize,
    /// Handshakes in progress on one endpoint beyond which new clients are refused at their
    /// first packet (CONNECTION_REFUSED). Each costs a connection's state (a few KiB) and
    /// handshake CPU until it completes or times out. Default 4096.
    pub max_handshakes: usize,
    /// Handshakes in progress on one endpoint from one source address (an IPv4 address or an
    /// IPv6 /64) beyond which its new clients are refused, so one host cannot take every
    /// handshake slot. Clients behind one NAT share it. 0 = no cap. Default 64.
    pub max_handshakes_per_source: usize,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(90),
            max_frame_bytes: tern_proto::DEFAULT_MAX_FRAME_BYTES,
            send_window: 1024 * 1024,
            zero_rtt: true,
            session_cache: 65_536,
            retry_handshakes: 1024,
            max_handshakes: 4096,
            max_handshakes_per_source: 64,
        }
    }
}

/// Why a QUIC configuration could not be built.
#[derive(Debug, Error)]
pub enum QuicConfigError {
    /// The certificate or key was refused by rustls.
    #[error("TLS certificate for QUIC: {0}")]
    Tls(#[from] rustls::Error),
    /// The TLS configuration offers no cipher suite QUIC can start with.
    #[error("TLS configuration for QUIC: {0}")]
    Suite(#[from] quinn_proto::crypto::rustls::NoInitialCipherSuite),
    /// The TLS configuration lacks TLS_AES_128_GCM_SHA256, which QUIC's Initial packets use.
    #[error("TLS configuration for QUIC: no TLS_AES_128_GCM_SHA256 for Initial packets")]
    NoInitialSuite,
    /// A setting is outside what QUIC can encode.
    #[error("QUIC setting {0} is out of range")]
    Range(&'static str),
}

/// The transport settings every gateway connection gets.
pub fn transport(s: &QuicSettings) -> Result<TransportConfig, QuicConfigError> {
    let mut t = TransportConfig::default();
    let window = VarInt::try_from(s.max_frame_bytes as u64 * 2)
        .map_err(|_| QuicConfigError::Range("max_frame_bytes"))?;
    let idle = IdleTimeout::try_from(s.idle_timeout)
        .map_err(|_| QuicConfigError::Range("idle_timeout"))?;
    t.max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(window)
        .receive_window(window)
        .send_window(s.send_window)
        .max_idle_timeout(Some(idle))
        // The client keeps the path alive (its NAT binding is its own); the server never pings.
        .keep_alive_interval(None)
        .datagram_receive_buffer_size(None)
        .datagram_send_buffer_size(0)
        // Chat frames are small: 1200-byte packets always fit, and probing costs state and
        // packets per connection.
        .mtu_discovery_config(None);
    Ok(t)
}

/// The server side of the handshake: `chain` and `key`, ALPN `tern/1`, TLS 1.3 only,
/// resumption from a session cache of `s.session_cache` entries and, when `s.zero_rtt`, early
/// data. The sessions are stateful on purpose: rustls accepts 0-RTT only for a session it can
/// take out of its cache, so each ticket opens 0-RTT at most once (a replay of the same early
/// data to this process is refused).
pub fn tls(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    s: &QuicSettings,
) -> Result<rustls::ServerConfig, QuicConfigError> {
    let mut tls = crate::tls::base(chain, key, s.session_cache)?;
    // QUIC requires 0 or u32::MAX here (RFC 9001 §4.6.1).
    tls.max_early_data_size = if s.zero_rtt { u32::MAX } else { 0 };
    Ok(tls)
}

/// The server configuration shared by every endpoint of this process: one token key, so a
/// retry or address-validation token from one endpoint is good at another.
pub fn server(
    tls: rustls::ServerConfig,
    s: &QuicSettings,
) -> Result<Arc<ServerConfig>, QuicConfigError> {
    let crypto = Arc::new(ServerCrypto::new(Arc::new(tls))?);
    let mut server = ServerConfig::with_crypto(crypto);
    server.transport_config(Arc::new(transport(s)?)).migration(true);
    Ok(Arc::new(server))
}

/// The configuration of endpoint `index` of `count` in this process. Every endpoint gets the
/// same stateless-reset key (`reset_key`, random per process), so a reset any of them sends for
/// a connection is recognised by the client.
pub fn endpoint(index: u8, count: u8, reset_key: &[u8; 32]) -> EndpointConfig {
    let key = hmac::Key::new(hmac::HMAC_SHA256, reset_key);
    let mut cfg = EndpointConfig::new(Arc::new(key));
    cfg.cid_generator(move || Box::new(EndpointCids { index, count }));
    cfg
}

/// Connection IDs whose first byte names the endpoint that issued them (`index`, among
/// `count`), followed by 7 random bytes: a packet of a migrating client that lands on another
/// endpoint's socket can be handed to the right one ([`endpoint_of`]). The first byte is the
/// same for every connection of one endpoint, so it tells an observer nothing about which
/// connection a packet belongs to (as in QUIC-LB's plaintext mode); the rest is random.
#[derive(Debug, Clone, Copy)]
pub struct EndpointCids {
    index: u8,
    count: u8,
}

impl ConnectionIdGenerator for EndpointCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        // A failing system RNG cannot be worked around: identifiers must be unpredictable.
        getrandom::fill(&mut bytes[1..]).expect("system RNG"); // ok: no peer input
        bytes[0] = self.index;
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        match cid.len() == CID_LEN && cid[0] < self.count.max(1) {
            true => Ok(()),
            false => Err(InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The endpoint a datagram is meant for, read from its destination connection ID: `None` for
/// a packet that does not carry one of ours (a client's first Initial, whose ID the client
/// chose; garbage), which any endpoint may take.
pub fn endpoint_of(datagram: &[u8], count: u8) -> Option<u8> {
    let first = *datagram.first()?;
    let dcid = if first & 0x80 == 0 {
        // Short header: flags, then our fixed-length destination ID.
        datagram.get(1..1 + CID_LEN)?
    } else {
        // Long header: flags, version (4), DCID length, DCID.
        let len = usize::from(*datagram.get(5)?);
        if len != CID_LEN {
            return None;
        }
        datagram.get(6..6 + len)?
    };
    (dcid[0] < count).then_some(dcid[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_endpoint_and_are_otherwise_random() {
        let mut g = EndpointCids { index: 3, count: 4 };
        let (a, b) = (g.generate_cid(), g.generate_cid());
        assert_eq!((a.len(), a[0], b[0]), (CID_LEN, 3, 3));
        assert_ne!(a[1..], b[1..]);
        assert!(g.validate(&a).is_ok());
        assert!(g.validate(&ConnectionId::new(&[9; CID_LEN])).is_err(), "no endpoint 9");
        assert!(g.validate(&ConnectionId::new(&[1; 4])).is_err(), "wrong length");
    }

    #[test]
    fn datagrams_are_steered_by_their_destination_id() {
        let cid = [2u8, 7, 7, 7, 7, 7, 7, 7];
        let mut short = vec![0x40];
        short.extend_from_slice(&cid);
        short.extend_from_slice(&[0; 20]);
        assert_eq!(endpoint_of(&short, 4), Some(2));
        assert_eq!(endpoint_of(&short, 2), None, "an index we do not have");

        let mut long = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8];
        long.extend_from_slice(&cid);
        assert_eq!(endpoint_of(&long, 4), Some(2));
        long[5] = 12; // a client-chosen Initial ID
        assert_eq!(endpoint_of(&long, 4), None);
        assert_eq!(endpoint_of(&[], 4), None);
        assert_eq!(endpoint_of(&[0x40, 2], 4), None, "truncated");
    }

    /// What `endpoint_of` must answer, spelled out from the header layouts.
    fn expected(d: &[u8], count: u8) -> Option<u8> {
        let first = *d.first()?;
        let cid_start = if first & 0x80 == 0 {
            1
        } else if d.len() > 5 && usize::from(d[5]) == CID_LEN {
            6
        } else {
            return None;
        };
        (d.len() >= cid_start + CID_LEN && d[cid_start] < count).then(|| d[cid_start])
    }

    #[test]
    fn steering_agrees_with_the_header_layouts_on_random_datagrams() {
        let mut rng = fastrand::Rng::with_seed(0x7e57);
        let mut ours = [0usize; 2];
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let mut d: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            // Make real-looking headers common: a long header with our ID length, small
            // endpoint indexes.
            if len > 6 && rng.bool() {
                d[0] |= 0x80;
                d[5] = CID_LEN as u8;
            }
            for i in [1, 6] {
                if let Some(b) = d.get_mut(i) {
                    *b %= 10;
                }
            }
            for count in 0..=9 {
                let got = endpoint_of(&d, count);
                assert_eq!(got, expected(&d, count), "{d:02x?} count {count}");
                if let Some(i) = got {
                    assert!(i < count);
                    ours[usize::from(d[0] & 0x80 != 0)] += 1;
                }
            }
        }
        assert!(ours.iter().all(|&n| n > 1000), "both header forms were steered: {ours:?}");
    }
}
