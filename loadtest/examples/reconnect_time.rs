//! Time from the start of a (re)connect to LoginOk, and the server's CPU per login, for every
//! transport: TCP, TLS 1.3 (full handshake and resumed), QUIC 1-RTT and QUIC 0-RTT.
//!
//! The client is the SDK's [`Connector`] (what a `Client` uses to reconnect). Its connections
//! go through the testkit's chaos proxies to a running server, with `--rtt` of injected round
//! trip (half of it each way): the TCP proxy for `tcp://` and `tls://` (it also holds back the
//! client's first bytes by one round trip, the TCP handshake the kernel completed at once on
//! loopback), the UDP proxy for `quic://`. "Full" rows use a new connector per connection (no
//! session ticket: a phone's first connect); "resumed" and 0-RTT rows reuse one connector that
//! connected once before (a phone's reconnect).
//!
//! Each connection stays open two round trips after LoginOk (untimed), so that the server's
//! next session ticket arrives, as it does for a phone that stays connected; then it closes.
//!
//! The CPU phase connects `--cpu-logins` times per row straight to the server (no proxy, each
//! connection held 5 ms) and reads the server's CPU time from `/proc/PID/task/*/schedstat`
//! (`--server-pid`): the figure is per connection (handshake, login, close), idle time apart.
//!
//! ```sh
//! loadtest/scripts/transports.sh    # starts `tern serve`, runs this, then `tern bench`
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tern_loadtest::sys::process_cpu_ns;
use tern_sdk::{ClientConfig, Connector, Trust};
use tern_testkit::chaos::ChaosProxy;
use tern_testkit::udp_chaos::{Faults, UdpChaosOptions, UdpChaosProxy};

#[derive(Parser)]
struct Args {
    /// The server's client address (TCP, TLS and QUIC on the same port).
    #[arg(long)]
    server: SocketAddr,
    /// A login token (`tern token --user ...`).
    #[arg(long)]
    token: String,
    /// The server's certificate fingerprint (SHA-256 hex, as `tern serve` prints it).
    #[arg(long)]
    pin: String,
    /// Injected round-trip time.
    #[arg(long, default_value = "50", value_name = "MS")]
    rtt_ms: u64,
    /// Timed connections per row through the proxies.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// The server's pid, for the CPU phase (0: skip it).
    #[arg(long, default_value_t = 0)]
    server_pid: u32,
    /// Connections per row in the CPU phase.
    #[arg(long, default_value_t = 1000)]
    cpu_logins: usize,
}

/// How long a connection of the CPU phase stays open after LoginOk (see [`connect_times`]).
const CPU_HOLD: Duration = Duration::from_millis(5);

/// One row of the table: its name, the scheme and whether one connector is reused.
const ROWS: [(&str, &str, bool); 5] = [
    ("tcp", "tcp", false),
    ("tls (full handshake)", "tls", false),
    ("tls (resumed)", "tls", true),
    ("quic 1-rtt", "quic", false),
    ("quic 0-rtt", "quic", true),
];

fn config(args: &Args, scheme: &str, addr: SocketAddr) -> ClientConfig {
    let mut cfg = ClientConfig::new(format!("{scheme}://{addr}"), args.token.clone());
    cfg.trust = Trust::Pinned(args.pin.clone());
    cfg
}

/// Connects `n` times (each connection closed before the next), one connector for all when
/// `reuse` (warmed by one untimed connection), a new one per connection otherwise. Each
/// connection stays open `hold` after LoginOk, untimed, as a phone stays connected: the
/// server's session ticket for the next resumption comes after the handshake, and a client
/// that closed at once would have none. Returns the times to LoginOk and how many logins went
/// in accepted 0-RTT data.
async fn connect_times(
    args: &Args,
    (scheme, addr): (&str, SocketAddr),
    reuse: bool,
    n: usize,
    hold: Duration,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let shared = Connector::new(config(args, scheme, addr))?;
    if reuse {
        let warm = shared.connect().await.context("warm-up connection")?;
        tokio::time::sleep(hold).await;
        warm.close().await;
    }
    let (mut times, mut zero_rtt) = (Vec::with_capacity(n), 0);
    for _ in 0..n {
        let fresh;
        let connector = if reuse {
            &shared
        } else {
            fresh = Connector::new(config(args, scheme, addr))?;
            &fresh
        };
        let t0 = Instant::now();
        let c = connector.connect().await.with_context(|| format!("{scheme}://{addr}"))?;
        times.push(t0.elapsed());
        zero_rtt += usize::from(c.zero_rtt);
        tokio::time::sleep(hold).await;
        c.close().await;
    }
    Ok((times, zero_rtt))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let one_way = Duration::from_millis(args.rtt_ms) / 2;
    let tcp = ChaosProxy::start(args.server)?;
    tcp.set_delay(one_way);
    let faults = Faults { delay: one_way, ..Faults::default() };
    let udp =
        UdpChaosProxy::start_with(args.server, UdpChaosOptions { faults, ..Default::default() })?;

    println!(
        "reconnect → LoginOk over {} ms injected RTT, {} connections per row",
        args.rtt_ms, args.rounds
    );
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "transport", "min", "p50", "p90", "max", "0-rtt"
    );
    for (name, scheme, reuse) in ROWS {
        let addr = if scheme == "quic" { udp.addr() } else { tcp.addr() };
        let hold = Duration::from_millis(args.rtt_ms * 2);
        let (mut t, zero_rtt) =
            connect_times(&args, (scheme, addr), reuse, args.rounds, hold).await?;
        t.sort_unstable();
        println!(
            "{name:<22} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6}",
            ms(t[0]),
            ms(pct(&t, 0.5)),
            ms(pct(&t, 0.9)),
            ms(t[t.len() - 1]),
            zero_rtt
        );
        if reuse && scheme == "quic" && zero_rtt != args.rounds {
            bail!("only {zero_rtt} of {} QUIC reconnects went in 0-RTT", args.rounds);
        }
    }

    if args.server_pid == 0 {
        return Ok(());
    }
    println!(
        "\nserver CPU per login (connect, log in, close; no proxy), {} per row",
        args.cpu_logins
    );
    println!("{:<22} {:>10} {:>12}", "transport", "CPU µs", "wall ms p50");
    for (name, scheme, reuse) in ROWS {
        let before = process_cpu_ns(args.server_pid).context("reading the server's CPU time")?;
        let target = (scheme, args.server);
        let (mut t, _) = connect_times(&args, target, reuse, args.cpu_logins, CPU_HOLD).await?;
        let after = process_cpu_ns(args.server_pid).context("reading the server's CPU time")?;
        t.sort_unstable();
        let per_login_us = (after - before) as f64 / 1e3 / args.cpu_logins as f64;
        println!("{name:<22} {per_login_us:>10.0} {:>12.2}", ms(pct(&t, 0.5)));
    }
    Ok(())
}
