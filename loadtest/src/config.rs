//! Command-line arguments (`bots`, `swarm`, `probe`, `pairs`) and the plain configuration a run
//! uses.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Bots' user ids are `{prefix}{i}`; the default prefix of `bots`, `swarm` and `probe`.
pub const DEFAULT_USER_PREFIX: &str = "lt";

/// `tern-loadtest`.
#[derive(Debug, Parser)]
#[command(name = "tern-loadtest", version, about = "Load tester for Tern gateways")]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run N bots in this process.
    Bots(BotsArgs),
    /// Spawn P `bots` child processes and merge their reports.
    Swarm(SwarmArgs),
    /// Send timed messages to random bots (run during a `bots` or `swarm` hold): measures
    /// send→ack here, and the bots' report shows delivery latency.
    Probe(ProbeArgs),
    /// Drive N sender→receiver pairs over raw connections (receivers send DELIVERED receipts
    /// like a real client) at a fixed rate or at saturation, and measure the server's message
    /// path: send→ack and send→deliver latency, throughput, server CPU per 100k messages.
    Pairs(PairsArgs),
}

/// Options shared by `bots` and `swarm`.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Gateway client address.
    #[arg(long)]
    pub addr: SocketAddr,
    /// Token signing key (base64), the server's `auth.hs256_key`.
    #[arg(long, env = "TERN_LOADTEST_KEY", hide_env_values = true)]
    pub key: String,
    /// New connections per second during the ramp (per process).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long every bot stays connected after the ramp ends.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Interval between Pings of one bot.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Source IPs to bind, round-robin (each gives its own ~28k ephemeral ports).
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// User ids are `{prefix}{i}`.
    #[arg(long, default_value = DEFAULT_USER_PREFIX)]
    pub user_prefix: String,
    /// Bots per second that disconnect and reconnect during the hold (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub churn_per_sec: f64,
    /// Write the JSON report here (besides the table on stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Gateway process ids whose VmRSS to read before and after the ramp.
    #[arg(long)]
    pub gateway_pid: Vec<u32>,
    /// Give up on a connect or a login after this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub login_timeout: Duration,
    /// Hard stop for the whole run, whatever the ramp and hold say.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub max_duration: Duration,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Percentage of bots that connect over QUIC (UDP, same address) instead of TCP: bot `i`
    /// does when `i % 100 < quic_percent`. 100 = all QUIC. Needs `--ca`.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub quic_percent: u8,
    /// The server's certificate (or its CA), PEM, for QUIC bots: `tern serve` writes its
    /// generated one to `<data_dir>/tls/cert.pem`.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// How a process drives its bots: `mio` (one thread, one epoll loop for every TCP bot;
    /// the cheapest per delivery), `tokio` (one task per bot; TCP and QUIC), or `auto` (mio
    /// unless some bots use QUIC).
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    pub engine: Engine,
}

/// The bot engine of `bots` and `swarm` (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// `mio` when every bot is on TCP, `tokio` otherwise.
    Auto,
    /// One thread and one epoll loop for every bot (TCP only).
    Mio,
    /// One tokio task per bot (TCP and QUIC).
    Tokio,
}

impl Engine {
    /// The engine `self` means for a run with `quic_percent` % of the bots on QUIC.
    pub fn resolve(self, quic_percent: u8) -> Engine {
        match self {
            Engine::Auto if quic_percent > 0 => Engine::Tokio,
            Engine::Auto => Engine::Mio,
            e => e,
        }
    }

    /// The `--engine` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::Mio => "mio",
            Engine::Tokio => "tokio",
        }
    }
}

/// `tern-loadtest bots`.
#[derive(Debug, Clone, Args)]
pub struct BotsArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Number of bots.
    #[arg(long)]
    pub count: usize,
    /// Write raw login latency samples (microseconds, one per line) here, for exact merging.
    #[arg(long, hide = true)]
    pub samples_out: Option<PathBuf>,
    /// Write raw probe delivery latency samples (microseconds, one per line) here.
    #[arg(long, hide = true)]
    pub delivery_samples_out: Option<PathBuf>,
    /// Print `ramp-done logged_in=N` on stdout when the ramp ends, then wait for a line on
    /// stdin (or EOF) before holding; used by `swarm` to read gateway memory at one moment.
    #[arg(long, hide = true)]
    pub child: bool,
}

/// `tern-loadtest swarm`.
#[derive(Debug, Clone, Args)]
pub struct SwarmArgs {
    /// Shared options (`--source-ips` is split among the children; `--user-prefix` gets the
    /// child's number appended).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Number of child processes.
    #[arg(long)]
    pub procs: usize,
    /// Bots per child process.
    #[arg(long)]
    pub count_per_proc: usize,
}

