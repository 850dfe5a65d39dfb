//! Dispatch counters, rendered in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
}

impl DispatchMetrics {
    /// Appends every metric to `out` in Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &AtomicU64); 8] = [
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
        ];
        for (name, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
    }
}
