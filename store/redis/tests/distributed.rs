//! The Redis store as the distributed mode uses it: several independent clients (standing in
//! for dispatch worker processes) on one durable redis-server, through restarts and kill -9.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use tern_proto::v1;
use tern_store::{Appended, NewMessage, Store, StoreError};
use tern_store_redis::{RedisStore, RedisStoreConfig, RedisStoreError};
use tern_testkit::{AppendFsync, RedisOptions, RedisServer};

fn message(conv: &str, user: &str, cmid: &str) -> NewMessage {
    NewMessage {
        mention_user_ids: Vec::new(),
        mention_all: false,
        conversation_id: conv.to_owned(),
        members: vec![user.to_owned(), "peer".to_owned()],
        sender_user_id: user.to_owned(),
        sender_device_id: "d".to_owned(),
        client_msg_id: cmid.to_owned(),
        kind: v1::MessageKind::Normal,
        content_type: "text/plain".to_owned(),
        body: Bytes::from(cmid.to_owned()),
        recalled_seq: 0,
        server_time_ms: 1_700_000_000_000,
    }
}

async fn start(options: RedisOptions) -> RedisServer {
    tokio::task::spawn_blocking(move || RedisServer::start_with(options)).await.unwrap().unwrap()
}

async fn connect(server: &RedisServer) -> RedisStore {
    RedisStore::connect(RedisStoreConfig::new(server.url())).await.unwrap()
}

/// Every stored message of `conv` as seq -> client_msg_id, checking each body matches.
async fn stored(store: &RedisStore, conv: &str) -> BTreeMap<u64, String> {
    let range = store.read_range(conv, 1, u32::MAX).await.unwrap();
    let mut out = BTreeMap::new();
    for m in range.messages {
        assert_eq!(m.body, m.client_msg_id.clone().into_bytes(), "seq {}", m.seq);
        assert!(out.insert(m.seq, m.client_msg_id).is_none());
    }
    assert_eq!(out.keys().next_back().copied().unwrap_or(0), range.last_seq);
    out
}

/// Four separate clients (own connections) append batches to two shared conversations at
/// once; every seq is unique and gap-free and stores the message its ack named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_clients_get_unique_gap_free_seqs() {
    const WORKERS: usize = 4;
    const BATCHES: usize = 40;
    let server = start(RedisOptions::default()).await;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let store = connect(&server).await;
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for b in 0..BATCHES {
                // Batches of 1..=4 messages alternating between the two conversations.
                let batch: Vec<_> = (0..=(b % 4))
                    .map(|i| {
                        let conv = if i % 2 == 0 { "shared-a" } else { "shared-b" };
                        message(conv, &format!("worker-{w}"), &format!("w{w}-b{b}-{i}"))
                    })
                    .collect();
                let cmids: Vec<_> = batch.iter().map(|m| m.client_msg_id.clone()).collect();
                let out = store.append(batch).await.unwrap();
                for (a, cmid) in out.into_iter().zip(cmids) {
                    assert!(!a.duplicate);
                    acks.push((a.conversation_id, a.seq, cmid));
                }
            }
            acks
        }));
    }
    let mut acked: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    for task in tasks {
        let acks = task.await.unwrap();
        for conv in ["shared-a", "shared-b"] {
            let mine: Vec<u64> = acks.iter().filter(|a| a.0 == conv).map(|a| a.1).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "one worker's seqs increase");
        }
        for (conv, seq, cmid) in acks {
            assert!(acked.entry(conv).or_default().insert(seq, cmid).is_none(), "seq reused");
        }
    }
    let reader = connect(&server).await;
    for (conv, acks) in acked {
        let n = acks.len() as u64;
        assert_eq!(acks.keys().copied().collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
        assert_eq!(stored(&reader, &conv).await, acks, "{conv}");
    }
}

