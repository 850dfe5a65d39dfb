//! The final report of a run: JSON for machines, a table for people, and merging of the
//! reports of several processes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::Latency;
use crate::sys::TcpMem;

/// Memory of one gateway process before and after the ramp.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayMem {
    /// Process id.
    pub pid: u32,
    /// VmRSS before the ramp, bytes.
    pub rss_before: Option<u64>,
    /// VmRSS when the ramp ended (every bot logged in or failed), bytes.
    pub rss_after: Option<u64>,
    /// (after − before) / logged-in connections at that moment.
    pub bytes_per_conn: Option<f64>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Processes whose bots this report covers (1 for `bots`).
    pub procs: u64,
    /// Bots started.
    pub bots: u64,
    /// Bots logged in when the ramp ended.
    pub logged_in_at_ramp_end: u64,
    /// Bots logged in when the hold ended.
    pub logged_in_at_end: u64,
    /// Successful logins, reconnects included.
    pub logins: u64,
    /// Churn reconnects started.
    pub reconnects: u64,
    /// Seconds from the first bot's start to the ramp's end (all first attempts done).
    pub ramp_secs: f64,
    /// Logins during the ramp per second of ramp.
    pub logins_per_sec: f64,
    /// Login latency (connect + Login → LoginOk).
    pub login_latency: Latency,
    /// How `login_latency` was computed: `exact` (from all samples) or `approx-max` (the
    /// largest of each process's percentile: an upper bound).
    pub latency_merge: String,
    /// Failures by kind (only kinds that happened).
    pub failures: BTreeMap<String, u64>,
    /// Pings sent.
    pub pings: u64,
    /// Pongs received.
    pub pongs: u64,
    /// Whole run, seconds.
    pub duration_secs: f64,
    /// Whether `--max-duration` cut the run short.
    pub hit_max_duration: bool,
    /// Gateway memory, per `--gateway-pid`.
    pub gateways: Vec<GatewayMem>,
    /// Kernel TCP memory before the ramp.
    pub tcp_before: Option<TcpMem>,
    /// Kernel TCP memory when the ramp ended.
    pub tcp_after: Option<TcpMem>,
}

impl Report {
    /// Failures of every kind together.
    pub fn failures_total(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Merges the reports of processes that ran at the same time. Counts add up; the ramp
    /// takes the longest; latency comes from `samples_us` when given (exact), else from the
    /// largest of each report's percentiles (an upper bound, marked `approx-max`). Gateway and
    /// kernel memory are left for the caller, who reads them once for all processes.
    pub fn merge(reports: &[Report], samples_us: Option<&mut [u32]>) -> Report {
        let mut m = Report { latency_merge: "exact".into(), ..Report::default() };
        for r in reports {
            m.procs += r.procs;
            m.bots += r.bots;
            m.logged_in_at_ramp_end += r.logged_in_at_ramp_end;
            m.logged_in_at_end += r.logged_in_at_end;
            m.logins += r.logins;
            m.reconnects += r.reconnects;
            m.pings += r.pings;
            m.pongs += r.pongs;
            m.ramp_secs = m.ramp_secs.max(r.ramp_secs);
            m.duration_secs = m.duration_secs.max(r.duration_secs);
            m.hit_max_duration |= r.hit_max_duration;
            for (k, v) in &r.failures {
                *m.failures.entry(k.clone()).or_default() += v;
            }
        }
        m.logins_per_sec = rate(m.logged_in_at_ramp_end, m.ramp_secs);
        match samples_us {
            Some(s) => m.login_latency = Latency::from_samples(s),
            None => {
                m.latency_merge = "approx-max".into();
                let l = &mut m.login_latency;
                for r in reports {
                    let x = &r.login_latency;
                    l.n += x.n;
                    l.p50_ms = l.p50_ms.max(x.p50_ms);
                    l.p99_ms = l.p99_ms.max(x.p99_ms);
                    l.p999_ms = l.p999_ms.max(x.p999_ms);
                    l.max_ms = l.max_ms.max(x.max_ms);
                }
            }
        }
        m
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<26} {v}");
        };
        row("processes", self.procs.to_string());
        row("bots", self.bots.to_string());
        row("logged in at ramp end", self.logged_in_at_ramp_end.to_string());
        row("logged in at end", self.logged_in_at_end.to_string());
        row("logins (incl. reconnects)", self.logins.to_string());
        row("reconnects (churn)", self.reconnects.to_string());
        row("ramp", format!("{:.2} s", self.ramp_secs));
        row("logins/s over the ramp", format!("{:.0}", self.logins_per_sec));
        let l = &self.login_latency;
        row(
            "login latency",
            format!(
                "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={}, {})",
                l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.n, self.latency_merge
            ),
        );
        let failures = if self.failures.is_empty() {
            "0".to_owned()
        } else {
            self.failures.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        };
        row("failures", failures);
        row("pings / pongs", format!("{} / {}", self.pings, self.pongs));
        row("duration", format!("{:.2} s", self.duration_secs));
        if self.hit_max_duration {
            row("stopped by", "--max-duration".into());
        }
        for g in &self.gateways {
            row(
                &format!("gateway {} VmRSS", g.pid),
                format!(
                    "{} -> {}  = {} bytes/conn",
                    mib(g.rss_before),
                    mib(g.rss_after),
                    g.bytes_per_conn.map_or("?".into(), |b| format!("{b:.0}"))
                ),
            );
        }
        if let (Some(b), Some(a)) = (self.tcp_before, self.tcp_after) {
            row(
                "kernel TCP mem",
                format!(
                    "{} -> {} pages ({:.1} MiB -> {:.1} MiB), sockets {} -> {}",
                    b.mem_pages,
                    a.mem_pages,
                    b.mem_bytes as f64 / 1048576.0,
                    a.mem_bytes as f64 / 1048576.0,
                    b.inuse,
                    a.inuse
                ),
            );
        }
        t
    }
}

