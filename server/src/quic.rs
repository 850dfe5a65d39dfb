//! The client listeners' QUIC side: where (`server.quic_listen`), with which certificate (the
//! `[tls]` identity) and which transport settings (from `[gateway]`), bound beside the TCP
//! listeners by [`bind`].

use std::net::SocketAddr;

use anyhow::Context;
use tern_gateway::Listeners;
use tern_gateway::core::QuicListen;
use tern_gateway::quic::{QuicSettings, config as quic_config};

use crate::config::Config;

/// Where QUIC is to be served, if at all, given the bound TCP address `tcp`.
pub fn quic_addr(cfg: &Config, tcp: SocketAddr) -> anyhow::Result<Option<SocketAddr>> {
    match cfg.server.quic_listen.as_str() {
        "" => Ok(None),
        "same" => Ok(Some(tcp)),
        a => a.parse().map(Some).with_context(|| {
            format!("server.quic_listen {a:?} is not an IP:port, \"same\" or \"\"")
        }),
    }
}

/// The QUIC transport settings from the gateway's limits.
pub fn settings(cfg: &Config) -> QuicSettings {
    QuicSettings {
        idle_timeout: cfg.gateway.idle_timeout,
        max_frame_bytes: cfg.gateway.max_frame_bytes,
        retry_handshakes: cfg.gateway.quic_retry_handshakes,
        max_handshakes: cfg.gateway.quic_max_handshakes,
        max_handshakes_per_source: cfg.gateway.quic_max_handshakes_per_source,
        ..QuicSettings::default()
    }
}

/// Adds QUIC to `listeners` as `server.quic_listen` says. With "same" and a TCP port that was
/// asked as 0 (a free port), a UDP port already taken by another program falls back to a free
/// UDP port: the announcement line says which (`quic=`).
pub fn bind(cfg: &Config, listeners: Listeners) -> anyhow::Result<Listeners> {
    let Some(addr) = quic_addr(cfg, listeners.local_addr())? else {
        return Ok(listeners);
    };
    let id = cfg.tls_identity()?;
    let settings = settings(cfg);
    let tls = quic_config::tls(id.chain, id.key, &settings).context("QUIC TLS configuration")?;
    let server_config = quic_config::server(tls, &settings).context("QUIC configuration")?;
    let listen = QuicListen { addr, server_config, settings };
    let ephemeral = cfg.server.quic_listen == "same" && cfg.server.listen.port() == 0;
    let fallback = QuicListen { addr: SocketAddr::new(addr.ip(), 0), ..listen.clone() };
    let mut listeners = listeners;
    match listeners.add_quic(listen) {
        Ok(()) => {}
        Err(e) if ephemeral && e.kind() == std::io::ErrorKind::AddrInUse => {
            listeners.add_quic(fallback).context("binding a free QUIC port")?;
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("binding the QUIC address {addr}")));
        }
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_limits_come_from_the_gateway_section() {
        let flags = [
            "gateway.quic_retry_handshakes=0".to_string(),
            "gateway.quic_max_handshakes=10".into(),
            "gateway.quic_max_handshakes_per_source=3".into(),
        ];
        let cfg = Config::load(None, Vec::new(), &flags).unwrap();
        let s = settings(&cfg);
        assert_eq!((s.retry_handshakes, s.max_handshakes, s.max_handshakes_per_source), (0, 10, 3));
        let d = settings(&Config::default());
        assert_eq!(
            (d.retry_handshakes, d.max_handshakes, d.max_handshakes_per_source),
            (1024, 4096, 64),
            "the documented defaults"
        );
    }
}
