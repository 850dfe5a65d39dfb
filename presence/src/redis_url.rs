//! Redis URLs and clients shared by presence and the Redis store: a plain or TLS client
//! (`rediss://`, rustls with the ring provider, an optional CA file), credential redaction for
//! logs, and telling a refused password from an outage.

use std::path::Path;

/// A Redis client for `url`: plain, or TLS (`rediss://`) trusting the PEM CA file `ca_file`
/// when given, else the system's roots. Err: what is wrong with the URL or the CA file.
pub fn client(url: &str, ca_file: Option<&Path>) -> Result<redis::Client, String> {
    let tls = url.starts_with("rediss://");
    if tls {
        // The one provider compiled in; harmless when the process already installed one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match ca_file {
        None => redis::Client::open(url).map_err(|e| e.to_string()),
        Some(_) if !tls => Err("a CA file needs a rediss:// URL".into()),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("reading CA file {}: {e}", path.display()))?;
            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
            redis::Client::build_with_tls(url, certs).map_err(|e| e.to_string())
        }
    }
}

/// `url` with any credentials (`user:password@`) replaced by `***@`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// A refused AUTH (wrong or missing password): configuration, not an outage.
pub fn is_auth_error(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_and_nothing_else() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact_url("redis://:secret@h:1"), "redis://***@h:1");
        assert_eq!(redact_url("rediss://:secret@h:1"), "rediss://***@h:1");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact_url("rediss://a@b@h:1/x@y"), "rediss://***@h:1/x@y");
    }

    #[test]
    fn a_ca_file_needs_tls() {
        let err = client("redis://127.0.0.1:1", Some(Path::new("/nonexistent"))).unwrap_err();
        assert!(err.contains("rediss://"), "{err}");
        let err = client("rediss://127.0.0.1:1", Some(Path::new("/nonexistent/ca.pem")));
        assert!(err.unwrap_err().contains("reading CA file"));
    }
}
