//! The HTTP side every imitation shares: the test certificate, a private runtime on a
//! background thread, hyper servers (HTTP/2 over TLS, HTTP/1.1 or HTTP/2 over TLS, or plain
//! HTTP) that hand each fully read request to a handler, and the parsing helpers (JWT, forms).

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::PushServiceError;

/// Larger bodies are refused with 413 before any handler sees them (APNs allows 4 KiB, FCM
/// 4 KiB of data; this only bounds the imitation's memory).
const MAX_BODY: usize = 1 << 20;

/// A self-signed certificate for `127.0.0.1` and `localhost` that the HTTPS imitations serve,
/// and the CA a client must trust to reach them. Cheap to clone; its files live as long as the
/// last clone.
#[derive(Clone)]
pub struct TestCa {
    inner: Arc<CaInner>,
}

struct CaInner {
    dir: TempDir,
    ca_file: PathBuf,
    pem: String,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("ca_file", &self.inner.ca_file).finish_non_exhaustive()
    }
}

impl TestCa {
    /// A fresh certificate, its PEM written to [`TestCa::ca_file`] in a temporary directory.
    pub fn new() -> Result<Self, PushServiceError> {
        let setup =
            |what| move |e: rcgen::Error| PushServiceError::Setup { what, detail: e.to_string() };
        let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .map_err(setup("generate the test certificate"))?;
        let dir = tempfile::tempdir().map_err(io("create the certificate's directory"))?;
        let ca_file = dir.path().join("ca.pem");
        let pem = pem("CERTIFICATE", c.cert.der());
        std::fs::write(&ca_file, &pem).map_err(io("write ca.pem"))?;
        let inner = CaInner {
            dir,
            ca_file,
            pem,
            cert: c.cert.der().clone(),
            key: c.signing_key.serialize_der(),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The certificate as PEM: what a client adds to its roots.
    pub fn ca_pem(&self) -> &str {
        &self.inner.pem
    }

    /// A file holding [`TestCa::ca_pem`] (the notifier's `ca_file`).
    pub fn ca_file(&self) -> &Path {
        &self.inner.ca_file
    }

    /// The temporary directory of [`TestCa::ca_file`], for a test's other files.
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    fn acceptor(&self, alpn: &[&[u8]]) -> Result<tokio_rustls::TlsAcceptor, PushServiceError> {
        let setup =
            |what| move |e: rustls::Error| PushServiceError::Setup { what, detail: e.to_string() };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.inner.key.clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(setup("TLS protocol versions"))?
            .with_no_client_auth()
            .with_single_cert(vec![self.inner.cert.clone()], key)
            .map_err(setup("TLS server certificate"))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// DER as PEM text (rcgen's own `pem` is behind a feature this workspace does not build).
fn pem(label: &str, der: &[u8]) -> String {
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

pub(crate) fn io(what: &'static str) -> impl Fn(std::io::Error) -> PushServiceError {
    move |source| PushServiceError::Io { what, source }
}

/// One request as an imitation saw it, its body read in full.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Incoming {
    /// A header's text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(crate) type Reply = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
pub(crate) type Handler = Arc<dyn Fn(Incoming) -> Reply + Send + Sync>;

/// A reply now, with extra headers.
pub(crate) fn reply_with(status: u16, headers: &[(&str, String)], body: impl Into<Bytes>) -> Reply {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    let body: Bytes = body.into();
    if !body.is_empty() {
        builder = builder.header("content-type", "application/json");
    }
    let response = builder.body(Full::new(body)).unwrap_or_else(|_| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    });
    Box::pin(async move { response })
}

/// A reply now.
pub(crate) fn reply(status: u16, body: impl Into<Bytes>) -> Reply {
    reply_with(status, &[], body)
}

/// A reply that never comes (the stream stays open until the client gives up).
pub(crate) fn never() -> Reply {
    Box::pin(std::future::pending())
}

/// How a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// TLS, ALPN `h2` only (APNs, FCM).
    Http2Tls,
    /// TLS, `h2` or `http/1.1`.
    AnyTls,
    /// Plain HTTP/1.1 (or h2c).
    Plain,
}

/// A private current-thread runtime on a background thread that serves an imitation's
/// listeners; dropping it stops the runtime (every connection closes) and joins the thread.
pub(crate) struct Background {
    handle: tokio::runtime::Handle,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background").finish_non_exhaustive()
    }
}

impl Background {
    pub(crate) fn start(name: &str) -> Result<Self, PushServiceError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("build the imitation's runtime"))?;
        let handle = runtime.handle().clone();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
                // Dropping the runtime drops every server and connection task.
                drop(runtime);
            })
            .map_err(io("spawn the imitation's thread"))?;
        Ok(Self { handle, shutdown: Some(shutdown), thread: Some(thread) })
    }

    /// Serves `handler` on a free loopback port; returns its base URL (`https://` under TLS).
    pub(crate) fn serve(
        &self,
        mode: Mode,
        ca: Option<&TestCa>,
        handler: Handler,
    ) -> Result<(SocketAddr, String), PushServiceError> {
        let alpn: &[&[u8]] = match mode {
            Mode::Http2Tls => &[b"h2"],
            Mode::AnyTls => &[b"h2", b"http/1.1"],
            Mode::Plain => &[],
        };
        let acceptor = match (mode, ca) {
            (Mode::Plain, _) => None,
            (_, Some(ca)) => Some(ca.acceptor(alpn)?),
            (_, None) => {
                let detail = "TLS needs a certificate".to_owned();
                return Err(PushServiceError::Setup { what: "serve", detail });
            }
        };
        let listener =
            StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("bind the imitation"))?;
        let addr = listener.local_addr().map_err(io("read the imitation's address"))?;
        listener.set_nonblocking(true).map_err(io("make the listener non-blocking"))?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        self.handle.spawn(async move {
            // Registering with the reactor needs the runtime, so it happens in here.
            match TcpListener::from_std(listener) {
                Ok(listener) => accept_loop(listener, acceptor, handler).await,
                Err(e) => eprintln!("push imitation {addr}: cannot register listener: {e}"),
            }
        });
        Ok((addr, format!("{scheme}://{addr}")))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    handler: Handler,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of descriptors, say: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let (handler, acceptor) = (handler.clone(), acceptor.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let Ok(body) = Limited::new(body, MAX_BODY).collect().await else {
                        return Ok::<_, Infallible>(reply(413, "").await);
                    };
                    let incoming = Incoming {
                        method: parts.method,
                        uri: parts.uri,
                        version: parts.version,
                        headers: parts.headers,
                        body: body.to_bytes(),
                    };
                    Ok(handler(incoming).await)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
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
}

