//! Starting `tern serve` as a real process: one port, one server unless `server.share_port`
//! asks for sharing, and the "listening" line only once the server is really up.

use crate::common;

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::Stdio;

use common::*;
use tern_sdk::Target;

/// Runs `tern serve` that must fail at start, and returns its stderr. Panics if it printed its
/// "listening" line (it was up) instead of exiting.
fn expect_startup_failure(data_dir: &Path, listen: &str, extra: &[&str]) -> String {
    let mut child = serve_command(data_dir, listen, extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tern serve");
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
    if !line.is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("tern serve started instead of failing: {line:?}");
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success(), "tern serve exited with success: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_busy_port_is_refused() {
    let first_dir = tempfile::tempdir().unwrap();
    let first = ChildServer::start(first_dir.path());
    let addr = first.addr.to_string();
    // A second, unrelated server (own data dir and key) on the same port: refused at start,
    // whether or not it asks to share (the first one does not).
    let other = tempfile::tempdir().unwrap();
    let err = expect_startup_failure(other.path(), &addr, &[]);
    assert!(err.contains(&addr) && err.contains("server.share_port"), "{err}");
    let err = expect_startup_failure(other.path(), &addr, &["--set", "server.share_port=true"]);
    assert!(err.contains(&addr) && err.contains("server.share_port"), "{err}");
    // The first one still serves every login.
    let key = ChildServer::key(first_dir.path());
    let token = |u: &str| key.mint_for(u, "phone", now_secs(), 3600);
    let (alice, _ae) = connect(first.addr, &token("alice")).await;
    let (_bob, mut be) = connect(first.addr, &token("bob")).await;
    let ack = alice.send(Target::Peer("bob".into()), "text/plain", text("hi")).await.unwrap();
    assert_eq!(next_message(&mut be).await.seq, ack.seq);
}

#[test]
fn processes_share_a_port_when_all_ask_for_it() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let share = ["--set", "server.share_port=true"];
    let first = ChildServer::start_with(d1.path(), "127.0.0.1:0", &share);
    let second = ChildServer::start_with(d2.path(), &first.addr.to_string(), &share);
    assert_eq!(first.addr, second.addr);
    // A third that does not ask to share is refused.
    let d3 = tempfile::tempdir().unwrap();
    let err = expect_startup_failure(d3.path(), &first.addr.to_string(), &[]);
    assert!(err.contains("server.share_port"), "{err}");
}

#[test]
fn listening_is_printed_only_once_the_store_is_open() {
    // The store cannot open (its directory is a file): the server fails before it says it
    // listens.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("store"), b"not a directory").unwrap();
    let err = expect_startup_failure(dir.path(), "127.0.0.1:0", &[]);
    assert!(err.contains("opening the store"), "{err}");
}

/// The CPUs (`Cpus_allowed_list`) a thread of process `pid` may run on, by thread name.
fn allowed_cpus_by_thread(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else { continue };
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_owned())
            .unwrap();
        out.push((comm.trim().to_owned(), cpus));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_threads_run_on_the_cpus_asked_for() {
    // A CPU this test may run on.
    let cpu = rustix::thread::sched_getcpu().to_string();
    let dir = tempfile::tempdir().unwrap();
    let arg = format!("server.io_cpus={cpu}");
    let extra = ["--set", "server.io_threads=1", "--set", &arg];
    let server = ChildServer::start_with(dir.path(), "127.0.0.1:0", &extra);
    // The I/O thread pins itself before it serves anything: once a login is served, it is.
    let key = ChildServer::key(dir.path());
    let (_alice, _ae) =
        connect(server.addr, &key.mint_for("alice", "phone", now_secs(), 3600)).await;
    let threads = allowed_cpus_by_thread(server.child.id());
    let io: Vec<_> = threads.iter().filter(|(name, _)| name.starts_with("tern-io-")).collect();
    assert_eq!(io.len(), 1, "{threads:?}");
    // The whole process runs there (its runtime, store and I/O threads).
    assert!(threads.iter().all(|(_, c)| *c == cpu), "{threads:?}");
}

#[test]
fn a_cpu_list_that_cannot_be_used_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (value, says) in [("1-0", "not a CPU list"), ("1023", "not one this process may run on")] {
        let arg = format!("server.io_cpus={value}");
        let err = expect_startup_failure(dir.path(), "127.0.0.1:0", &["--set", &arg]);
        assert!(err.contains("server.io_cpus") && err.contains(says), "{value}: {err}");
    }
}
