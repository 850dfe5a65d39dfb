//! The HTTP client every provider uses: hyper 1 with a pooled connection per origin (HTTP/2
//! multiplexed where the server speaks it), TLS by rustls with ring, bounded answers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::ProviderLimits;
use crate::error::StartError;

/// Largest answer body read from a provider; longer answers count as transport errors.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A pooled client.
pub(crate) type Client = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Which protocols a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocols {
    /// `https://` and HTTP/2 only (APNs requires HTTP/2; FCM gets one multiplexed connection).
    Http2Tls,
    /// `http://` or `https://`, HTTP/1.1 or HTTP/2 as negotiated (webhooks).
    Any,
}

/// The system's roots plus those of `ca_file`.
pub(crate) fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, StartError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "notify: a system root certificate could not be loaded");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let read = |source| StartError::Read { what: "ca_file", path: path.into(), source };
        let pem = std::fs::read(path).map_err(read)?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| StartError::Config(format!("ca_file {path:?}: {e}")))?;
            roots.add(cert)?;
            added += 1;
        }
        if added == 0 {
            return Err(StartError::Config(format!("ca_file {path:?} holds no certificate")));
        }
    }
    Ok(roots)
}

/// A client for one provider.
pub(crate) fn client(
    roots: &RootCertStore,
    protocols: Protocols,
    limits: &ProviderLimits,
) -> Result<Client, StartError> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(limits.connect_timeout));
    let builder = HttpsConnectorBuilder::new().with_tls_config(tls);
    let mut client = HyperClient::builder(TokioExecutor::new());
    client.pool_idle_timeout(Duration::from_secs(300));
    Ok(match protocols {
        Protocols::Http2Tls => {
            let connector = builder.https_only().enable_http2().wrap_connector(tcp);
            client.http2_only(true).build(connector)
        }
        Protocols::Any => {
            let connector = builder.https_or_http().enable_all_versions().wrap_connector(tcp);
            client.build(connector)
        }
    })
}

/// A provider's answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends `request` and reads the answer (at most [`MAX_ANSWER_BYTES`]). The caller bounds
/// the time it takes.
pub(crate) async fn send(client: &Client, request: Request<Full<Bytes>>) -> Result<Answer, String> {
    let response = client.request(request).await.map_err(|e| format!("request: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("answer body: {e}"))?
        .to_bytes();
    Ok(Answer { status: parts.status, headers: parts.headers, body })
}

/// A `Retry-After` of delay-seconds (the HTTP-date form is ignored: providers send seconds).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Whether a status is worth retrying: 408, 429 and 5xx.
pub(crate) fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_only() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, " 7 ".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(http::header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn transient_statuses() {
        for s in [408, 429, 500, 502, 503] {
            assert!(is_transient(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 410] {
            assert!(!is_transient(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
