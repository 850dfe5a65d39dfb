//! Groups on Redis beyond the conformance cases: a send to a big group reads one member row
//! and writes nothing per member, member pages cross the script's HMGET chunks, every group key
//! is under the prefix and the conversation's hash tag, group changes survive a kill -9 of
//! Redis, and they wait for replicas as appends do.

mod common;

use common::{calls, change, create, join, message, start};
use std::time::Duration;

use tern_proto::v1;
use tern_store::{Committed, MemberChange, Refusal, Role, Store, StoreError, Write};
use tern_store_redis::{RedisStore, RedisStoreConfig};
use tern_testkit::Reply;

fn send(conv: &str, sender: &str, cmid: &str) -> Write {
    Write::Append(message(conv, sender, cmid, v1::MessageKind::Normal))
}

fn appended(c: &Committed) -> &tern_store::Appended {
    match c {
        Committed::Appended(a) => a,
        other => panic!("not appended: {other:?}"),
    }
}

/// 2 500 members: created in one commit; pages of every size list them all in id order (a
/// page of 2 000 crosses the script's HMGET chunk of 1 000); a send reads one member row and
/// writes only its message (no per-member index write); every member's list shows the send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_a_big_group_reads_one_row_and_writes_no_member_index() {
    let server = start().await;
    let store = RedisStore::connect(RedisStoreConfig::new(server.url())).await.unwrap();
    let conv = "g:big";
    let others: Vec<String> = (0..2500).map(|i| format!("u{i:05}")).collect();
    let out = store.commit(&[create(conv, "owner", &others)]).await.unwrap();
    assert_eq!((appended(&out[0]).seq, appended(&out[0]).group_version), (1, 1));
    let mut want = others.clone();
    want.push("owner".into());
    want.sort();
    for limit in [1, 999, 1000, 2000, 5000] {
        let mut listed = Vec::new();
        let mut after = String::new();
        loop {
            let page = store.group_members(conv, &after, limit).await.unwrap();
            assert!(page.len() <= limit as usize);
            let Some(last) = page.last() else { break };
            after = last.user_id.clone();
            assert!(page.iter().all(|m| m.is_current() && m.joined_seq == 1));
            listed.extend(page.into_iter().map(|m| m.user_id));
        }
        assert!(listed == want, "limit {limit}: {} listed, not in id order", listed.len());
    }

    let before = ["hget", "hset", "zadd", "hmget"].map(|c| calls(&server, c));
    let out = store.commit(&[send(conv, "u01234", "hello")]).await.unwrap();
    assert_eq!((appended(&out[0]).seq, appended(&out[0]).group_version), (2, 1));
    let after = ["hget", "hset", "zadd", "hmget"].map(|c| calls(&server, c));
    // hget: the sender's row; hset: bucket + meta; hmget: the history record + the group's
    // version and dissolved flag.
    assert_eq!(after.iter().zip(before).map(|(a, b)| a - b).collect::<Vec<_>>(), [1, 2, 0, 2]);
    for user in ["u00000", "u02499", "owner"] {
        let list = store.list_conversations(user, "", 10).await.unwrap();
        assert_eq!(
            list.iter().map(|e| (e.conversation_id.as_str(), e.last_seq)).collect::<Vec<_>>(),
            [(conv, 2)]
        );
    }
}

