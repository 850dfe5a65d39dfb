//! Offline push through the SDK over real sockets (PROTOCOL.md section 21), against local
//! imitations of APNs, FCM HTTP v1 and an operator's webhook (`tern_testkit::push_services`:
//! HTTP/2 servers that accept exactly the documented request shapes; the real services cannot
//! be reached from here, so no provider is called verified). What is shown: the right device
//! gets the right payload from each service; the sender's own devices are never notified; a
//! connected device that does not acknowledge in time is notified, one that does is not; a
//! token the service refuses is unregistered; mute and mention rules; bursts coalesce into one
//! push with a count; a silent push service changes nothing for delivery; the distributed mode.

use crate::common;

use common::*;
use serde_json::Value;
use tern_proto::v1::{DevicePlatform, PushProvider};
use tern_sdk::{Client, Event, Target};
use tern_testkit::push_services::{
    Answer, ApnsEndpoint, ApnsImitation, ApnsOptions, FcmImitation, FcmOptions, TestCa,
    WebhookOptions, WebhookReceiver,
};
use tokio::sync::mpsc::Receiver;

/// A 64-hex-digit APNs device token.
const APNS_TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn webhook_sets(hook: &WebhookReceiver) -> Vec<String> {
    let secret = String::from_utf8(WebhookOptions::default().secret).unwrap();
    vec![format!("notify.webhook.url={}", hook.url()), format!("notify.webhook.secret={secret}")]
}

fn apns_sets(apns: &ApnsImitation) -> Vec<String> {
    vec![
        format!("notify.apns.key_file={}", apns.key_file().display()),
        format!("notify.apns.key_id={}", apns.key_id()),
        format!("notify.apns.team_id={}", apns.team_id()),
        format!("notify.apns.production_url={}", apns.production_url()),
        format!("notify.apns.sandbox_url={}", apns.sandbox_url()),
    ]
}

fn fcm_sets(fcm: &FcmImitation) -> Vec<String> {
    vec![
        format!("notify.fcm.service_account_file={}", fcm.service_account_file().display()),
        format!("notify.fcm.base_url={}", fcm.base_url()),
    ]
}

async fn start(sets: Vec<String>) -> TestServer {
    let refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    TestServer::start_with(&refs).await
}

/// A client of `user`'s `device` that registers `token` with `provider` (for APNs the
/// imitation's topic, sandbox).
async fn registered(
    srv: &TestServer,
    user: &str,
    device: &str,
    provider: PushProvider,
    token: &str,
    app_id: &str,
) -> (Client, Receiver<Event>) {
    let mut cfg = srv.client_config(user, device);
    cfg.platform = DevicePlatform::Ios;
    let (c, e) = connect_with(cfg).await;
    c.register_push(provider, token, app_id, true).await.unwrap();
    (c, e)
}