/// Redis restarts (SIGTERM, AOF replay) in the middle of a stream of appends: appends fail
/// with Unavailable for a moment and then succeed again on their own; every acknowledged
/// append is still there with its seq, no seq is reused, and resending the failed ones never
/// duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_loses_no_ack_and_heals() {
    let mut server = start(RedisOptions::default()).await;
    let store = connect(&server).await;
    let (progress, mut watch) = tokio::sync::watch::channel(0usize);
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            for i in 0.. {
                if stop_rx.try_recv().is_ok() {
                    break;
                }
                assert!(i < 100_000, "appends never recovered after the restart");
                let cmid = format!("m{i}");
                match store.append(vec![message("restart", "u", &cmid)]).await {
                    Ok(out) => {
                        acked.push((out[0].seq, cmid));
                        progress.send_replace(acked.len());
                    }
                    Err(e) => {
                        assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
                        failed.push(cmid);
                        // Do not spin while Redis is down.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            (acked, failed)
        })
    };
    watch.wait_for(|n| *n >= 30).await.unwrap();
    tokio::task::block_in_place(|| server.restart()).unwrap();
    let after_restart = *watch.borrow();
    watch.wait_for(|n| *n >= after_restart + 30).await.unwrap();
    stop_tx.send(()).unwrap();
    let (acked, failed) = writer.await.unwrap();

    assert!(!failed.is_empty(), "the restart was noticed by at least one append");
    assert!(acked.windows(2).all(|w| w[0].0 < w[1].0), "acked seqs increase, none reused");
    let before_resend = stored(&store, "restart").await;
    for (seq, cmid) in &acked {
        assert_eq!(before_resend.get(seq), Some(cmid), "acked seq {seq} kept its message");
    }
    // Resending every failed message: either it was applied before the connection broke
    // (duplicate, with the seq it is stored at) or it is appended now.
    for cmid in &failed {
        let out = store.append(vec![message("restart", "u", cmid)]).await.unwrap();
        if out[0].duplicate {
            assert_eq!(before_resend.get(&out[0].seq), Some(cmid));
        } else {
            assert!(out[0].seq > *before_resend.keys().next_back().unwrap());
        }
    }
    let after = stored(&store, "restart").await;
    let n = after.len() as u64;
    assert_eq!(after.keys().copied().collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>(), "no gap");
    let cmids: BTreeSet<&String> = after.values().collect();
    assert_eq!(cmids.len(), after.len(), "no message stored twice");
    assert_eq!(n as usize, acked.len() + failed.len(), "every message stored exactly once");
}

/// kill -9 of Redis right after acknowledged appends: after it starts again, everything
/// acknowledged is there (appendfsync always), dedupe still answers, seqs continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_keeps_every_acknowledged_append() {
    let mut server = start(RedisOptions::default()).await;
    let store = connect(&server).await;
    let mut acked: Vec<Appended> = Vec::new();
    for b in 0..50 {
        let batch = (0..8).map(|i| message("k9", "u", &format!("m{b}-{i}"))).collect();
        acked.extend(store.append(batch).await.unwrap());
    }
    store.set_watermark("k9", "u", v1::ReceiptKind::Read, 17).await.unwrap();
    tokio::task::block_in_place(|| server.kill9()).unwrap();

    let down = store.append(vec![message("k9", "u", "while-down")]).await;
    assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");

    tokio::task::block_in_place(|| server.start_again()).unwrap();
    // The same client heals; a fresh one (another worker) sees the same data.
    for reader in [store.clone(), connect(&server).await] {
        let kept = stored(&reader, "k9").await;
        assert_eq!(kept.len(), 400);
        for (i, a) in acked.iter().enumerate() {
            assert_eq!(kept.get(&a.seq), Some(&format!("m{}-{}", i / 8, i % 8)));
        }
        let dup = reader.append(vec![message("k9", "u", "m3-3")]).await.unwrap();
        assert_eq!((dup[0].duplicate, dup[0].seq), (true, acked[27].seq));
        assert_eq!(
            reader.watermarks("k9").await.unwrap(),
            vec![("u".to_owned(), tern_store::Watermarks { delivered: 17, read: 17 })]
        );
    }
    let next = store.append(vec![message("k9", "u", "after")]).await.unwrap();
    assert_eq!((next[0].seq, next[0].duplicate), (401, false));
}

