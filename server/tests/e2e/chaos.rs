//! The chaos suite for the distributed mode (2 gateways, dispatch workers, presence Redis,
//! store Redis as real child processes): SDK bots keep chatting while workers are killed with
//! SIGKILL, a gateway is killed, and Redis is restarted and flushed. Afterwards every device's
//! received set equals the accepted set, in order, with no duplicate, and no seq was reused
//! (checked by the ledger against the store).

use crate::common;

use std::time::Duration;

use common::swarm::Swarm;
use tern_gateway::TokenKey;
use tern_testkit::cluster::{Cluster, ClusterOptions};

/// How long the system may take to accept sends again after a failure (a failure guard for a
/// stated recovery time, not a performance figure).
const RECOVERY: Duration = Duration::from_secs(15);

fn start(options: ClusterOptions) -> (Cluster, TokenKey, String) {
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start(env!("CARGO_BIN_EXE_tern").as_ref(), options)
    })
    .expect("cluster start");
    let key = TokenKey::from_base64(cluster.key_base64()).unwrap();
    let addrs = cluster.gateway_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
    (cluster, key, addrs)
}

/// Waits until `n` more sends were acknowledged; panics with the cluster's logs after
/// [`RECOVERY`].
async fn progress(swarm: &Swarm, cluster: &Cluster, n: usize, what: &str) {
    let target = swarm.ledger.acks() + n;
    let started = tokio::time::Instant::now();
    let deadline = started + RECOVERY;
    while swarm.ledger.acks() < target {
        if tokio::time::Instant::now() > deadline {
            panic!("no progress within {RECOVERY:?} after {what}\n{}", cluster.logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Printed (visible with --no-capture) so runs can report recovery times.
    eprintln!("recovery: {n} more acks {:?} after {what}", started.elapsed());
}

async fn finish(mut swarm: Swarm) {
    swarm.stop_sending().await;
    swarm.fence().await;
    swarm.settle_and_verify(Duration::from_secs(30)).await;
    swarm.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_worker_kills_lose_nothing() {
    let (mut cluster, key, addrs) = start(ClusterOptions { workers: 3, ..Default::default() });
    let swarm = Swarm::start(&addrs, &key, "w", 4, 2).await;
    progress(&swarm, &cluster, 100, "start").await;
    for kill in 0..10 {
        let victim = kill % 3;
        tokio::task::block_in_place(|| cluster.kill9_worker(victim)).unwrap();
        progress(&swarm, &cluster, 30, "a worker SIGKILL").await;
        tokio::task::block_in_place(|| cluster.restart_worker(victim)).unwrap();
        progress(&swarm, &cluster, 30, "a worker restart").await;
    }
    let retries: u64 = (0..2)
        .map(|g| {
            cluster
                .gateway_metrics(g)
                .unwrap()
                .get("tern_gateway_link_retries_total")
                .unwrap_or(0.0) as u64
        })
        .sum();
    eprintln!(
        "requests resent to another worker: {retries}; send errors seen by bots: {}",
        swarm.send_errors.load(std::sync::atomic::Ordering::Relaxed)
    );
    finish(swarm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_kill_moves_clients_and_loses_nothing() {
    let (mut cluster, key, addrs) = start(ClusterOptions::default());
    let swarm = Swarm::start(&addrs, &key, "g", 4, 2).await;
    progress(&swarm, &cluster, 100, "start").await;
    // Its clients reconnect to the other gateway (the SDK has both addresses), resend, sync.
    tokio::task::block_in_place(|| cluster.kill9_gateway(0)).unwrap();
    progress(&swarm, &cluster, 200, "a gateway SIGKILL").await;
    tokio::task::block_in_place(|| cluster.restart_gateway(0)).unwrap();
    progress(&swarm, &cluster, 50, "the gateway's restart").await;
    finish(swarm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarts_and_presence_flush_recover_by_themselves() {
    let (mut cluster, key, addrs) = start(ClusterOptions::default());
    let swarm = Swarm::start(&addrs, &key, "r", 4, 2).await;
    progress(&swarm, &cluster, 100, "start").await;
    // Presence Redis restarted (no persistence: it comes back empty) and, separately, flushed.
    tokio::task::block_in_place(|| cluster.restart_presence_redis()).unwrap();
    progress(&swarm, &cluster, 100, "a presence Redis restart").await;
    tokio::task::block_in_place(|| cluster.flush_presence_redis()).unwrap();
    progress(&swarm, &cluster, 100, "a presence Redis FLUSHALL").await;
    // The store Redis restarted under load: AOF (appendfsync always) brings back every acked
    // message with its seq; the ledger check proves none was lost or reused.
    tokio::task::block_in_place(|| cluster.restart_store_redis()).unwrap();
    progress(&swarm, &cluster, 100, "a store Redis restart").await;
    finish(swarm).await;
}
