//! A recipient offline while 10,000 messages arrive receives all of them, in order and exactly
//! once, through paged sync when it reconnects.

use crate::common;

use common::*;
use tern_sdk::Target;

async fn offline_recipient_catches_up_in_order(t: Transport) {
    const N: u64 = 10_000;
    // One connection sends 10,000 messages as fast as it can: lift the per-connection rate.
    let srv = TestServer::start_over(t, &["gateway.max_frames_per_sec=0"]).await;
    let (alice, _ae) = srv.client("alice", "phone").await;
    // Send with a window of outstanding sends, like a busy chat.
    let mut pending = std::collections::VecDeque::new();
    for i in 0..N {
        let c = alice.clone();
        pending.push_back(tokio::spawn(async move {
            c.send(Target::Peer("bob".into()), "text/plain", text(&format!("m{i}"))).await.unwrap()
        }));
        if pending.len() >= 256 {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for p in pending {
        p.await.unwrap();
    }

    // Bob was never online. He connects and must get 1..=N in order, once each.
    let (_bob, mut events) = srv.client("bob", "phone").await;
    for expected in 1..=N {
        let m = next_message(&mut events).await;
        assert_eq!(m.seq, expected, "out of order or duplicate");
        assert_eq!(m.conversation_id, "dm:alice:bob");
    }
    // Nothing more arrives (no duplicates after the catch-up).
    alice.send(Target::Peer("bob".into()), "text/plain", text("live")).await.unwrap();
    assert_eq!(next_message(&mut events).await.seq, N + 1);
}

async fn large_messages_sync_in_pages_that_fit_a_frame(t: Transport) {
    let srv = TestServer::start_over(t, &[]).await;
    let (alice, _ae) = srv.client("alice", "phone").await;
    let big = bytes::Bytes::from(vec![b'z'; 60 * 1024]);
    for _ in 0..6 {
        alice
            .send(Target::Peer("bob".into()), "application/octet-stream", big.clone())
            .await
            .unwrap();
    }
    // A body that could not fit in a Deliver frame is refused up front.
    let too_big = bytes::Bytes::from(vec![b'z'; 64 * 1024 - 1024]);
    match alice.send(Target::Peer("bob".into()), "application/octet-stream", too_big).await {
        Err(tern_sdk::SdkError::Server { code, .. }) => {
            assert_eq!(code, tern_proto::v1::ErrorCode::InvalidRequest)
        }
        other => panic!("expected INVALID_REQUEST, got {other:?}"),
    }
    // Raw pages stay under the 64 KiB frame limit: one 60 KiB message per page.
    let page = alice.sync_page("dm:alice:bob", 1, 100).await.unwrap();
    assert_eq!((page.messages.len(), page.next_from_seq, page.has_more), (1, 2, true));
    // And the SDK catches up through them.
    let (_bob, mut events) = srv.client("bob", "phone").await;
    for expected in 1..=6 {
        let m = next_message(&mut events).await;
        assert_eq!((m.seq, m.body.len()), (expected, 60 * 1024));
    }
}

crate::over_transports!(
    offline_recipient_catches_up_in_order,
    large_messages_sync_in_pages_that_fit_a_frame,
);
