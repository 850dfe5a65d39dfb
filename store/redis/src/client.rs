//! The Redis client for a [`RedisStoreConfig`]: plain or TLS (`rediss://`, rustls with the ring
//! provider, an optional CA file), and which connect errors are a refused password.

use crate::config::{RedisStoreConfig, redact_url};
use crate::error::RedisStoreError;

/// A refused AUTH (wrong or missing password): configuration, not an outage.
pub(crate) fn is_auth_error(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
}

/// The Redis client for `cfg.url`: plain, or TLS (`rediss://`, rustls with the ring provider)
/// trusting `cfg.ca_file` when given, else the system's roots.
pub(crate) fn client(cfg: &RedisStoreConfig) -> Result<redis::Client, RedisStoreError> {
    let url = cfg.url.as_str();
    let bad = |what: String| RedisStoreError::Config(format!("url {}: {what}", redact_url(url)));
    let tls = url.starts_with("rediss://");
    if tls {
        // The one provider compiled in; harmless when the process already installed one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match &cfg.ca_file {
        None => redis::Client::open(url).map_err(|e| bad(e.to_string())),
        Some(_) if !tls => Err(bad("a CA file needs a rediss:// URL".into())),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| bad(format!("reading CA file {}: {e}", path.display())))?;
            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
            redis::Client::build_with_tls(url, certs).map_err(|e| bad(e.to_string()))
        }
    }
}
