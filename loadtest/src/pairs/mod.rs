//! `pairs`: N sender→receiver pairs over raw connections, on one thread, measuring the server's
//! message path (send→ack, send→deliver, throughput) and the server's CPU per 100k messages.
//!
//! - [`wire`]: user ids, the stamped body, the frames.
//! - [`peer`]: one connection's protocol state (sender or receiver, receipts like a real client).
//! - [`member`]: a group member's (`--group-size`): sends, receives, DELIVERED and READ receipts.
//! - [`driver`]: the mio event loop, the timerfd send schedule, reused buffers.
//! - [`tally`]: what was counted, in the window and in all.
//! - [`report`]: the JSON report and the table.
//!
//! A run: connect and log in every connection; start sending (the epoch); warm up; open the
//! measured window (CPU readings of the server processes, this process and the machine); close
//! it after `--duration` (or when `--messages` are all settled); stop sending and drain (wait for
//! the last acks, deliveries and receipt answers, at most `--drain`); report.
//!
//! With `--group-size M` the run has `--pairs` groups of M members instead (every member one
//! connection): after the logins each group's first member creates it with the others in one
//! CreateGroup (its answer gives the conversation id to every member), and every member sends
//! its share of the rate to its group; a message counts as delivered once per other member.

pub mod driver;
pub mod member;
pub mod peer;
pub mod report;
pub mod tally;
pub mod wire;

use std::time::{Duration, Instant};

use tern_gateway::TokenKey;

use crate::config::PairsArgs;
use crate::probe::unix_nanos_now;
use crate::sys::{self, MachineCpu};
use driver::{Driver, Pace};
use member::Seat;
use peer::{Peer, PeerError, RunIds};
use report::{CpuReport, LATE_SEND_US, LatencyUs, PairsReport, ProcessCpu, cpu_per_100k};
use tally::{InWindow, Tally, Window};

/// Default window with `--rate 0`.
pub const SATURATION_WINDOW: usize = 16;
/// Default cap on sends in flight with a rate: the server's default `max_inflight_requests`.
pub const RATE_WINDOW: usize = 256;
/// How often the loop wakes up at the least (progress line, heartbeats).
const TICK: Duration = Duration::from_secs(1);
/// Groups: how often members look for receipts their interval now lets out.
const RECEIPT_TICK: Duration = Duration::from_millis(50);
/// Largest `--group-size` (one CreateGroup lists every other member).
pub const MAX_GROUP_SIZE: usize = 500;

