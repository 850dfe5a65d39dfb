//! A minimal HTTP/1.1 endpoint for operators: `GET /metrics` (Prometheus text format) and
//! `GET /healthz`. One request per connection, bounded in size and time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Renders the metrics text on demand.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

const MAX_REQUEST: usize = 8192;

/// Serves until `shutdown` resolves.
pub async fn serve(listener: TcpListener, render: Render, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => if let Ok((stream, _)) = r {
                let render = render.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), handle(stream, render)).await;
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
    /// `GET /healthz`.
    Healthz,
    /// `GET` of any other path.
    NotFound,
    /// Any other method (or no request line at all).
    MethodNotAllowed,
}

impl Route {
    /// The response's status line text.
    pub fn status(self) -> &'static str {
        match self {
            Route::Metrics | Route::Healthz => "200 OK",
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
        ("GET", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

/// The complete response to `route`: head and body bytes. `render` is called only for
/// [`Route::Metrics`].
pub fn response(route: Route, render: impl FnOnce() -> String) -> Vec<u8> {
    let (ctype, body) = match route {
        Route::Metrics => ("text/plain; version=0.0.4; charset=utf-8", render()),
        Route::Healthz => ("text/plain; charset=utf-8", "ok\n".to_owned()),
        Route::NotFound => ("text/plain; charset=utf-8", "not found\n".to_owned()),
        Route::MethodNotAllowed => ("text/plain; charset=utf-8", "method not allowed\n".to_owned()),
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        route.status(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

async fn handle(mut stream: TcpStream, render: Render) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let out = response(route(&buf), || render());
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_path() {
        let cases: [(&[u8], Route); 14] = [
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
             Content-Length: 10\r\nConnection: close\r\n\r\ntern_up 1\n"
        );
        let out = response(Route::NotFound, || unreachable!("only /metrics renders"));
        assert!(out.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
        assert!(out.ends_with(b"\r\n\r\nnot found\n"));
        let out = response(Route::MethodNotAllowed, || unreachable!("only /metrics renders"));
        assert!(out.starts_with(b"HTTP/1.1 405 Method Not Allowed\r\n"));
    }
}
