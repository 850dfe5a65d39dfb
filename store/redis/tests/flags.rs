//! Mentions and per-user flags on Redis beyond the conformance cases: what each costs in Redis
//! commands (a plain send nothing extra, a mention of all in a big group one HSET), that a
//! former member does not see mentions after their removal, and that flags write only when
//! they change, in batch order, without the history fence or `WAIT`.

mod common;

use common::{calls, change, create, message, start};
use std::time::Duration;

use tern_proto::v1;
use tern_store::{Committed, FlagsWrite, MemberChange, Store, StoreError, Write};
use tern_store_redis::{RedisStore, RedisStoreConfig};
use tern_testkit::Reply;

fn send(conv: &str, sender: &str, cmid: &str, mentions: &[&str], all: bool) -> Write {
    let mut m = message(conv, sender, cmid, v1::MessageKind::Normal);
    if !conv.starts_with("g:") {
        m.members = vec!["a".into(), "b".into()];
    }
    m.mention_user_ids = mentions.iter().map(|u| (*u).to_owned()).collect();
    m.mention_all = all;
    Write::Append(m)
}

fn flags(conv: &str, user: &str, muted: Option<bool>, pinned: Option<bool>) -> Write {
    Write::Flags(FlagsWrite {
        conversation_id: conv.to_owned(),
        user_id: user.to_owned(),
        muted,
        pinned,
    })
}

/// (mention_seq, muted, pinned) of `user`'s entry of `conv`.
async fn shown(store: &RedisStore, user: &str, conv: &str) -> (u64, u64, bool, bool) {
    let list = store.list_conversations(user, "", 100).await.unwrap();
    let e = list.into_iter().find(|e| e.conversation_id == conv).expect("listed");
    (e.last_seq, e.mention_seq, e.muted, e.pinned)
}

/// A plain send runs no command for mentions; a mention of all in a group of 2 500 is one
/// HSET (read diffusion: no per-member write) and every member sees it; many mentioned users
/// are written in chunks, each user's field under the conversation's `mentions` key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_cost_one_hset_per_chunk_and_plain_sends_none() {
    let server = start().await;
    let store = RedisStore::connect(RedisStoreConfig::new(server.url())).await.unwrap();
    let conv = "g:big";
    let others: Vec<String> = (0..2500).map(|i| format!("u{i:05}")).collect();
    store.commit(&[create(conv, "owner", &others)]).await.unwrap();
    let count = || ["hset", "hdel", "hget"].map(|c| calls(&server, c));

    let before = count();
    store.commit(&[send(conv, "u00001", "plain", &[], false)]).await.unwrap();
    // hset: bucket + meta; hget: the sender's row.
    assert_eq!(count().iter().zip(before).map(|(a, b)| a - b).collect::<Vec<_>>(), [2, 0, 1]);
    let before = count();
    store.commit(&[send(conv, "u00001", "all", &["u00002"], true)]).await.unwrap();
    assert_eq!(count().iter().zip(before).map(|(a, b)| a - b).collect::<Vec<_>>(), [3, 0, 1]);
    for user in ["u00000", "u02499", "owner", "u00002"] {
        assert_eq!(shown(&store, user, conv).await, (3, 3, false, false), "{user}");
    }

    // 1 200 mentioned users: three HSETs of at most 500 fields each (Lua's unpack is bounded).
    let many: Vec<String> = (0..1200).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let before = calls(&server, "hset");
    store.commit(&[send("dm:a:b", "a", "many", &refs, false)]).await.unwrap();
    // bucket + meta + 2 member `last` + 3 chunks.
    assert_eq!(calls(&server, "hset") - before, 4 + 3);
    let Reply::Integer(fields) = server.command(&[b"HLEN", b"tern:{c:6:dm:a:b}:mentions"]).unwrap()
    else {
        panic!("HLEN")
    };
    assert_eq!(fields, 1200);
    let Reply::Bulk(Some(seq)) =
        server.command(&[b"HGET", b"tern:{c:6:dm:a:b}:mentions", b"um1199"]).unwrap()
    else {
        panic!("HGET")
    };
    assert_eq!(seq, b"1");
    assert_eq!(shown(&store, "b", "dm:a:b").await, (1, 0, false, false), "b is not mentioned");
}

