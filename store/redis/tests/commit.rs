//! `Store::commit` on Redis: the whole group is one script call, the coalesced watermark is
//! written once (only when it moved), and the other guarantees (script reload, key prefix,
//! `min_replicas_acked`) hold for group commits too.

mod common;

use common::{calls, start};
use std::time::Duration;

use bytes::Bytes;
use tern_proto::v1;
use tern_proto::v1::ReceiptKind::{Delivered, Read};
use tern_store::{Committed, NewMessage, Store, StoreError, WatermarkWrite, Watermarks, Write};
use tern_store_redis::{RedisStore, RedisStoreConfig};
use tern_testkit::Reply;

fn append(conv: &str, cmid: &str) -> Write {
    Write::Append(NewMessage {
        mention_user_ids: Vec::new(),
        mention_all: false,
        conversation_id: conv.to_owned(),
        members: vec!["a".to_owned(), "b".to_owned()],
        sender_user_id: "a".to_owned(),
        sender_device_id: "d".to_owned(),
        client_msg_id: cmid.to_owned(),
        kind: v1::MessageKind::Normal,
        content_type: "text/plain".to_owned(),
        body: Bytes::from(cmid.to_owned()),
        recalled_seq: 0,
        server_time_ms: 1_700_000_000_000,
    })
}

fn mark(conv: &str, user: &str, kind: v1::ReceiptKind, seq: u64) -> Write {
    Write::Watermark(WatermarkWrite {
        conversation_id: conv.to_owned(),
        user_id: user.to_owned(),
        kind,
        seq,
    })
}

/// Appends and many receipt moves of a few (conversation, user) pairs: one EVALSHA, and one
/// receipt HSET per pair that moved (none for the pair that did not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_one_script_call_with_one_receipt_write_per_pair() {
    let server = start().await;
    let store = RedisStore::connect(RedisStoreConfig::new(server.url())).await.unwrap();
    store.commit(&[append("c", "m0"), mark("c", "b", Read, 1)]).await.unwrap();
    let (evalsha, hset) = (calls(&server, "evalsha"), calls(&server, "hset"));
    let mut batch = vec![append("c", "m1"), append("c", "m2")];
    for seq in [1, 2, 3, 2, 3] {
        batch.push(mark("c", "b", Delivered, seq));
        batch.push(mark("c", "a", Read, seq));
        batch.push(mark("c", "b", Read, 1)); // never moves b's read
    }
    let out = store.commit(&batch).await.unwrap();
    assert_eq!(calls(&server, "evalsha"), evalsha + 1, "one script call");
    // 2 appends x (bucket + meta + 2 member `last`) + b's and a's receipt fields, once each.
    assert_eq!(calls(&server, "hset"), hset + 2 * 4 + 2);
    let moved = |delivered, read| {
        Committed::Watermark(tern_store::WatermarkUpdate {
            watermarks: Watermarks { delivered, read },
            moved: true,
        })
    };
    for (i, c) in out.iter().enumerate().skip(2) {
        let want = if (i - 2) % 3 == 1 { moved(3, 3) } else { moved(3, 1) };
        assert_eq!(*c, want, "write {i}");
    }
    // Moves that move nothing write nothing.
    let hset = calls(&server, "hset");
    let out = store.commit(&[mark("c", "b", Delivered, 2), mark("c", "a", Read, 3)]).await;
    assert!(out.unwrap().iter().all(|c| matches!(c, Committed::Watermark(u) if !u.moved)));
    assert_eq!(calls(&server, "hset"), hset);
}

/// The bound is exact for any u64 (decimal strings in Lua), an unspecified kind moves
/// nothing, and a group after SCRIPT FLUSH reloads the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_is_exact_and_the_script_is_reloaded() {
    let server = start().await;
    let store = RedisStore::connect(RedisStoreConfig::new(server.url())).await.unwrap();
    server.command(&[b"SCRIPT", b"FLUSH"]).unwrap();
    let out = store
        .commit(&[
            append("x", "m1"),
            mark("x", "b", Delivered, u64::MAX),
            mark("x", "b", v1::ReceiptKind::Unspecified, 1),
            mark("y", "b", Read, (1 << 53) + 1),
        ])
        .await
        .unwrap();
    assert_eq!(out[1], Committed::AboveLastSeq { last_seq: 1 });
    assert_eq!(
        out[2],
        Committed::Watermark(tern_store::WatermarkUpdate {
            watermarks: Watermarks::default(),
            moved: false
        })
    );
    assert_eq!(out[3], Committed::AboveLastSeq { last_seq: 0 });
    assert!(store.watermarks("x").await.unwrap().is_empty());
}

/// Every key a group writes is under the configured prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_writes_under_the_key_prefix_only() {
    let server = start().await;
    let cfg = RedisStoreConfig { key_prefix: "pfx:".into(), ..RedisStoreConfig::new(server.url()) };
    let store = RedisStore::connect(cfg).await.unwrap();
    store.commit(&[append("k", "m1"), mark("k", "b", Read, 1)]).await.unwrap();
    let Reply::Array(Some(keys)) = server.command(&[b"KEYS", b"*"]).unwrap() else {
        panic!("KEYS")
    };
    assert!(!keys.is_empty());
    for key in keys {
        let Reply::Bulk(Some(key)) = key else { panic!("key {key:?}") };
        assert!(key.starts_with(b"pfx:"), "{}", String::from_utf8_lossy(&key));
    }
    let Reply::Bulk(Some(record)) = server.command(&[b"HGET", b"pfx:{c:1:k}:rcpt", b"b"]).unwrap()
    else {
        panic!("receipt record")
    };
    assert_eq!(record, b"1:1");
}

/// `min_replicas_acked` with no replica: a group with an append waits and fails; a group of
/// receipts only does not wait (receipts never did) and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_groups_with_appends_wait_for_replicas() {
    let server = start().await;
    let cfg = RedisStoreConfig {
        min_replicas_acked: 1,
        command_timeout: Duration::from_secs(2),
        ..RedisStoreConfig::new(server.url())
    };
    let store = RedisStore::connect(cfg).await.unwrap();
    let held = store.commit(&[append("r", "m1"), mark("r", "b", Read, 1)]).await;
    assert!(
        matches!(&held, Err(StoreError::Unavailable(t)) if t.contains("replicas acknowledged")),
        "{held:?}"
    );
    // (The held group is on the primary all the same: its append bounds this move.)
    let out = store.commit(&[mark("r", "c", Read, 1)]).await.unwrap();
    assert!(matches!(&out[0], Committed::Watermark(u) if u.moved));
}
