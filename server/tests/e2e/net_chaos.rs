//! The chaos suite on the network path, against the embedded server, with SDK bots sending
//! both ways (every user has two devices and messages every other user):
//!
//! - **QUIC** through the [`UdpChaosProxy`]: 10 % loss both ways, 2 % duplicates, 5 %
//!   reordered (held 20 ms), 5 ms ± 5 ms delay, delay spikes of 100–300 ms (lasting 300 ms,
//!   about every second), a NAT rebinding of every flow every 2 s (the server sees each
//!   client from a new port), and clients calling `Client::network_changed()` mid-traffic
//!   (their own socket moves: client-side migration).
//! - **TCP** through the [`ChaosProxy`]: every connection reset (RST both ways) and blackholes
//!   (forwarding paused both ways, nothing closed) for up to 1.5 s, in turns.
//!
//! Then the faults stop, every device sends a fence message per conversation, and the ledger
//! checks the contract against the store: every device's received set equals the acked set,
//! in order, with no duplicate, and no seq was given twice. The QUIC proxy's `report` is
//! printed at the end (run with `--no-capture` to see it; it is in the panic output too).
//!
//! CI runs a small scale with a fixed seed. `CHAOS_SCALE=<n>` multiplies the users and the
//! messages, `CHAOS_SEED=<n>` changes the seed (`loadtest/scripts/chaos_net.sh` runs both).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::swarm::Swarm;
use common::{TestServer, Transport};
use tern_testkit::ChaosProxy;
use tern_testkit::udp_chaos::{Faults, Spikes, UdpChaosOptions, UdpChaosProxy};

/// Most time the swarm may take to make the next round's progress under chaos (a failure
/// guard, not a performance figure).
const ROUND: Duration = Duration::from_secs(60);

/// How long a TCP blackhole lasts.
const BLACKHOLE: Duration = Duration::from_millis(1500);

/// Scale and seed of a run, from `CHAOS_SCALE` and `CHAOS_SEED` (defaults 1 and 7).
struct Scale {
    users: usize,
    /// Acks to collect under chaos.
    messages: usize,
    seed: u64,
}

fn scale() -> Scale {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let n = env("CHAOS_SCALE", 1).max(1) as usize;
    Scale { users: 2 + n, messages: 300 * n, seed: env("CHAOS_SEED", 7) }
}

/// The faults of the QUIC run.
fn quic_faults() -> Faults {
    Faults {
        loss: 0.10,
        duplicate: 0.02,
        reorder: 0.05,
        reorder_delay: Duration::from_millis(20),
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(5),
        spikes: Some(Spikes {
            every: Duration::from_secs(1),
            lasting: Duration::from_millis(300),
            min: Duration::from_millis(100),
            max: Duration::from_millis(300),
        }),
    }
}

/// Runs `rounds` chaos steps, each after `step` more acks: `fault(round)` injects one.
async fn rounds(swarm: &Swarm, s: &Scale, report: &dyn Fn() -> String, fault: &dyn Fn(usize)) {
    let rounds = 10;
    let step = s.messages / rounds;
    for r in 0..rounds {
        let target = swarm.ledger.acks() + step;
        if !swarm.ledger.wait_acks(target, ROUND).await {
            panic!("round {r}: no {step} more acks within {ROUND:?}\n{}", report());
        }
        fault(r);
    }
}

/// Prints what the proxy injected when the test fails (dropped while panicking).
struct ReportOnPanic<'a>(&'a dyn Fn() -> String);

impl Drop for ReportOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("what the proxy injected:\n{}", (self.0)());
        }
    }
}

async fn finish(mut swarm: Swarm) {
    swarm.stop_sending().await;
    swarm.fence().await;
    swarm.settle_and_verify(Duration::from_secs(30)).await;
    swarm.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_through_loss_spikes_duplicates_reordering_and_rebinding_loses_nothing() {
    let s = scale();
    let srv = TestServer::start_over(Transport::Quic, &["gateway.max_frames_per_sec=0"]).await;
    let options = UdpChaosOptions { seed: s.seed, ..Default::default() };
    let proxy = UdpChaosProxy::start_with(srv.quic.unwrap(), options).expect("udp chaos proxy");
    let addr = Transport::Quic.sdk_addr(proxy.addr());
    let trust = Transport::Quic.trust(srv.dir.path());
    // The bots connect before the faults start: `Client::connect` reports a failed first
    // connect to the app (under the faults it timed out once in 20 runs: lost handshake
    // packets or a rebinding mid-handshake), while every reconnect later retries by itself.
    let swarm = Swarm::start_trusting(&addr, trust, &srv.key, "q", s.users, 2).await;
    proxy.set_faults(quic_faults()).unwrap();
    proxy.set_rebind_every(Some(Duration::from_secs(2))).unwrap();
    let report = || proxy.report(20);
    let _guard = ReportOnPanic(&report);
    // Every other round one device moves its own socket (as a phone changing networks).
    let migrate = |r: usize| {
        if !r.is_multiple_of(2) {
            let (device, client, _) = &swarm.devices[r % swarm.devices.len()];
            client.network_changed().unwrap_or_else(|e| panic!("{device:?} rebind: {e}"));
        }
    };
    rounds(&swarm, &s, &report, &migrate).await;
    proxy.set_rebind_every(None).unwrap();
    proxy.set_faults(Faults::default()).unwrap();
    finish(swarm).await;
    eprintln!("{}", report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_through_resets_and_blackholes_loses_nothing() {
    let s = scale();
    // Fast heartbeats: a blackhole outlasts the idle timeout, so the server drops those
    // connections and the clients find out only once it lifts.
    let srv = TestServer::start_with(&[
        "gateway.max_frames_per_sec=0",
        "gateway.heartbeat_interval=200ms",
        "gateway.idle_timeout=800ms",
    ])
    .await;
    let proxy = Arc::new(ChaosProxy::start(srv.addr).expect("chaos proxy"));
    let addr = Transport::Tcp.sdk_addr(proxy.addr());
    let swarm = Swarm::start(&addr, &srv.key, "t", s.users, 2).await;
    let report = || format!("{:?}", proxy.stats());
    let _guard = ReportOnPanic(&report);
    let fault = |r: usize| {
        if r.is_multiple_of(2) {
            proxy.reset_all().expect("reset");
        } else {
            // A blackhole: nothing moves and nothing closes, for 1.5 s (the fault's length,
            // not a wait for an outcome).
            proxy.pause();
            let p = proxy.clone();
            tokio::spawn(async move {
                tokio::time::sleep(BLACKHOLE).await;
                p.resume();
            });
        }
    };
    rounds(&swarm, &s, &report, &fault).await;
    proxy.resume();
    finish(swarm).await;
    eprintln!("{}", report());
}