/// Every key a group commit writes is under the prefix, and the group's own keys carry the
/// conversation's hash tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_keys_are_under_the_prefix_and_the_conversation_tag() {
    let server = start().await;
    let cfg = RedisStoreConfig { key_prefix: "pfx:".into(), ..RedisStoreConfig::new(server.url()) };
    let store = RedisStore::connect(cfg).await.unwrap();
    let remove = MemberChange::Remove { user_id: "bob".into() };
    let batch = [
        create("g:t", "alice", &["bob".to_owned()]),
        send("g:t", "bob", "m1"),
        change("g:t", "alice", "rm", 1, vec![remove]),
    ];
    let out = store.commit(&batch).await.unwrap();
    assert_eq!(appended(&out[2]).seq, 3);
    let Reply::Array(Some(keys)) = server.command(&[b"KEYS", b"*"]).unwrap() else {
        panic!("KEYS")
    };
    let mut keys: Vec<String> = keys
        .into_iter()
        .map(|k| match k {
            Reply::Bulk(Some(k)) => String::from_utf8(k).unwrap(),
            other => panic!("key {other:?}"),
        })
        .filter(|k| !k.ends_with("history") && !k.ends_with("node"))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "pfx:{c:3:g:t}:current",
            "pfx:{c:3:g:t}:group",
            "pfx:{c:3:g:t}:m:0",
            "pfx:{c:3:g:t}:members",
            "pfx:{c:3:g:t}:meta",
            "pfx:{u:3:bob}:convs",
            "pfx:{u:3:bob}:d:m1",
            "pfx:{u:3:bob}:last",
            "pfx:{u:5:alice}:convs",
            "pfx:{u:5:alice}:d:create-g:t",
            "pfx:{u:5:alice}:d:rm",
            "pfx:{u:5:alice}:last",
        ]
    );
    let Reply::Bulk(Some(row)) =
        server.command(&[b"HGET", b"pfx:{c:3:g:t}:members", b"bob"]).unwrap()
    else {
        panic!("bob's row")
    };
    assert_eq!(row, b"1:1:1:3", "role:joined_seq:visible_from:removed_seq");
}

/// kill -9 of Redis right after acknowledged group changes: the record, the rows and the
/// current-member set come back from the AOF, a resend is a duplicate, versions continue, and
/// membership is still checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_changes_survive_a_kill9() {
    let mut server = start().await;
    let store = RedisStore::connect(RedisStoreConfig::new(server.url())).await.unwrap();
    let add = change("g:k", "alice", "add", 1, vec![join("carol", Role::Admin)]);
    store.commit(&[create("g:k", "alice", &["bob".to_owned()]), add.clone()]).await.unwrap();
    tokio::task::block_in_place(|| server.kill9()).unwrap();
    tokio::task::block_in_place(|| server.start_again()).unwrap();
    let fresh = RedisStore::connect(RedisStoreConfig::new(server.url())).await.unwrap();
    let state = fresh.get_group("g:k").await.unwrap().unwrap();
    assert_eq!((state.version, state.meta.member_count), (2, 1));
    let members = fresh.group_members("g:k", "", 10).await.unwrap();
    let ids: Vec<_> = members.iter().map(|m| (m.user_id.as_str(), m.role, m.joined_seq)).collect();
    assert_eq!(
        ids,
        [("alice", Role::Owner, 1), ("bob", Role::Member, 1), ("carol", Role::Admin, 2)]
    );
    let again = fresh.commit(&[add]).await.unwrap();
    assert!(appended(&again[0]).duplicate);
    let stale = change("g:k", "alice", "add-2", 1, vec![join("dave", Role::Member)]);
    assert_eq!(
        fresh.commit(&[stale]).await.unwrap()[0],
        Committed::Refused(Refusal::VersionConflict { version: 2 })
    );
    let out = fresh.commit(&[send("g:k", "carol", "hi")]).await.unwrap();
    assert_eq!((appended(&out[0]).seq, appended(&out[0]).group_version), (3, 2));
    // `append` (not `commit`) reports a refusal as an error, as the embedded store does.
    let refused = fresh.append(vec![message("g:k", "dave", "x", v1::MessageKind::Normal)]).await;
    assert!(matches!(refused, Err(StoreError::Refused(Refusal::NotAMember))), "{refused:?}");
}

/// `min_replicas_acked` with no replica: a group change waits and fails like an append (it is
/// on the primary all the same: its resend is answered as a duplicate, after its own wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_changes_wait_for_replicas() {
    let server = start().await;
    let cfg = RedisStoreConfig {
        min_replicas_acked: 1,
        command_timeout: Duration::from_secs(2),
        ..RedisStoreConfig::new(server.url())
    };
    let store = RedisStore::connect(cfg).await.unwrap();
    let held = store.commit(&[create("g:r", "alice", &[])]).await;
    assert!(
        matches!(&held, Err(StoreError::Unavailable(t)) if t.contains("replicas acknowledged")),
        "{held:?}"
    );
    let state = store.get_group("g:r").await.unwrap().unwrap();
    assert_eq!(state.version, 1);
}
