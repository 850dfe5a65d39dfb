//! Recall is an event: the sender recalls within the window, the recall gets its own seq and is
//! pushed, and the original then syncs as recalled with its body removed. Others cannot recall
//! it, and nobody can after the window.

use crate::common;

use common::*;
use tern_proto::v1::{ErrorCode, MessageKind};
use tern_sdk::{SdkError, Target};

async fn sender_recalls_within_window(t: Transport) {
    let srv = TestServer::start_over(t, &[]).await;
    let (alice, _ae) = srv.client("alice", "phone").await;
    let (bob, mut be) = srv.client("bob", "phone").await;
    let sent = alice.send(Target::Peer("bob".into()), "text/plain", text("oops")).await.unwrap();
    assert_eq!(next_message(&mut be).await.seq, sent.seq);

    // Bob cannot recall alice's message.
    match bob.recall(&sent.conversation_id, sent.seq).await {
        Err(SdkError::Server { code, .. }) => assert_eq!(code, ErrorCode::NotSender),
        other => panic!("expected NOT_SENDER, got {other:?}"),
    }
    // Unknown message.
    match alice.recall(&sent.conversation_id, 999).await {
        Err(SdkError::Server { code, .. }) => assert_eq!(code, ErrorCode::UnknownMessage),
        other => panic!("expected UNKNOWN_MESSAGE, got {other:?}"),
    }

    let recall = alice.recall(&sent.conversation_id, sent.seq).await.unwrap();
    assert_eq!(recall.seq, sent.seq + 1, "the recall is an ordered event with its own seq");
    let ev = next_message(&mut be).await;
    assert_eq!(
        (ev.kind, ev.recalled_seq, ev.seq),
        (MessageKind::Recall as i32, sent.seq, recall.seq)
    );

    let page = bob.sync_page(&sent.conversation_id, 1, 10).await.unwrap();
    assert_eq!(page.messages.len(), 2);
    assert!(page.messages[0].recalled);
    assert!(page.messages[0].body.is_empty(), "a recalled message's body is gone");
    assert_eq!(page.messages[1].kind, MessageKind::Recall as i32);
}

async fn recall_after_window_is_refused(t: Transport) {
    let srv = TestServer::start_over(t, &["dispatch.recall_window=1ms"]).await;
    let (alice, _ae) = srv.client("alice", "phone").await;
    let sent =
        alice.send(Target::Peer("bob".into()), "text/plain", text("too late")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    match alice.recall(&sent.conversation_id, sent.seq).await {
        Err(SdkError::Server { code, .. }) => assert_eq!(code, ErrorCode::RecallWindowPassed),
        other => panic!("expected RECALL_WINDOW_PASSED, got {other:?}"),
    }
    let page = alice.sync_page(&sent.conversation_id, 1, 10).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert!(!page.messages[0].recalled);
}

crate::over_transports!(sender_recalls_within_window, recall_after_window_is_refused,);
