//! `bots --engine mio`: the same run as [`crate::ramp`] (ramp at `--rate`, `ramp-done` and
//! the wait for "go" under `swarm`, hold, stop, the same [`Report`](crate::report::Report) and
//! raw samples) with every TCP bot of the process on one thread: one epoll loop, one read
//! buffer, one deadline heap, no task per connection. Each connection still runs the sans-IO
//! [`BotSession`](crate::bot::BotSession) of the tokio engine, so login, heartbeat and probe
//! timing are the same; what goes away is the per-connection wake-up, task switch and small
//! read that made the tokio bots cost ~10 µs per delivery.
//!
//! - [`engine`]: the event loop and the connection slots.
//! - [`timers`]: the deadline heap (sans-IO).

pub mod engine;
pub mod timers;

use std::io::BufRead;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use self::engine::Engine;
use crate::config::BotsArgs;
use crate::ramp::{Marks, RunError, RunOutput, bot_ctx, output, progress_line};
use crate::sys;

/// Longest single wait of the loop outside the bots' own deadlines (progress, phase ends).
const MAX_WAIT: Duration = Duration::from_millis(250);

/// Runs `args.count` TCP bots on this thread until ramp + hold (or `--max-duration`) are over.
pub fn run(args: &BotsArgs) -> Result<RunOutput, RunError> {
    let c = &args.common;
    if c.quic_percent > 0 {
        return Err(RunError::MioQuic);
    }
    let start = Instant::now();
    let ctx = bot_ctx(args, start)?;
    let counters = ctx.counters.clone();
    let hard_deadline = start + c.max_duration;
    let rss_before: Vec<Option<u64>> =
        c.gateway_pid.iter().map(|p| sys::vm_rss_bytes(*p)).collect();
    let tcp_before = sys::tcp_mem();
    let mut engine = Engine::new(ctx)?;
    let mut progress = Progress::new(start, (!c.quiet).then(|| c.user_prefix.clone()));

    // Ramp: bot i starts at start + i / rate; the ramp ends when every first attempt has.
    let mut started = 0u64;
    let due = |i: u64| start + Duration::from_secs_f64(i as f64 / c.rate);
    // Bounded: every turn waits for I/O or a deadline at most MAX_WAIT away, and the loop
    // ends at the hard deadline.
    loop {
        let now = Instant::now();
        while (started as usize) < args.count && due(started) <= now && due(started) < hard_deadline
        {
            engine.start_bot(started as usize);
            started += 1;
        }
        let all_started = started as usize >= args.count || due(started) >= hard_deadline;
        if (all_started && engine.first_attempts_done() >= started) || now >= hard_deadline {
            break;
        }
        let next_bot = if all_started { hard_deadline } else { due(started) };
        let until = next_bot.min(progress.next()).min(now + MAX_WAIT).min(hard_deadline);
        engine.turn(until)?;
        progress.tick(&counters);
    }
    let ramp_secs = start.elapsed().as_secs_f64();
    let logged_in_at_ramp_end = counters.logged_in.load(Ordering::Relaxed);
    let rss_after: Vec<Option<u64>> = c.gateway_pid.iter().map(|p| sys::vm_rss_bytes(*p)).collect();
    let tcp_after = sys::tcp_mem();

    if args.child {
        println!("ramp-done logged_in={logged_in_at_ramp_end}");
        // The bots keep running while the coordinator reads memory; a thread waits for its
        // line on stdin (or EOF) and wakes the loop.
        let waker = engine.waker();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            let _ = waker.wake();
        });
        // Bounded: ends at the wake-up or the hard deadline.
        loop {
            let now = Instant::now();
            if engine.take_woken() || now >= hard_deadline {
                break;
            }
            engine.turn(progress.next().min(now + MAX_WAIT).min(hard_deadline))?;
            progress.tick(&counters);
        }
    }

    // Hold.
    let hold_end = Instant::now() + c.hold;
    let hit_max_duration = hold_end > hard_deadline;
    let end = hold_end.min(hard_deadline);
    // Bounded: ends at the hold's end.
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        engine.turn(progress.next().min(now + MAX_WAIT).min(end))?;
        progress.tick(&counters);
    }
    let logged_in_at_end = counters.logged_in.load(Ordering::Relaxed);
    engine.stop_all();

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

/// One progress line per second on stderr (when a prefix is given).
struct Progress {
    start: Instant,
    prefix: Option<String>,
    next: Instant,
    last_logins: u64,
}

impl Progress {
    fn new(start: Instant, prefix: Option<String>) -> Self {
        Self { start, prefix, next: start + Duration::from_secs(1), last_logins: 0 }
    }

    /// When the next line is due (far away when there are none).
    fn next(&self) -> Instant {
        if self.prefix.is_some() { self.next } else { self.start + Duration::from_secs(1 << 30) }
    }

    fn tick(&mut self, c: &crate::stats::Counters) {
        let Some(prefix) = &self.prefix else { return };
        let now = Instant::now();
        if now < self.next {
            return;
        }
        let logins = c.logins.load(Ordering::Relaxed);
        eprintln!("{}", progress_line(c, prefix, now - self.start, logins - self.last_logins));
        self.last_logins = logins;
        self.next += Duration::from_secs(1);
        if self.next <= now {
            self.next = now + Duration::from_secs(1);
        }
    }
}
