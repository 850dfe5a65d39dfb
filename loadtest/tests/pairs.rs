//! End to end: `tern-loadtest pairs` against a real `tern serve` child (testkit's
//! [`TernProcess`]), in saturation and at a fixed rate. The JSON report must show every send
//! acked, every message delivered exactly once to its receiver, every receipt answered, no
//! failure, and a CPU reading of the server (and with `--no-receipts`, no receipt at all). No
//! timing is asserted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use tern_testkit::TernProcess;

/// 32 bytes of key, base64 ("0123456789abcdef0123456789abcdef").
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";

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

/// `tern serve` on a free port with its own data dir (fsync on, the default).
fn serve(dir: &Path) -> TernProcess {
    let data_dir = dir.display().to_string();
    let key = format!("auth.hs256_key={KEY}");
    let args = ["serve", "--listen", "127.0.0.1:0", "--http-listen", "", "--data-dir", &data_dir];
    TernProcess::spawn(
        tern_binary(),
        args.into_iter().chain(["--set", &key, "--set", "server.log=warn"]),
    )
    .unwrap_or_else(|e| panic!("start tern serve: {e}"))
}

/// Runs `pairs` with `args` against `server` and returns its JSON report.
fn pairs(server: &TernProcess, args: &[&str], out: &Path) -> Value {
    let addr = server.client_addr().unwrap_or_else(|| panic!("no client address")).to_string();
    let pid = server.pid().unwrap_or_else(|| panic!("no pid")).to_string();
    let json = out.join("pairs.json");
    let status = Command::new(env!("CARGO_BIN_EXE_tern-loadtest"))
        .args(["pairs", "--addr", &addr, "--key", KEY, "--server-pid", &pid, "--quiet"])
        // Bounded by --messages; the window and drain limits are only a safety net.
        .args(["--warmup", "0s", "--duration", "60s", "--drain", "30s", "--max-duration", "90s"])
        .args(args)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("spawn tern-loadtest: {e}"));
    assert!(status.success(), "tern-loadtest pairs exited with {status}\n{}", server.logs());
    let text = std::fs::read(&json).unwrap_or_else(|e| panic!("read report: {e}"));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("parse report: {e}"))
}

fn assert_all_settled(r: &Value, messages: u64, receipts_on: bool) {
    for key in ["sent", "acked", "delivered", "window_sent", "window_acked", "window_delivered"] {
        assert_eq!(r[key], messages, "{key} in {r:#}");
    }
    for key in [
        "undelivered",
        "duplicate_acks",
        "duplicate_deliveries",
        "foreign_deliveries",
        "misrouted_deliveries",
    ] {
        assert_eq!(r[key], 0, "{key} in {r:#}");
    }
    for key in ["send_errors", "receipt_errors", "failures", "other_frames"] {
        assert_eq!(r[key].as_object().map(|m| m.len()), Some(0), "{key} in {r:#}");
    }
    assert_eq!(r["ack_latency_us"]["n"], messages, "{r:#}");
    assert_eq!(r["deliver_latency_us"]["n"], messages, "{r:#}");
    // Receipts: at least one per pair, at most one per message, every one answered. Each moved
    // a watermark and so pushes a ReceiptUpdate to the sender, but the last pushes may still be
    // on their way when the run ends.
    let receipts = r["receipts_sent"].as_u64().unwrap_or(0);
    let pairs = r["pairs"].as_u64().unwrap_or(u64::MAX);
    let pushes = r["receipt_pushes"].as_u64().unwrap_or(u64::MAX);
    assert_eq!(r["receipt_answers"], receipts, "{r:#}");
    assert_eq!(r["receipts"], receipts_on, "{r:#}");
    if receipts_on {
        assert!(receipts >= pairs && receipts <= messages, "{r:#}");
        assert!(pushes > 0 && pushes <= receipts, "{r:#}");
    } else {
        assert_eq!((receipts, pushes), (0, 0), "{r:#}");
    }
    assert_eq!(r["drained"], true, "{r:#}");
    assert_eq!(r["hit_max_duration"], false, "{r:#}");
    let server = &r["cpu"]["servers"][0];
    assert!(server["cpu_secs"].as_f64().is_some(), "{r:#}");
    assert!(r["cpu"]["server_cpu_secs_per_100k"].as_f64().is_some(), "{r:#}");
}

