//! Fuzz target bodies of this crate, shared by cargo-fuzz (`fuzz/`) and the stable corpus replay
//! test (`tests/fuzz_corpus.rs`).
//!
//! Each function takes arbitrary bytes, drives one peer-reachable entry point and panics only
//! when an invariant breaks (that panic is the finding).

use std::cell::Cell;

use crate::http::{Route, response, route};

/// The operator HTTP endpoint's request handling, minus the socket: `data` is a request head as
/// read from the connection.
///
/// Checks that [`route`] never panics and looks only at the request line (everything from the
/// first `\r` on can change without changing the route); that a `GET` route really has a `GET`
/// request line and `/metrics`, `/healthz` and `/readyz` really name those paths; and that
/// [`response`] is a well-formed HTTP/1.1 response with the route's status, a `Content-Length`
/// equal to the body's length, and a metrics body (here: `data` as lossy UTF-8) rendered only
/// for `/metrics`.
pub fn http_request(data: &[u8]) {
    let got = route(data);
    let line_end = data.iter().position(|&b| b == b'\r').unwrap_or(data.len());
    let line = &data[..line_end];
    assert_eq!(route(line), got, "route depends on more than the request line");
    let mut longer = line.to_vec();
    longer.extend_from_slice(b"\r\nX-Extra: GET /metrics\r\n\r\n");
    assert_eq!(route(&longer), got, "headers changed the route");

    let text = String::from_utf8_lossy(line);
    let mut words = text.split_whitespace();
    let (method, path) = (words.next(), words.next());
    match got {
        Route::Metrics | Route::Healthz | Route::Readyz | Route::NotFound => {
            assert_eq!(method, Some("GET"), "{got:?} for {text:?}");
        }
        Route::MethodNotAllowed => assert_ne!(method, Some("GET"), "405 for {text:?}"),
    }
    let path = path.unwrap_or("");
    let path_only = path.split('?').next().unwrap_or("");
    match got {
        Route::Metrics => assert_eq!(path_only, "/metrics", "{text:?}"),
        Route::Healthz => assert_eq!(path_only, "/healthz", "{text:?}"),
        Route::Readyz => assert_eq!(path_only, "/readyz", "{text:?}"),
        Route::NotFound => {
            let known = ["/metrics", "/healthz", "/readyz"];
            assert!(!known.contains(&path_only), "404 for {text:?}");
        }
        Route::MethodNotAllowed => {}
    }

    let rendered = Cell::new(false);
    let metrics = String::from_utf8_lossy(data).into_owned();
    let out = response(got, || {
        rendered.set(true);
        metrics.clone()
    });
    assert_eq!(rendered.get(), got == Route::Metrics, "render called for {got:?}");
    let Some(head_end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        panic!("response has no end of head");
    };
    let (head, body) = (&out[..head_end], &out[head_end + 4..]);
    let Ok(head) = std::str::from_utf8(head) else { panic!("response head is not UTF-8") };
    let mut lines = head.split("\r\n");
    assert_eq!(lines.next(), Some(format!("HTTP/1.1 {}", got.status()).as_str()));
    let length: Vec<&str> = lines.filter_map(|l| l.strip_prefix("Content-Length: ")).collect();
    assert_eq!(length, [body.len().to_string()], "Content-Length differs from the body");
    if got == Route::Metrics {
        assert_eq!(body, metrics.as_bytes(), "metrics body changed");
    }
}
