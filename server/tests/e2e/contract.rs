//! The delivery contract in embedded mode under a server restart: bots with two devices each
//! keep sending while the server is stopped and started again; afterwards every acked message
//! is stored once with its seq, and every device saw every message of its conversations exactly
//! once, in order.

use crate::common;

use std::time::Duration;

use common::swarm::Swarm;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everyone_gets_everything_once_in_order_across_a_restart() {
    let srv = TestServer::start().await;
    let mut swarm = Swarm::start(&srv.addr.to_string(), &srv.key, "c", 3, 2).await;
    while swarm.ledger.acks() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stop the server under load (clients are kicked), start it again on the same port.
    let srv = srv.restart(&[]).await;
    let before = swarm.ledger.acks();
    while swarm.ledger.acks() < before + 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    swarm.stop_sending().await;
    swarm.fence().await;
    swarm.settle_and_verify(Duration::from_secs(20)).await;
    swarm.close().await;
    drop(srv);
}