#[test]
fn saturation_pairs_get_every_message_acked_delivered_once_and_receipted() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let server = serve(dir.path());
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let r = pairs(
        &server,
        &["--pairs", "10", "--messages", "400", "--rate", "0", "--window", "4"],
        out.path(),
    );
    assert_all_settled(&r, 400, true);
    assert_eq!(r["mode"], "window");
    assert_eq!(r["window"], 4);
    assert!(r["schedule_lag_us"].is_null(), "{r:#}");
    // The same without receipts.
    let quiet = &["--pairs", "10", "--messages", "200", "--rate", "0", "--no-receipts"];
    assert_all_settled(&pairs(&server, quiet, out.path()), 200, false);
}

#[test]
fn open_loop_pairs_get_every_message_acked_delivered_once_and_receipted() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let server = serve(dir.path());
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let r = pairs(&server, &["--pairs", "5", "--messages", "300", "--rate", "300"], out.path());
    assert_all_settled(&r, 300, true);
    assert_eq!(r["mode"], "rate");
    assert_eq!(r["schedule_lag_us"]["n"], 300, "{r:#}");
    // A second run on the same users: new client ids, so nothing is a duplicate, and the first
    // run's messages are not delivered again.
    let again = pairs(&server, &["--pairs", "5", "--messages", "100", "--rate", "300"], out.path());
    assert_all_settled(&again, 100, true);
}

#[test]
fn group_members_get_every_other_members_messages_once_and_their_receipts_are_answered() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let server = serve(dir.path());
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    // 2 groups of 5: every message reaches the 4 other members of its group.
    let args = ["--pairs", "2", "--group-size", "5", "--messages", "200", "--rate", "0"];
    let r = pairs(
        &server,
        &[&args[..], &["--window", "2", "--receipt-interval", "100ms"]].concat(),
        out.path(),
    );
    for key in ["sent", "acked", "window_sent", "window_acked"] {
        assert_eq!(r[key], 200, "{key} in {r:#}");
    }
    assert_eq!(r["delivered"], 800, "{r:#}");
    assert_eq!(r["deliver_latency_us"]["n"], 800, "{r:#}");
    assert_eq!(r["deliver_last_latency_us"]["n"], 200, "{r:#}");
    for key in ["undelivered", "duplicate_deliveries", "foreign_deliveries", "misrouted_deliveries"]
    {
        assert_eq!(r[key], 0, "{key} in {r:#}");
    }
    for key in ["send_errors", "receipt_errors", "failures", "other_frames"] {
        assert_eq!(r[key].as_object().map(|m| m.len()), Some(0), "{key} in {r:#}");
    }
    // Every member heard of its group's creation; DELIVERED and READ receipts, all answered,
    // each pushed to the other members.
    let events = r["group_events"].as_u64().unwrap_or(0);
    assert!((8..=10).contains(&events), "{r:#}");
    let receipts = r["receipts_sent"].as_u64().unwrap_or(0);
    let read = r["read_receipts_sent"].as_u64().unwrap_or(0);
    assert!(receipts >= 20 && read >= 10 && read < receipts, "{r:#}");
    assert_eq!(r["receipt_answers"], receipts, "{r:#}");
    assert!(r["receipt_pushes"].as_u64().unwrap_or(0) > 0, "{r:#}");
    assert_eq!(r["drained"], true, "{r:#}");
    assert!(r["cpu"]["server_cpu_secs_per_100k_deliveries"].as_f64().is_some(), "{r:#}");
}
