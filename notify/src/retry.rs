//! What one attempt's answer means, and when (if ever) to try again: pure, clock-free.

use std::time::Duration;

use crate::config::ProviderLimits;

/// How one delivery attempt ended, as each provider module classifies its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the provider.
    Delivered,
    /// The provider says the token will never work again (unregister it).
    InvalidToken {
        /// The provider's reason, for logs.
        reason: String,
    },
    /// Worth another try (timeouts, connection errors, 429, 5xx).
    Retryable {
        /// What went wrong, for logs.
        reason: String,
        /// The provider's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// Will not work on a retry either (our request or credentials were refused).
    Failed {
        /// What went wrong, for logs.
        reason: String,
    },
}

/// Bounded exponential backoff with half-random ("equal") jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts, the first included; at least 1.
    pub max_attempts: u32,
    /// Wait before the first retry, before jitter.
    pub base: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl RetryPolicy {
    /// The policy of a provider's limits.
    pub fn of(limits: &ProviderLimits) -> Self {
        Self {
            max_attempts: limits.max_attempts,
            base: limits.backoff_base,
            max: limits.backoff_max,
        }
    }

    /// After attempt number `attempt` (1 for the first) failed retryably: how long to wait
    /// before the next, or `None` to give up. The wait is `base · 2^(attempt-1)`, capped at
    /// `max`, of which the upper half is scaled by `jitter` (in `[0, 1]`, the caller's random
    /// number). A `retry_after` longer than that is honoured, and one longer than `max` gives
    /// up: a worker is not held for minutes.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts.max(1) {
            return None;
        }
        let doublings = attempt.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1 << doublings).min(self.max);
        let half = full / 2;
        let wait = half + half.mul_f64(jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(asked) if asked > self.max => None,
            Some(asked) => Some(wait.max(asked)),
            None => Some(wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };

    #[test]
    fn doubles_up_to_the_cap_then_gives_up() {
        let waits: Vec<_> = (1..=5).map(|a| P.delay(a, None, 1.0)).collect();
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(800), None]);
        let p = RetryPolicy { max_attempts: 10, ..P };
        assert_eq!(p.delay(6, None, 1.0), ms(1_000));
        assert_eq!(p.delay(9, None, 1.0), ms(1_000));
    }

    #[test]
    fn jitter_spans_the_upper_half() {
        assert_eq!(P.delay(2, None, 0.0), Some(Duration::from_millis(100)));
        assert_eq!(P.delay(2, None, 0.5), Some(Duration::from_millis(150)));
        assert_eq!(P.delay(2, None, 7.0), Some(Duration::from_millis(200)));
    }

    #[test]
    fn retry_after_is_honoured_within_the_cap() {
        let s = Duration::from_millis;
        assert_eq!(P.delay(1, Some(s(700)), 0.0), Some(s(700)));
        assert_eq!(P.delay(1, Some(s(10)), 0.0), Some(s(50)));
        assert_eq!(P.delay(1, Some(s(5_000)), 0.0), None);
    }

    #[test]
    fn one_attempt_never_retries_and_huge_attempt_numbers_do_not_overflow() {
        let once = RetryPolicy { max_attempts: 1, ..P };
        assert_eq!(once.delay(1, None, 0.5), None);
        let many = RetryPolicy { max_attempts: u32::MAX, ..P };
        assert_eq!(many.delay(u32::MAX - 1, None, 1.0), Some(Duration::from_secs(1)));
    }
}