/// A Redis that can lose acknowledged writes is refused unless the caller opts out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_durable_refuses_a_non_durable_server() {
    let no_aof = start(RedisOptions::without_aof()).await;
    let everysec =
        start(RedisOptions { appendfsync: AppendFsync::EverySec, ..RedisOptions::default() }).await;
    for (server, appendonly, appendfsync) in
        [(&no_aof, "no", "always"), (&everysec, "yes", "everysec")]
    {
        match RedisStore::connect(RedisStoreConfig::new(server.url())).await {
            Err(RedisStoreError::NotDurable { appendonly: a, appendfsync: f, .. }) => {
                assert_eq!((a.as_str(), f.as_str()), (appendonly, appendfsync));
            }
            other => panic!("expected NotDurable, got {other:?}"),
        }
        let cfg =
            RedisStoreConfig { require_durable: false, ..RedisStoreConfig::new(server.url()) };
        let store = RedisStore::connect(cfg).await.unwrap();
        let out = store.append(vec![message("c", "u", "m")]).await.unwrap();
        assert_eq!(out[0].seq, 1);
    }
}

/// Two key prefixes on one server are two independent stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_separate_stores() {
    let server = start(RedisOptions::default()).await;
    let a = RedisStore::connect(RedisStoreConfig {
        key_prefix: "a:".into(),
        ..RedisStoreConfig::new(server.url())
    })
    .await
    .unwrap();
    let b = RedisStore::connect(RedisStoreConfig {
        key_prefix: "b:".into(),
        ..RedisStoreConfig::new(server.url())
    })
    .await
    .unwrap();
    assert_eq!(a.append(vec![message("c", "u", "m")]).await.unwrap()[0].seq, 1);
    let in_b = b.append(vec![message("c", "u", "m")]).await.unwrap();
    assert_eq!((in_b[0].seq, in_b[0].duplicate), (1, false));
    assert_eq!(b.list_conversations("u", "", 10).await.unwrap().len(), 1);
    let bad = RedisStore::connect(RedisStoreConfig {
        key_prefix: "x{".into(),
        ..RedisStoreConfig::new(server.url())
    })
    .await;
    assert!(matches!(bad, Err(RedisStoreError::Config(_))), "{bad:?}");
}

/// Nothing listening: connect fails as retryable, within the command timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_nothing_is_unavailable() {
    let mut server = start(RedisOptions::default()).await;
    let url = server.url();
    tokio::task::block_in_place(|| server.kill9()).unwrap();
    let cfg =
        RedisStoreConfig { command_timeout: Duration::from_secs(2), ..RedisStoreConfig::new(url) };
    let err = RedisStore::connect(cfg).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(StoreError::from(err), StoreError::Unavailable(_)));
}

/// Reads that span several 1024-seq buckets return exactly the window, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_cross_bucket_boundaries() {
    let server = start(RedisOptions::default()).await;
    let store = connect(&server).await;
    for b in 0..7 {
        let batch =
            (0..300).map(|i| message("big", "u", &format!("m{}", b * 300 + i + 1))).collect();
        store.append(batch).await.unwrap();
    }
    let all = stored(&store, "big").await;
    assert_eq!(all.len(), 2100);
    assert!(all.iter().all(|(seq, cmid)| *cmid == format!("m{seq}")));
    for (from, window) in
        [(1000u64, 100u32), (1023, 2), (1024, 1), (2040, 100), (1, 2048), (2100, 5)]
    {
        let r = store.read_range("big", from, window).await.unwrap();
        let expected: Vec<u64> = (from..from + u64::from(window)).filter(|s| *s <= 2100).collect();
        assert_eq!(
            r.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            expected,
            "{from}+{window}"
        );
        assert_eq!(r.last_seq, 2100);
    }
    let m = store.get_message("big", 2048).await.unwrap().unwrap();
    assert_eq!((m.seq, m.client_msg_id.as_str()), (2048, "m2048"));
}

