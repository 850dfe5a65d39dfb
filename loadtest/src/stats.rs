//! Shared counters of one process's bots, failure kinds, and latency percentiles.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Why a bot's connection failed. Each kind has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The TCP connect failed (refused, no route, out of ports...).
    Connect,
    /// Connect or login did not finish within `--login-timeout`.
    LoginTimeout,
    /// The server answered the Login with an Error.
    LoginRejected,
    /// The server sent Kick.
    Kicked,
    /// The server sent a fatal Error after login.
    ServerError,
    /// The server closed the connection without a Kick.
    Closed,
    /// The server sent bytes that are not a valid frame, or an unexpected frame.
    Protocol,
    /// A read or write failed.
    Io,
}

impl FailKind {
    /// Every kind, in report order.
    pub const ALL: [FailKind; 8] = [
        FailKind::Connect,
        FailKind::LoginTimeout,
        FailKind::LoginRejected,
        FailKind::Kicked,
        FailKind::ServerError,
        FailKind::Closed,
        FailKind::Protocol,
        FailKind::Io,
    ];

    /// Name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FailKind::Connect => "connect",
            FailKind::LoginTimeout => "login_timeout",
            FailKind::LoginRejected => "login_rejected",
            FailKind::Kicked => "kicked",
            FailKind::ServerError => "server_error",
            FailKind::Closed => "closed",
            FailKind::Protocol => "protocol",
            FailKind::Io => "io",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters shared by all bots of a process (atomics; latency samples behind a mutex that is
/// taken once per login).
#[derive(Debug, Default)]
pub struct Counters {
    /// Sockets open now.
    pub connected: AtomicU64,
    /// Sessions logged in now.
    pub logged_in: AtomicU64,
    /// Successful logins so far (including churn reconnects).
    pub logins: AtomicU64,
    /// Bots whose first login attempt finished (either way): the ramp ends when this reaches
    /// the bot count.
    pub first_attempts_done: AtomicU64,
    /// Churn reconnects started.
    pub reconnects: AtomicU64,
    /// Pings sent.
    pub pings: AtomicU64,
    /// Pongs received.
    pub pongs: AtomicU64,
    failures: [AtomicU64; FailKind::ALL.len()],
    samples_us: Mutex<Vec<u32>>,
}

impl Counters {
    /// Counts one failure.
    pub fn fail(&self, kind: FailKind) {
        self.failures[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Failures of `kind` so far.
    pub fn failures(&self, kind: FailKind) -> u64 {
        self.failures[kind.index()].load(Ordering::Relaxed)
    }

    /// All failures so far.
    pub fn failures_total(&self) -> u64 {
        FailKind::ALL.iter().map(|k| self.failures(*k)).sum()
    }

    /// Records one login latency.
    pub fn login_latency_us(&self, us: u64) {
        let us = u32::try_from(us).unwrap_or(u32::MAX);
        if let Ok(mut v) = self.samples_us.lock() {
            v.push(us);
        }
    }

    /// Takes the recorded latency samples (microseconds).
    pub fn take_samples(&self) -> Vec<u32> {
        self.samples_us.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Number of samples.
    pub n: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `samples_us` (sorted in place).
    pub fn from_samples(samples_us: &mut [u32]) -> Latency {
        samples_us.sort_unstable();
        let ms = |q: f64| percentile(samples_us, q).map_or(0.0, |us| f64::from(us) / 1000.0);
        Latency {
            n: samples_us.len() as u64,
            p50_ms: ms(0.50),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: ms(1.0),
        }
    }
}

/// Nearest-rank percentile of an ascending slice: the smallest sample with at least `q` of
/// the samples at or below it. `None` for no samples.
pub fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    sorted.get(rank.clamp(1, n) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), Some(500));
        assert_eq!(percentile(&v, 0.99), Some(990));
        assert_eq!(percentile(&v, 0.999), Some(999));
        assert_eq!(percentile(&v, 1.0), Some(1000));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.999), Some(7));
    }

    #[test]
    fn latency_sorts_and_converts_to_ms() {
        let mut v = vec![3000, 1000, 2000];
        let l = Latency::from_samples(&mut v);
        assert_eq!(l.n, 3);
        assert_eq!(l.p50_ms, 2.0);
        assert_eq!(l.max_ms, 3.0);
        assert_eq!(Latency::from_samples(&mut []), Latency::default());
    }

    #[test]
    fn failures_count_by_kind() {
        let c = Counters::default();
        c.fail(FailKind::Closed);
        c.fail(FailKind::Closed);
        c.fail(FailKind::Io);
        assert_eq!(c.failures(FailKind::Closed), 2);
        assert_eq!(c.failures_total(), 3);
    }
}
