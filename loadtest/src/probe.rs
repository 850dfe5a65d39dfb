//! `probe`: one SDK client sends `probe:<unix_nanos>` messages to random bots at a fixed rate
//! and measures send→ack latency; the bots time the same messages on receipt (delivery
//! latency, see [`crate::bot::Delivery`]). Also the probe body's format, shared by both sides.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tern_gateway::TokenKey;
use tern_sdk::{Client, ClientConfig, Event, MemoryPersistence, SdkError, Target};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::config::ProbeArgs;
use crate::report::ProbeReport;
use crate::stats::Latency;

/// What a probe body starts with; the rest is the send time, Unix nanoseconds in ASCII decimal.
pub const PROBE_PREFIX: &[u8] = b"probe:";

/// The device id of the probe's connection.
pub const PROBE_DEVICE: &str = "p";

/// Content type of probe messages.
const CONTENT_TYPE: &str = "text/plain";

/// How long closing the client may take at the end.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Errors of a probe run that stop it before it can report.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `--key` is not a usable key.
    #[error("bad --key: {0}")]
    Key(String),
    /// An argument is out of range.
    #[error("bad {0}")]
    Arg(&'static str),
    /// Connecting or logging in failed.
    #[error("connect to the gateway")]
    Connect(#[source] SdkError),
    /// Connecting did not finish within `--max-duration`.
    #[error("connect: no login within --max-duration")]
    ConnectTimeout,
}

/// The wall clock in Unix nanoseconds (0 before 1970, saturated after 2554).
pub fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The body of a probe sent at `unix_nanos`.
pub fn probe_body(unix_nanos: u64) -> Bytes {
    Bytes::from(format!("probe:{unix_nanos}"))
}

/// The send time of a probe body, or `None` when `body` is not one (any other message).
pub fn parse_probe_body(body: &[u8]) -> Option<u64> {
    let digits = body.strip_prefix(PROBE_PREFIX)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The user id of recipient `i` (of swarm child `k` when the bots run under `swarm`).
pub fn recipient(prefix: &str, child: Option<usize>, i: usize) -> String {
    match child {
        Some(k) => format!("{prefix}{k}-{i}"),
        None => format!("{prefix}{i}"),
    }
}

/// The failure kind of a send that got no ack.
pub fn fail_kind(e: &SdkError) -> String {
    match e {
        SdkError::Server { code, .. } => {
            let name = code.as_str_name();
            format!("server_{}", name.strip_prefix("ERROR_CODE_").unwrap_or(name).to_lowercase())
        }
        SdkError::Login { .. } => "login".into(),
        SdkError::Timeout => "ack_timeout".into(),
        SdkError::Closed => "closed".into(),
        SdkError::OutboxFull { .. } => "outbox_full".into(),
        SdkError::InvalidArgument(_) => "invalid_argument".into(),
        SdkError::Protocol(_) => "protocol".into(),
        SdkError::Persistence(_) => "persistence".into(),
        SdkError::Io(_) => "io".into(),
        SdkError::Frame(_) => "frame".into(),
    }
}

/// Progress counters, read by the progress line.
#[derive(Debug, Default)]
struct Progress {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
}

/// What the run has seen so far.
#[derive(Debug, Default)]
struct Tally {
    acked: u64,
    failures: BTreeMap<String, u64>,
    samples_us: Vec<u32>,
}

impl Tally {
    fn record(&mut self, done: Result<(Result<(), SdkError>, Duration), JoinError>, p: &Progress) {
        match done {
            Ok((Ok(()), latency)) => {
                self.acked += 1;
                p.acked.fetch_add(1, Ordering::Relaxed);
                self.samples_us.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
            }
            Ok((Err(e), _)) => self.fail(fail_kind(&e), p),
            Err(_) => self.fail("task".into(), p),
        }
    }

    fn fail(&mut self, kind: String, p: &Progress) {
        *self.failures.entry(kind).or_default() += 1;
        p.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connects as `--sender`, sends `--count` probes at `--rate` to random bots (or, with
/// `--group`, to one group of all of them), waits for their
/// acks (each up to `--ack-timeout`, all within `--max-duration`), and reports.
pub async fn run(args: &ProbeArgs) -> Result<ProbeReport, ProbeError> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(ProbeError::Arg("--rate: must be a positive number"));
    }
    if args.users == 0 {
        return Err(ProbeError::Arg("--users: must be at least 1"));
    }
    if args.procs == Some(0) {
        return Err(ProbeError::Arg("--procs: must be at least 1"));
    }
    if !tern_proto::ids::is_valid_id(&args.sender) {
        return Err(ProbeError::Arg("--sender: not a valid user id"));
    }
    let key = TokenKey::from_base64(&args.key).map_err(|e| ProbeError::Key(e.to_string()))?;
    let start = Instant::now();
    let deadline = start + args.max_duration;
    let now_secs = i64::try_from(unix_nanos_now() / 1_000_000_000).unwrap_or(i64::MAX);
    let ttl = i64::try_from(args.max_duration.as_secs()).unwrap_or(i64::MAX / 2);
    let token = key.mint_for(&args.sender, PROBE_DEVICE, now_secs, ttl.saturating_add(3600));
    let mut cfg = ClientConfig::new(args.addr.to_string(), token);
    cfg.send_timeout = args.ack_timeout;
    cfg.client_version = "tern-loadtest-probe".into();
    let connect = Client::connect(cfg, Arc::new(MemoryPersistence::new()));
    let (client, mut events) = match tokio::time::timeout_at(deadline, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(ProbeError::Connect(e)),
        Err(_) => return Err(ProbeError::ConnectTimeout),
    };

    // Drain the client's events (it waits when they pile up), counting disconnects.
    let disconnects = Arc::new(AtomicU64::new(0));
    let drain = {
        let disconnects = disconnects.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if matches!(ev, Event::Disconnected { .. }) {
                    disconnects.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // A group probe: one group of every bot, each probe sent to it (a fan-out to all).
    let group = match args.group {
        false => None,
        true => Some(make_group(&client, args).await.map_err(ProbeError::Connect)?),
    };
    if group.is_some() && !args.settle.is_zero() {
        tokio::time::sleep(args.settle).await;
    }
    let progress = Arc::new(Progress::default());
    let printer = (!args.quiet).then(|| {
        tokio::spawn(progress_loop(progress.clone(), args.count as u64, args.max_duration))
    });

    let mut rng = fastrand::Rng::new();
    let mut tally = Tally::default();
    let mut sends = JoinSet::new();
    let mut sent = 0u64;
    let mut hit_max_duration = false;
    let sending = Instant::now();
    for n in 0..args.count {
        let at = sending + Duration::from_secs_f64(n as f64 / args.rate);
        if at >= deadline {
            hit_max_duration = true;
            break;
        }
        tokio::time::sleep_until(at).await;
        let to = match &group {
            Some(g) => Target::Conversation(g.clone()),
            None => Target::Peer(recipient(
                &args.user_prefix,
                args.procs.map(|p| rng.usize(..p)),
                rng.usize(..args.users),
            )),
        };
        let client = client.clone();
        sends.spawn(async move {
            let t0 = Instant::now();
            let body = probe_body(unix_nanos_now());
            let r = client.send(to, CONTENT_TYPE, body).await;
            (r.map(|_| ()), t0.elapsed())
        });
        sent += 1;
        progress.sent.fetch_add(1, Ordering::Relaxed);
        while let Some(done) = sends.try_join_next() {
            tally.record(done, &progress);
        }
    }
    // Every send ends by itself within --ack-timeout; --max-duration bounds the wait anyway.
    while !sends.is_empty() {
        match tokio::time::timeout_at(deadline, sends.join_next()).await {
            Ok(Some(done)) => tally.record(done, &progress),
            Ok(None) => break,
            Err(_) => {
                hit_max_duration = true;
                for _ in 0..sends.len() {
                    tally.fail("unfinished".into(), &progress);
                }
                sends.abort_all();
                break;
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, client.close()).await;
    drain.abort();
    if let Some(p) = printer {
        p.abort();
    }

    Ok(ProbeReport {
        users: args.users as u64,
        sent,
        acked: tally.acked,
        failures: tally.failures,
        ack_latency: Latency::from_samples(&mut tally.samples_us),
        disconnects: disconnects.load(Ordering::Relaxed),
        duration_secs: start.elapsed().as_secs_f64(),
        hit_max_duration,
    })
}

/// Members added per AddMembers request (well under a frame).
const ADD_CHUNK: usize = 500;

/// Creates a group owned by the probe's user with every recipient the probe knows of (all
/// `--procs` × `--users` bots) and returns its conversation id.
async fn make_group(client: &Client, args: &ProbeArgs) -> Result<String, SdkError> {
    let all: Vec<String> = match args.procs {
        Some(p) => (0..p)
            .flat_map(|k| (0..args.users).map(move |i| (k, i)))
            .map(|(k, i)| recipient(&args.user_prefix, Some(k), i))
            .collect(),
        None => (0..args.users).map(|i| recipient(&args.user_prefix, None, i)).collect(),
    };
    let info = client.create_group("probe", &[], "").await?;
    for chunk in all.chunks(ADD_CHUNK) {
        let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
        client.add_members(&info.conversation_id, &ids).await?;
    }
    if !args.quiet {
        eprintln!("[probe] group {} of {} bots", info.conversation_id, all.len());
    }
    Ok(info.conversation_id)
}

/// Prints one progress line per second until aborted (or `max` has passed).
async fn progress_loop(p: Arc<Progress>, count: u64, max: Duration) {
    let t0 = Instant::now();
    let mut tick = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    for _ in 0..max.as_secs() + 60 {
        tick.tick().await;
        eprintln!(
            "[probe] t={:>4.0}s sent={}/{count} acked={} failed={}",
            t0.elapsed().as_secs_f64(),
            p.sent.load(Ordering::Relaxed),
            p.acked.load(Ordering::Relaxed),
            p.failed.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::v1::ErrorCode;

    #[test]
    fn probe_bodies_round_trip_and_others_are_not_probes() {
        let now = unix_nanos_now();
        assert!(now > 1_600_000_000_000_000_000);
        assert_eq!(parse_probe_body(&probe_body(now)), Some(now));
        assert_eq!(parse_probe_body(b"probe:0"), Some(0));
        for not in [&b"probe:"[..], b"probe:-1", b"probe:+1", b"probe:1 ", b"hello", b""] {
            assert_eq!(parse_probe_body(not), None, "{not:?}");
        }
        assert_eq!(parse_probe_body(b"probe:99999999999999999999999"), None);
    }

    #[test]
    fn recipients_follow_the_bots_naming() {
        assert_eq!(recipient("lt", None, 7), "lt7");
        assert_eq!(recipient("lt", Some(3), 7), "lt3-7");
    }

    #[test]
    fn failure_kinds_are_short_names() {
        let server = SdkError::Server { code: ErrorCode::RateLimited, message: String::new() };
        assert_eq!(fail_kind(&server), "server_rate_limited");
        assert_eq!(fail_kind(&SdkError::Timeout), "ack_timeout");
        assert_eq!(fail_kind(&SdkError::Closed), "closed");
    }
}
