//! TLS on TCP: the rustls configuration the client port uses for TLS connections (TLS 1.3,
//! ALPN `tern/1`, the same certificate as QUIC). The I/O threads tell TLS from plain TCP by a
//! connection's first byte (`core::io::tls`).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use crate::core::TlsListen;
use crate::quic::config::ALPN;

/// The server configuration of TLS on TCP: TLS 1.3 only, ALPN `tern/1` (a client that offers
/// no ALPN is served too; one that offers only other protocols is refused), no early data
/// (0-RTT is QUIC's), and sessions resumable from stateless tickets (one per handshake,
/// encrypted under a key of this process that rotates every 6 hours; tickets live 12 hours):
/// a resumable session costs the server no memory, where a cache entry costs a few hundred
/// bytes per handshake. QUIC keeps the stateful cache, which 0-RTT needs to refuse a replayed
/// ticket.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut tls = base(chain, key, 1)?;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(tls))
}

/// What TLS on TCP and QUIC share: TLS 1.3 with ring, ALPN `tern/1`, a stateful session cache
/// of `session_cache` entries and one ticket per handshake (rustls sends two by default; each
/// is a cached session).
pub(crate) fn base(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    session_cache: usize,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.session_storage = rustls::server::ServerSessionMemoryCache::new(session_cache.max(1));
    tls.send_tls13_tickets = 1;
    Ok(tls)
}
