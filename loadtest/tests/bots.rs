//! End to end: a real `tern serve` child process, then `tern-loadtest bots` and `swarm`
//! against it; the JSON reports must show every bot logged in, no failures, and pongs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// 32 bytes of key, base64 ("0123456789abcdef0123456789abcdef").
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";

/// A `tern serve` child, killed on drop.
struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tern_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), PathBuf::from);
    let bin = target.join("debug").join("tern");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p tern` (cargo nextest run --workspace does)",
        bin.display()
    );
    bin
}

fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut child = Command::new(tern_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--set")
        .arg(format!("auth.hs256_key={KEY}"))
        .arg("--set")
        .arg(format!("server.data_dir={}", dir.path().display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn tern serve: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut addr = None;
    // Bounded: the server prints its address line first; give up after 100 lines or EOF.
    for line in BufReader::new(stdout).lines().take(100).map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("tern listening client=") {
            addr = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("tern serve printed no address line")
    });
    Server { child, addr, _dir: dir }
}

fn run_loadtest(args: &[&str], json: &Path) -> Value {
    let status = Command::new(env!("CARGO_BIN_EXE_tern-loadtest"))
        .args(args)
        .arg("--json")
        .arg(json)
        .arg("--quiet")
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("spawn tern-loadtest: {e}"));
    assert!(status.success(), "tern-loadtest exited with {status}");
    let text = std::fs::read(json).unwrap_or_else(|e| panic!("read report: {e}"));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("parse report: {e}"))
}

fn assert_all_logged_in(report: &Value, bots: u64) {
    assert_eq!(report["bots"], bots, "{report:#}");
    assert_eq!(report["logged_in_at_ramp_end"], bots, "{report:#}");
    assert_eq!(report["logged_in_at_end"], bots, "{report:#}");
    assert_eq!(report["failures"].as_object().map(|f| f.len()), Some(0), "{report:#}");
    assert_eq!(report["login_latency"]["n"], bots, "{report:#}");
    assert!(report["pongs"].as_u64().is_some_and(|p| p > 0), "{report:#}");
    assert_eq!(report["hit_max_duration"], false, "{report:#}");
}

#[test]
fn bots_log_in_ping_and_stop_by_themselves() {
    let server = start_server();
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let pid = server.child.id().to_string();
    let report = run_loadtest(
        &[
            "bots",
            "--addr",
            &server.addr,
            "--key",
            KEY,
            "--count",
            "200",
            "--rate",
            "400",
            "--hold",
            "2s",
            "--heartbeat",
            "500ms",
            "--gateway-pid",
            &pid,
        ],
        &out.path().join("bots.json"),
    );
    assert_all_logged_in(&report, 200);
    assert_eq!(report["procs"], 1);
    assert!(report["gateways"][0]["rss_after"].as_u64().is_some(), "{report:#}");
    assert!(report["tcp_after"]["inuse"].as_u64().is_some(), "{report:#}");
}

#[test]
fn swarm_merges_the_reports_of_its_children() {
    let server = start_server();
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let report = run_loadtest(
        &[
            "swarm",
            "--procs",
            "2",
            "--count-per-proc",
            "100",
            "--addr",
            &server.addr,
            "--key",
            KEY,
            "--rate",
            "400",
            "--hold",
            "2s",
            "--heartbeat",
            "500ms",
        ],
        &out.path().join("swarm.json"),
    );
    assert_all_logged_in(&report, 200);
    assert_eq!(report["procs"], 2);
    assert_eq!(report["latency_merge"], "exact");
}