/// A JWT's parts: header and claims JSON, the signed text and the signature.
pub(crate) struct Jwt {
    pub header: serde_json::Value,
    pub claims: serde_json::Value,
    pub signed: String,
    pub signature: Vec<u8>,
}

/// Decodes a compact JWT (base64url, padding tolerated: gcp_auth pads and Google accepts it).
pub(crate) fn jwt_parts(jwt: &str) -> Option<Jwt> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = jwt.split('.');
    let mut next = || parts.next().map(|p| p.trim_end_matches('='));
    let (h, c, s) = (next()?, next()?, next()?);
    if next().is_some() {
        return None;
    }
    Some(Jwt {
        header: serde_json::from_slice(&b64.decode(h).ok()?).ok()?,
        claims: serde_json::from_slice(&b64.decode(c).ok()?).ok()?,
        signed: jwt[..jwt.rfind('.')?].to_owned(),
        signature: b64.decode(s).ok()?,
    })
}

/// Percent-decodes an `application/x-www-form-urlencoded` value.
fn form_decode(value: &str) -> String {
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
pub(crate) fn form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_jwts_parse() {
        let f = form(b"grant_type=urn%3Aietf%3Aparams&assertion=a.b.c&x=1+2");
        assert_eq!(f[0], ("grant_type".into(), "urn:ietf:params".into()));
        assert_eq!(f[2], ("x".into(), "1 2".into()));
        assert!(jwt_parts("a.b").is_none());
        assert!(jwt_parts("e30.e30.c2ln.x").is_none());
        let jwt = jwt_parts("e30.e30=.c2ln").expect("parses");
        assert_eq!((jwt.signed.as_str(), jwt.signature.as_slice()), ("e30.e30=", &b"sig"[..]));
    }
}