/// `tern-loadtest probe`.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Gateway client address.
    #[arg(long)]
    pub addr: SocketAddr,
    /// Token signing key (base64), the server's `auth.hs256_key`.
    #[arg(long, env = "TERN_LOADTEST_KEY", hide_env_values = true)]
    pub key: String,
    /// Recipients are `{prefix}{i}` (the bots' `--user-prefix`).
    #[arg(long, default_value = DEFAULT_USER_PREFIX)]
    pub user_prefix: String,
    /// Recipients are picked at random among `{prefix}0` .. `{prefix}{N-1}` (the bots'
    /// `--count`, or `--count-per-proc` with `--procs`).
    #[arg(long)]
    pub users: usize,
    /// The bots run under `swarm --procs P`: recipients are `{prefix}{k}-{i}`, k < P at random.
    #[arg(long)]
    pub procs: Option<usize>,
    /// Messages to send.
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// Messages per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// The sending user (device `p`); two probes at once need different ones.
    #[arg(long, default_value = "probe-sender")]
    pub sender: String,
    /// How long one send waits for its ack before it counts as failed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ack_timeout: Duration,
    /// Write the JSON report here (besides the table on stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Hard stop for the whole run (connect, sends, waiting for acks).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub max_duration: Duration,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Send every probe to one group of all the bots (created first, the probe's user as
    /// owner): a fan-out benchmark. The server's `dispatch.max_group_members` must allow it.
    #[arg(long)]
    pub group: bool,
    /// With `--group`: how long to wait after building the group before the first probe. Its
    /// setup is itself a fan-out (each AddMembers event reaches every member added so far:
    /// 105,000 deliveries for 10,000 members); without the pause the first probes measure
    /// that traffic too.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub settle: Duration,
}

/// `tern-loadtest pairs`.
#[derive(Debug, Clone, Args)]
pub struct PairsArgs {
    /// Gateway client address.
    #[arg(long)]
    pub addr: SocketAddr,
    /// Token signing key (base64), the server's `auth.hs256_key`.
    #[arg(long, env = "TERN_LOADTEST_KEY", hide_env_values = true)]
    pub key: String,
    /// Number of sender→receiver pairs (pair i: `{prefix}s{i}` sends to `{prefix}r{i}`).
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// User ids are `{prefix}s{i}` and `{prefix}r{i}`.
    #[arg(long, default_value = "pp")]
    pub user_prefix: String,
    /// Message body size in bytes (at least 28: the stamp the receivers time).
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Messages per second in all, spread evenly over the pairs (open loop: every message has
    /// its send time). 0: saturation, `--window` sends in flight per pair.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Receivers send no DELIVERED receipts (by default they send one per received batch, at
    /// most one in flight, like a real client).
    #[arg(long)]
    pub no_receipts: bool,
    /// Receivers (and group members) register a webhook push token after login, so that the
    /// server (with `[notify]` on) plans an offline push for each of their messages.
    #[arg(long)]
    pub register_push: bool,
    /// Group chat: `--pairs` groups of this many members each (2 to 500; user `{prefix}g{g}m{j}`),
    /// created before sending by their first member; every member sends `--rate / (pairs *
    /// group-size)` msg/s to its group (or keeps `--window` in flight) and receives the others'.
    /// 0: 1:1 pairs.
    #[arg(long, default_value_t = 0)]
    pub group_size: usize,
    /// Group members send at most one receipt per kind per this interval (PROTOCOL.md section
    /// 11: one per second); 0: one per received batch, at most one in flight per kind.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub receipt_interval: Duration,
    /// Group members send DELIVERED receipts only (by default every delivered seq is also
    /// READ: the chat is open on screen).
    #[arg(long)]
    pub no_read: bool,
    /// Sends in flight per pair at most (default: 16 with `--rate 0`, 256 with a rate, the
    /// server's default `gateway.max_inflight_requests`).
    #[arg(long)]
    pub window: Option<usize>,
    /// Sending before the measured window (not measured).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// The measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop sending after this many messages in all (warm-up included); the window then ends
    /// when every one is acked, delivered and receipted (or at `--duration`).
    #[arg(long)]
    pub messages: Option<u64>,
    /// After sending stops: how long to wait for the last acks, deliveries and receipt answers.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Server process ids whose CPU time (utime + stime, all threads) to read at the start and
    /// end of the window; repeat for several processes (gateways, workers, Redis).
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Give up when the connections are not all logged in after this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub login_timeout: Duration,
    /// Hard stop for the whole run, whatever the other settings say.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub max_duration: Duration,
    /// Write the JSON report here (besides the table and the JSON line on stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Parses `500ms`, `30s`, `10m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad duration {text:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {text:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn auto_engine_is_mio_unless_bots_use_quic() {
        assert_eq!(Engine::Auto.resolve(0), Engine::Mio);
        assert_eq!(Engine::Auto.resolve(1), Engine::Tokio);
        assert_eq!(Engine::Mio.resolve(50), Engine::Mio);
        assert_eq!(Engine::Tokio.resolve(0), Engine::Tokio);
    }
}
