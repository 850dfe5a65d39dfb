//! The distributed mode end to end, as real child processes (`tern_testkit::cluster`): two
//! `tern gateway`s and two `tern dispatch` workers over a presence Redis and a store Redis.
//! Users on different gateways chat through the workers: every send is acknowledged with its
//! seq, and the message crosses from one gateway to the other.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{WAIT, connect, next_message, now_secs, text};
use tern_gateway::TokenKey;
use tern_proto::v1;
use tern_sdk::{Client, SdkError, Target, new_client_msg_id};
use tern_testkit::cluster::{Cluster, ClusterOptions};
use tokio::task::block_in_place;

/// Starts a cluster (blocking: child processes and Redis) and the key to mint tokens with.
fn start(options: ClusterOptions) -> (Cluster, TokenKey) {
    let cluster = block_in_place(|| Cluster::start(env!("CARGO_BIN_EXE_tern").as_ref(), options))
        .unwrap_or_else(|e| panic!("cluster start: {e}"));
    let key = TokenKey::from_base64(cluster.key_base64()).unwrap();
    (cluster, key)
}

fn mint(key: &TokenKey, user: &str, device: &str) -> String {
    key.mint_for(user, device, now_secs(), 3600)
}

/// Sends with one client_msg_id, again while the answer is a retryable error (a gateway may
/// still be linking to the workers right after start); the same id can never make a second
/// message. Bounded by [`WAIT`].
async fn send(client: &Client, to: &str, body: Bytes, cluster: &Cluster) -> v1::SendAck {
    let id = new_client_msg_id();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let sent = client
            .send_with_id(Target::Peer(to.into()), id.clone(), "text/plain", body.clone())
            .await;
        match sent {
            Ok(ack) => return ack,
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => fail(cluster, &format!("send to {to}: {e}"), e),
        }
    }
}

fn fail(cluster: &Cluster, what: &str, e: SdkError) -> ! {
    panic!("{what} ({e:?})\n{}", cluster.logs())
}

/// Messages accepted by worker `i`, from its `/metrics`.
fn accepted(cluster: &Cluster, i: usize) -> u64 {
    let metrics = block_in_place(|| cluster.worker_metrics(i)).unwrap();
    metrics.get("tern_dispatch_accepted_total").unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_gateways_chat_through_two_workers() {
    let (cluster, key) = start(ClusterOptions { gateways: 2, workers: 2, ..Default::default() });
    let mut pairs = 0;
    // A user's requests go to the worker its id hashes to (over the workers' addresses, which
    // differ per run): add pairs of users until both workers have accepted messages. With 2
    // workers, each new user misses one of them with probability 1/2; 32 pairs (64 senders)
    // missing one is practically impossible.
    while pairs < 4 || (accepted(&cluster, 0) == 0 || accepted(&cluster, 1) == 0) {
        assert!(pairs < 32, "one worker never used\n{}", cluster.logs());
        let (a, b) = (format!("alice{pairs}"), format!("bob{pairs}"));
        let (alice, mut alice_events) =
            connect(cluster.gateway_addr(0), &mint(&key, &a, "phone")).await;
        let (bob, mut bob_events) =
            connect(cluster.gateway_addr(1), &mint(&key, &b, "phone")).await;

        // Alice (gateway 0) to Bob (gateway 1): acknowledged with the first seq of the
        // conversation, and pushed across to Bob's gateway.
        let ack = send(&alice, &b, text("hello bob"), &cluster).await;
        assert_eq!(ack.conversation_id, format!("dm:{a}:{b}"));
        assert_eq!(ack.seq, 1);
        let got = next_message(&mut bob_events).await;
        assert_eq!(got.conversation_id, ack.conversation_id);
        assert_eq!(got.seq, 1);
        assert_eq!(got.sender_user_id, a);
        assert_eq!(got.sender_device_id, "phone");
        assert_eq!(got.body, text("hello bob"));

        // And back: the next seq of the same conversation, pushed to gateway 0.
        let reply = send(&bob, &a, text("hi alice"), &cluster).await;
        assert_eq!(reply.conversation_id, ack.conversation_id);
        assert_eq!(reply.seq, 2);
        let got = next_message(&mut alice_events).await;
        assert_eq!((got.seq, got.sender_user_id.as_str()), (2, b.as_str()));
        assert_eq!(got.body, text("hi alice"));

        alice.close().await;
        bob.close().await;
        pairs += 1;
    }
    // Every acknowledged send was accepted exactly once, by one of the two workers.
    let (w0, w1) = (accepted(&cluster, 0), accepted(&cluster, 1));
    assert_eq!(w0 + w1, 2 * pairs, "accepted per worker: {w0} + {w1}");
    // Dropping the cluster kills every process and both redis-servers.
    block_in_place(|| drop(cluster));
}
