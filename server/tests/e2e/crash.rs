//! Accepted means durable: messages acknowledged before the server process is killed with
//! SIGKILL are all there after a restart, with the same sequence numbers, and new messages
//! continue after them.

use crate::common;

use common::*;
use tern_sdk::Target;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path());
    let key = ChildServer::key(dir.path());
    let token = key.mint_for("alice", "phone", now_secs(), 3600);
    let (alice, _e) = connect(server.addr, &token).await;

    // Keep sending while the kill happens; remember every ack received before it.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sender = {
        let acked = acked.clone();
        let alice = alice.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let id = format!("k{i}");
                match alice
                    .send_with_id(Target::Peer("bob".into()), id.clone(), "text/plain", text(&id))
                    .await
                {
                    Ok(ack) => acked.lock().unwrap().push((ack.seq, id)),
                    Err(_) => break,
                }
            }
        })
    };
    // Let a few hundred messages be acknowledged, then kill -9 mid-stream.
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.kill9();
    let acked_before_kill: Vec<(u64, String)> = acked.lock().unwrap().clone();
    alice.close().await;
    sender.abort();

    let server = ChildServer::start(dir.path());
    let token = key.mint_for("bob", "phone", now_secs(), 3600);
    let (bob, _be) = connect(server.addr, &token).await;
    let mut stored = std::collections::HashMap::new();
    let mut from = 1;
    loop {
        let page = bob.sync_page("dm:alice:bob", from, 500).await.unwrap();
        assert!(page.missing.is_empty(), "embedded store never leaves holes");
        for m in page.messages {
            stored.insert(m.seq, m.client_msg_id);
        }
        if !page.has_more {
            break;
        }
        from = page.next_from_seq;
    }
    assert!(acked_before_kill.len() >= 300);
    for (seq, id) in &acked_before_kill {
        assert_eq!(
            stored.get(seq),
            Some(id),
            "acked message seq {seq} lost or changed after SIGKILL"
        );
    }
    // Sequences continue; none is reused.
    let last = stored.keys().max().copied().unwrap();
    let ack = bob.send(Target::Peer("alice".into()), "text/plain", text("after")).await.unwrap();
    assert_eq!(ack.seq, last + 1);
}
