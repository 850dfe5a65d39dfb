//! Sending through the SDK over TCP and QUIC: acks carry sequence numbers, resends are
//! deduplicated, pushes reach the other user and the sender's other devices, and the
//! conversation list tells a returning client what changed. The resend-push test reads raw
//! frames, so it runs over TCP only.

use crate::common;

use common::*;
use tern_proto::v1::MessageKind;
use tern_sdk::Target;

async fn ack_carries_sequence_and_peer_gets_push(t: Transport) {
    let srv = TestServer::start_over(t, &[]).await;
    let (alice, _ae) = srv.client("alice", "phone").await;
    let (_bob, mut be) = srv.client("bob", "phone").await;

    for i in 1..=3u64 {
        let ack = alice
            .send(Target::Peer("bob".into()), "text/plain", text(&format!("hi {i}")))
            .await
            .unwrap();
        assert_eq!(ack.conversation_id, "dm:alice:bob");
        assert_eq!(ack.seq, i);
        assert!(!ack.duplicate);
        assert!(ack.server_time_ms > 0);
        let m = next_message(&mut be).await;
        assert_eq!(
            (m.seq, m.sender_user_id.as_str(), &m.body[..]),
            (i, "alice", format!("hi {i}").as_bytes())
        );
        assert_eq!(m.kind, MessageKind::Normal as i32);
        assert_eq!(m.client_msg_id, ack.client_msg_id);
    }
}

async fn resend_returns_original_ack_and_stores_once(t: Transport) {
    let srv = TestServer::start_over(t, &[]).await;
    let (phone, _e1) = srv.client("alice", "phone").await;
    let (laptop, _e2) = srv.client("alice", "laptop").await;
    let target = Target::Conversation("dm:alice:bob".into());

    let first =
        phone.send_with_id(target.clone(), "m-1".into(), "text/plain", text("once")).await.unwrap();
    assert!(!first.duplicate);
    // Same client id again, from the same device and from another device of the same user.
    let again =
        phone.send_with_id(target.clone(), "m-1".into(), "text/plain", text("once")).await.unwrap();
    let other = laptop
        .send_with_id(target.clone(), "m-1".into(), "text/plain", text("once"))
        .await
        .unwrap();
    for a in [&again, &other] {
        assert!(a.duplicate);
        assert_eq!(
            (a.seq, a.server_time_ms, a.conversation_id.as_str()),
            (first.seq, first.server_time_ms, "dm:alice:bob")
        );
    }
    let next = phone.send_with_id(target, "m-2".into(), "text/plain", text("twice")).await.unwrap();
    assert_eq!(next.seq, first.seq + 1, "a duplicate must not consume a sequence number");

    let page = phone.sync_page("dm:alice:bob", 1, 100).await.unwrap();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(page.messages[0].client_msg_id, "m-1");
    assert_eq!(page.last_seq, 2);
}

async fn sender_other_devices_get_own_messages(t: Transport) {
    let srv = TestServer::start_over(t, &[]).await;
    let (phone, mut phone_events) = srv.client("alice", "phone").await;
    let (_laptop, mut laptop_events) = srv.client("alice", "laptop").await;
    let (_bob, mut bob_events) = srv.client("bob", "tablet").await;

    let ack =
        phone.send(Target::Peer("bob".into()), "text/plain", text("from phone")).await.unwrap();
    let on_laptop = next_message(&mut laptop_events).await;
    let on_bob = next_message(&mut bob_events).await;
    assert_eq!((on_laptop.seq, on_laptop.sender_device_id.as_str()), (ack.seq, "phone"));
    assert_eq!(on_bob.seq, ack.seq);

    // Bob answers: both of alice's devices get it.
    let reply = _bob.send(Target::Peer("alice".into()), "text/plain", text("hello")).await.unwrap();
    assert_eq!(reply.seq, ack.seq + 1);
    assert_eq!(next_message(&mut laptop_events).await.seq, reply.seq);
    assert_eq!(next_message(&mut phone_events).await.seq, reply.seq);
}

async fn conversation_list_shows_what_changed(t: Transport) {
    let srv = TestServer::start_over(t, &[]).await;
    let (alice, _ae) = srv.client("alice", "phone").await;
    alice.send(Target::Peer("bob".into()), "text/plain", text("1")).await.unwrap();
    alice.send(Target::Peer("bob".into()), "text/plain", text("2")).await.unwrap();
    alice.send(Target::Peer("carol".into()), "text/plain", text("3")).await.unwrap();

    let (bob, _be) = srv.client("bob", "phone").await;
    let list = bob.list_conversations().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].conversation_id.as_str(), list[0].last_seq), ("dm:alice:bob", 2));
    let list = alice.list_conversations().await.unwrap();
    let ids: Vec<_> = list.iter().map(|c| (c.conversation_id.as_str(), c.last_seq)).collect();
    assert_eq!(ids, vec![("dm:alice:bob", 2), ("dm:alice:carol", 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_pushes_the_original_again_but_never_to_another_conversation() {
    use tern_proto::v1::envelope::Body;
    let srv = TestServer::start().await;
    let (alice, _ae) = srv.client("alice", "phone").await;
    let (mut bob, _) = Raw::login(srv.addr, &srv.token("bob", "phone")).await;
    let (mut carol, _) = Raw::login(srv.addr, &srv.token("carol", "phone")).await;
    let deliver = |env: tern_proto::v1::Envelope| match env.body {
        Some(Body::Deliver(d)) => d.message.unwrap(),
        other => panic!("expected a Deliver, got {other:?}"),
    };

    let first = alice
        .send_with_id(Target::Peer("bob".into()), "r-1".into(), "text/plain", text("hi"))
        .await
        .unwrap();
    assert_eq!(deliver(bob.recv().await.unwrap()).seq, first.seq);
    // A resend (the sender never saw the ack) pushes the stored original again.
    let again = alice
        .send_with_id(Target::Peer("bob".into()), "r-1".into(), "text/plain", text("hi"))
        .await
        .unwrap();
    assert!(again.duplicate);
    let m = deliver(bob.recv().await.unwrap());
    assert_eq!((m.seq, &m.body[..]), (first.seq, &b"hi"[..]));

    // The same client id aimed at another conversation is refused as a reuse and pushes
    // nothing to that conversation's members.
    let crafted = alice
        .send_with_id(Target::Peer("carol".into()), "r-1".into(), "text/plain", text("x"))
        .await;
    match crafted {
        Err(tern_sdk::SdkError::Server { code, .. }) => {
            assert_eq!(code, tern_proto::v1::ErrorCode::ClientMsgIdReused)
        }
        other => panic!("expected CLIENT_MSG_ID_REUSED, got {other:?}"),
    }
    alice
        .send_with_id(Target::Peer("carol".into()), "c-1".into(), "text/plain", text("yo"))
        .await
        .unwrap();
    let m = deliver(carol.recv().await.unwrap());
    assert_eq!((m.conversation_id.as_str(), m.client_msg_id.as_str()), ("dm:alice:carol", "c-1"));
}

crate::over_transports!(
    ack_carries_sequence_and_peer_gets_push,
    resend_returns_original_ack_and_stores_once,
    sender_other_devices_get_own_messages,
    conversation_list_shows_what_changed,
);