/// A recall really erases the body from Redis (not just hides it on read), and the stored
/// fields are the documented layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_erases_the_body_from_redis() {
    use tern_store_redis::keys::Keys;
    use tern_testkit::Reply;
    let server = start(RedisOptions::default()).await;
    let store = connect(&server).await;
    let mut secret = message("rc", "u", "secret-cmid");
    secret.body = Bytes::from_static(b"TOP-SECRET");
    store.append(vec![secret]).await.unwrap();
    let recall = NewMessage {
        kind: v1::MessageKind::Recall,
        recalled_seq: 1,
        body: Bytes::new(),
        ..message("rc", "u", "recall")
    };
    store.append(vec![recall]).await.unwrap();
    let bucket = Keys::new("tern:").bucket("rc", 0);
    let Reply::Array(Some(items)) = server.command(&[b"HGETALL", bucket.as_bytes()]).unwrap()
    else {
        panic!("HGETALL {bucket}");
    };
    let mut fields = BTreeMap::new();
    for pair in items.chunks(2) {
        let (Reply::Bulk(Some(k)), Reply::Bulk(Some(v))) = (&pair[0], &pair[1]) else {
            panic!("{pair:?}");
        };
        assert!(!v.windows(10).any(|w| w == b"TOP-SECRET"), "body bytes left in {k:?}");
        fields.insert(String::from_utf8(k.clone()).unwrap(), v.clone());
    }
    assert_eq!(fields.keys().map(String::as_str).collect::<Vec<_>>(), ["1", "2", "r1"]);
    let target = store.get_message("rc", 1).await.unwrap().unwrap();
    assert!(target.recalled && target.body.is_empty());
    let dedupe = Keys::new("tern:").dedupe("u", "secret-cmid");
    assert_eq!(
        server.command(&[b"GET", dedupe.as_bytes()]).unwrap(),
        Reply::Bulk(Some(b"1:1700000000000:rc".to_vec()))
    );
}

/// A Redis that forgot its scripts (SCRIPT FLUSH, or any restart) is healed by reloading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_script_cache_is_reloaded() {
    let server = start(RedisOptions::default()).await;
    let store = connect(&server).await;
    store.append(vec![message("sf", "u", "a")]).await.unwrap();
    server.command(&[b"SCRIPT", b"FLUSH"]).unwrap();
    let out = store.append(vec![message("sf", "u", "b")]).await.unwrap();
    assert_eq!((out[0].seq, out[0].duplicate), (2, false));
    server.command(&[b"SCRIPT", b"FLUSH"]).unwrap();
    let w = store.set_watermark("sf", "u", v1::ReceiptKind::Delivered, 2).await.unwrap().watermarks;
    assert_eq!(w.delivered, 2);
}

/// Watermarks are exact for any u64 a client sends (compared as decimal strings in Lua).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_are_exact_up_to_u64_max() {
    let server = start(RedisOptions::default()).await;
    let store = connect(&server).await;
    let big = (1u64 << 53) + 1;
    let w =
        store.set_watermark("wm", "u", v1::ReceiptKind::Delivered, big).await.unwrap().watermarks;
    assert_eq!(w.delivered, big);
    let w = store
        .set_watermark("wm", "u", v1::ReceiptKind::Delivered, big - 1)
        .await
        .unwrap()
        .watermarks;
    assert_eq!(w.delivered, big, "never moves back");
    let w =
        store.set_watermark("wm", "u", v1::ReceiptKind::Read, u64::MAX).await.unwrap().watermarks;
    assert_eq!((w.delivered, w.read), (u64::MAX, u64::MAX));
    let w = store.set_watermark("wm", "u", v1::ReceiptKind::Read, 9).await.unwrap().watermarks;
    assert_eq!((w.delivered, w.read), (u64::MAX, u64::MAX));
}