/// `n / secs`, 0 for an empty interval.
pub fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Bytes per connection from two RSS readings.
pub fn bytes_per_conn(before: Option<u64>, after: Option<u64>, conns: u64) -> Option<f64> {
    let (b, a) = (before?, after?);
    (conns > 0).then(|| (a as f64 - b as f64) / conns as f64)
}

fn mib(b: Option<u64>) -> String {
    b.map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(bots: u64, ramp: f64, p99: f64, failures: &[(&str, u64)]) -> Report {
        Report {
            procs: 1,
            bots,
            logged_in_at_ramp_end: bots,
            logged_in_at_end: bots,
            logins: bots,
            ramp_secs: ramp,
            login_latency: Latency { n: bots, p50_ms: 1.0, p99_ms: p99, p999_ms: p99, max_ms: p99 },
            failures: failures.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            pings: 10,
            pongs: 9,
            duration_secs: ramp + 1.0,
            ..Report::default()
        }
    }

    #[test]
    fn merge_sums_counts_and_bounds_latency_without_samples() {
        let a = child(100, 2.0, 5.0, &[("closed", 1)]);
        let b = child(300, 4.0, 9.0, &[("closed", 2), ("io", 1)]);
        let m = Report::merge(&[a, b], None);
        assert_eq!((m.procs, m.bots, m.logins, m.pings, m.pongs), (2, 400, 400, 20, 18));
        assert_eq!(m.ramp_secs, 4.0);
        assert_eq!(m.logins_per_sec, 100.0);
        assert_eq!(m.failures.get("closed"), Some(&3));
        assert_eq!(m.failures_total(), 4);
        assert_eq!(m.latency_merge, "approx-max");
        assert_eq!((m.login_latency.n, m.login_latency.p99_ms), (400, 9.0));
    }

    #[test]
    fn merge_with_samples_is_exact() {
        let mut samples: Vec<u32> = (1..=200).map(|i| i * 1000).collect();
        let m = Report::merge(
            &[child(100, 1.0, 0.0, &[]), child(100, 1.0, 0.0, &[])],
            Some(&mut samples),
        );
        assert_eq!(m.latency_merge, "exact");
        assert_eq!(m.login_latency.n, 200);
        assert_eq!(m.login_latency.p50_ms, 100.0);
        assert_eq!(m.login_latency.p99_ms, 198.0);
    }

    #[test]
    fn report_round_trips_through_json_and_renders() {
        let r = child(5, 1.0, 2.0, &[]);
        let text = serde_json::to_string(&r).unwrap_or_default();
        let back: Option<Report> = serde_json::from_str(&text).ok();
        assert_eq!(back.as_ref(), Some(&r));
        assert!(r.table().contains("logins/s over the ramp"));
        assert_eq!(bytes_per_conn(Some(1000), Some(3000), 4), Some(500.0));
        assert_eq!(bytes_per_conn(Some(1000), None, 4), None);
        assert_eq!(bytes_per_conn(Some(1000), Some(3000), 0), None);
    }
}
