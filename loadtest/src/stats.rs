//! Shared counters of one process's bots, failure kinds, latency percentiles, and the raw
//! sample files that let a coordinator merge percentiles exactly.

use std::path::Path;
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

/// Counters shared by all bots of a process (atomics; latency samples behind mutexes that are
/// taken once per login and once per probe delivery).
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
    /// Deliver frames received (probes or not).
    pub deliveries: AtomicU64,
    /// Probe deliveries stamped later than their receipt (the sender's clock is ahead).
    pub delivery_clock_skew: AtomicU64,
    failures: [AtomicU64; FailKind::ALL.len()],
    samples_us: Mutex<Vec<u32>>,
    delivery_samples_us: Mutex<Vec<u32>>,
    /// Per probe message (its send stamp): the latest delivery to any of this process's bots.
    probe_last_us: Mutex<std::collections::BTreeMap<u64, u32>>,
    /// Per probe message: the earliest delivery to any of this process's bots.
    probe_first_us: Mutex<std::collections::BTreeMap<u64, u32>>,
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
        push_sample(&self.samples_us, us);
    }

    /// Records one probe delivery latency (sender's stamp to receipt, wall clocks).
    pub fn delivery_latency_us(&self, us: u64) {
        push_sample(&self.delivery_samples_us, us);
    }

    /// Notes one delivery of the probe stamped `sent`, `us` after it was sent.
    pub fn probe_delivered(&self, sent: u64, us: u64) {
        let us = u32::try_from(us).unwrap_or(u32::MAX);
        if let Ok(mut m) = self.probe_last_us.lock() {
            let slot = m.entry(sent).or_default();
            *slot = (*slot).max(us);
        }
        if let Ok(mut m) = self.probe_first_us.lock() {
            let slot = m.entry(sent).or_insert(u32::MAX);
            *slot = (*slot).min(us);
        }
    }

    /// Takes the earliest delivery per probe message.
    pub fn take_probe_first(&self) -> std::collections::BTreeMap<u64, u32> {
        self.probe_first_us.lock().map(|mut m| std::mem::take(&mut *m)).unwrap_or_default()
    }

    /// Takes the latest delivery per probe message.
    pub fn take_probe_last(&self) -> std::collections::BTreeMap<u64, u32> {
        self.probe_last_us.lock().map(|mut m| std::mem::take(&mut *m)).unwrap_or_default()
    }

    /// Takes the recorded samples (microseconds) of both latencies.
    pub fn take_samples(&self) -> RawSamples {
        RawSamples {
            login_us: take_all(&self.samples_us),
            delivery_us: take_all(&self.delivery_samples_us),
        }
    }
}

fn take_all(samples: &Mutex<Vec<u32>>) -> Vec<u32> {
    samples.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
}

fn push_sample(samples: &Mutex<Vec<u32>>, us: u64) {
    let us = u32::try_from(us).unwrap_or(u32::MAX);
    if let Ok(mut v) = samples.lock() {
        v.push(us);
    }
}

/// Every latency sample of a run, microseconds (saturated at `u32::MAX`, about 71 minutes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawSamples {
    /// Login latencies.
    pub login_us: Vec<u32>,
    /// Probe delivery latencies.
    pub delivery_us: Vec<u32>,
}

/// Writes samples one per line (decimal microseconds).
pub fn write_samples(path: &Path, samples_us: &[u32]) -> std::io::Result<()> {
    let mut text = String::with_capacity(samples_us.len() * 8);
    for s in samples_us {
        text.push_str(&s.to_string());
        text.push('\n');
    }
    std::fs::write(path, text)
}

/// Reads what [`write_samples`] wrote; lines that are not a number are skipped.
pub fn read_samples(path: &Path) -> std::io::Result<Vec<u32>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()).collect())
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

    /// An upper bound of the percentiles of several processes' samples, from their own
    /// percentiles only: counts add up, each percentile is the largest.
    pub fn upper_bound<'a>(parts: impl IntoIterator<Item = &'a Latency>) -> Latency {
        let mut l = Latency::default();
        for x in parts {
            l.n += x.n;
            l.p50_ms = l.p50_ms.max(x.p50_ms);
            l.p99_ms = l.p99_ms.max(x.p99_ms);
            l.p999_ms = l.p999_ms.max(x.p999_ms);
            l.max_ms = l.max_ms.max(x.max_ms);
        }
        l
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
    fn samples_are_kept_apart_and_round_trip_through_files() {
        let c = Counters::default();
        c.login_latency_us(5);
        c.delivery_latency_us(7);
        c.delivery_latency_us(u64::MAX);
        let s = c.take_samples();
        assert_eq!(s, RawSamples { login_us: vec![5], delivery_us: vec![7, u32::MAX] });
        assert_eq!(c.take_samples(), RawSamples::default());

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("d.samples");
        assert!(write_samples(&path, &s.delivery_us).is_ok());
        assert_eq!(read_samples(&path).ok(), Some(s.delivery_us));
        assert!(read_samples(&dir.path().join("missing")).is_err());
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
