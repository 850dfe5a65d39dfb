//! Scraping a tern process's HTTP endpoint: [`http_get`] (one blocking `GET` over a raw
//! `TcpStream`, bounded in time and size) and [`Metrics`], the Prometheus text it serves at
//! `/metrics`, parsed into series.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use thiserror::Error;

/// Largest response [`http_get`] reads.
pub const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// What went wrong while fetching or reading an HTTP response.
#[derive(Debug, Error)]
pub enum HttpError {
    /// Connect, write or read failed (or timed out).
    #[error("GET {path} from {addr}: {source}")]
    Io { addr: SocketAddr, path: String, source: io::Error },
    /// The server answered something that is not an HTTP/1.x response.
    #[error("GET {path} from {addr}: bad response: {why}")]
    BadResponse { addr: SocketAddr, path: String, why: String },
    /// The server answered with a status other than 200 where 200 was needed.
    #[error("GET {path} from {addr}: status {status}: {body}")]
    Status { addr: SocketAddr, path: String, status: u16, body: String },
}

/// One HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The body (lossily decoded as UTF-8).
    pub body: String,
}

/// `GET path` from `addr` with `Connection: close`; every step bounded by `timeout`.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let io = |source| HttpError::Io { addr, path: path.to_owned(), source };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut raw).map_err(io)?;
    parse_response(&raw).map_err(|why| HttpError::BadResponse { addr, path: path.to_owned(), why })
}

/// Splits a raw response into status and body (honouring `Content-Length` when present).
fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of head")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split(' ');
    if !words.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(format!("status line {status_line:?}"));
    }
    let status = words
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    let mut body = &raw[split + 4..];
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            let len: usize = value.trim().parse().map_err(|_| format!("{line:?}"))?;
            if body.len() < len {
                return Err(format!("body of {} bytes, Content-Length {len}", body.len()));
            }
            body = &body[..len];
        }
    }
    Ok(HttpResponse { status, body: String::from_utf8_lossy(body).into_owned() })
}

/// A parsed `/metrics` page: every sample by its series (name plus labels, as written).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    series: BTreeMap<String, f64>,
}

impl Metrics {
    /// Fetches and parses `GET /metrics` from `http` (a 200 is required).
    pub fn scrape(http: SocketAddr, timeout: Duration) -> Result<Self, HttpError> {
        let response = http_get(http, "/metrics", timeout)?;
        if response.status != 200 {
            return Err(HttpError::Status {
                addr: http,
                path: "/metrics".into(),
                status: response.status,
                body: response.body,
            });
        }
        Ok(Self::parse(&response.body))
    }

    /// Parses Prometheus text: `# ...` lines are skipped, and so are lines that do not end
    /// in a number (with an optional timestamp after it).
    pub fn parse(text: &str) -> Self {
        let mut series = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The series runs to the closing brace of its labels, if any, else to a blank.
            let end = match line.find('{') {
                Some(open) => line[open..].find('}').map(|close| open + close + 1),
                None => line.find(char::is_whitespace),
            };
            let Some(end) = end else { continue };
            let (name, rest) = line.split_at(end);
            let Some(value) = rest.split_whitespace().next().and_then(parse_value) else {
                continue;
            };
            series.insert(name.to_owned(), value);
        }
        Self { series }
    }

    /// The value of one series, written exactly as on the page (`name` or `name{a="b"}`).
    pub fn get(&self, series: &str) -> Option<f64> {
        self.series.get(series).copied()
    }

    /// The sum over every series of metric `name`, whatever its labels (`None` if it has none).
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = false;
        let mut total = 0.0;
        for (series, value) in &self.series {
            let base = series.split('{').next().unwrap_or_default();
            if base == name {
                found = true;
                total += value;
            }
        }
        found.then_some(total)
    }

    /// Every series and its value.
    pub fn series(&self) -> &BTreeMap<String, f64> {
        &self.series
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};
    use std::thread;

    use super::*;

    const TEXT: &str = "# HELP tern_connections Open client connections.\n\
        # TYPE tern_connections gauge\n\
        tern_connections 3\n\
        tern_requests_total{kind=\"send\"} 10\n\
        tern_requests_total{kind=\"sync\", note=\"a b\"} 2.5 1700000000\n\
        tern_latency_bucket{le=\"+Inf\"} +Inf\n\
        garbage line\n";

    #[test]
    fn parses_prometheus_text() {
        let m = Metrics::parse(TEXT);
        assert_eq!(m.get("tern_connections"), Some(3.0));
        assert_eq!(m.get("tern_requests_total{kind=\"send\"}"), Some(10.0));
        assert_eq!(m.sum("tern_requests_total"), Some(12.5));
        assert_eq!(m.get("tern_latency_bucket{le=\"+Inf\"}"), Some(f64::INFINITY));
        assert_eq!(m.sum("tern_missing"), None);
        assert_eq!(m.series().len(), 4);
    }

    #[test]
    fn parses_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").unwrap();
        assert_eq!(r, HttpResponse { status: 200, body: "ok".into() });
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\nnope").unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "nope"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK").is_err());
    }

    #[test]
    fn scrapes_over_a_real_socket() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap();
            assert!(head.starts_with("GET /metrics HTTP/1.1\r\n"), "{head}");
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{TEXT}",
                TEXT.len()
            );
            stream.write_all(response.as_bytes()).unwrap();
        });
        let m = Metrics::scrape(addr, Duration::from_secs(10)).unwrap();
        assert_eq!(m.get("tern_connections"), Some(3.0));
        server.join().unwrap();
    }
}
