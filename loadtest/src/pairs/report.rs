//! The `pairs` report: [`PairsReport`] (JSON for machines, a table for people), with latency
//! percentiles in microseconds and CPU time per 100k messages.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::percentile;

/// Sends later than this against their schedule count as late.
pub const LATE_SEND_US: u32 = 1000;

/// Latency percentiles in microseconds (nearest rank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyUs {
    /// Number of samples.
    pub n: u64,
    /// Median.
    pub p50: u32,
    /// 99th percentile.
    pub p99: u32,
    /// 99.9th percentile.
    pub p999: u32,
    /// Largest sample.
    pub max: u32,
}

impl LatencyUs {
    /// Percentiles of `samples` (sorted in place).
    pub fn from_samples(samples: &mut [u32]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| percentile(samples, q).unwrap_or(0);
        Self { n: samples.len() as u64, p50: at(0.5), p99: at(0.99), p999: at(0.999), max: at(1.0) }
    }
}

/// CPU time of one server process over the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessCpu {
    /// Process id.
    pub pid: u32,
    /// utime + stime over the window, seconds (`None`: /proc/PID/stat was not readable).
    pub cpu_secs: Option<f64>,
}

/// CPU over the measured window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuReport {
    /// Clock ticks per second of /proc times (`sysconf(_SC_CLK_TCK)`).
    pub clock_ticks_per_sec: u64,
    /// Per `--server-pid`.
    pub servers: Vec<ProcessCpu>,
    /// Sum over the server processes, seconds.
    pub server_cpu_secs: f64,
    /// Server CPU seconds per 100,000 messages persisted (acked) in the window.
    pub server_cpu_secs_per_100k: Option<f64>,
    /// Server CPU seconds per 100,000 deliveries (first copies) in the window.
    pub server_cpu_secs_per_100k_deliveries: Option<f64>,
    /// This load generator's own CPU, seconds.
    pub loadgen_cpu_secs: f64,
    /// The same per 100,000 messages acked in the window.
    pub loadgen_cpu_secs_per_100k: Option<f64>,
    /// Cores of the machine.
    pub cores: usize,
    /// Busy fraction of all cores over the window (/proc/stat), 0 to 1.
    pub machine_busy_fraction: Option<f64>,
}

