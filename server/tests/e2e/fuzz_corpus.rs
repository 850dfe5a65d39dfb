//! Replays the committed fuzz corpus of this crate's targets (`fuzz/corpus/<target>/`) through
//! the fuzz bodies on stable, and keeps the generated seed files in that corpus up to date.
//!
//! To (re)write the seeds after changing them here: `TERN_WRITE_CORPUS=1 cargo test -p tern
//! --test e2e fuzz_corpus`.

use std::path::PathBuf;

use tern::fuzzing;
use tern::http::{Route, route};

/// A fuzz target: its name (directory under `fuzz/corpus/`) and its body.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 1] = [("http_request", fuzzing::http_request)];

fn corpus_dir(target: &str) -> PathBuf {
    tern_testkit::corpus::corpus_dir(env!("CARGO_MANIFEST_DIR"), target)
}

/// The generated seeds: (target, file name, bytes, the route they must take).
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>, Route)> {
    let big_header = format!("GET /healthz HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "p".repeat(2000));
    vec![
        (
            "http_request",
            "seed-metrics",
            b"GET /metrics HTTP/1.1\r\nHost: localhost:7401\r\nAccept: */*\r\n\r\n".to_vec(),
            Route::Metrics,
        ),
        (
            "http_request",
            "seed-metrics-query",
            b"GET /metrics?name[]=tern_up HTTP/1.1\r\n\r\n".to_vec(),
            Route::Metrics,
        ),
        ("http_request", "seed-healthz", b"GET /healthz HTTP/1.0\r\n\r\n".to_vec(), Route::Healthz),
        (
            "http_request",
            "seed-readyz",
            b"GET /readyz HTTP/1.1\r\nHost: lb\r\nUser-Agent: ELB-HealthChecker/2.0\r\n\r\n"
                .to_vec(),
            Route::Readyz,
        ),
        (
            "http_request",
            "seed-not-found",
            b"GET /admin HTTP/1.1\r\n\r\n".to_vec(),
            Route::NotFound,
        ),
        ("http_request", "seed-no-path", b"GET\r\n\r\n".to_vec(), Route::NotFound),
        (
            "http_request",
            "seed-head",
            b"HEAD /metrics HTTP/1.1\r\n\r\n".to_vec(),
            Route::MethodNotAllowed,
        ),
        (
            "http_request",
            "seed-post",
            b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
            Route::MethodNotAllowed,
        ),
        (
            "http_request",
            "seed-lowercase",
            b"get /metrics HTTP/1.1\r\n\r\n".to_vec(),
            Route::MethodNotAllowed,
        ),
        (
            "http_request",
            "seed-bare-newlines",
            b"GET /healthz HTTP/1.1\nHost: x\n\n".to_vec(),
            Route::Healthz,
        ),
        (
            "http_request",
            "seed-garbage",
            b"\xff\xfe\x00\x16\x03\x01 /metrics\r\n\r\n".to_vec(),
            Route::MethodNotAllowed,
        ),
        ("http_request", "seed-big-header", big_header.into_bytes(), Route::Healthz),
        ("http_request", "seed-empty", Vec::new(), Route::MethodNotAllowed),
    ]
}

#[test]
fn seed_corpus_is_committed_and_up_to_date() {
    tern_testkit::corpus::check_seeds(
        seeds().into_iter().map(|(target, name, bytes, _)| (corpus_dir(target).join(name), bytes)),
    );
}

#[test]
fn seeds_take_the_route_they_are_named_for() {
    for (_, name, bytes, expected) in seeds() {
        assert_eq!(route(&bytes), expected, "{name}");
    }
}

fn replay(target: &str, body: fn(&[u8])) {
    tern_testkit::corpus::replay(&corpus_dir(target), target, body);
}

#[test]
fn replay_http_request_corpus() {
    replay(TARGETS[0].0, TARGETS[0].1);
}
