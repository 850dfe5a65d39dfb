//! One process's run: read memory, start bots at `--rate`, wait for the ramp to end, read
//! memory again, hold, stop every bot, and build the [`Report`]. Prints a progress line every
//! second on stderr.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tern_gateway::TokenKey;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::bot::{BotCtx, Churn, run_bot};
use crate::config::{BotsArgs, CommonArgs};
use crate::report::{GatewayMem, Report, bytes_per_conn, rate};
use crate::stats::{Counters, FailKind, Latency, RawSamples};
use crate::sys;

/// How often the ramp checks whether every bot's first attempt has ended.
const RAMP_POLL: Duration = Duration::from_millis(20);

/// How long stopped bots get to close their sockets before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Errors of a run (all the caller's: bad arguments).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `--key` is not a usable key.
    #[error("bad --key: {0}")]
    Key(String),
    /// `--rate` or `--churn-per-sec` is not a positive finite number.
    #[error("bad {0}: must be a positive number")]
    Rate(&'static str),
    /// QUIC bots could not be set up.
    #[error(transparent)]
    Quic(#[from] crate::transport::QuicSetupError),
    /// `--quic-percent` without `--ca`.
    #[error("--quic-percent needs --ca (the server's certificate, PEM)")]
    NoCa,
    /// `--engine mio` with QUIC bots.
    #[error("--engine mio drives TCP bots only: use --engine tokio (or auto) with --quic-percent")]
    MioQuic,
    /// The mio engine's poll failed.
    #[error("event loop: {0}")]
    Io(#[from] std::io::Error),
}

/// What one run produced: the report and the raw latency samples (µs).
#[derive(Debug)]
pub struct RunOutput {
    /// The report (memory readings included).
    pub report: Report,
    /// Every login and probe delivery latency sample, microseconds.
    pub samples: RawSamples,
}

/// Checks the arguments and builds what every bot of the run shares (its counters included);
/// `start` is the run's start (the churn schedule begins at the nominal ramp end).
pub fn bot_ctx(args: &BotsArgs, start: Instant) -> Result<Arc<BotCtx>, RunError> {
    let c = &args.common;
    if !(c.rate.is_finite() && c.rate > 0.0) {
        return Err(RunError::Rate("--rate"));
    }
    if !(c.churn_per_sec.is_finite() && c.churn_per_sec >= 0.0) {
        return Err(RunError::Rate("--churn-per-sec"));
    }
    let key = TokenKey::from_base64(&c.key).map_err(|e| RunError::Key(e.to_string()))?;
    let nominal_ramp = Duration::from_secs_f64(args.count as f64 / c.rate);
    let churn = (c.churn_per_sec > 0.0).then(|| Churn {
        epoch: start + nominal_ramp,
        period: Duration::from_secs_f64(args.count.max(1) as f64 / c.churn_per_sec),
        step: Duration::from_secs_f64(1.0 / c.churn_per_sec),
    });
    let quic = match (c.quic_percent, &c.ca) {
        (0, _) => None,
        // QUIC keep-alives are off: the bots' own heartbeat is the traffic under test.
        (_, Some(ca)) => Some(Arc::new(crate::transport::QuicClients::new(ca, None)?)),
        (_, None) => return Err(RunError::NoCa),
    };
    Ok(Arc::new(BotCtx {
        addr: c.addr,
        key,
        user_prefix: c.user_prefix.clone(),
        source_ips: c.source_ips.clone(),
        heartbeat: c.heartbeat,
        login_timeout: c.login_timeout,
        churn,
        token_ttl: c.max_duration + Duration::from_secs(3600),
        counters: Arc::new(Counters::default()),
        quic,
        quic_percent: c.quic_percent,
    }))
}

/// Runs `args.count` bots in this process until ramp + hold (or `--max-duration`) are over,
/// one tokio task per bot.
pub async fn run(args: &BotsArgs) -> Result<RunOutput, RunError> {
    let c = &args.common;
    let start = Instant::now();
    let ctx = bot_ctx(args, start)?;
    let counters = ctx.counters.clone();
    let hard_deadline = start + c.max_duration;
    let rss_before: Vec<Option<u64>> =
        c.gateway_pid.iter().map(|p| sys::vm_rss_bytes(*p)).collect();
    let tcp_before = sys::tcp_mem();

    let progress = (!c.quiet).then(|| {
        tokio::spawn(progress_loop(counters.clone(), c.user_prefix.clone(), c.max_duration))
    });

    // Ramp.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut bots = JoinSet::new();
    let mut started = 0u64;
    for i in 0..args.count {
        let at = start + Duration::from_secs_f64(i as f64 / c.rate);
        if at >= hard_deadline {
            break;
        }
        tokio::time::sleep_until(at).await;
        bots.spawn(run_bot(ctx.clone(), i, stop_rx.clone()));
        started += 1;
    }
    let polls = c.max_duration.as_millis() / RAMP_POLL.as_millis() + 1;
    for _ in 0..polls {
        if counters.first_attempts_done.load(Ordering::Relaxed) >= started
            || Instant::now() >= hard_deadline
        {
            break;
        }
        tokio::time::sleep(RAMP_POLL).await;
    }
    let ramp_secs = start.elapsed().as_secs_f64();
    let logged_in_at_ramp_end = counters.logged_in.load(Ordering::Relaxed);
    let rss_after: Vec<Option<u64>> = c.gateway_pid.iter().map(|p| sys::vm_rss_bytes(*p)).collect();
    let tcp_after = sys::tcp_mem();
    if args.child {
        println!("ramp-done logged_in={logged_in_at_ramp_end}");
        wait_for_go(hard_deadline).await;
    }

    // Hold.
    let hold_end = Instant::now() + c.hold;
    let hit_max_duration = hold_end > hard_deadline;
    tokio::time::sleep_until(hold_end.min(hard_deadline)).await;
    let logged_in_at_end = counters.logged_in.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(STOP_GRACE, async {
        for _ in 0..started {
            if bots.join_next().await.is_none() {
                break;
            }
        }
    })
    .await;
    bots.abort_all();
    if let Some(p) = progress {
        p.abort();
    }

    let marks = Marks {
        start,
        started,
        ramp_secs,
        logged_in_at_ramp_end,
        logged_in_at_end,
        hit_max_duration,
        rss_before,
        rss_after,
        tcp_before,
        tcp_after,
    };
    Ok(output(c, &counters, marks))
}

/// What a run noted at its phase boundaries (both engines), for [`output`].
#[derive(Debug)]
pub struct Marks {
    /// The run's start.
    pub start: Instant,
    /// Bots started.
    pub started: u64,
    /// Start to ramp end.
    pub ramp_secs: f64,
    /// Logged-in bots at ramp end.
    pub logged_in_at_ramp_end: u64,
    /// Logged-in bots when the hold ended.
    pub logged_in_at_end: u64,
    /// The hold was cut short by `--max-duration`.
    pub hit_max_duration: bool,
    /// Gateway VmRSS before the ramp, per `--gateway-pid`.
    pub rss_before: Vec<Option<u64>>,
    /// Gateway VmRSS at ramp end.
    pub rss_after: Vec<Option<u64>>,
    /// Kernel TCP memory before the ramp.
    pub tcp_before: Option<sys::TcpMem>,
    /// Kernel TCP memory at ramp end.
    pub tcp_after: Option<sys::TcpMem>,
}

/// The report and raw samples of a run whose bots are all stopped.
pub fn output(c: &CommonArgs, counters: &Counters, m: Marks) -> RunOutput {
    let mut samples = counters.take_samples();
    let failures = FailKind::ALL
        .iter()
        .map(|k| (k.as_str().to_owned(), counters.failures(*k)))
        .filter(|(_, v)| *v > 0)
        .collect();
    // With several gateways each one's share is unknown here (`swarm` counts their sockets).
    let conns = (c.gateway_pid.len() == 1).then_some(m.logged_in_at_ramp_end);
    let gateways = c
        .gateway_pid
        .iter()
        .zip(m.rss_before.iter().zip(&m.rss_after))
        .map(|(pid, (b, a))| GatewayMem {
            pid: *pid,
            rss_before: *b,
            rss_after: *a,
            conns,
            bytes_per_conn: bytes_per_conn(*b, *a, conns.unwrap_or(0)),
        })
        .collect();
    let probe_last_us = counters.take_probe_last();
    let mut last: Vec<u32> = probe_last_us.values().copied().collect();
    let probe_first_us = counters.take_probe_first();
    let mut first: Vec<u32> = probe_first_us.values().copied().collect();
    let report = Report {
        procs: 1,
        bots: m.started,
        logged_in_at_ramp_end: m.logged_in_at_ramp_end,
        logged_in_at_end: m.logged_in_at_end,
        logins: counters.logins.load(Ordering::Relaxed),
        reconnects: counters.reconnects.load(Ordering::Relaxed),
        ramp_secs: m.ramp_secs,
        logins_per_sec: rate(m.logged_in_at_ramp_end, m.ramp_secs),
        login_latency: Latency::from_samples(&mut samples.login_us),
        latency_merge: "exact".into(),
        failures,
        pings: counters.pings.load(Ordering::Relaxed),
        pongs: counters.pongs.load(Ordering::Relaxed),
        deliveries: counters.deliveries.load(Ordering::Relaxed),
        delivery_latency: Latency::from_samples(&mut samples.delivery_us),
        delivery_clock_skew: counters.delivery_clock_skew.load(Ordering::Relaxed),
        last_delivery_latency: Latency::from_samples(&mut last),
        probe_last_us,
        first_delivery_latency: Latency::from_samples(&mut first),
        probe_first_us,
        duration_secs: m.start.elapsed().as_secs_f64(),
        hit_max_duration: m.hit_max_duration,
        gateways,
        tcp_before: m.tcp_before,
        tcp_after: m.tcp_after,
    };
    RunOutput { report, samples }
}

/// Waits for a line (or EOF) on stdin, at most until `deadline`.
async fn wait_for_go(deadline: Instant) {
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let _ = tokio::time::timeout_at(deadline, stdin.read_line(&mut line)).await;
}

/// Prints one progress line per second until aborted (or `max` has passed).
async fn progress_loop(c: Arc<Counters>, prefix: String, max: Duration) {
    let t0 = Instant::now();
    let mut last_logins = 0;
    let mut tick = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    for _ in 0..max.as_secs() + 60 {
        tick.tick().await;
        let logins = c.logins.load(Ordering::Relaxed);
        eprintln!("{}", progress_line(&c, &prefix, t0.elapsed(), logins - last_logins));
        last_logins = logins;
    }
}

/// One progress line: `[prefix] t=... connected=... logged_in=... failed=... logins/s=...`.
pub fn progress_line(
    c: &Counters,
    prefix: &str,
    elapsed: Duration,
    logins_last_sec: u64,
) -> String {
    format!(
        "[{prefix}] t={:>4.0}s connected={} logged_in={} failed={} logins/s={} deliveries={}",
        elapsed.as_secs_f64(),
        c.connected.load(Ordering::Relaxed),
        c.logged_in.load(Ordering::Relaxed),
        c.failures_total(),
        logins_last_sec,
        c.deliveries.load(Ordering::Relaxed),
    )
}

/// The source IPs of child `k` of `procs`: its share of `given` (round-robin), or, when none
/// are given and the target is IPv4 loopback, `127.0.0.(2+4k) ..= 127.0.0.(5+4k)`.
pub fn child_source_ips(
    given: &[IpAddr],
    procs: usize,
    k: usize,
    loopback_v4: bool,
) -> Vec<IpAddr> {
    if given.is_empty() {
        if !loopback_v4 || 2 + 4 * k + 3 > 254 {
            return Vec::new();
        }
        return (0..4).map(|j| IpAddr::from([127, 0, 0, (2 + 4 * k + j) as u8])).collect();
    }
    let share: Vec<IpAddr> = given
        .iter()
        .enumerate()
        .filter(|(j, _)| j % procs.max(1) == k)
        .map(|(_, ip)| *ip)
        .collect();
    if share.is_empty() { vec![given[k % given.len()]] } else { share }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_get_disjoint_source_ips() {
        let ip = |d: u8| IpAddr::from([127, 0, 0, d]);
        assert_eq!(child_source_ips(&[], 2, 1, true), vec![ip(6), ip(7), ip(8), ip(9)]);
        assert!(child_source_ips(&[], 2, 1, false).is_empty());
        let given = [ip(10), ip(11), ip(12)];
        assert_eq!(child_source_ips(&given, 2, 0, true), vec![ip(10), ip(12)]);
        assert_eq!(child_source_ips(&given, 2, 1, true), vec![ip(11)]);
        assert_eq!(child_source_ips(&given, 5, 4, true), vec![ip(11)]);
    }
}