/// Waits (bounded by [`WAIT`]) until metric `name` satisfies `ok`.
async fn until_metric(srv: &TestServer, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = srv.metric(name).await;
        if ok(v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} stayed at {v}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Closes `clients` and waits until the server has `left` connections.
async fn go_offline(srv: &TestServer, clients: Vec<Client>, left: u64) {
    for c in clients {
        c.close().await;
    }
    until_metric(srv, "tern_gateway_connections_open", |v| v == left).await;
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_str().unwrap_or_else(|| panic!("{path:?} is not a string in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_get_the_right_push_from_each_service() {
    let ca = TestCa::new().unwrap();
    let mut apns =
        ApnsImitation::start(ApnsOptions { ca: Some(ca.clone()), ..Default::default() }).unwrap();
    let mut fcm =
        FcmImitation::start(FcmOptions { ca: Some(ca.clone()), ..Default::default() }).unwrap();
    let mut hook = WebhookReceiver::start(WebhookOptions::default()).unwrap();
    let mut sets = vec![
        format!("notify.ca_file={}", ca.ca_file().display()),
        "notify.ack_timeout=0s".into(),
        "notify.coalesce_window=0s".into(),
    ];
    sets.extend(apns_sets(&apns));
    sets.extend(fcm_sets(&fcm));
    sets.extend(webhook_sets(&hook));
    let srv = start(sets).await;

    let (alice, _ae) = srv.client("alice", "desk").await;
    let (alice_phone, _) =
        registered(&srv, "alice", "phone", PushProvider::Webhook, "hook-alice", "").await;
    let (bob_phone, _) =
        registered(&srv, "bob", "phone", PushProvider::Apns, APNS_TOKEN, apns.topic()).await;
    let (_bob_desk, mut bob_desk_events) = srv.client("bob", "desk").await;
    let (carol, _) = registered(&srv, "carol", "android", PushProvider::Fcm, "fcm-carol", "").await;
    let (dave, _) = registered(&srv, "dave", "phone", PushProvider::Webhook, "hook-dave", "").await;
    go_offline(&srv, vec![alice_phone, bob_phone, carol, dave], 2).await;

    let to_bob =
        alice.send(Target::Peer("bob".into()), "text/plain", text("hi bob")).await.unwrap();
    let to_carol =
        alice.send(Target::Peer("carol".into()), "text/plain", text("hi carol")).await.unwrap();
    let to_dave =
        alice.send(Target::Peer("dave".into()), "text/plain", text("hi dave")).await.unwrap();
    // bob's connected desktop gets the message itself.
    assert_eq!(next_message(&mut bob_desk_events).await.seq, to_bob.seq);

    let a = apns.next_within(WAIT).await.unwrap();
    assert_eq!(
        (a.token.as_str(), a.endpoint, a.status),
        (APNS_TOKEN, ApnsEndpoint::Sandbox, Some(200))
    );
    assert_eq!(a.header("apns-topic"), Some(apns.topic()));
    assert_eq!(str_of(&a.payload, &["tern", "conversation_id"]), to_bob.conversation_id);
    assert_eq!(a.payload["tern"]["seq"], to_bob.seq);
    assert_eq!(
        str_of(&a.payload, &["aps", "alert", "body"]),
        "New message",
        "no preview by default"
    );

    let f = fcm.next_within(WAIT).await.unwrap();
    assert_eq!((f.token.as_str(), f.status), ("fcm-carol", Some(200)));
    assert_eq!(str_of(&f.message, &["data", "conversation_id"]), to_carol.conversation_id);
    assert_eq!(str_of(&f.message, &["data", "seq"]), to_carol.seq.to_string());

    let h = hook.next_within(WAIT).await.unwrap();
    assert!(h.signed, "the webhook is signed");
    assert_eq!((h.token.as_str(), str_of(&h.payload, &["user_id"])), ("hook-dave", "dave"));
    assert_eq!(str_of(&h.payload, &["conversation_id"]), to_dave.conversation_id);
    assert_eq!(h.payload["seq"], to_dave.seq);
    assert_eq!(str_of(&h.payload, &["sender_user_id"]), "alice");

    // Each device once; the sender's own offline phone never.
    let sent = r#"tern_notify_sent_total{provider="webhook"}"#;
    until_metric(&srv, sent, |v| v == 1).await;
    assert!(hook.drain().is_empty() && apns.drain().is_empty() && fcm.drain().is_empty());
    assert_eq!(srv.metric("tern_dispatch_push_offline_total").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_device_that_does_not_acknowledge_is_notified_after_the_ack_timeout() {
    let mut hook = WebhookReceiver::start(WebhookOptions::default()).unwrap();
    let mut sets = webhook_sets(&hook);
    // Long enough for a receipt on a busy machine, short enough for a test.
    sets.extend(["notify.ack_timeout=5s".into(), "notify.coalesce_window=0s".into()]);
    let srv = start(sets).await;
    let (alice, _ae) = srv.client("alice", "desk").await;
    let (bob, mut be) =
        registered(&srv, "bob", "phone", PushProvider::Webhook, "hook-bob", "").await;

    // Delivered to the connection, never acknowledged (a suspended app): notified.
    let m1 = alice.send(Target::Peer("bob".into()), "text/plain", text("one")).await.unwrap();
    assert_eq!(next_message(&mut be).await.seq, m1.seq);
    let h = hook.next_within(WAIT).await.unwrap();
    assert_eq!((h.token.as_str(), h.payload["seq"].as_u64()), ("hook-bob", Some(m1.seq)));
    assert_eq!(srv.metric("tern_dispatch_push_unacknowledged_total").await, 1);
    assert_eq!(srv.metric("tern_dispatch_push_offline_total").await, 0);

    // Acknowledged (DELIVERED receipt) in time: not notified.
    let m2 = alice.send(Target::Peer("bob".into()), "text/plain", text("two")).await.unwrap();
    assert_eq!(next_message(&mut be).await.seq, m2.seq);
    bob.mark_delivered(&m2.conversation_id, m2.seq).await.unwrap();
    until_metric(&srv, "tern_dispatch_push_acknowledged_total", |v| v == 1).await;
    assert!(hook.try_next().is_none(), "an acknowledged message is not pushed");
    assert_eq!(srv.metric("tern_dispatch_push_unacknowledged_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_service_refuses_is_unregistered() {
    let ca = TestCa::new().unwrap();
    let mut apns =
        ApnsImitation::start(ApnsOptions { ca: Some(ca.clone()), ..Default::default() }).unwrap();
    let mut hook = WebhookReceiver::start(WebhookOptions::default()).unwrap();
    apns.answer(APNS_TOKEN, Answer::Unregistered);
    hook.answer("hook-dave", Answer::Unregistered);
    let mut sets =
        vec![format!("notify.ca_file={}", ca.ca_file().display()), "notify.ack_timeout=0s".into()];
    sets.extend(apns_sets(&apns));
    sets.extend(webhook_sets(&hook));
    let srv = start(sets).await;
    let (alice, _ae) = srv.client("alice", "desk").await;
    let (bob, _) =
        registered(&srv, "bob", "phone", PushProvider::Apns, APNS_TOKEN, apns.topic()).await;
    let (dave, _) = registered(&srv, "dave", "phone", PushProvider::Webhook, "hook-dave", "").await;
    let (carol, _) =
        registered(&srv, "carol", "phone", PushProvider::Webhook, "hook-carol", "").await;
    go_offline(&srv, vec![bob, dave, carol], 1).await;

    alice.send(Target::Peer("bob".into()), "text/plain", text("hi")).await.unwrap();
    alice.send(Target::Peer("dave".into()), "text/plain", text("hi")).await.unwrap();
    assert_eq!(apns.next_within(WAIT).await.unwrap().status, Some(410));
    assert_eq!(hook.next_within(WAIT).await.unwrap().status, Some(410));
    until_metric(&srv, "tern_dispatch_push_unregistered_total", |v| v == 2).await;

    for (user, provider) in [("bob", PushProvider::Apns), ("dave", PushProvider::Webhook)] {
        let (c, _) = srv.client(user, "phone").await;
        let list = c.devices().await.unwrap();
        let phone = list.iter().find(|d| d.device_id == "phone").unwrap();
        assert_eq!(
            phone.push_provider,
            PushProvider::Unspecified as i32,
            "{user}: {provider:?} kept"
        );
        c.close().await;
    }
    // Nothing more is planned for the dead tokens: bob's next message counts no push, and
    // carol's after it (planned in order) shows it was looked at.
    go_offline(&srv, Vec::new(), 1).await;
    alice.send(Target::Peer("bob".into()), "text/plain", text("again")).await.unwrap();
    alice.send(Target::Peer("carol".into()), "text/plain", text("hi")).await.unwrap();
    let offline = until_metric(&srv, "tern_dispatch_push_offline_total", |v| v >= 3).await;
    assert_eq!(offline, 3, "bob's removed registration is not notified");
    assert_eq!(hook.next_within(WAIT).await.unwrap().token, "hook-carol");
    assert!(apns.try_next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_and_mention_rules_decide_who_is_notified() {
    let mut hook = WebhookReceiver::start(WebhookOptions::default()).unwrap();
    let mut sets = webhook_sets(&hook);
    sets.extend(["notify.ack_timeout=0s".into(), "notify.coalesce_window=0s".into()]);
    let srv = start(sets).await;
    let (alice, _ae) = srv.client("alice", "desk").await;
    let g = alice.create_group("team", &["bob", "carol", "dave"], "push-mute-1").await.unwrap();
    let gid = g.conversation_id.clone();
    let mut offline = Vec::new();
    for user in ["bob", "carol", "dave"] {
        let token = format!("hook-{user}");
        let (c, _) = registered(&srv, user, "phone", PushProvider::Webhook, &token, "").await;
        if user != "bob" {
            c.update_conversation(&gid, Some(true), None).await.unwrap();
        }
        offline.push(c);
    }
    go_offline(&srv, offline, 1).await;

    let to_g = || Target::Conversation(gid.clone());
    let plain = alice.send(to_g(), "text/plain", text("plain")).await.unwrap();
    let at_dave =
        alice.send_mentioning(to_g(), "text/plain", text("@dave"), &["dave"], false).await.unwrap();
    let at_all =
        alice.send_mentioning(to_g(), "text/plain", text("@all"), &[], true).await.unwrap();

    // bob 3, dave 2 (@dave, @all), carol 1 (@all); muted without a mention: carol twice, dave once.
    until_metric(&srv, r#"tern_notify_suppressed_total{reason="muted"}"#, |v| v == 3).await;
    until_metric(&srv, r#"tern_notify_sent_total{provider="webhook"}"#, |v| v == 6).await;
    let mut got: Vec<(String, u64, String)> = hook
        .drain()
        .into_iter()
        .map(|h| {
            let mention = str_of(&h.payload, &["mention"]).to_owned();
            (h.token, h.payload["seq"].as_u64().unwrap(), mention)
        })
        .collect();
    got.sort();
    let want = |t: &str, seq: u64, m: &str| (t.to_string(), seq, m.to_string());
    let mut expected = vec![
        want("hook-bob", plain.seq, "none"),
        want("hook-bob", at_dave.seq, "none"),
        want("hook-bob", at_all.seq, "all"),
        want("hook-carol", at_all.seq, "all"),
        want("hook-dave", at_dave.seq, "user"),
        want("hook-dave", at_all.seq, "all"),
    ];
    expected.sort();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_coalesced_into_one_push_with_its_count() {
    let mut hook = WebhookReceiver::start(WebhookOptions::default()).unwrap();
    let mut sets = webhook_sets(&hook);
    // A window longer than the test: the merged burst leaves at shutdown (which flushes it).
    sets.extend(["notify.ack_timeout=0s".into(), "notify.coalesce_window=1h".into()]);
    let srv = start(sets).await;
    let (alice, _ae) = srv.client("alice", "desk").await;
    let (bob, _) = registered(&srv, "bob", "phone", PushProvider::Webhook, "hook-bob", "").await;
    go_offline(&srv, vec![bob], 1).await;
    let mut last = None;
    for i in 0..5 {
        let body = text(&format!("m{i}"));
        last = Some(alice.send(Target::Peer("bob".into()), "text/plain", body).await.unwrap());
    }
    let first = hook.next_within(WAIT).await.unwrap();
    assert_eq!(
        (first.payload["count"].as_u64(), str_of(&first.payload, &["body"])),
        (Some(1), "New message")
    );
    until_metric(&srv, "tern_notify_coalesced_total", |v| v == 4).await;
    assert!(hook.try_next().is_none(), "the rest wait for the window");
    alice.close().await;
    srv.stop().await;
    let merged = hook.next_within(WAIT).await.unwrap();
    assert_eq!(merged.payload["count"].as_u64(), Some(4));
    assert_eq!(merged.payload["seq"].as_u64(), last.map(|a| a.seq));
    assert_eq!(str_of(&merged.payload, &["body"]), "4 new messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_push_service_changes_nothing_for_delivery() {
    let mut hook = WebhookReceiver::start(WebhookOptions::default()).unwrap();
    hook.answer_all(Answer::Never);
    let mut sets = webhook_sets(&hook);
    sets.extend([
        "notify.ack_timeout=0s".into(),
        "notify.coalesce_window=0s".into(),
        "notify.shutdown_grace=0s".into(),
        "notify.webhook.limits.concurrency=1".into(),
        "notify.webhook.limits.queue_capacity=2".into(),
        "notify.webhook.limits.request_timeout=1h".into(),
    ]);
    let srv = start(sets).await;
    let (alice, _ae) = srv.client("alice", "desk").await;
    let g = alice.create_group("team", &["bob", "carol"], "push-silent-1").await.unwrap();
    let (bob, _) = registered(&srv, "bob", "phone", PushProvider::Webhook, "hook-bob", "").await;
    go_offline(&srv, vec![bob], 1).await;
    let (_carol, mut ce) = srv.client("carol", "phone").await;

    const N: u64 = 100;
    let mut acks = Vec::new();
    for i in 0..N {
        let body = text(&format!("m{i}"));
        acks.push(
            alice
                .send(Target::Conversation(g.conversation_id.clone()), "text/plain", body)
                .await
                .unwrap(),
        );
    }
    // carol gets every message in order (after the group's creation event, which she syncs).
    let last = acks.last().map_or(0, |a| a.seq);
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        let m = next_message(&mut ce).await;
        if m.seq >= acks[0].seq {
            got.push(m.seq);
        }
    }
    assert_eq!(got, acks.iter().map(|a| a.seq).collect::<Vec<_>>());
    // The push lane is stuck on its first request; the rest were dropped, not waited for.
    let _stuck = hook.next_within(WAIT).await.unwrap();
    let full = r#"tern_notify_dropped_total{provider="webhook",reason="provider_full"}"#;
    until_metric(&srv, full, |v| v >= N - 3).await;
    let (bob, _) = srv.client("bob", "phone").await;
    let page = bob.sync_page(&g.conversation_id, 0, 500).await.unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    for a in &acks {
        assert!(seqs.contains(&a.seq), "bob syncs seq {} ({seqs:?})", a.seq);
    }
}

/// The distributed mode: two gateways, two workers, the Redis store. A device offline on one
/// gateway is notified of a message sent through the other, by whichever worker committed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_distributed_mode_notifies_offline_devices() {
    use tern_testkit::cluster::{Cluster, ClusterOptions};
    use tokio::task::block_in_place;
    let mut hook = WebhookReceiver::start(WebhookOptions::default()).unwrap();
    let mut worker_sets = webhook_sets(&hook);
    worker_sets.extend(["notify.ack_timeout=0s".into(), "notify.coalesce_window=0s".into()]);
    let opts = ClusterOptions { worker_sets, ..ClusterOptions::default() };
    let cluster = block_in_place(|| Cluster::start(env!("CARGO_BIN_EXE_tern").as_ref(), opts))
        .unwrap_or_else(|e| panic!("cluster start: {e}"));
    let key = tern_gateway::TokenKey::from_base64(cluster.key_base64()).unwrap();
    let cfg = |i: usize, user: &str, device: &str| {
        let token = key.mint_for(user, device, now_secs(), 3600);
        tern_sdk::ClientConfig::new(cluster.gateway_addr(i).to_string(), token)
    };
    let (bob, mut be) = crate::devices::retry(&cluster, cfg(0, "bob", "phone")).await;
    bob.register_push(PushProvider::Webhook, "hook-bob", "", false).await.unwrap();
    bob.close().await;
    while be.recv().await.is_some() {}
    let (alice, _ae) = crate::devices::retry(&cluster, cfg(1, "alice", "desk")).await;
    // Presence forgets bob's connection once his gateway has seen the close; until then a
    // message finds him "online" (no push at ack_timeout 0): send until one is pushed.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut sent = Vec::new();
    let h = loop {
        let ack = alice.send(Target::Peer("bob".into()), "text/plain", text("hi")).await.unwrap();
        sent.push(ack.seq);
        match hook.next_within(std::time::Duration::from_millis(500)).await {
            Ok(h) => break h,
            Err(_) if tokio::time::Instant::now() < deadline => continue,
            Err(e) => panic!("no push: {e}\n{}", cluster.logs()),
        }
    };
    assert!(h.signed);
    assert_eq!(h.token, "hook-bob");
    let seq = h.payload["seq"].as_u64().unwrap();
    assert!(sent.contains(&seq), "pushed seq {seq} was sent ({sent:?})");
    drop(alice);
}