/// Everything one `pairs` run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairsReport {
    /// `rate` (open loop) or `window` (saturation).
    pub mode: String,
    /// Whether receivers sent DELIVERED receipts.
    pub receipts: bool,
    /// Sender→receiver pairs, or groups with `group_size`.
    pub pairs: u64,
    /// Members per group (0: 1:1 pairs).
    pub group_size: u64,
    /// Groups: whether members also sent READ receipts.
    pub read_receipts: bool,
    /// Groups: a member's minimum time between two receipts of one kind, seconds.
    pub receipt_interval_secs: Option<f64>,
    /// Body bytes per message.
    pub body_bytes: u64,
    /// Target messages per second in all (0 in saturation).
    pub target_rate: f64,
    /// Sends in flight per pair at most.
    pub window: u64,
    /// Warm-up before the window, seconds.
    pub warmup_secs: f64,
    /// Length of the measured window, seconds.
    pub window_secs: f64,
    /// Sends written (whole run).
    pub sent: u64,
    /// SendAcks (whole run).
    pub acked: u64,
    /// Acks marked duplicate (expected 0).
    pub duplicate_acks: u64,
    /// Sends refused, by error code.
    pub send_errors: BTreeMap<String, u64>,
    /// Distinct messages delivered to their receivers (whole run).
    pub delivered: u64,
    /// Acked messages never delivered by the end of the drain.
    pub undelivered: u64,
    /// Second copies of a message.
    pub duplicate_deliveries: u64,
    /// Delivers of other runs or bodies.
    pub foreign_deliveries: u64,
    /// Delivers that reached the wrong receiver.
    pub misrouted_deliveries: u64,
    /// Receipts sent.
    pub receipts_sent: u64,
    /// Receipts answered.
    pub receipt_answers: u64,
    /// Receipts refused, by error code.
    pub receipt_errors: BTreeMap<String, u64>,
    /// ReceiptUpdate pushes received (pairs: the senders; groups: every member).
    pub receipt_pushes: u64,
    /// READ receipts among `receipts_sent`.
    pub read_receipts_sent: u64,
    /// Group events delivered (the CREATED of each group to its members).
    pub group_events: u64,
    /// Pings sent / pongs received.
    pub pings: u64,
    /// Pongs received.
    pub pongs: u64,
    /// Frames nobody asked for, by kind.
    pub other_frames: BTreeMap<String, u64>,
    /// RegisterPush requests answered Ok (`--register-push`).
    pub push_registrations: u64,
    /// Failed connections, by kind.
    pub failures: BTreeMap<String, u64>,
    /// Sends in the window.
    pub window_sent: u64,
    /// Acks in the window.
    pub window_acked: u64,
    /// First deliveries in the window.
    pub window_delivered: u64,
    /// Receipts sent in the window.
    pub window_receipts: u64,
    /// ReceiptUpdate pushes received in the window.
    pub window_receipt_pushes: u64,
    /// Receipts sent per second over the window.
    pub receipts_per_sec: f64,
    /// ReceiptUpdate pushes received per second over the window.
    pub receipt_pushes_per_sec: f64,
    /// Sends per second over the window.
    pub sent_per_sec: f64,
    /// Persisted (acked) messages per second over the window.
    pub persisted_per_sec: f64,
    /// Delivered messages per second over the window.
    pub delivered_per_sec: f64,
    /// Send→ack latency of the messages sent in the window.
    pub ack_latency_us: LatencyUs,
    /// Send→deliver latency of the messages sent in the window (groups: every delivery).
    pub deliver_latency_us: LatencyUs,
    /// Groups: send→deliver to the last member of the group, per message sent in the window.
    pub deliver_last_latency_us: Option<LatencyUs>,
    /// Open loop: how late sends of the window went out against their schedule.
    pub schedule_lag_us: Option<LatencyUs>,
    /// Open loop: sends of the window later than 1 ms.
    pub late_sends: u64,
    /// Open loop: false when the client could not keep its schedule (more than 1 % of the
    /// window's sends late, or fewer than 95 % of the scheduled ones sent).
    pub kept_up: bool,
    /// CPU over the window.
    pub cpu: CpuReport,
    /// Whole run, seconds.
    pub duration_secs: f64,
    /// Whether every ack, delivery and receipt answer arrived before the drain ran out.
    pub drained: bool,
    /// Whether `--max-duration` cut the run short.
    pub hit_max_duration: bool,
}

