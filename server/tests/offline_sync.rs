//! A recipient offline while 10,000 messages arrive receives all of them, in order and exactly
//! once, through paged sync when it reconnects.

mod common;

use common::*;
use tern_sdk::Target;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_catches_up_in_order() {
    const N: u64 = 10_000;
    let srv = TestServer::start().await;
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
