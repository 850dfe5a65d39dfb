//! The commit thread's grouping, observed through a store that holds a commit until the test
//! lets it go: requests queued meanwhile are committed as one group, receipt moves of one user
//! in a group are answered with the group's final watermarks and pushed once.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prost::Message as _;
use tern_dispatch::{ConnRef, DispatchConfig, Dispatcher, Origin, Pusher};
use tern_proto::v1::{self, Envelope, ReceiptKind, envelope::Body};
use tern_store::{
    BoxFuture, Committed, ConversationEntry, EmbeddedStore, NewMessage, Range, Store, StoreError,
    WatermarkUpdate, Watermarks, Write,
};
use tokio::sync::oneshot;

/// Every push, as (user, decoded body).
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Body)>>);

impl Pusher for Recorder {
    fn push(&self, user_id: &str, frame: &Bytes, _skip: Option<&ConnRef>) {
        let env = Envelope::decode(&frame[4..]).expect("a push decodes");
        self.0.lock().expect("lock").push((user_id.to_owned(), env.body.expect("a body")));
    }
}

/// The embedded store, but an armed gate holds the next commit until released; records the
/// size of every group.
struct Gated {
    inner: EmbeddedStore,
    gate: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
    groups: Mutex<Vec<usize>>,
}

impl Gated {
    /// Arms the gate: the returned receiver fires when a commit reaches it, the sender lets it
    /// go.
    fn arm(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (entered_tx, entered_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.gate.lock().expect("lock") = Some((entered_tx, release_rx));
        (entered_rx, release_tx)
    }
}

impl Store for Gated {
    fn commit<'a>(
        &'a self,
        batch: &'a [Write],
    ) -> BoxFuture<'a, Result<Vec<Committed>, StoreError>> {
        Box::pin(async move {
            let gate = self.gate.lock().expect("lock").take();
            if let Some((entered, release)) = gate {
                let _ = entered.send(());
                let _ = release.await;
            }
            self.groups.lock().expect("lock").push(batch.len());
            self.inner.commit(batch).await
        })
    }
    fn append(
        &self,
        batch: Vec<NewMessage>,
    ) -> BoxFuture<'_, Result<Vec<tern_store::Appended>, StoreError>> {
        self.inner.append(batch)
    }
    fn read_range<'a>(
        &'a self,
        c: &'a str,
        from: u64,
        w: u32,
    ) -> BoxFuture<'a, Result<Range, StoreError>> {
        self.inner.read_range(c, from, w)
    }
    fn get_message<'a>(
        &'a self,
        c: &'a str,
        seq: u64,
    ) -> BoxFuture<'a, Result<Option<v1::Message>, StoreError>> {
        self.inner.get_message(c, seq)
    }
    fn last_seq<'a>(&'a self, c: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.last_seq(c)
    }
    fn set_watermark<'a>(
        &'a self,
        c: &'a str,
        u: &'a str,
        k: ReceiptKind,
        seq: u64,
    ) -> BoxFuture<'a, Result<WatermarkUpdate, StoreError>> {
        self.inner.set_watermark(c, u, k, seq)
    }
    fn client_msg_id_known<'a>(
        &'a self,
        s: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.inner.client_msg_id_known(s, id)
    }
    fn watermarks<'a>(
        &'a self,
        c: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Watermarks)>, StoreError>> {
        self.inner.watermarks(c)
    }
    fn list_conversations<'a>(
        &'a self,
        u: &'a str,
        after: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<ConversationEntry>, StoreError>> {
        self.inner.list_conversations(u, after, limit)
    }
}

fn origin(user: &str, connection_id: u64) -> Origin {
    Origin {
        user_id: user.into(),
        device_id: "phone".into(),
        gateway_id: String::new(),
        connection_id,
    }
}

fn send(id: &str) -> Body {
    Body::Send(v1::Send {
        peer_user_id: "bob".into(),
        client_msg_id: id.into(),
        content_type: "text/plain".into(),
        body: Bytes::from_static(b"hi"),
        ..Default::default()
    })
}

fn receipt(kind: ReceiptKind, seq: u64) -> Body {
    Body::Receipt(v1::Receipt { conversation_id: "dm:alice:bob".into(), kind: kind as i32, seq })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_during_a_commit_form_one_group_and_receipts_push_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Gated {
        inner: EmbeddedStore::open(dir.path()).expect("open"),
        gate: Mutex::new(None),
        groups: Mutex::new(Vec::new()),
    });
    let pushes = Arc::new(Recorder::default());
    let d = Dispatcher::new(DispatchConfig::default(), store.clone(), pushes.clone());
    let (alice, bob) = (origin("alice", 1), origin("bob", 2));
    for (i, id) in ["m1", "m2", "m3"].into_iter().enumerate() {
        let env = Envelope { request_id: i as u64 + 1, body: Some(send(id)) };
        assert!(matches!(d.handle(&alice, env).await.body, Some(Body::SendAck(_))));
    }
    pushes.0.lock().expect("lock").clear();

    // Hold the commit of m4; queue three receipts of bob's behind it.
    let (entered, release) = store.arm();
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel::<Envelope>();
    let reply = |tx: &tokio::sync::mpsc::UnboundedSender<Envelope>| {
        let tx = tx.clone();
        Box::new(move |env: Envelope| {
            let _ = tx.send(env);
        })
    };
    d.submit(&alice, Envelope { request_id: 10, body: Some(send("m4")) }, reply(&tx));
    entered.await.expect("the commit of m4 reached the gate");
    d.submit(
        &bob,
        Envelope { request_id: 11, body: Some(receipt(ReceiptKind::Delivered, 2)) },
        reply(&tx),
    );
    d.submit(
        &bob,
        Envelope { request_id: 12, body: Some(receipt(ReceiptKind::Delivered, 4)) },
        reply(&tx),
    );
    d.submit(
        &bob,
        Envelope { request_id: 13, body: Some(receipt(ReceiptKind::Read, 1)) },
        reply(&tx),
    );
    let _ = release.send(());

    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(answers.recv().await.expect("an answer"));
    }
    got.sort_by_key(|e| e.request_id);
    assert!(matches!(&got[0].body, Some(Body::SendAck(a)) if a.seq == 4));
    for e in &got[1..] {
        let Some(Body::ReceiptUpdate(u)) = &e.body else { panic!("{e:?}") };
        // The group's final watermarks (delivered 4 counts m4, committed in the group before).
        assert_eq!((u.delivered_seq, u.read_seq), (4, 1), "request {}", e.request_id);
    }
    assert_eq!(*store.groups.lock().expect("lock"), vec![1, 1, 1, 1, 3]);
    let receipt_pushes: Vec<(String, (u64, u64))> = pushes
        .0
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|(user, b)| match b {
            Body::ReceiptUpdate(u) => Some((user.clone(), (u.delivered_seq, u.read_seq))),
            _ => None,
        })
        .collect();
    // One push per member of the conversation for the whole group, not one per receipt.
    assert_eq!(receipt_pushes, vec![("alice".into(), (4, 1)), ("bob".into(), (4, 1))]);
    d.shutdown();
}