impl PairsReport {
    /// Failed connections of every kind.
    pub fn failures_total(&self) -> u64 {
        self.failures.values().sum()
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<30} {v}");
        };
        let load = if self.mode == "rate" {
            format!("{:.0} msg/s open loop (window cap {})", self.target_rate, self.window)
        } else {
            format!("saturation, {} in flight per pair", self.window)
        };
        let receipts = match (self.receipts, self.read_receipts) {
            (false, _) => "no receipts".to_owned(),
            (true, false) => "with receipts".to_owned(),
            (true, true) => "with DELIVERED and READ receipts".to_owned(),
        };
        let who = if self.group_size > 0 {
            format!("{} groups of {}", self.pairs, self.group_size)
        } else {
            format!("{} pairs", self.pairs)
        };
        row("load", format!("{load}, {who}, {} B bodies, {receipts}", self.body_bytes));
        row("window", format!("{:.2} s after {:.2} s warm-up", self.window_secs, self.warmup_secs));
        row("send -> ack", us_cell(&self.ack_latency_us));
        row("send -> deliver", us_cell(&self.deliver_latency_us));
        if let Some(last) = &self.deliver_last_latency_us {
            row("send -> last member", us_cell(last));
        }
        row("persisted (acks)", format!("{:.0} msg/s", self.persisted_per_sec));
        row("delivered", format!("{:.0} msg/s", self.delivered_per_sec));
        row("sent", format!("{:.0} msg/s", self.sent_per_sec));
        row(
            "receipt rate",
            format!(
                "{:.0} sent/s, {:.0} pushes received/s",
                self.receipts_per_sec, self.receipt_pushes_per_sec
            ),
        );
        let c = &self.cpu;
        row(
            "server CPU",
            format!(
                "{} CPU-s per 100k msgs, {} per 100k deliveries ({:.2} CPU-s over {} process(es))",
                per_100k(c.server_cpu_secs_per_100k),
                per_100k(c.server_cpu_secs_per_100k_deliveries),
                c.server_cpu_secs,
                c.servers.len()
            ),
        );
        row(
            "load generator CPU",
            format!(
                "{} CPU-s per 100k msgs ({:.2} CPU-s)",
                per_100k(c.loadgen_cpu_secs_per_100k),
                c.loadgen_cpu_secs
            ),
        );
        row(
            "machine busy",
            c.machine_busy_fraction.map_or("?".into(), |f| {
                format!("{:.0} % of {} cores ({:.2} cores)", f * 100.0, c.cores, f * c.cores as f64)
            }),
        );
        if let Some(lag) = &self.schedule_lag_us {
            row("schedule lag", us_cell(lag));
            row("late sends (> 1 ms)", self.late_sends.to_string());
        }
        if !self.kept_up {
            row("WARNING", "the load generator did not keep its schedule: figures are low".into());
        }
        row(
            "whole run",
            format!(
                "sent {} acked {} delivered {} undelivered {} dup acks {} dup delivers {}",
                self.sent,
                self.acked,
                self.delivered,
                self.undelivered,
                self.duplicate_acks,
                self.duplicate_deliveries
            ),
        );
        row(
            "receipts",
            format!(
                "sent {} (READ {}) answered {} errors {} (pushes received {})",
                self.receipts_sent,
                self.read_receipts_sent,
                self.receipt_answers,
                map_cell(&self.receipt_errors),
                self.receipt_pushes
            ),
        );
        if self.group_size > 0 {
            row("group events", format!("{} delivered (ignored)", self.group_events));
        }
        if self.push_registrations > 0 {
            row("push registrations", self.push_registrations.to_string());
        }
        row("send errors", map_cell(&self.send_errors));
        row("connection failures", map_cell(&self.failures));
        if self.foreign_deliveries + self.misrouted_deliveries > 0 || !self.other_frames.is_empty()
        {
            row(
                "odd frames",
                format!(
                    "foreign {} misrouted {} other {}",
                    self.foreign_deliveries,
                    self.misrouted_deliveries,
                    map_cell(&self.other_frames)
                ),
            );
        }
        row("duration", format!("{:.2} s", self.duration_secs));
        if !self.drained {
            row("WARNING", "the drain ran out: some answers never came".into());
        }
        if self.hit_max_duration {
            row("stopped by", "--max-duration".into());
        }
        t
    }
}

fn us_cell(l: &LatencyUs) -> String {
    format!(
        "p50 {} us  p99 {} us  p99.9 {} us  max {} us  (n={})",
        l.p50, l.p99, l.p999, l.max, l.n
    )
}

fn per_100k(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| format!("{v:.2}"))
}

fn map_cell(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "0".into();
    }
    m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// `secs` per 100,000 of `n` messages (`None` when there were none).
pub fn cpu_per_100k(secs: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| secs * 100_000.0 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_microseconds_and_cpu_per_100k() {
        let mut v: Vec<u32> = (1..=1000).rev().collect();
        let l = LatencyUs::from_samples(&mut v);
        assert_eq!(l, LatencyUs { n: 1000, p50: 500, p99: 990, p999: 999, max: 1000 });
        assert_eq!(LatencyUs::from_samples(&mut []), LatencyUs::default());
        assert_eq!(cpu_per_100k(2.0, 50_000), Some(4.0));
        assert_eq!(cpu_per_100k(2.0, 0), None);
    }

    #[test]
    fn report_round_trips_and_renders_its_warnings() {
        let r = PairsReport {
            mode: "rate".into(),
            pairs: 2,
            schedule_lag_us: Some(LatencyUs::default()),
            kept_up: false,
            drained: false,
            send_errors: [("RATE_LIMITED".to_owned(), 3)].into_iter().collect(),
            ..PairsReport::default()
        };
        let text = serde_json::to_string(&r).unwrap_or_default();
        let back: Option<PairsReport> = serde_json::from_str(&text).ok();
        assert_eq!(back.as_ref(), Some(&r));
        let table = r.table();
        assert!(table.contains("RATE_LIMITED=3"), "{table}");
        assert!(table.contains("did not keep its schedule"), "{table}");
        assert!(table.contains("drain ran out"), "{table}");
        assert!(table.contains("schedule lag"), "{table}");
    }
}