/// Errors that stop a run before it can report.
#[derive(Debug, thiserror::Error)]
pub enum PairsError {
    /// `--key` is not a usable key.
    #[error("bad --key: {0}")]
    Key(String),
    /// An argument is out of range.
    #[error("bad {0}")]
    Arg(&'static str),
    /// The event loop or a connection could not be set up.
    #[error("setup: {0}")]
    Setup(#[from] PeerError),
    /// The event loop failed.
    #[error("event loop: {0}")]
    Io(#[from] std::io::Error),
    /// Not every group was created in time.
    #[error("{created} of {groups} groups created within --login-timeout")]
    Groups {
        /// Groups created.
        created: usize,
        /// Groups in all.
        groups: usize,
    },
    /// Not every connection logged in.
    #[error(
        "{logged_in} of {conns} connections logged in ({failed} failed) within --login-timeout"
    )]
    Login {
        /// Connections logged in.
        logged_in: usize,
        /// Connections in all.
        conns: usize,
        /// Connections that failed.
        failed: usize,
    },
}

/// CPU readings at one moment.
#[derive(Debug, Clone)]
struct CpuSnap {
    servers: Vec<Option<u64>>,
    own: Option<u64>,
    machine: Option<MachineCpu>,
}

impl CpuSnap {
    fn take(pids: &[u32]) -> Self {
        Self {
            servers: pids.iter().map(|p| sys::process_cpu_ticks(*p)).collect(),
            own: sys::process_cpu_ticks(std::process::id()),
            machine: sys::machine_cpu(),
        }
    }
}

fn check(args: &PairsArgs) -> Result<(), PairsError> {
    if args.pairs == 0 {
        return Err(PairsError::Arg("--pairs: must be at least 1"));
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        return Err(PairsError::Arg("--rate: must be 0 (saturation) or a positive number"));
    }
    if args.window == Some(0) {
        return Err(PairsError::Arg("--window: must be at least 1"));
    }
    if args.body_bytes < wire::MIN_BODY_BYTES || args.body_bytes > 60 * 1024 {
        return Err(PairsError::Arg("--body-bytes: must be 28 to 61440"));
    }
    if args.group_size == 1 || args.group_size > MAX_GROUP_SIZE {
        return Err(PairsError::Arg("--group-size: must be 0 (pairs) or 2 to 500"));
    }
    let longest = if args.group_size > 0 {
        wire::member_user(&args.user_prefix, args.pairs, args.group_size)
    } else {
        wire::sender_user(&args.user_prefix, args.pairs)
    };
    if !tern_proto::ids::is_valid_id(&longest) {
        return Err(PairsError::Arg(
            "--user-prefix: user ids must be valid (PROTOCOL.md section 7)",
        ));
    }
    Ok(())
}

/// Runs the pairs and reports.
pub fn run(args: &PairsArgs) -> Result<PairsReport, PairsError> {
    check(args)?;
    let key = TokenKey::from_base64(&args.key).map_err(|e| PairsError::Key(e.to_string()))?;
    let started = Instant::now();
    let hard_stop = started + args.max_duration;
    let saturation = args.rate == 0.0;
    let window = args.window.unwrap_or(if saturation { SATURATION_WINDOW } else { RATE_WINDOW });
    let group = args.group_size;
    let senders = if group > 0 { args.pairs * group } else { args.pairs };
    let pace = if saturation {
        Pace::Window
    } else {
        Pace::Rate { rate: args.rate, next_m: 0, due: vec![0; senders] }
    };
    let warmup_ns = u64::try_from(args.warmup.as_nanos()).unwrap_or(u64::MAX / 4);
    let end_ns = warmup_ns + u64::try_from(args.duration.as_nanos()).unwrap_or(u64::MAX / 4);
    let mut tally = Tally::new(Window { start_ns: warmup_ns, end_ns });
    tally.fanout_expect = group.saturating_sub(1) as u32;
    let mut d = Driver::new(tally, pace, window, args.messages)?;
    d.group_size = group;

    let run = RunIds {
        nonce: fastrand::u32(..),
        receipts: !args.no_receipts,
        register_push: args.register_push,
    };
    let now_secs = i64::try_from(unix_nanos_now() / 1_000_000_000).unwrap_or(i64::MAX / 2);
    let ttl = i64::try_from(args.max_duration.as_secs()).unwrap_or(i64::MAX / 4) + 3600;
    let interval_ns = u64::try_from(args.receipt_interval.as_nanos()).unwrap_or(u64::MAX);
    for g in (0..args.pairs).filter(|_| group > 0) {
        for j in 0..group {
            let user = wire::member_user(&args.user_prefix, g, j);
            let token = key.mint_for(&user, wire::DEVICE, now_secs, ttl);
            let seat = Seat {
                index: g * group + j,
                size: group,
                receipt_interval_ns: interval_ns,
                read: !args.no_read,
            };
            d.connect(args.addr, |out| Peer::member(seat, token, args.body_bytes, run, out))?;
        }
    }
    // Pairs (none with --group-size).
    for i in (0..args.pairs).filter(|_| group == 0) {
        let (s, r) =
            (wire::sender_user(&args.user_prefix, i), wire::receiver_user(&args.user_prefix, i));
        let conv = tern_proto::ids::direct_conversation_id(&s, &r)
            .ok_or(PairsError::Arg("--user-prefix: user ids must be valid"))?;
        let token = key.mint_for(&s, wire::DEVICE, now_secs, ttl);
        let (c, body) = (conv.clone(), args.body_bytes);
        d.connect(args.addr, |out| Peer::sender(i, token, c, body, run, out))?;
        let token = key.mint_for(&r, wire::DEVICE, now_secs, ttl);
        d.connect(args.addr, |out| Peer::receiver(i, token, conv, run, out))?;
    }

    // Log in every connection.
    let login_deadline = (started + args.login_timeout).min(hard_stop);
    let conns = d.conns.len();
    // Bounded: until the login deadline.
    loop {
        let (logged_in, failed) = d.login_counts();
        if logged_in == conns {
            break;
        }
        if failed > 0 || Instant::now() >= login_deadline {
            return Err(PairsError::Login { logged_in, conns, failed });
        }
        d.turn(login_deadline)?;
    }
    if group > 0 {
        create_groups(args, &mut d, run.nonce, login_deadline)?;
    }

    // Send: warm-up, window, drain.
    d.epoch = Instant::now();
    d.sending = true;
    let mut primed = false;
    let epoch = d.epoch;
    let (window_start, window_end) =
        (epoch + Duration::from_nanos(warmup_ns), epoch + Duration::from_nanos(end_ns));
    // CPU readings when the window opened and when it closed.
    let mut opened: Option<(Instant, CpuSnap)> = None;
    let mut closed: Option<(Instant, CpuSnap)> = None;
    let mut drain_until: Option<Instant> = None;
    let mut next_tick = Instant::now() + TICK;
    let mut next_receipt_tick = (group > 0).then(|| Instant::now() + RECEIPT_TICK);
    let mut hit_max_duration = false;
    let mut drained = false;
    // Bounded: every pass waits for an event or a deadline, and the hard stop ends it.
    loop {
        let now = Instant::now();
        if now >= hard_stop {
            hit_max_duration = true;
            break;
        }
        let now_ns = d.now_ns();
        let all_sent = args.messages.is_some_and(|m| d.tally.sent >= m);
        if opened.is_none() && now >= window_start {
            opened = Some((now, CpuSnap::take(&args.server_pid)));
            d.tally.measuring = true;
        }
        if !primed {
            // The first sends (saturation: every window) once the window may be open.
            primed = true;
            for pair in 0..d.senders() {
                d.try_send(pair, now_ns);
            }
        }
        d.release_due(now_ns);
        let finished_early = all_sent && d.settled();
        if opened.is_some() && closed.is_none() && (now >= window_end || finished_early) {
            closed = Some((now, CpuSnap::take(&args.server_pid)));
            d.tally.measuring = false;
            d.tally.window.end_ns = d.tally.window.end_ns.min(now_ns);
        }
        if drain_until.is_none() && (closed.is_some() || all_sent && now >= window_end) {
            d.sending = false;
            drain_until = Some(now + args.drain);
        }
        if let Some(until) = drain_until {
            if d.settled() {
                drained = true;
                break;
            }
            if now >= until {
                break;
            }
        }
        if now >= next_tick {
            next_tick = now + TICK;
            d.heartbeats(now_ns);
            if !args.quiet {
                progress(&d, now.duration_since(epoch));
            }
        }
        if let Some(t) = next_receipt_tick.filter(|t| now >= *t) {
            next_receipt_tick = Some(t.max(now) + RECEIPT_TICK);
            d.receipt_ticks(now_ns);
        }
        let mut deadline = next_tick.min(hard_stop);
        let soon = [d.next_due(), opened.is_none().then_some(window_start), drain_until];
        for t in soon.into_iter().chain([next_receipt_tick]) {
            deadline = t.map_or(deadline, |t| deadline.min(t));
        }
        if closed.is_none() {
            deadline = deadline.min(window_end);
        }
        d.turn(deadline)?;
    }
    Ok(report(args, window, &d, (opened, closed), started, drained, hit_max_duration))
}

/// Each group's first member creates it with the others; every member then learns its id.
fn create_groups(
    args: &PairsArgs,
    d: &mut Driver,
    nonce: u32,
    deadline: Instant,
) -> Result<(), PairsError> {
    let (groups, size) = (args.pairs, d.group_size);
    for g in 0..groups {
        let members = (1..size).map(|j| wire::member_user(&args.user_prefix, g, j)).collect();
        let name = format!("{}-group-{g}", args.user_prefix);
        let crid = format!("{nonce:08x}-g{g}");
        d.create_group(g * size, name, members, crid);
    }
    // Out now: the loop below may wait for the first answer before its turn writes.
    d.flush_dirty();
    // Bounded: until the deadline.
    loop {
        let created = (0..groups)
            .filter(|g| d.conns[g * size].peer.as_member().and_then(|m| m.conversation()).is_some())
            .count();
        if created == groups {
            break;
        }
        let failed = d.login_counts().1;
        if failed > 0 || Instant::now() >= deadline {
            return Err(PairsError::Groups { created, groups });
        }
        d.turn(deadline)?;
    }
    for g in 0..groups {
        let first = &d.conns[g * size].peer;
        let conv = first.as_member().and_then(|m| m.conversation()).unwrap_or("").to_owned();
        for c in &mut d.conns[g * size + 1..(g + 1) * size] {
            if let Some(m) = c.peer.as_member_mut() {
                m.set_conversation(&conv);
            }
        }
    }
    Ok(())
}

fn progress(d: &Driver, t: Duration) {
    let phase = if d.tally.measuring {
        "window"
    } else if d.sending {
        "warmup"
    } else {
        "drain"
    };
    let t_ = &d.tally;
    eprintln!(
        "[pairs] t={:>5.1}s {phase:<6} sent={} acked={} delivered={} receipts={} pushes={} in_flight={} failed={}",
        t.as_secs_f64(),
        t_.sent,
        t_.acked,
        t_.delivered,
        t_.receipts_sent,
        t_.receipt_pushes,
        d.in_flight(),
        t_.failures.values().sum::<u64>(),
    );
}

type Snaps = (Option<(Instant, CpuSnap)>, Option<(Instant, CpuSnap)>);

fn report(
    args: &PairsArgs,
    window: usize,
    d: &Driver,
    snaps: Snaps,
    started: Instant,
    drained: bool,
    hit_max_duration: bool,
) -> PairsReport {
    let t = &d.tally;
    let (secs, cpu) = match (&snaps.0, &snaps.1) {
        (Some((a, sa)), Some((b, sb))) => {
            (b.duration_since(*a).as_secs_f64(), cpu_report(&args.server_pid, sa, sb, t.in_window))
        }
        _ => (0.0, CpuReport { cores: sys::cores(), ..CpuReport::default() }),
    };
    let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let rate_mode = matches!(d.pace, Pace::Rate { .. });
    let mut lag = t.lag_us.clone();
    let late = lag.iter().filter(|l| **l > LATE_SEND_US).count() as u64;
    let scheduled = args.rate * secs;
    let kept_up = !rate_mode
        || (late * 100 <= t.in_window.sent.max(1) && t.in_window.sent as f64 >= 0.95 * scheduled);
    let fanout = args.group_size.saturating_sub(1).max(1) as u64;
    let delivered_expected: u64 =
        d.conns.iter().filter_map(|c| c.peer.as_sender()).map(|s| s.acked * fanout).sum();
    PairsReport {
        mode: if rate_mode { "rate" } else { "window" }.into(),
        receipts: !args.no_receipts,
        pairs: args.pairs as u64,
        group_size: args.group_size as u64,
        read_receipts: args.group_size > 0 && !args.no_receipts && !args.no_read,
        receipt_interval_secs: (args.group_size > 0).then_some(args.receipt_interval.as_secs_f64()),
        body_bytes: args.body_bytes as u64,
        target_rate: args.rate,
        window: window as u64,
        warmup_secs: args.warmup.as_secs_f64(),
        window_secs: secs,
        sent: t.sent,
        acked: t.acked,
        duplicate_acks: t.duplicate_acks,
        send_errors: t.send_errors.clone(),
        delivered: t.delivered,
        undelivered: delivered_expected.saturating_sub(t.delivered),
        duplicate_deliveries: t.duplicate_deliveries,
        foreign_deliveries: t.foreign_deliveries,
        misrouted_deliveries: t.misrouted_deliveries,
        receipts_sent: t.receipts_sent,
        receipt_answers: t.receipt_answers,
        receipt_errors: t.receipt_errors.clone(),
        receipt_pushes: t.receipt_pushes,
        read_receipts_sent: t.read_receipts_sent,
        group_events: t.group_events,
        pings: t.pings,
        pongs: t.pongs,
        other_frames: t.other_frames.clone(),
        push_registrations: t.push_registrations,
        failures: t.failures.clone(),
        window_sent: t.in_window.sent,
        window_acked: t.in_window.acked,
        window_delivered: t.in_window.delivered,
        window_receipts: t.in_window.receipts_sent,
        window_receipt_pushes: t.in_window.receipt_pushes,
        receipts_per_sec: per_sec(t.in_window.receipts_sent),
        receipt_pushes_per_sec: per_sec(t.in_window.receipt_pushes),
        sent_per_sec: per_sec(t.in_window.sent),
        persisted_per_sec: per_sec(t.in_window.acked),
        delivered_per_sec: per_sec(t.in_window.delivered),
        ack_latency_us: LatencyUs::from_samples(&mut t.ack_us.clone()),
        deliver_latency_us: LatencyUs::from_samples(&mut t.deliver_us.clone()),
        deliver_last_latency_us: (args.group_size > 0)
            .then(|| LatencyUs::from_samples(&mut t.deliver_last_us.clone())),
        schedule_lag_us: rate_mode.then(|| LatencyUs::from_samples(&mut lag)),
        late_sends: late,
        kept_up,
        cpu,
        duration_secs: started.elapsed().as_secs_f64(),
        drained,
        hit_max_duration,
    }
}

fn cpu_report(pids: &[u32], a: &CpuSnap, b: &CpuSnap, counts: InWindow) -> CpuReport {
    let acked = counts.acked;
    let hz = sys::clock_ticks_per_sec() as f64;
    let delta = |x: Option<u64>, y: Option<u64>| Some(y?.saturating_sub(x?) as f64 / hz);
    let servers: Vec<ProcessCpu> = pids
        .iter()
        .zip(a.servers.iter().zip(&b.servers))
        .map(|(pid, (x, y))| ProcessCpu { pid: *pid, cpu_secs: delta(*x, *y) })
        .collect();
    let server_cpu_secs: f64 = servers.iter().filter_map(|s| s.cpu_secs).sum();
    let loadgen_cpu_secs = delta(a.own, b.own).unwrap_or(0.0);
    let machine_busy_fraction = match (a.machine, b.machine) {
        (Some(x), Some(y)) if y.total > x.total => {
            Some((y.busy - x.busy.min(y.busy)) as f64 / (y.total - x.total) as f64)
        }
        _ => None,
    };
    CpuReport {
        clock_ticks_per_sec: hz as u64,
        server_cpu_secs_per_100k: (!pids.is_empty())
            .then(|| cpu_per_100k(server_cpu_secs, acked))
            .flatten(),
        server_cpu_secs_per_100k_deliveries: (!pids.is_empty())
            .then(|| cpu_per_100k(server_cpu_secs, counts.delivered))
            .flatten(),
        servers,
        server_cpu_secs,
        loadgen_cpu_secs_per_100k: cpu_per_100k(loadgen_cpu_secs, acked),
        loadgen_cpu_secs,
        cores: sys::cores(),
        machine_busy_fraction,
    }
}
