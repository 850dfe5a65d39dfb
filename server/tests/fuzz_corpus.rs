//! Replays the committed fuzz corpus of this crate's targets (`fuzz/corpus/<target>/`) through
//! the fuzz bodies on stable, and keeps the generated seed files in that corpus up to date.
//!
//! To (re)write the seeds after changing them here: `TERN_WRITE_CORPUS=1 cargo test -p tern
//! --test fuzz_corpus`.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::PathBuf;

use tern::fuzzing;
use tern::http::{Route, route};

/// A fuzz target: its name (directory under `fuzz/corpus/`) and its body.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 1] = [("http_request", fuzzing::http_request)];

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
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
    let write = std::env::var_os("TERN_WRITE_CORPUS").is_some();
    let mut stale = Vec::new();
    for (target, name, bytes, _) in seeds() {
        let path = corpus_dir(target).join(name);
        if write {
            if let Err(e) = std::fs::create_dir_all(corpus_dir(target)) {
                panic!("cannot create {}: {e}", corpus_dir(target).display());
            }
            if let Err(e) = std::fs::write(&path, &bytes) {
                panic!("cannot write {}: {e}", path.display());
            }
        }
        if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "seed files missing or stale (rerun with TERN_WRITE_CORPUS=1): {stale:#?}"
    );
}

#[test]
fn seeds_take_the_route_they_are_named_for() {
    for (_, name, bytes, expected) in seeds() {
        assert_eq!(route(&bytes), expected, "{name}");
    }
}

fn replay(target: &str, body: fn(&[u8])) {
    let dir = corpus_dir(target);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => panic!("corpus dir {} is missing: {e}", dir.display()),
    };
    let mut files: Vec<PathBuf> =
        entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    assert!(!files.is_empty(), "corpus dir {} is empty", dir.display());
    for file in &files {
        let data = match std::fs::read(file) {
            Ok(data) => data,
            Err(e) => panic!("cannot read {}: {e}", file.display()),
        };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(&data))) {
            eprintln!("fuzz target {target} failed on {}", file.display());
            resume_unwind(panic);
        }
    }
}

#[test]
fn replay_http_request_corpus() {
    replay(TARGETS[0].0, TARGETS[0].1);
}
