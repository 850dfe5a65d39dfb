//! `swarm`: spawns P `tern-loadtest bots` child processes (each with its own source IPs and
//! user prefix), reads gateway memory once every child's ramp is done, releases them into the
//! hold, and merges their reports exactly (children write raw latency samples).

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::config::SwarmArgs;
use crate::ramp::child_source_ips;
use crate::report::{GatewayMem, Report, bytes_per_conn};
use crate::stats::{RawSamples, read_samples};
use crate::sys;

/// How long children get after their own `--max-duration` before they are killed.
const CHILD_GRACE: Duration = Duration::from_secs(30);

/// Errors of a swarm run.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// Starting a child or handling the scratch directory failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A child exited without a readable report.
    #[error("child {k} produced no report ({why})")]
    ChildReport {
        /// Child number.
        k: usize,
        /// What went wrong.
        why: String,
    },
}

enum ChildEvent {
    RampDone,
    StdoutClosed,
}

/// Runs the swarm with `exe` as the child binary; returns the merged report.
pub fn run(args: &SwarmArgs, exe: &Path) -> Result<Report, SwarmError> {
    let c = &args.common;
    let procs = args.procs.max(1);
    let start = Instant::now();
    let deadline = start + c.max_duration + CHILD_GRACE;
    let dir = scratch_dir()?;
    let rss_before: Vec<Option<u64>> =
        c.gateway_pid.iter().map(|p| sys::vm_rss_bytes(*p)).collect();
    let socks_before: Vec<Option<u64>> =
        c.gateway_pid.iter().map(|p| sys::socket_count(*p)).collect();
    let tcp_before = sys::tcp_mem();

    let (tx, rx) = mpsc::channel();
    let mut children: Vec<(Child, Option<ChildStdin>)> = Vec::with_capacity(procs);
    let loopback_v4 = matches!(c.addr.ip(), IpAddr::V4(v) if v.is_loopback());
    for k in 0..procs {
        let ips = child_source_ips(&c.source_ips, procs, k, loopback_v4);
        let mut cmd = Command::new(exe);
        cmd.args(child_args(args, k, &ips, &dir))
            .env("TERN_LOADTEST_KEY", &c.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = match cmd.spawn() {
            Ok(ch) => ch,
            Err(e) => {
                kill_all(&mut children);
                return Err(e.into());
            }
        };
        let stdin = child.stdin.take();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if line.starts_with("ramp-done") {
                        let _ = tx.send(ChildEvent::RampDone);
                    }
                }
                let _ = tx.send(ChildEvent::StdoutClosed);
            });
        }
        children.push((child, stdin));
    }
    drop(tx);

    // Every child reports ramp-done (or goes away) before memory is read.
    let mut pending = procs;
    while pending > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ChildEvent::RampDone) | Ok(ChildEvent::StdoutClosed) => pending -= 1,
            Err(_) => break,
        }
    }
    let rss_after: Vec<Option<u64>> = c.gateway_pid.iter().map(|p| sys::vm_rss_bytes(*p)).collect();
    let socks_after: Vec<Option<u64>> =
        c.gateway_pid.iter().map(|p| sys::socket_count(*p)).collect();
    let tcp_after = sys::tcp_mem();
    for (_, stdin) in &mut children {
        if let Some(mut s) = stdin.take() {
            let _ = s.write_all(b"go\n");
        }
    }

    wait_all(&mut children, deadline);
    let mut reports = Vec::with_capacity(procs);
    let mut samples = RawSamples::default();
    for k in 0..procs {
        let json = std::fs::read(dir.join(format!("{k}.json")));
        let report = json
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Report>(&b).map_err(|e| e.to_string()));
        match report {
            Ok(r) => reports.push(r),
            Err(why) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(SwarmError::ChildReport { k, why });
            }
        }
        if let Ok(s) = read_samples(&dir.join(format!("{k}.samples"))) {
            samples.login_us.extend(s);
        }
        if let Ok(s) = read_samples(&dir.join(format!("{k}.delivery-samples"))) {
            samples.delivery_us.extend(s);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut merged = Report::merge(&reports, Some(&mut samples));
    merged.duration_secs = start.elapsed().as_secs_f64();
    let one_gateway = c.gateway_pid.len() == 1;
    merged.gateways = c
        .gateway_pid
        .iter()
        .enumerate()
        .map(|(i, pid)| {
            let (b, a) = (rss_before[i], rss_after[i]);
            // Several gateways share the port: each one's share is the sockets it gained.
            let conns = if one_gateway {
                Some(merged.logged_in_at_ramp_end)
            } else {
                socks_after[i].zip(socks_before[i]).map(|(a, b)| a.saturating_sub(b))
            };
            GatewayMem {
                pid: *pid,
                rss_before: b,
                rss_after: a,
                conns,
                bytes_per_conn: bytes_per_conn(b, a, conns.unwrap_or(0)),
            }
        })
        .collect();
    merged.tcp_before = tcp_before;
    merged.tcp_after = tcp_after;
    Ok(merged)
}

/// The command line of child `k`.
pub fn child_args(args: &SwarmArgs, k: usize, ips: &[IpAddr], dir: &Path) -> Vec<String> {
    let c = &args.common;
    let mut a: Vec<String> = vec![
        "bots".into(),
        "--addr".into(),
        c.addr.to_string(),
        "--count".into(),
        args.count_per_proc.to_string(),
        "--rate".into(),
        c.rate.to_string(),
        "--hold".into(),
        format!("{}ms", c.hold.as_millis()),
        "--heartbeat".into(),
        format!("{}ms", c.heartbeat.as_millis()),
        "--user-prefix".into(),
        format!("{}{k}-", c.user_prefix),
        "--churn-per-sec".into(),
        c.churn_per_sec.to_string(),
        "--login-timeout".into(),
        format!("{}ms", c.login_timeout.as_millis()),
        "--max-duration".into(),
        format!("{}ms", c.max_duration.as_millis()),
        "--json".into(),
        dir.join(format!("{k}.json")).display().to_string(),
        "--samples-out".into(),
        dir.join(format!("{k}.samples")).display().to_string(),
        "--delivery-samples-out".into(),
        dir.join(format!("{k}.delivery-samples")).display().to_string(),
        "--child".into(),
        "--engine".into(),
        c.engine.as_str().into(),
    ];
    if !ips.is_empty() {
        a.push("--source-ips".into());
        a.push(ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(","));
    }
    if c.quiet {
        a.push("--quiet".into());
    }
    if c.quic_percent > 0 {
        a.push("--quic-percent".into());
        a.push(c.quic_percent.to_string());
    }
    if let Some(ca) = &c.ca {
        a.push("--ca".into());
        a.push(ca.display().to_string());
    }
    a
}

fn scratch_dir() -> std::io::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("tern-loadtest-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Waits for every child until `deadline`, then kills what is left.
fn wait_all(children: &mut [(Child, Option<ChildStdin>)], deadline: Instant) {
    let polls = deadline.saturating_duration_since(Instant::now()).as_millis() / 50 + 1;
    for _ in 0..polls {
        if children.iter_mut().all(|(ch, _)| matches!(ch.try_wait(), Ok(Some(_)))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_all(children);
}

fn kill_all(children: &mut [(Child, Option<ChildStdin>)]) {
    for (ch, _) in children {
        let _ = ch.kill();
        let _ = ch.wait();
    }
}