/// A former member's entry stays at their removal, and a mention after it is not theirs: only
/// the latest mention of each kind (own, all) is kept, so one later than the removal hides an
/// earlier one (the entry shows no mention rather than one the user cannot see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_members_mention_seq_ignores_mentions_after_their_removal() {
    let server = start().await;
    let store = RedisStore::connect(RedisStoreConfig::new(server.url())).await.unwrap();
    let conv = "g:t";
    store.commit(&[create(conv, "alice", &["bob".into()])]).await.unwrap();
    store.commit(&[send(conv, "alice", "m2", &[], true)]).await.unwrap();
    let remove = MemberChange::Remove { user_id: "bob".into() };
    store.commit(&[change(conv, "alice", "rm", 1, vec![remove])]).await.unwrap();
    store.commit(&[send(conv, "alice", "m4", &["bob"], true)]).await.unwrap();
    assert_eq!(shown(&store, "bob", conv).await, (3, 0, false, false));
    assert_eq!(shown(&store, "alice", conv).await, (4, 4, false, false));
}

/// Flags are one field of the user's `flags` hash, written only when they change (cleared:
/// deleted), applied in batch order; a batch of flags runs neither the history fence nor
/// `WAIT` (like receipts), so it commits with `min_replicas_acked` and no replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_write_only_on_change_in_order_and_never_wait() {
    let server = start().await;
    let store = RedisStore::connect(RedisStoreConfig::new(server.url())).await.unwrap();
    let waiting = RedisStore::connect(RedisStoreConfig {
        min_replicas_acked: 1,
        command_timeout: Duration::from_secs(2),
        ..RedisStoreConfig::new(server.url())
    })
    .await
    .unwrap();
    store.commit(&[send("dm:a:b", "a", "m1", &[], false)]).await.unwrap();
    let field = || server.command(&[b"HGET", b"tern:{u:1:b}:flags", b"dm:a:b"]).unwrap();
    let count = || ["hset", "hdel", "hincrby", "wait"].map(|c| calls(&server, c));

    let before = count();
    let out = waiting.commit(&[flags("dm:a:b", "b", Some(true), None)]).await.unwrap();
    assert_eq!(out, [Committed::Flagged]);
    assert_eq!(count().iter().zip(before).map(|(a, b)| a - b).collect::<Vec<_>>(), [1, 0, 0, 0]);
    assert_eq!(field(), Reply::Bulk(Some(b"1".to_vec())));

    let before = count();
    store.commit(&[flags("dm:a:b", "b", Some(true), Some(false))]).await.unwrap();
    assert_eq!(count(), before, "nothing changed, nothing written");

    let before = count();
    let batch = [
        flags("dm:a:b", "b", None, Some(true)),
        flags("dm:a:b", "b", Some(false), None),
        flags("dm:a:b", "b", None, Some(false)),
    ];
    assert_eq!(store.commit(&batch).await.unwrap(), [const { Committed::Flagged }; 3]);
    assert_eq!(count().iter().zip(before).map(|(a, b)| a - b).collect::<Vec<_>>(), [2, 1, 0, 0]);
    assert_eq!(field(), Reply::Bulk(None), "no flags: no field");
    assert_eq!(shown(&store, "b", "dm:a:b").await, (1, 0, false, false));

    // A value this backend did not write: the list reports it, a write replaces it.
    server.command(&[b"HSET", b"tern:{u:1:b}:flags", b"dm:a:b", b"x"]).unwrap();
    let listed = store.list_conversations("b", "", 10).await;
    assert!(matches!(listed, Err(StoreError::Corrupt(_))), "{listed:?}");
    store.commit(&[flags("dm:a:b", "b", None, Some(true))]).await.unwrap();
    assert_eq!(shown(&store, "b", "dm:a:b").await, (1, 0, false, true));
}
