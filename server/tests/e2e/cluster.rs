//! The distributed mode end to end, as real child processes (`tern_testkit::cluster`): two
//! `tern gateway`s and two `tern dispatch` workers over a presence Redis and a store Redis.
//! Users on different gateways chat through the workers: every send is acknowledged with its
//! seq, and the message crosses from one gateway to the other (over TCP, TLS and QUIC).

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::{Transport, WAIT, connect_with, next_message, now_secs, text};
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

/// An SDK client of gateway `i` over `t`: QUIC at the UDP address the gateway announced,
/// trusting the certificate it generated in its data directory.
async fn connect(
    cluster: &Cluster,
    i: usize,
    token: &str,
    t: Transport,
) -> (Client, tokio::sync::mpsc::Receiver<tern_sdk::Event>) {
    let addr = match t {
        Transport::Quic => cluster.gateway(i).addr("quic").expect("the gateway serves QUIC"),
        Transport::Tcp | Transport::Tls => cluster.gateway_addr(i),
    };
    let mut cfg = tern_sdk::ClientConfig::new(t.sdk_addr(addr), token);
    cfg.trust = t.trust(&cluster.dir().join(format!("G{i}")));
    connect_with(cfg).await
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

async fn users_on_different_gateways_chat_through_two_workers(t: Transport) {
    let (cluster, key) = start(ClusterOptions { gateways: 2, workers: 2, ..Default::default() });
    let mut pairs = 0;
    // A user's requests go to the worker its id hashes to (over the workers' addresses, which
    // differ per run): add pairs of users until both workers have accepted messages. With 2
    // workers, each new user misses one of them with probability 1/2; 32 pairs (64 senders)
    // missing one is practically impossible.
    while pairs < 4 || (accepted(&cluster, 0) == 0 || accepted(&cluster, 1) == 0) {
        assert!(pairs < 32, "one worker never used\n{}", cluster.logs());
        let (a, b) = (format!("alice{pairs}"), format!("bob{pairs}"));
        let (alice, mut alice_events) = connect(&cluster, 0, &mint(&key, &a, "phone"), t).await;
        let (bob, mut bob_events) = connect(&cluster, 1, &mint(&key, &b, "phone"), t).await;

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

/// The contract points beyond send/ack across gateways, with workers found through presence
/// Redis: receipts reach the other gateway, recall is an ordered event there, outsiders are
/// refused, and a restarted worker is found again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_recall_and_membership_across_gateways_with_discovery() {
    use tern_proto::v1::{ErrorCode, MessageKind};
    use tern_sdk::Event;
    let (mut cluster, key) = start(ClusterOptions {
        discovery: tern_testkit::cluster::Discovery::Presence,
        ..Default::default()
    });
    let (alice, mut ae) = connect(&cluster, 0, &mint(&key, "alice", "phone"), Transport::Tcp).await;
    let (bob, mut be) = connect(&cluster, 1, &mint(&key, "bob", "phone"), Transport::Tcp).await;

    let sent = send(&alice, "bob", text("to recall"), &cluster).await;
    assert_eq!(next_message(&mut be).await.seq, sent.seq);
    // Receipt on gateway 1 reaches alice on gateway 0.
    let w = bob.mark_read(&sent.conversation_id, sent.seq).await.unwrap();
    assert_eq!((w.delivered_seq, w.read_seq), (sent.seq, sent.seq));
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Event::Receipt(r)) = ae.recv().await
                && r.user_id == "bob"
                && r.read_seq == sent.seq
            {
                return r;
            }
        }
    })
    .await
    .expect("receipt push across gateways");
    assert_eq!(seen.conversation_id, sent.conversation_id);
    // Recall on gateway 0 is an ordered event on gateway 1.
    let recall = alice.recall(&sent.conversation_id, sent.seq).await.unwrap();
    let ev = next_message(&mut be).await;
    assert_eq!(
        (ev.kind, ev.recalled_seq, ev.seq),
        (MessageKind::Recall as i32, sent.seq, recall.seq)
    );
    // Only members.
    let (carol, _ce) = connect(&cluster, 1, &mint(&key, "carol", "phone"), Transport::Tcp).await;
    match carol.sync_page(&sent.conversation_id, 1, 10).await {
        Err(SdkError::Server { code, .. }) => assert_eq!(code, ErrorCode::NotAMember),
        other => panic!("expected NOT_A_MEMBER, got {other:?}"),
    }
    // A restarted worker is discovered again, and service goes on meanwhile.
    block_in_place(|| cluster.kill9_worker(0)).unwrap();
    let during = send(&alice, "bob", text("during"), &cluster).await;
    assert_eq!(next_message(&mut be).await.seq, during.seq);
    block_in_place(|| cluster.restart_worker(0)).unwrap();
    // Users spread over workers by hashing: new users send until the restarted worker (its
    // counters start at 0 again) has accepted messages, i.e. gateways use it again.
    let mut used_again = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut i = 0;
    while tokio::time::Instant::now() < deadline {
        let (u, _ue) =
            connect(&cluster, 0, &mint(&key, &format!("late{}", i % 32), "phone"), Transport::Tcp)
                .await;
        send(&u, "bob", text("after"), &cluster).await;
        if accepted(&cluster, 0) > 0 {
            used_again = true;
            break;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(used_again, "the restarted worker never got a request\n{}", cluster.logs());
    drop(alice);
}

/// A device that logs in again through another gateway kicks its older connection there
/// (DUPLICATE_LOGIN), as it does within one gateway; the new connection works.
async fn duplicate_login_on_another_gateway_kicks_the_older_connection(t: Transport) {
    use tern_proto::v1::KickReason;
    use tern_sdk::Event;
    let (cluster, key) = start(ClusterOptions::default());
    let token = mint(&key, "dana", "phone");
    let (first, mut fe) = connect(&cluster, 0, &token, t).await;
    // Gateways link to workers right after start; let the first login's traffic through.
    send(&first, "erin", text("hello"), &cluster).await;
    let (second, _se) = connect(&cluster, 1, &token, t).await;
    let reason = tokio::time::timeout(WAIT, async {
        loop {
            match fe.recv().await {
                Some(Event::Kicked { reason }) => return Some(reason),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the older connection was not kicked\n{}", cluster.logs()));
    assert_eq!(reason, Some(KickReason::DuplicateLogin));
    let ack = send(&second, "erin", text("from the new connection"), &cluster).await;
    assert_eq!(ack.seq, 2);
    let kicks = block_in_place(|| cluster.gateway_metrics(0)).unwrap();
    assert_eq!(kicks.get("tern_gateway_duplicate_login_kicks_total"), Some(1.0));
    // The new connection is open on gateway 1 over the transport asked for.
    let open = block_in_place(|| cluster.gateway_metrics(1)).unwrap();
    let (quic, tls) = match t {
        Transport::Tcp => (0.0, 0.0),
        Transport::Tls => (0.0, 1.0),
        Transport::Quic => (1.0, 0.0),
    };
    assert_eq!(open.get("tern_gateway_quic_connections_open").unwrap_or(0.0), quic);
    assert_eq!(open.get("tern_gateway_tls_connections_open").unwrap_or(0.0), tls);
}

crate::over_transports!(
    users_on_different_gateways_chat_through_two_workers,
    duplicate_login_on_another_gateway_kicks_the_older_connection,
);

/// Pushes routed in batches (one buffer per gateway per routing round): senders on both
/// gateways send at once to one user with a device on each gateway; each device gets every
/// message exactly once, each conversation in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_pushes_reach_every_device_on_every_gateway_once_in_order() {
    use common::Raw;
    use std::collections::BTreeMap;
    use tern_proto::v1::envelope::Body;
    const SENDERS: usize = 4;
    const EACH: u64 = 25;
    let (cluster, key) = start(ClusterOptions { gateways: 2, workers: 2, ..Default::default() });
    let (mut phone, _) = Raw::login(cluster.gateway_addr(0), &mint(&key, "carol", "phone")).await;
    let (mut laptop, _) = Raw::login(cluster.gateway_addr(1), &mint(&key, "carol", "laptop")).await;
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let user = format!("sender{s}");
        let (client, _events) =
            connect(&cluster, s % 2, &mint(&key, &user, "d"), Transport::Tcp).await;
        // The first send also waits until the gateway is linked to the workers.
        send(&client, "carol", text("0"), &cluster).await;
        senders.push((client, _events));
    }
    let cluster = std::sync::Arc::new(cluster);
    let mut tasks = tokio::task::JoinSet::new();
    for (client, _) in &senders {
        let (client, cluster) = (client.clone(), cluster.clone());
        tasks.spawn(async move {
            // All of them in flight at once, so routing rounds carry many pushes.
            let sends: Vec<_> = (1..=EACH)
                .map(|i| {
                    let client = client.clone();
                    let body = text(&i.to_string());
                    tokio::spawn(async move {
                        client
                            .send_with_id(
                                Target::Peer("carol".into()),
                                new_client_msg_id(),
                                "text/plain",
                                body,
                            )
                            .await
                    })
                })
                .collect();
            for s in sends {
                if let Err(e) = s.await.unwrap() {
                    fail(&cluster, "send", e);
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let total = SENDERS as u64 * (EACH + 1);
    for (device, raw) in [("phone", &mut phone), ("laptop", &mut laptop)] {
        let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut got = 0;
        while got < total {
            let env = tokio::time::timeout(WAIT, raw.recv())
                .await
                .unwrap_or_else(|_| panic!("{device}: {got} of {total} pushes\n{}", cluster.logs()))
                .expect("connection open");
            if let Some(Body::Deliver(d)) = env.body {
                let m = d.message.unwrap();
                seqs.entry(m.conversation_id).or_default().push(m.seq);
                got += 1;
            }
        }
        assert_eq!(seqs.len(), SENDERS, "{device}: {seqs:?}");
        for (conv, seqs) in &seqs {
            assert_eq!(*seqs, (1..=EACH + 1).collect::<Vec<_>>(), "{device} in {conv}");
        }
    }
    drop(senders);
    block_in_place(|| drop(cluster));
}

/// Groups in the distributed mode (Redis store): a group made on one gateway reaches members
/// on both; a member removed through the other gateway's worker is refused and pushed
/// nothing more, whichever worker serves the next message (the store's group version tells
/// each worker's cache it is stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_across_gateways_and_workers() {
    let (cluster, key) = start(ClusterOptions { gateways: 2, workers: 2, ..Default::default() });
    let (alice, _ae) = connect(&cluster, 0, &mint(&key, "alice", "phone"), Transport::Tcp).await;
    let (bob, mut be) = connect(&cluster, 1, &mint(&key, "bob", "phone"), Transport::Tcp).await;
    let (ann, mut ann_e) = connect(&cluster, 0, &mint(&key, "ann", "phone"), Transport::Tcp).await;
    // Gateways link to workers right after start: a first send through each proves the path.
    send(&alice, "bob", text("warm up"), &cluster).await;
    send(&bob, "alice", text("warm up"), &cluster).await;
    next_message(&mut be).await;
    let info = alice.create_group("team", &["ann", "bob"], "cluster-1").await.unwrap();
    let g = info.conversation_id;
    let target = Target::Conversation(g.clone());
    let ack = alice.send(target.clone(), "text/plain", text("hi all")).await.unwrap();
    for events in [&mut be, &mut ann_e] {
        loop {
            let m = next_message(events).await;
            if m.conversation_id == g && m.seq == ack.seq {
                assert_eq!(&m.body[..], b"hi all");
                break;
            }
        }
    }
    // Bob (other gateway, maybe other worker) makes ann's removal; alice's next message must
    // not reach her, whichever worker caches what.
    alice.set_member_role(&g, "bob", v1::GroupRole::Admin).await.unwrap();
    bob.remove_members(&g, &["ann"]).await.unwrap();
    let err = ann.send(target.clone(), "text/plain", text("still here?")).await.unwrap_err();
    assert!(matches!(err, SdkError::Server { code: v1::ErrorCode::NotAMember, .. }), "{err}");
    let after = alice.send(target, "text/plain", text("after ann")).await.unwrap();
    loop {
        let m = next_message(&mut be).await;
        if m.conversation_id == g && m.seq == after.seq {
            break;
        }
    }
    send(&alice, "ann", text("fence"), &cluster).await;
    loop {
        let m = next_message(&mut ann_e).await;
        assert!(m.conversation_id != g || m.seq < after.seq, "pushed after removal: {m:?}");
        if m.conversation_id != g {
            break;
        }
    }
    block_in_place(|| drop(cluster));
}

/// The router caches presence: a device that logs in after its user was cached (and routed to
/// from the cache) gets the very next push, because the change feed dropped the user's entry
/// before that message was routed. The laptop's gateway holds nobody else, so a Push arriving
/// there is the proof (the message could also reach the laptop by a late sync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_logs_in_after_its_user_was_cached_gets_the_next_push() {
    let (cluster, key) = start(ClusterOptions { gateways: 2, workers: 1, ..Default::default() });
    let (alice, _ae) = connect(&cluster, 0, &mint(&key, "alice", "phone"), Transport::Tcp).await;
    let (_bob, mut be) = connect(&cluster, 0, &mint(&key, "bob", "phone"), Transport::Tcp).await;
    let hits = |c: &Cluster| {
        let m = block_in_place(|| c.worker_metrics(0)).unwrap();
        m.get("tern_dispatch_route_cache_hits_total").unwrap_or(0.0) as u64
    };
    // Until a push was routed from the cache (a round whose cache lags the change feed looks
    // everyone up instead, so on a busy machine it may take a few).
    let mut last = 0;
    for i in 0..50 {
        last = send(&alice, "bob", text(&format!("to the phone {i}")), &cluster).await.seq;
        while next_message(&mut be).await.seq < last {}
        if i > 0 && hits(&cluster) > 0 {
            break;
        }
    }
    assert!(hits(&cluster) > 0, "bob's pushes were routed from the cache\n{}", cluster.logs());
    let (_laptop, mut le) =
        connect(&cluster, 1, &mint(&key, "bob", "laptop"), Transport::Tcp).await;
    while next_message(&mut le).await.seq < last {}
    let ack = send(&alice, "bob", text("to both"), &cluster).await;
    for events in [&mut le, &mut be] {
        let m = next_message(events).await;
        assert_eq!((m.seq, &m.body[..]), (ack.seq, &b"to both"[..]));
    }
    // Pushed, not synced: gateway 1 holds nobody but the laptop, so any Push it got was this.
    let gw1 = block_in_place(|| cluster.gateway_metrics(1)).unwrap();
    let pushes = gw1.get("tern_gateway_link_pushes_total").unwrap_or(0.0);
    assert!(pushes >= 1.0, "the laptop's gateway got no Push\n{}", cluster.logs());
    block_in_place(|| drop(cluster));
}
