//! Dispatch counters, rendered in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the commit-time histogram's buckets: from a fast fdatasync
/// (~0.1 ms) to the stalls a busy or failing disk shows (hundreds of ms).
const COMMIT_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// A fixed-bucket histogram of durations (Prometheus `histogram`), lock-free.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Per bucket (not cumulative): observations at most its bound and above the previous.
    buckets: [AtomicU64; COMMIT_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = COMMIT_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in COMMIT_BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Dispatch counters. All updates are relaxed atomics.
#[derive(Debug, Default)]
pub struct DispatchMetrics {
    /// Messages and events accepted (new, not resends).
    pub accepted: AtomicU64,
    /// Resends answered with the original ack.
    pub duplicates: AtomicU64,
    /// Durable writes (group commits).
    pub commit_batches: AtomicU64,
    /// Requests refused because the send pipeline was full.
    pub pipeline_full: AtomicU64,
    /// Storage failures.
    pub store_errors: AtomicU64,
    /// Requests answered with an error frame.
    pub request_errors: AtomicU64,
    /// Sync pages served.
    pub sync_pages: AtomicU64,
    /// Receipt updates accepted.
    pub receipts: AtomicU64,
    /// Connections kicked by the device class policy (DEVICE_REPLACED).
    pub devices_replaced: AtomicU64,
    /// Logins refused because the device was logged out after the token was issued.
    pub logged_out_refusals: AtomicU64,
    /// How long each group commit took in the store (the durable write: append and fdatasync
    /// embedded, the Lua call with Redis's own fsync): disk stalls show here first.
    pub commit_seconds: DurationHistogram,
}

impl DispatchMetrics {
    /// Appends every metric to `out` in Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &AtomicU64); 10] = [
            (
                "tern_dispatch_accepted_total",
                "Messages and events durably accepted.",
                &self.accepted,
            ),
            (
                "tern_dispatch_duplicate_sends_total",
                "Resends answered with the original ack.",
                &self.duplicates,
            ),
            (
                "tern_dispatch_commit_batches_total",
                "Durable writes (group commits).",
                &self.commit_batches,
            ),
            (
                "tern_dispatch_pipeline_full_total",
                "Sends refused because the pipeline was full.",
                &self.pipeline_full,
            ),
            ("tern_dispatch_store_errors_total", "Storage failures.", &self.store_errors),
            (
                "tern_dispatch_request_errors_total",
                "Requests answered with an error frame.",
                &self.request_errors,
            ),
            ("tern_dispatch_sync_pages_total", "Sync pages served.", &self.sync_pages),
            ("tern_dispatch_receipts_total", "Receipt updates accepted.", &self.receipts),
            (
                "tern_dispatch_devices_replaced_total",
                "Connections kicked by the device class policy (DEVICE_REPLACED).",
                &self.devices_replaced,
            ),
            (
                "tern_dispatch_logged_out_refusals_total",
                "Logins and check-ins refused: the device was logged out after its token.",
                &self.logged_out_refusals,
            ),
        ];
        for (name, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        self.commit_seconds.render(
            out,
            "tern_dispatch_commit_seconds",
            "Time each group commit spent in the store (its durable write).",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_histogram_is_cumulative_and_counts_everything() {
        let m = DispatchMetrics::default();
        for us in [30, 80, 80, 700, 400_000, 9_000_000] {
            m.commit_seconds.observe(Duration::from_micros(us));
        }
        let mut out = String::new();
        m.render(&mut out);
        let value = |series: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{series} missing in\n{out}"))
                .to_string()
        };
        assert_eq!(value("tern_dispatch_commit_seconds_bucket{le=\"0.00005\"}"), "1");
        assert_eq!(value("tern_dispatch_commit_seconds_bucket{le=\"0.0001\"}"), "3");
        assert_eq!(value("tern_dispatch_commit_seconds_bucket{le=\"0.001\"}"), "4");
        assert_eq!(value("tern_dispatch_commit_seconds_bucket{le=\"0.25\"}"), "4");
        assert_eq!(value("tern_dispatch_commit_seconds_bucket{le=\"1\"}"), "5");
        assert_eq!(value("tern_dispatch_commit_seconds_bucket{le=\"5\"}"), "5");
        assert_eq!(value("tern_dispatch_commit_seconds_bucket{le=\"+Inf\"}"), "6");
        assert_eq!(value("tern_dispatch_commit_seconds_count"), "6");
        let sum: f64 = value("tern_dispatch_commit_seconds_sum").parse().unwrap();
        assert!((sum - 9.40089).abs() < 1e-9, "{sum}");
        assert!(out.contains("# TYPE tern_dispatch_commit_seconds histogram"));
    }
}
