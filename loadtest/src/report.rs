//! The final reports: [`Report`] of a bots or swarm run (JSON for machines, a table for
//! people, and merging of the reports of several processes) and [`ProbeReport`] of a probe
//! run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::{Latency, RawSamples};
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
    /// Sockets the process gained over the ramp (its share of the connections).
    #[serde(default)]
    pub conns: Option<u64>,
    /// (after − before) / the connections it gained (with one gateway process: the logged-in
    /// connections at that moment).
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
    /// How `login_latency` and `delivery_latency` were computed: `exact` (from all samples)
    /// or `approx-max` (the largest of each process's percentile: an upper bound).
    pub latency_merge: String,
    /// Failures by kind (only kinds that happened).
    pub failures: BTreeMap<String, u64>,
    /// Pings sent.
    pub pings: u64,
    /// Pongs received.
    pub pongs: u64,
    /// Deliver frames received by the bots (every pushed message, probe or not).
    #[serde(default)]
    pub deliveries: u64,
    /// Delivery latency of probe messages (`probe:<unix_nanos>` bodies): the sender's wall
    /// clock at send to the bot's at receipt. Across machines it includes their clock offset.
    #[serde(default)]
    pub delivery_latency: Latency,
    /// Probe messages stamped later than their receipt (the sender's clock runs ahead), left
    /// out of `delivery_latency`.
    #[serde(default)]
    pub delivery_clock_skew: u64,
    /// Per probe message (its send stamp, Unix ns): the latest delivery to any bot, in µs
    /// (the time until the last recipient had it: a group message's fan-out time).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probe_last_us: BTreeMap<u64, u32>,
    /// Percentiles over messages of `probe_last_us` (only meaningful when every recipient
    /// ran in the merged processes, as for a group probe).
    #[serde(default)]
    pub last_delivery_latency: Latency,
    /// Per probe message: the earliest delivery to any bot, in µs (for a group message, the
    /// server's routing time before the first write).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probe_first_us: BTreeMap<u64, u32>,
    /// Percentiles over messages of `probe_first_us`.
    #[serde(default)]
    pub first_delivery_latency: Latency,
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
    /// takes the longest; latencies come from `samples` when given (exact), else from the
    /// largest of each report's percentiles (an upper bound, marked `approx-max`). Gateway and
    /// kernel memory are left for the caller, who reads them once for all processes.
    pub fn merge(reports: &[Report], samples: Option<&mut RawSamples>) -> Report {
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
            m.deliveries += r.deliveries;
            m.delivery_clock_skew += r.delivery_clock_skew;
            for (sent, us) in &r.probe_last_us {
                let slot = m.probe_last_us.entry(*sent).or_default();
                *slot = (*slot).max(*us);
            }
            for (sent, us) in &r.probe_first_us {
                let slot = m.probe_first_us.entry(*sent).or_insert(u32::MAX);
                *slot = (*slot).min(*us);
            }
            m.ramp_secs = m.ramp_secs.max(r.ramp_secs);
            m.duration_secs = m.duration_secs.max(r.duration_secs);
            m.hit_max_duration |= r.hit_max_duration;
            for (k, v) in &r.failures {
                *m.failures.entry(k.clone()).or_default() += v;
            }
        }
        m.logins_per_sec = rate(m.logged_in_at_ramp_end, m.ramp_secs);
        let mut last: Vec<u32> = m.probe_last_us.values().copied().collect();
        m.last_delivery_latency = Latency::from_samples(&mut last);
        let mut first: Vec<u32> = m.probe_first_us.values().copied().collect();
        m.first_delivery_latency = Latency::from_samples(&mut first);
        match samples {
            Some(s) => {
                m.login_latency = Latency::from_samples(&mut s.login_us);
                m.delivery_latency = Latency::from_samples(&mut s.delivery_us);
            }
            None => {
                m.latency_merge = "approx-max".into();
                m.login_latency = Latency::upper_bound(reports.iter().map(|r| &r.login_latency));
                m.delivery_latency =
                    Latency::upper_bound(reports.iter().map(|r| &r.delivery_latency));
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
        row("login latency", latency_cell(&self.login_latency, &self.latency_merge));
        let failures = if self.failures.is_empty() {
            "0".to_owned()
        } else {
            self.failures.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        };
        row("failures", failures);
        row("pings / pongs", format!("{} / {}", self.pings, self.pongs));
        row("deliveries received", self.deliveries.to_string());
        if self.delivery_latency.n > 0 || self.delivery_clock_skew > 0 {
            row("delivery latency", latency_cell(&self.delivery_latency, &self.latency_merge));
        }
        if self.last_delivery_latency.n > 0 {
            let cell = latency_cell(&self.last_delivery_latency, "exact");
            row("last recipient per message", cell);
        }
        if self.first_delivery_latency.n > 0 {
            let cell = latency_cell(&self.first_delivery_latency, "exact");
            row("first recipient per message", cell);
        }
        if self.delivery_clock_skew > 0 {
            row("probes from the future", format!("{} (clock skew)", self.delivery_clock_skew));
        }
        row("duration", format!("{:.2} s", self.duration_secs));
        if self.hit_max_duration {
            row("stopped by", "--max-duration".into());
        }
        if self.gateways.len() > 1 {
            let delta: Option<u64> = self
                .gateways
                .iter()
                .map(|g| Some(g.rss_after?.saturating_sub(g.rss_before?)))
                .sum();
            let per = delta
                .filter(|_| self.logged_in_at_ramp_end > 0)
                .map(|d| d as f64 / self.logged_in_at_ramp_end as f64);
            row(
                "all gateways VmRSS",
                format!(
                    "+{}  = {} bytes/conn (over {} connections)",
                    mib(delta),
                    per.map_or("?".into(), |b| format!("{b:.0}")),
                    self.logged_in_at_ramp_end
                ),
            );
        }
        for g in &self.gateways {
            row(
                &format!("gateway {} VmRSS", g.pid),
                format!(
                    "{} -> {}  = {} bytes/conn{}",
                    mib(g.rss_before),
                    mib(g.rss_after),
                    g.bytes_per_conn.map_or("?".into(), |b| format!("{b:.0}")),
                    g.conns.map_or(String::new(), |c| format!(" (over {c})"))
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

/// Everything one `probe` run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Recipients were picked among this many bot users (per swarm child with `--procs`).
    pub users: u64,
    /// Messages sent (a send was started).
    pub sent: u64,
    /// Messages acknowledged by the server (SendAck).
    pub acked: u64,
    /// Sends that got no ack, by kind (only kinds that happened).
    pub failures: BTreeMap<String, u64>,
    /// Send to SendAck latency.
    pub ack_latency: Latency,
    /// Times the sender's connection dropped (the SDK reconnects and resends).
    pub disconnects: u64,
    /// Whole run, seconds.
    pub duration_secs: f64,
    /// Whether `--max-duration` cut the run short.
    pub hit_max_duration: bool,
}

impl ProbeReport {
    /// Failures of every kind together.
    pub fn failures_total(&self) -> u64 {
        self.failures.values().sum()
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<26} {v}");
        };
        row("recipient users", self.users.to_string());
        row("sent", self.sent.to_string());
        row("acked", self.acked.to_string());
        let failures = if self.failures.is_empty() {
            "0".to_owned()
        } else {
            self.failures.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        };
        row("failures", failures);
        row("send -> ack latency", latency_cell(&self.ack_latency, "exact"));
        row("disconnects", self.disconnects.to_string());
        row("duration", format!("{:.2} s", self.duration_secs));
        if self.hit_max_duration {
            row("stopped by", "--max-duration".into());
        }
        t
    }
}

/// One latency row of a table.
fn latency_cell(l: &Latency, merge: &str) -> String {
    format!(
        "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={}, {merge})",
        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.n
    )
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

    /// The last recipient of a message is the latest over every process; percentiles are over
    /// messages.
    #[test]
    fn merge_takes_the_latest_delivery_per_message_across_processes() {
        let a = Report { probe_last_us: [(1, 900), (2, 100)].into(), ..Report::default() };
        let b = Report { probe_last_us: [(1, 300), (2, 700), (3, 50)].into(), ..Report::default() };
        let m = Report::merge(&[a, b], None);
        assert_eq!(m.probe_last_us, [(1, 900), (2, 700), (3, 50)].into());
        assert_eq!(m.last_delivery_latency.n, 3);
        assert_eq!(m.last_delivery_latency.max_ms, 0.9);
    }

    /// The first recipient of a message is the earliest over every process.
    #[test]
    fn merge_takes_the_earliest_delivery_per_message_across_processes() {
        let a = Report { probe_first_us: [(1, 900), (2, 100)].into(), ..Report::default() };
        let b =
            Report { probe_first_us: [(1, 300), (2, 700), (3, 50)].into(), ..Report::default() };
        let m = Report::merge(&[a, b], None);
        assert_eq!(m.probe_first_us, [(1, 300), (2, 100), (3, 50)].into());
        assert_eq!(m.first_delivery_latency.n, 3);
        assert_eq!(m.first_delivery_latency.max_ms, 0.3);
    }

    #[test]
    fn merge_with_samples_is_exact() {
        let mut samples = RawSamples {
            login_us: (1..=200).map(|i| i * 1000).collect(),
            delivery_us: (1..=1000).rev().map(|i| i * 10).collect(),
        };
        let mut a = child(100, 1.0, 0.0, &[]);
        a.deliveries = 600;
        a.delivery_clock_skew = 1;
        let mut b = child(100, 1.0, 0.0, &[]);
        b.deliveries = 401;
        let m = Report::merge(&[a, b], Some(&mut samples));
        assert_eq!(m.latency_merge, "exact");
        assert_eq!(m.login_latency.n, 200);
        assert_eq!(m.login_latency.p50_ms, 100.0);
        assert_eq!(m.login_latency.p99_ms, 198.0);
        assert_eq!((m.deliveries, m.delivery_clock_skew), (1001, 1));
        let d = &m.delivery_latency;
        assert_eq!((d.n, d.p50_ms, d.p99_ms, d.p999_ms, d.max_ms), (1000, 5.0, 9.9, 9.99, 10.0));
        assert!(m.table().contains("delivery latency"));
    }

    #[test]
    fn merge_without_samples_bounds_delivery_latency_too() {
        let mut a = child(10, 1.0, 1.0, &[]);
        a.delivery_latency = Latency { n: 3, p50_ms: 1.0, p99_ms: 4.0, p999_ms: 4.0, max_ms: 4.0 };
        let mut b = child(10, 1.0, 1.0, &[]);
        b.delivery_latency = Latency { n: 2, p50_ms: 2.0, p99_ms: 3.0, p999_ms: 3.0, max_ms: 3.0 };
        let m = Report::merge(&[a, b], None);
        assert_eq!(m.latency_merge, "approx-max");
        let d = &m.delivery_latency;
        assert_eq!((d.n, d.p50_ms, d.p99_ms, d.max_ms), (5, 2.0, 4.0, 4.0));
    }

    #[test]
    fn reports_without_delivery_fields_still_parse() {
        let mut v = serde_json::to_value(child(5, 1.0, 2.0, &[])).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("deliveries");
            o.remove("delivery_latency");
            o.remove("delivery_clock_skew");
        }
        let r: Option<Report> = serde_json::from_value(v).ok();
        assert_eq!(r.map(|r| r.deliveries), Some(0));
    }

    #[test]
    fn probe_report_round_trips_and_renders() {
        let r = ProbeReport {
            users: 50,
            sent: 20,
            acked: 19,
            failures: [("ack_timeout".to_owned(), 1)].into_iter().collect(),
            ack_latency: Latency { n: 19, p50_ms: 1.0, p99_ms: 2.0, p999_ms: 2.0, max_ms: 2.0 },
            ..ProbeReport::default()
        };
        let text = serde_json::to_string(&r).unwrap_or_default();
        let back: Option<ProbeReport> = serde_json::from_str(&text).ok();
        assert_eq!(back.as_ref(), Some(&r));
        assert_eq!(r.failures_total(), 1);
        assert!(r.table().contains("ack_timeout=1"));
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
