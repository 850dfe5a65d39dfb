//! Local imitations of the push services for the integration tests: hyper servers over TLS
//! (rcgen certificate, HTTP/2 only where the real service is) or plain HTTP, each handing
//! every request it got to a channel so tests wait on events, never on sleeps.
#![allow(dead_code)] // Each test file uses a part.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;
use tern_notify::{Mention, Notification, Target};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Failure guard for every wait: far longer than anything should take.
pub const GUARD: Duration = Duration::from_secs(30);

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub type Reply = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
pub type Handler = Arc<dyn Fn(Seen) -> Reply + Send + Sync>;

/// A reply now.
pub fn reply(status: u16, body: impl Into<Bytes>) -> Reply {
    let response = Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .expect("response");
    Box::pin(async move { response })
}

/// A reply that never comes (the connection stays open).
pub fn never() -> Reply {
    Box::pin(std::future::pending())
}

/// The test CA: a self-signed certificate for 127.0.0.1, written as the notifier's `ca_file`.
pub struct TestTls {
    pub dir: TempDir,
    pub ca_file: PathBuf,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl TestTls {
    pub fn new() -> Self {
        let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, pem("CERTIFICATE", c.cert.der())).expect("write ca");
        Self { dir, ca_file, cert: c.cert.der().clone(), key: c.signing_key.serialize_der() }
    }

    fn acceptor(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![self.cert.clone()], key)
        .expect("server config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// DER as PEM text.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// How a server speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// TLS, ALPN `h2` only (APNs, FCM).
    Http2Tls,
    /// TLS, `h2` or `http/1.1`.
    AnyTls,
    /// Plain HTTP/1.1 (or h2c).
    Plain,
}

/// A running imitation; every request it got also goes to `seen`.
pub struct Server {
    pub addr: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    https: bool,
}

impl Server {
    pub async fn start(tls: Option<&TestTls>, mode: Mode, handler: Handler) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = match mode {
            Mode::Http2Tls => Some(tls.expect("tls").acceptor(&[b"h2"])),
            Mode::AnyTls => Some(tls.expect("tls").acceptor(&[b"h2", b"http/1.1"])),
            Mode::Plain => None,
        };
        let (tx, seen) = mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let https = acceptor.is_some();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                counted.fetch_add(1, Ordering::Relaxed);
                let (handler, tx, acceptor) = (handler.clone(), tx.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (handler, tx) = (handler.clone(), tx.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body =
                                body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let seen = Seen {
                                method: parts.method,
                                uri: parts.uri,
                                version: parts.version,
                                headers: parts.headers,
                                body,
                            };
                            let _ = tx.send(seen.clone());
                            Ok::<_, Infallible>(handler(seen).await)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else { return };
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Server { addr, seen, connections, task, https }
    }

    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The next request, or a test failure after [`GUARD`].
    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(GUARD, self.seen.recv())
            .await
            .expect("a request within the guard")
            .expect("server running")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits for an event on a channel, failing the test after [`GUARD`].
pub async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(GUARD, rx.recv()).await.expect("an event within the guard").expect("open")
}

/// A notification for `user`/`device` at `target` in `conversation`.
pub fn notification(
    user: &str,
    device: &str,
    target: Target,
    conversation: &str,
    seq: u64,
) -> Notification {
    Notification {
        user_id: user.into(),
        device_id: device.into(),
        target,
        conversation_id: conversation.into(),
        seq,
        sender_user_id: "sender".into(),
        mention: Mention::None,
        muted: false,
        is_group: conversation.starts_with("g:"),
        preview: Some(tern_notify::Preview {
            title: "Sender".into(),
            body: "the secret text".into(),
        }),
    }
}

/// Percent-decodes an `application/x-www-form-urlencoded` value.
pub fn form_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The fields of a form body.
pub fn form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect()
}

/// Decodes a JWT's three parts: header and claims JSON, the signed text and the signature.
pub fn jwt_parts(jwt: &str) -> Option<(serde_json::Value, serde_json::Value, String, Vec<u8>)> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = jwt.split('.');
    // Padding is tolerated (gcp_auth pads; Google accepts it), not required.
    let mut next = || parts.next().map(|p| p.trim_end_matches('='));
    let (h, c, s) = (next()?, next()?, next()?);
    if next().is_some() {
        return None;
    }
    let header = serde_json::from_slice(&b64.decode(h).ok()?).ok()?;
    let claims = serde_json::from_slice(&b64.decode(c).ok()?).ok()?;
    let signed = &jwt[..jwt.rfind('.')?];
    Some((header, claims, signed.to_owned(), b64.decode(s).ok()?))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

/// Limits for tests: quick backoff, short grace.
pub fn limits(
    concurrency: usize,
    queue: usize,
    attempts: u32,
    timeout: Duration,
) -> tern_notify::ProviderLimits {
    tern_notify::ProviderLimits {
        concurrency,
        queue_capacity: queue,
        request_timeout: timeout,
        connect_timeout: Duration::from_secs(5),
        max_attempts: attempts,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
    }
}
