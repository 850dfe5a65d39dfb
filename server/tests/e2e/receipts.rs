//! Receipts are watermarks: "delivered up to N" and "read up to N" per member, never moving
//! back, pushed to the other member and to the user's other devices.

use crate::common;

use common::*;
use tern_sdk::{Event, Target};

async fn watermarks_move_forward_and_are_pushed(t: Transport) {
    let srv = TestServer::start_over(t, &[]).await;
    let (alice, mut ae) = srv.client("alice", "phone").await;
    let (bob, mut be) = srv.client("bob", "phone").await;
    let (_bob2, mut be2) = srv.client("bob", "laptop").await;
    for i in 0..5 {
        alice.send(Target::Peer("bob".into()), "text/plain", text(&i.to_string())).await.unwrap();
    }
    for _ in 0..5 {
        next_message(&mut be).await;
    }
    let conv = "dm:alice:bob";

    let w = bob.mark_delivered(conv, 5).await.unwrap();
    assert_eq!((w.delivered_seq, w.read_seq), (5, 0));
    let w = bob.mark_read(conv, 3).await.unwrap();
    assert_eq!((w.delivered_seq, w.read_seq), (5, 3));
    // Lower values never move a watermark back.
    let w = bob.mark_read(conv, 1).await.unwrap();
    assert_eq!((w.delivered_seq, w.read_seq), (5, 3));
    // A watermark cannot pass the conversation's end: refused, nothing moves.
    match bob.mark_read(conv, 1_000).await {
        Err(tern_sdk::SdkError::Server { code, .. }) => {
            assert_eq!(code, tern_proto::v1::ErrorCode::InvalidRequest)
        }
        other => panic!("expected INVALID_REQUEST, got {other:?}"),
    }
    // The same seq again moves nothing and pushes nothing: the next push alice and bob's
    // laptop see is the one of the move after it.
    let w = bob.mark_read(conv, 3).await.unwrap();
    assert_eq!((w.delivered_seq, w.read_seq), (5, 3));
    let w = bob.mark_read(conv, 5).await.unwrap();
    assert_eq!((w.delivered_seq, w.read_seq), (5, 5));

    // Alice sees bob's progress as pushes, one per move and in order (the updates that moved
    // nothing pushed nothing); bob's other device too.
    let mut seen = Vec::new();
    let last = wait_event(&mut ae, |e| match e {
        Event::Receipt(r) => {
            seen.push((r.delivered_seq, r.read_seq));
            (r.read_seq == 5).then(|| r.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(seen, [(5, 0), (5, 3), (5, 5)], "one push per move");
    assert_eq!((last.user_id.as_str(), last.conversation_id.as_str()), ("bob", conv));
    wait_event(&mut be2, |e| matches!(e, Event::Receipt(r) if r.read_seq == 5).then_some(())).await;

    let all = alice.get_receipts(conv).await.unwrap();
    let bob_row = all.members.iter().find(|m| m.user_id == "bob").unwrap();
    assert_eq!((bob_row.delivered_seq, bob_row.read_seq), (5, 5));

    // Outsiders may not see or set receipts.
    let (carol, _ce) = srv.client("carol", "phone").await;
    assert!(carol.get_receipts(conv).await.is_err());
    assert!(carol.mark_read(conv, 1).await.is_err());
}

crate::over_transports!(watermarks_move_forward_and_are_pushed,);
