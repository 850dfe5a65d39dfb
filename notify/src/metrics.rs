//! Notifier counters, rendered in Prometheus text format (like `tern_dispatch`'s).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::notification::Provider;

/// Counters of one provider.
#[derive(Debug, Default)]
pub struct ProviderMetrics {
    /// Pushes the provider accepted.
    pub sent: AtomicU64,
    /// Pushes given up on (refused, or retries used up).
    pub failed: AtomicU64,
    /// Attempts repeated after a timeout, connection error, 429 or 5xx.
    pub retries: AtomicU64,
    /// Tokens the provider reported invalid (each reported to the callback once).
    pub invalid_tokens: AtomicU64,
    /// Pushes dropped because the provider's queue was full (a slow or failing provider).
    pub dropped_full: AtomicU64,
    /// Pushes dropped because the provider is not configured.
    pub dropped_unconfigured: AtomicU64,
    /// Pushes dropped because their token was already reported invalid.
    pub dropped_invalid: AtomicU64,
}

/// Notifier counters. All updates are relaxed atomics.
#[derive(Debug, Default)]
pub struct NotifyMetrics {
    /// Notifications accepted by `enqueue`.
    pub enqueued: AtomicU64,
    /// Notifications not sent by the mute rule.
    pub suppressed_muted: AtomicU64,
    /// Notifications not sent because the member sent the message.
    pub suppressed_own: AtomicU64,
    /// Notifications dropped because the intake queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Notifications dropped because the notifier was shut down.
    pub dropped_closed: AtomicU64,
    /// Notifications merged into a burst instead of being sent alone.
    pub coalesced: AtomicU64,
    /// Notifications sent without coalescing because the window table was full.
    pub coalesce_untracked: AtomicU64,
    per_provider: [ProviderMetrics; 3],
}

impl NotifyMetrics {
    /// The counters of `provider`.
    pub fn provider(&self, provider: Provider) -> &ProviderMetrics {
        &self.per_provider[provider.index()]
    }

    /// Appends every metric to `out` in Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &AtomicU64); 3] = [
            ("tern_notify_enqueued_total", "Notifications accepted for push.", &self.enqueued),
            (
                "tern_notify_coalesced_total",
                "Notifications merged into a burst instead of sent alone.",
                &self.coalesced,
            ),
            (
                "tern_notify_coalesce_untracked_total",
                "Notifications sent without coalescing because the window table was full.",
                &self.coalesce_untracked,
            ),
        ];
        for (name, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let name = "tern_notify_suppressed_total";
        let _ = writeln!(
            out,
            "# HELP {name} Notifications the mute rule did not send.\n# TYPE {name} counter"
        );
        let _ = writeln!(out, "{name}{{reason=\"muted\"}} {}", self.suppressed_muted.load(Relaxed));
        let _ =
            writeln!(out, "{name}{{reason=\"own_message\"}} {}", self.suppressed_own.load(Relaxed));

        let name = "tern_notify_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} Notifications dropped before reaching a provider.\n# TYPE {name} counter"
        );
        let _ = writeln!(
            out,
            "{name}{{provider=\"\",reason=\"queue_full\"}} {}",
            self.dropped_queue_full.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "{name}{{provider=\"\",reason=\"closed\"}} {}",
            self.dropped_closed.load(Relaxed)
        );
        for p in Provider::ALL {
            let m = self.provider(p);
            for (reason, v) in [
                ("provider_full", &m.dropped_full),
                ("unconfigured", &m.dropped_unconfigured),
                ("invalid_token", &m.dropped_invalid),
            ] {
                let _ = writeln!(
                    out,
                    "{name}{{provider=\"{}\",reason=\"{reason}\"}} {}",
                    p.as_str(),
                    v.load(Relaxed)
                );
            }
        }

        type Field = fn(&ProviderMetrics) -> &AtomicU64;
        let rows: [(&str, &str, Field); 4] = [
            ("tern_notify_sent_total", "Pushes the provider accepted.", |m| &m.sent),
            (
                "tern_notify_failed_total",
                "Pushes given up on (refused, or retries used up).",
                |m| &m.failed,
            ),
            ("tern_notify_retries_total", "Attempts repeated after a transient failure.", |m| {
                &m.retries
            }),
            (
                "tern_notify_invalid_tokens_total",
                "Device tokens the provider reported invalid.",
                |m| &m.invalid_tokens,
            ),
        ];
        for (name, help, field) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for p in Provider::ALL {
                let v = field(self.provider(p)).load(Relaxed);
                let _ = writeln!(out, "{name}{{provider=\"{}\"}} {v}", p.as_str());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_with_its_labels() {
        let m = NotifyMetrics::default();
        m.enqueued.fetch_add(3, Relaxed);
        m.provider(Provider::Fcm).invalid_tokens.fetch_add(1, Relaxed);
        m.provider(Provider::Apns).dropped_full.fetch_add(2, Relaxed);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("\ntern_notify_enqueued_total 3\n"), "{out}");
        assert!(out.contains("tern_notify_invalid_tokens_total{provider=\"fcm\"} 1\n"));
        assert!(
            out.contains(
                "tern_notify_dropped_total{provider=\"apns\",reason=\"provider_full\"} 2\n"
            )
        );
        // Every sample line belongs to a declared metric.
        let declared: Vec<&str> =
            out.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(declared.contains(&name), "{line}");
        }
    }
}
