//! Dispatch's request rules on a real embedded store, with pushes recorded by user: receipts
//! push only when a watermark moves and refuse a seq above the conversation's end, a recalled
//! message cannot be recalled again (a resend of the recall still gets its ack), a
//! client_msg_id names one request (a reuse elsewhere is refused, a true resend is answered
//! and pushed again), and every documented limit of Send, Recall and Receipt answers the
//! error the protocol names.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prost::Message as _;
use tern_dispatch::{ConnRef, DispatchConfig, Dispatcher, Origin, Pusher};
use tern_proto::v1::{self, Envelope, ErrorCode, ReceiptKind, envelope::Body};
use tern_store::EmbeddedStore;

/// Every push, as (user, decoded body), in push order.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Body)>>);

impl Pusher for Recorder {
    fn push(&self, user_id: &str, frame: &Bytes, _skip: Option<&ConnRef>) {
        let env = Envelope::decode(&frame[4..]).expect("a push decodes");
        let body = env.body.expect("a push has a body");
        self.0.lock().expect("recorder lock").push((user_id.to_owned(), body));
    }
}

impl Recorder {
    fn take(&self) -> Vec<(String, Body)> {
        std::mem::take(&mut *self.0.lock().expect("recorder lock"))
    }
}

struct Rig {
    d: Arc<Dispatcher>,
    pushes: Arc<Recorder>,
    next_id: std::sync::atomic::AtomicU64,
    _dir: tempfile::TempDir,
}

fn origin(user: &str) -> Origin {
    Origin {
        user_id: user.into(),
        device_id: "phone".into(),
        gateway_id: String::new(),
        connection_id: 1,
    }
}

async fn rig(cfg: DispatchConfig) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open store"));
    let pushes = Arc::new(Recorder::default());
    let d = Dispatcher::new(cfg, store, pushes.clone());
    Rig { d, pushes, next_id: 1.into(), _dir: dir }
}

impl Rig {
    async fn call(&self, user: &str, body: Body) -> Body {
        let request_id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answer = self.d.handle(&origin(user), Envelope { request_id, body: Some(body) }).await;
        assert_eq!(answer.request_id, request_id);
        answer.body.expect("an answer has a body")
    }

    async fn send(&self, user: &str, peer: &str, id: &str, text: &str) -> Body {
        self.call(
            user,
            Body::Send(v1::Send {
                peer_user_id: peer.into(),
                client_msg_id: id.into(),
                content_type: "text/plain".into(),
                body: Bytes::from(text.to_owned()),
                ..Default::default()
            }),
        )
        .await
    }

    async fn recall(&self, user: &str, conv: &str, seq: u64, id: &str) -> Body {
        let req = v1::Recall { conversation_id: conv.into(), seq, client_msg_id: id.into() };
        self.call(user, Body::Recall(req)).await
    }

    async fn receipt(&self, user: &str, conv: &str, kind: i32, seq: u64) -> Body {
        let req = v1::Receipt { conversation_id: conv.into(), kind, seq };
        self.call(user, Body::Receipt(req)).await
    }
}

fn ack(b: Body) -> v1::SendAck {
    match b {
        Body::SendAck(a) => a,
        other => panic!("expected a SendAck, got {other:?}"),
    }
}

fn code(b: Body) -> ErrorCode {
    match b {
        Body::Error(e) => {
            assert!(!e.fatal, "request errors are never fatal");
            ErrorCode::try_from(e.code).expect("a known code")
        }
        other => panic!("expected an Error, got {other:?}"),
    }
}

fn watermarks(b: Body) -> (u64, u64) {
    match b {
        Body::ReceiptUpdate(u) => (u.delivered_seq, u.read_seq),
        other => panic!("expected a ReceiptUpdate, got {other:?}"),
    }
}

