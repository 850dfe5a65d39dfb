//! One order per conversation: concurrent senders in one conversation get strictly increasing,
//! unique sequence numbers, and each sender's own messages keep the order it sent them in.

use crate::common;

use std::collections::BTreeSet;

use common::*;
use tern_sdk::Target;

async fn concurrent_senders_get_unique_increasing_sequences(t: Transport) {
    let srv = TestServer::start_over(t, &[]).await;
    const PER_SENDER: usize = 200;
    let senders = [("alice", "phone"), ("alice", "laptop"), ("bob", "phone"), ("bob", "tablet")];
    let mut tasks = Vec::new();
    for (user, device) in senders {
        let (client, _events) = srv.client(user, device).await;
        tasks.push(tokio::spawn(async move {
            let _events = _events;
            // Pipelined: many sends in flight at once, acks collected in send order.
            let mut pending = Vec::new();
            for i in 0..PER_SENDER {
                let c = client.clone();
                pending.push(tokio::spawn(async move {
                    c.send(
                        Target::Conversation("dm:alice:bob".into()),
                        "text/plain",
                        text(&format!("{device}-{i}")),
                    )
                    .await
                    .unwrap()
                }));
                if pending.len() % 32 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            let mut seqs = Vec::new();
            for p in pending {
                seqs.push(p.await.unwrap().seq);
            }
            seqs
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        for s in &seqs {
            assert!(all.insert(*s), "sequence {s} handed out twice");
        }
    }
    let n = (PER_SENDER * senders.len()) as u64;
    assert_eq!(all, (1..=n).collect::<BTreeSet<_>>(), "sequences must be exactly 1..=N");

    // The stored order agrees with the acks.
    let (reader, _e) = srv.client("bob", "reader").await;
    let mut from = 1;
    let mut seen = 0u64;
    loop {
        let page = reader.sync_page("dm:alice:bob", from, 500).await.unwrap();
        for m in &page.messages {
            seen += 1;
            assert_eq!(m.seq, seen);
        }
        if !page.has_more {
            break;
        }
        from = page.next_from_seq;
    }
    assert_eq!(seen, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_keeps_its_send_order() {
    use tern_proto::v1::{self, envelope::Body};
    let srv = TestServer::start().await;
    let (mut raw, _) = Raw::login(srv.addr, &srv.token("alice", "phone")).await;
    // 300 sends written back to back before reading any ack: the server must sequence them in
    // the order they arrived on the connection.
    let mut bytes = Vec::new();
    for i in 1..=300u64 {
        let env = v1::Envelope {
            request_id: 1000 + i,
            body: Some(Body::Send(v1::Send {
                peer_user_id: "bob".into(),
                client_msg_id: format!("c{i}"),
                content_type: "text/plain".into(),
                body: text(&i.to_string()),
                ..Default::default()
            })),
        };
        bytes.extend_from_slice(&tern_proto::encode_to_bytes(&env, usize::MAX).unwrap());
    }
    raw.send_bytes(&bytes).await;
    let mut seq_of = std::collections::HashMap::new();
    while seq_of.len() < 300 {
        let env = raw.recv_answer().await;
        match env.body {
            Some(Body::SendAck(ack)) => {
                seq_of.insert(env.request_id - 1000, ack.seq);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for i in 1..=300u64 {
        assert_eq!(seq_of[&i], i, "send #{i} got seq {}", seq_of[&i]);
    }
}

crate::over_transports!(concurrent_senders_get_unique_increasing_sequences,);
