//! When the commit thread waits for company: never at low load, a bounded moment under load.
//!
//! A group costs one fsync whatever its size, so under load it pays to let a group gather a
//! little longer; at low load it never does (a message alone is committed at once). The rule:
//! wait up to `delay` after the first waiting request only when the recent arrival rate
//! predicts at least [`EXPECTED_COMPANY`] more requests within that `delay`. The added latency
//! is therefore bounded by `delay` (default 250 µs), and is zero below `EXPECTED_COMPANY /
//! delay` requests per second (2,000/s with the defaults). Sans clock: callers pass `now`.

use std::time::{Duration, Instant};

/// Requests expected within `delay` for a wait to pay off (half a request: a wait that finds
/// company half the time halves the fsyncs of those groups).
pub const EXPECTED_COMPANY: f64 = 0.5;

/// How often the arrival rate estimate is refreshed.
const WINDOW: Duration = Duration::from_millis(100);

/// The arrival-rate estimate and the wait rule.
#[derive(Debug, Clone)]
pub struct Batching {
    delay: Duration,
    /// Requests per second over the last full window (smoothed).
    rate: f64,
    window_start: Instant,
    window_jobs: u64,
}

impl Batching {
    /// A rule that waits at most `delay` (zero: never).
    pub fn new(delay: Duration, now: Instant) -> Self {
        Self { delay, rate: 0.0, window_start: now, window_jobs: 0 }
    }

    /// `n` requests were taken for a group at `now`.
    pub fn taken(&mut self, n: usize, now: Instant) {
        self.window_jobs += n as u64;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW {
            let current = self.window_jobs as f64 / elapsed.as_secs_f64();
            // Half old, half new: follows a change of load within a few windows.
            self.rate = if self.rate == 0.0 { current } else { (self.rate + current) / 2.0 };
            self.window_start = now;
            self.window_jobs = 0;
        }
    }

    /// How long after the first waiting request's arrival a group should wait for more, given
    /// `queued` waiting and room for `max`: `None` to commit now.
    pub fn wait(&self, queued: usize, max: usize) -> Option<Duration> {
        let expected = self.rate * self.delay.as_secs_f64();
        (queued < max && !self.delay.is_zero() && expected >= EXPECTED_COMPANY)
            .then_some(self.delay)
    }

    /// The current arrival-rate estimate, requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// Feeds `per_sec` arrivals per second, one group per arrival, for one second.
    fn run(b: &mut Batching, start: Instant, per_sec: u64) -> Instant {
        let step = Duration::from_secs(1) / per_sec as u32;
        let mut now = start;
        for _ in 0..per_sec {
            now += step;
            b.taken(1, now);
        }
        now
    }

    #[test]
    fn low_load_never_waits() {
        let t0 = Instant::now();
        let mut b = Batching::new(250 * US, t0);
        assert_eq!(b.wait(1, 512), None, "no estimate yet");
        run(&mut b, t0, 1000);
        assert!((b.rate() - 1000.0).abs() < 50.0, "{}", b.rate());
        assert_eq!(b.wait(1, 512), None, "1,000/s expects 0.25 more in 250 us");
    }

    #[test]
    fn load_waits_at_most_the_delay_and_not_when_full() {
        let t0 = Instant::now();
        let mut b = Batching::new(250 * US, t0);
        let t1 = run(&mut b, t0, 4000);
        assert_eq!(b.wait(1, 512), Some(250 * US));
        assert_eq!(b.wait(512, 512), None, "a full group goes at once");
        // The load goes away: within a few windows the rule stops waiting.
        let mut now = t1;
        for _ in 0..8 {
            now += WINDOW;
            b.taken(1, now);
        }
        assert_eq!(b.wait(1, 512), None, "rate {}", b.rate());
    }

    #[test]
    fn zero_delay_never_waits() {
        let t0 = Instant::now();
        let mut b = Batching::new(Duration::ZERO, t0);
        run(&mut b, t0, 100_000);
        assert_eq!(b.wait(1, 512), None);
    }
}
