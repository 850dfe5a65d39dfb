//! End to end: a real `tern serve` child process, then `tern-loadtest bots` and `swarm`
//! against it; the JSON reports must show every bot logged in, no failures, and pongs. With
//! `tern-loadtest probe` sending during the hold, the bots must count every delivery and time
//! it, and the probe must see every ack.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

fn read_report(json: &Path) -> Value {
    let text = std::fs::read(json).unwrap_or_else(|e| panic!("read report: {e}"));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("parse report: {e}"))
}

/// Waits up to `limit` for `child` to exit; kills it and fails past that.
fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    // Bounded: one poll per 20 ms until the deadline.
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait: {e}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("child still running after {limit:?}")
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
    read_report(json)
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
    for engine in ["mio", "tokio"] {
        let report = run_loadtest(
            &[
                "bots",
                "--addr",
                &server.addr,
                "--key",
                KEY,
                "--user-prefix",
                engine,
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
                "--engine",
                engine,
            ],
            &out.path().join(format!("{engine}.json")),
        );
        assert_all_logged_in(&report, 200);
        assert_eq!(report["procs"], 1);
        assert!(report["gateways"][0]["rss_after"].as_u64().is_some(), "{report:#}");
        assert!(report["tcp_after"]["inuse"].as_u64().is_some(), "{report:#}");
    }
}

#[test]
fn mio_bots_reconnect_on_churn() {
    let server = start_server();
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let report = run_loadtest(
        &[
            "bots",
            "--addr",
            &server.addr,
            "--key",
            KEY,
            "--count",
            "50",
            "--rate",
            "500",
            "--hold",
            "2s",
            "--heartbeat",
            "500ms",
            "--churn-per-sec",
            "50",
            "--engine",
            "mio",
        ],
        &out.path().join("churn.json"),
    );
    assert_eq!(report["failures"].as_object().map(|f| f.len()), Some(0), "{report:#}");
    let reconnects = report["reconnects"].as_u64().unwrap_or(0);
    assert!(reconnects >= 20, "{report:#}");
    // Every reconnect but the last few (still logging in at the stop) logged in again.
    let logins = report["logins"].as_u64().unwrap_or(0);
    assert!(logins + 10 >= 50 + reconnects, "{report:#}");
}

#[test]
fn mio_engine_refuses_quic_bots() {
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let ca = out.path().join("ca.pem");
    let status = Command::new(env!("CARGO_BIN_EXE_tern-loadtest"))
        .args(["bots", "--addr", "127.0.0.1:9", "--key", KEY, "--count", "1", "--quiet"])
        .args(["--engine", "mio", "--quic-percent", "50", "--ca"])
        .arg(&ca)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("spawn tern-loadtest: {e}"));
    assert!(!status.success());
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

/// A probe JSON report: every message acked, no failure, latencies present and positive.
fn assert_probe_acked_all(probe: &Value, count: u64) {
    assert_eq!(probe["sent"], count, "{probe:#}");
    assert_eq!(probe["acked"], count, "{probe:#}");
    assert_eq!(probe["failures"].as_object().map(|f| f.len()), Some(0), "{probe:#}");
    assert_eq!(probe["ack_latency"]["n"], count, "{probe:#}");
    assert_positive_percentiles(&probe["ack_latency"]);
    assert_eq!(probe["hit_max_duration"], false, "{probe:#}");
}

fn assert_positive_percentiles(latency: &Value) {
    for p in ["p50_ms", "p99_ms", "p999_ms", "max_ms"] {
        assert!(latency[p].as_f64().is_some_and(|v| v > 0.0), "{p} in {latency:#}");
    }
    assert!(latency["p50_ms"].as_f64() <= latency["max_ms"].as_f64(), "{latency:#}");
}

#[test]
fn bots_time_the_deliveries_of_a_probe_sent_during_the_hold() {
    probe_during_the_hold("mio");
}

#[test]
fn tokio_bots_time_the_deliveries_of_a_probe_sent_during_the_hold() {
    probe_during_the_hold("tokio");
}

