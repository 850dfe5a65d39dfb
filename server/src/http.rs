//! A minimal HTTP/1.1 endpoint for operators: `GET /metrics` (Prometheus text format),
//! `GET /healthz` and `GET /readyz` (see [`crate::health`]). One request per connection,
//! bounded in size and time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::health::{Health, Verdict};

/// Renders the metrics text on demand.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

const MAX_REQUEST: usize = 8192;

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    render: Render,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => if let Ok((stream, _)) = r {
                let (render, health) = (render.clone(), health.clone());
                tokio::spawn(async move {
                    let handled = handle(stream, render, health);
                    let _ = tokio::time::timeout(Duration::from_secs(5), handled).await;
                });
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`: the Prometheus text.
    Metrics,
    /// `GET /healthz`: dependency checks.
    Healthz,
    /// `GET /readyz`: lifecycle phase and dependency checks.
    Readyz,
    /// `GET` of any other path.
    NotFound,
    /// Any other method (or no request line at all).
    MethodNotAllowed,
}

impl Route {
    /// The response's status line text (for the health routes: when they pass).
    pub fn status(self) -> &'static str {
        match self {
            Route::Metrics | Route::Healthz | Route::Readyz => "200 OK",
            Route::NotFound => "404 Not Found",
            Route::MethodNotAllowed => "405 Method Not Allowed",
        }
    }
}

/// Routes a request head (the bytes read so far; only the request line, up to the first `\r`,
/// is looked at): method and path, the query string ignored. Pure, never fails.
pub fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => Route::Metrics,
        ("GET", "/healthz") => Route::Healthz,
        ("GET", "/readyz") => Route::Readyz,
        ("GET", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

/// The complete response to `route`: head and body bytes. `render` is called only for
/// [`Route::Metrics`]; the health routes are answered by [`health_response`].
pub fn response(route: Route, render: impl FnOnce() -> String) -> Vec<u8> {
    let (ctype, body) = match route {
        Route::Metrics => ("text/plain; version=0.0.4; charset=utf-8", render()),
        Route::Healthz | Route::Readyz => ("text/plain; charset=utf-8", "ok\n".to_owned()),
        Route::NotFound => ("text/plain; charset=utf-8", "not found\n".to_owned()),
        Route::MethodNotAllowed => ("text/plain; charset=utf-8", "method not allowed\n".to_owned()),
    };
    raw_response(route.status(), ctype, &body)
}

/// A health answer: 200 or 503, plain text.
pub fn health_response(verdict: &Verdict) -> Vec<u8> {
    let status = if verdict.ok { "200 OK" } else { "503 Service Unavailable" };
    raw_response(status, "text/plain; charset=utf-8", &verdict.body)
}

fn raw_response(status: &str, ctype: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

async fn handle(mut stream: TcpStream, render: Render, health: Arc<Health>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let out = match route(&buf) {
        Route::Healthz => health_response(&health.healthz().await),
        Route::Readyz => health_response(&health.readyz().await),
        other => response(other, || render()),
    };
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_path() {
        let cases: [(&[u8], Route); 16] = [
            (b"GET /readyz HTTP/1.1\r\n\r\n", Route::Readyz),
            (b"GET /readyz?verbose HTTP/1.1\r\n\r\n", Route::Readyz),
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", Route::Metrics),
            (b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", Route::Metrics),
            (b"GET /metrics", Route::Metrics),
            (b"GET /healthz HTTP/1.0\r\n\r\n", Route::Healthz),
            (b"GET  \t/healthz?  HTTP/1.1\r\n\r\n", Route::Healthz),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET / HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET\r\n/metrics HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"HEAD /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"POST /healthz HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"get /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"\xff\xfe\x00 garbage\r\n\r\n", Route::MethodNotAllowed),
            (b"\r\n\r\n", Route::MethodNotAllowed),
            (b"", Route::MethodNotAllowed),
        ];
        for (head, expected) in cases {
            assert_eq!(route(head), expected, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn responses_carry_status_and_exact_length() {
        let out = response(Route::Metrics, || "tern_up 1\n".to_owned());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: 10\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n\
             tern_up 1\n"
        );
        let sick = Verdict { ok: false, body: "store: down\n".into() };
        assert_eq!(
            String::from_utf8_lossy(&health_response(&sick)),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 12\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n\
             store: down\n"
        );
        let fine = Verdict { ok: true, body: "ready\n".into() };
        assert!(health_response(&fine).starts_with(b"HTTP/1.1 200 OK\r\n"));
        let out = response(Route::NotFound, || unreachable!("only /metrics renders"));
        assert!(out.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
        assert!(out.ends_with(b"\r\n\r\nnot found\n"));
        let out = response(Route::MethodNotAllowed, || unreachable!("only /metrics renders"));
        assert!(out.starts_with(b"HTTP/1.1 405 Method Not Allowed\r\n"));
    }
}