const CONV: &str = "dm:alice:bob";
const DELIVERED: i32 = ReceiptKind::Delivered as i32;
const READ: i32 = ReceiptKind::Read as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_push_only_when_a_watermark_moves() {
    let r = rig(DispatchConfig::default()).await;
    for i in 0..3 {
        ack(r.send("alice", "bob", &format!("m{i}"), "hi").await);
    }
    r.pushes.take();
    // (kind, seq, answer, pushed?)
    let steps = [
        (DELIVERED, 0, (0, 0), false),
        (DELIVERED, 2, (2, 0), true),
        (DELIVERED, 2, (2, 0), false),
        (DELIVERED, 1, (2, 0), false),
        (READ, 0, (2, 0), false),
        (READ, 1, (2, 1), true),
        (READ, 1, (2, 1), false),
        (READ, 3, (3, 3), true),
        (DELIVERED, 3, (3, 3), false),
    ];
    for (kind, seq, expected, pushed) in steps {
        let got = watermarks(r.receipt("bob", CONV, kind, seq).await);
        assert_eq!(got, expected, "answer to kind {kind} seq {seq}");
        let pushes = r.pushes.take();
        if pushed {
            let users: Vec<&str> = pushes.iter().map(|(u, _)| u.as_str()).collect();
            assert_eq!(users, ["alice", "bob"], "kind {kind} seq {seq}: pushed to both members");
            for (_, body) in pushes {
                assert_eq!(watermarks(body), expected);
            }
        } else {
            assert!(pushes.is_empty(), "kind {kind} seq {seq} moved nothing but pushed {pushes:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_above_the_last_seq_is_refused_and_moves_nothing() {
    let r = rig(DispatchConfig::default()).await;
    assert_eq!(code(r.receipt("bob", CONV, READ, 1).await), ErrorCode::InvalidRequest);
    ack(r.send("alice", "bob", "m1", "hi").await);
    ack(r.send("alice", "bob", "m2", "hi").await);
    r.pushes.take();
    for kind in [DELIVERED, READ] {
        assert_eq!(code(r.receipt("bob", CONV, kind, 3).await), ErrorCode::InvalidRequest);
        assert_eq!(code(r.receipt("bob", CONV, kind, u64::MAX).await), ErrorCode::InvalidRequest);
    }
    assert!(r.pushes.take().is_empty());
    let all = match r
        .call("alice", Body::GetReceipts(v1::GetReceipts { conversation_id: CONV.into() }))
        .await
    {
        Body::Receipts(all) => all,
        other => panic!("expected Receipts, got {other:?}"),
    };
    assert!(all.members.is_empty(), "nothing moved: {all:?}");
    // Up to the last seq is fine.
    assert_eq!(watermarks(r.receipt("bob", CONV, READ, 2).await), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recalled_message_cannot_be_recalled_again_but_the_recall_resends() {
    let r = rig(DispatchConfig::default()).await;
    let sent = ack(r.send("alice", "bob", "m1", "oops").await);
    let first = ack(r.recall("alice", CONV, sent.seq, "r1").await);
    assert_eq!((first.seq, first.duplicate), (2, false));
    // Another recall of the same message: refused, no new event.
    assert_eq!(code(r.recall("alice", CONV, sent.seq, "r2").await), ErrorCode::AlreadyRecalled);
    // The resend of the recall that did it: its original ack.
    let again = ack(r.recall("alice", CONV, sent.seq, "r1").await);
    assert_eq!((again.seq, again.server_time_ms, again.duplicate), (2, first.server_time_ms, true));
    let page = match r
        .call(
            "bob",
            Body::SyncRequest(v1::SyncRequest {
                conversation_id: CONV.into(),
                from_seq: 1,
                limit: 10,
            }),
        )
        .await
    {
        Body::SyncPage(p) => p,
        other => panic!("expected a SyncPage, got {other:?}"),
    };
    assert_eq!(page.last_seq, 2, "exactly one recall event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_window_a_recalled_message_stays_refused_and_its_recall_still_acks() {
    let r = rig(DispatchConfig::default()).await;
    // Long ago (server time 1 ms after the epoch): a message, its recall, and another message.
    let old = |id: &str, kind: v1::MessageKind, recalled_seq: u64| tern_store::NewMessage {
        mention_user_ids: Vec::new(),
        mention_all: false,
        conversation_id: CONV.into(),
        members: vec!["alice".into(), "bob".into()],
        sender_user_id: "alice".into(),
        sender_device_id: "phone".into(),
        client_msg_id: id.into(),
        kind,
        content_type: String::new(),
        body: Bytes::new(),
        recalled_seq,
        server_time_ms: 1,
    };
    let batch = vec![
        old("m1", v1::MessageKind::Normal, 0),
        old("r1", v1::MessageKind::Recall, 1),
        old("m3", v1::MessageKind::Normal, 0),
    ];
    r.d.store.append(batch).await.expect("append");
    // Recalled: no second recall, window or not (before: a new event each time).
    assert_eq!(code(r.recall("alice", CONV, 1, "r-new").await), ErrorCode::AlreadyRecalled);
    // The resend of the recall that did it: its original ack, though the window has passed.
    let again = ack(r.recall("alice", CONV, 1, "r1").await);
    assert_eq!((again.seq, again.server_time_ms, again.duplicate), (2, 1, true));
    // Not recalled and out of the window.
    assert_eq!(code(r.recall("alice", CONV, 3, "r3").await), ErrorCode::RecallWindowPassed);
    assert_eq!(r.d.store.last_seq(CONV).await.expect("last_seq"), 3, "no new event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_msg_id_names_one_request() {
    let r = rig(DispatchConfig::default()).await;
    let first = ack(r.send("alice", "bob", "k", "hi").await);
    r.pushes.take();
    // A true resend: the original ack, and the stored original pushed again to the members.
    let again = ack(r.send("alice", "bob", "k", "hi").await);
    assert_eq!(
        (again.seq, again.duplicate, again.conversation_id.as_str()),
        (first.seq, true, CONV)
    );
    let pushes = r.pushes.take();
    let users: Vec<&str> = pushes.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(users, ["alice", "bob"]);
    for (_, body) in pushes {
        let Body::Deliver(d) = body else { panic!("expected a Deliver") };
        let m = d.message.expect("a message");
        assert_eq!((m.seq, m.client_msg_id.as_str(), &m.body[..]), (first.seq, "k", &b"hi"[..]));
    }
    // The same id for another peer, or for a recall: refused, nothing stored or pushed.
    assert_eq!(code(r.send("alice", "carol", "k", "x").await), ErrorCode::ClientMsgIdReused);
    assert_eq!(code(r.recall("alice", CONV, first.seq, "k").await), ErrorCode::ClientMsgIdReused);
    assert!(r.pushes.take().is_empty());
    // A recall reused for another target, and a send reusing a recall's id.
    ack(r.send("alice", "bob", "m2", "two").await);
    let rec = ack(r.recall("alice", CONV, first.seq, "r").await);
    assert_eq!(code(r.recall("alice", CONV, 2, "r").await), ErrorCode::ClientMsgIdReused);
    assert_eq!(code(r.send("alice", "bob", "r", "x").await), ErrorCode::ClientMsgIdReused);
    let again = ack(r.recall("alice", CONV, first.seq, "r").await);
    assert_eq!((again.seq, again.duplicate), (rec.seq, true));
    for conv in [CONV, "dm:alice:carol"] {
        let page = match r
            .call(
                "alice",
                Body::SyncRequest(v1::SyncRequest {
                    conversation_id: conv.into(),
                    from_seq: 1,
                    limit: 10,
                }),
            )
            .await
        {
            Body::SyncPage(p) => p,
            other => panic!("expected a SyncPage, got {other:?}"),
        };
        let expected = if conv == CONV { 3 } else { 0 };
        assert_eq!(page.last_seq, expected, "{conv}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_limit_answers_its_error() {
    let r = rig(DispatchConfig::default().fit_frames(65536)).await;
    let send = |id: &str, content_type: String, body: usize| {
        Body::Send(v1::Send {
            peer_user_id: "bob".into(),
            client_msg_id: id.into(),
            content_type,
            body: Bytes::from(vec![b'x'; body]),
            ..Default::default()
        })
    };
    let max_body = 65536 - 2048;
    // At the limits: accepted.
    ack(r.call("alice", send(&"i".repeat(64), "t".repeat(128), max_body)).await);
    // Past them: INVALID_REQUEST.
    let invalid = [
        send(&"i".repeat(65), "text/plain".into(), 1),
        send("", "text/plain".into(), 1),
        send("ct", "t".repeat(129), 1),
        send("body", "text/plain".into(), max_body + 1),
        Body::Send(v1::Send { client_msg_id: "none".into(), ..Default::default() }),
        Body::Send(v1::Send {
            client_msg_id: "both".into(),
            peer_user_id: "bob".into(),
            conversation_id: CONV.into(),
            ..Default::default()
        }),
        Body::Send(v1::Send {
            client_msg_id: "peer".into(),
            peer_user_id: "no spaces".into(),
            ..Default::default()
        }),
        Body::Recall(v1::Recall {
            conversation_id: CONV.into(),
            seq: 1,
            client_msg_id: String::new(),
        }),
        Body::Recall(v1::Recall {
            conversation_id: CONV.into(),
            seq: 1,
            client_msg_id: "i".repeat(65),
        }),
        Body::Receipt(v1::Receipt { conversation_id: CONV.into(), kind: 0, seq: 1 }),
        Body::Receipt(v1::Receipt { conversation_id: CONV.into(), kind: 99, seq: 1 }),
        Body::Receipt(v1::Receipt { conversation_id: CONV.into(), kind: READ, seq: 2 }),
    ];
    for body in invalid {
        let shown = format!("{body:?}");
        let shown = &shown[..shown.len().min(120)];
        assert_eq!(code(r.call("alice", body).await), ErrorCode::InvalidRequest, "{shown}");
    }
    // A recall of a seq that does not exist, of someone else's message, of an event.
    assert_eq!(code(r.recall("alice", CONV, 7, "r7").await), ErrorCode::UnknownMessage);
    assert_eq!(code(r.recall("bob", CONV, 1, "rb").await), ErrorCode::NotSender);
    let ev = ack(r.recall("alice", CONV, 1, "r1").await);
    assert_eq!(code(r.recall("alice", CONV, ev.seq, "r2").await), ErrorCode::InvalidRequest);
    // Outsiders and bad conversation ids.
    assert_eq!(code(r.receipt("carol", CONV, READ, 1).await), ErrorCode::NotAMember);
    assert_eq!(
        code(r.receipt("bob", "dm:bob:alice", READ, 1).await),
        ErrorCode::UnknownConversation
    );
}