fn probe_during_the_hold(engine: &str) {
    let server = start_server();
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let bots_json = out.path().join("bots.json");
    // `--child`: the bots print `ramp-done` once all are logged in, then hold only after a line
    // on stdin; the probe runs in between, so no delivery can miss a bot.
    let mut bots = Command::new(env!("CARGO_BIN_EXE_tern-loadtest"))
        .args(["bots", "--addr", &server.addr, "--key", KEY, "--count", "50", "--rate", "500"])
        .args(["--hold", "1s", "--heartbeat", "500ms", "--max-duration", "30s", "--quiet"])
        .args(["--engine", engine])
        .arg("--child")
        .arg("--json")
        .arg(&bots_json)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn tern-loadtest bots: {e}"));
    let stdout = bots.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let ramp_done = BufReader::new(stdout)
        .lines()
        .take(10)
        .map_while(Result::ok)
        .find(|l| l.starts_with("ramp-done"));
    assert_eq!(ramp_done.as_deref(), Some("ramp-done logged_in=50"));

    let probe = run_loadtest(
        &[
            "probe",
            "--addr",
            &server.addr,
            "--key",
            KEY,
            "--users",
            "50",
            "--count",
            "20",
            "--rate",
            "50",
            "--max-duration",
            "20s",
        ],
        &out.path().join("probe.json"),
    );
    assert_probe_acked_all(&probe, 20);
    assert_eq!(probe["users"], 50);

    let mut stdin = bots.stdin.take().unwrap_or_else(|| panic!("no stdin"));
    stdin.write_all(b"go\n").unwrap_or_else(|e| panic!("release the bots: {e}"));
    drop(stdin);
    let status = wait_with_limit(&mut bots, Duration::from_secs(30));
    assert!(status.success(), "tern-loadtest bots exited with {status}");
    let report = read_report(&bots_json);
    assert_all_logged_in(&report, 50);
    assert_eq!(report["deliveries"], 20, "{report:#}");
    assert_eq!(report["delivery_latency"]["n"], 20, "{report:#}");
    assert_eq!(report["delivery_clock_skew"], 0, "{report:#}");
    assert_positive_percentiles(&report["delivery_latency"]);
}

#[test]
fn swarm_merges_delivery_samples_of_its_children() {
    let server = start_server();
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let swarm_json = out.path().join("swarm.json");
    let mut swarm = Command::new(env!("CARGO_BIN_EXE_tern-loadtest"))
        .args(["swarm", "--procs", "2", "--count-per-proc", "10", "--addr", &server.addr])
        .args(["--key", KEY, "--rate", "400", "--hold", "6s", "--heartbeat", "500ms"])
        .args(["--max-duration", "30s", "--quiet"])
        .arg("--json")
        .arg(&swarm_json)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn tern-loadtest swarm: {e}"));
    // The swarm gives no signal when its ramp (20 bots, well under a second) is done; the probe
    // starts 2 s in, leaving 4 s of hold for its 0.2 s of sending.
    std::thread::sleep(Duration::from_secs(2));
    let probe = run_loadtest(
        &[
            "probe",
            "--addr",
            &server.addr,
            "--key",
            KEY,
            "--procs",
            "2",
            "--users",
            "10",
            "--count",
            "10",
            "--rate",
            "50",
            "--max-duration",
            "20s",
        ],
        &out.path().join("probe.json"),
    );
    assert_probe_acked_all(&probe, 10);
    let status = wait_with_limit(&mut swarm, Duration::from_secs(40));
    assert!(status.success(), "tern-loadtest swarm exited with {status}");
    let report = read_report(&swarm_json);
    assert_all_logged_in(&report, 20);
    assert_eq!(report["latency_merge"], "exact");
    assert_eq!(report["deliveries"], 10, "{report:#}");
    assert_eq!(report["delivery_latency"]["n"], 10, "{report:#}");
    assert_positive_percentiles(&report["delivery_latency"]);
}
