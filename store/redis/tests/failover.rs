//! The Redis store across a failover to a replica that lagged: real redis-server processes, a
//! primary and a replica linked through a [`ChaosProxy`] (paused: the replica lags; reset after
//! the primary's kill -9: the tail never arrives), the replica promoted with `REPLICAOF NO ONE`,
//! and the store's own connection moved to it through a second proxy, as a virtual IP that
//! Sentinel moves would. No sleeps: every wait is on a replication offset or an INFO field.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use tern_proto::v1;
use tern_store::{Committed, NewMessage, Store, StoreError};
use tern_store_redis::{RedisStore, RedisStoreConfig, RedisStoreError};
use tern_testkit::{ChaosProxy, RedisOptions, RedisServer};

fn message(conv: &str, cmid: &str) -> NewMessage {
    NewMessage {
        mention_user_ids: Vec::new(),
        mention_all: false,
        conversation_id: conv.to_owned(),
        members: vec!["alice".to_owned(), "bob".to_owned()],
        sender_user_id: "alice".to_owned(),
        sender_device_id: "d".to_owned(),
        client_msg_id: cmid.to_owned(),
        kind: v1::MessageKind::Normal,
        content_type: "text/plain".to_owned(),
        body: Bytes::from(cmid.to_owned()),
        recalled_seq: 0,
        server_time_ms: 1_700_000_000_000,
    }
}

/// A primary, its replica (linked through `link`) and the proxy the store dials (`front`).
struct Pair {
    primary: RedisServer,
    replica: RedisServer,
    link: ChaosProxy,
    front: ChaosProxy,
}

impl Pair {
    fn start() -> Pair {
        let primary = RedisServer::start().unwrap();
        let link = ChaosProxy::start(primary.addr()).unwrap();
        let replica = RedisServer::start_replica(link.addr(), RedisOptions::default()).unwrap();
        let front = ChaosProxy::start(primary.addr()).unwrap();
        Pair { primary, replica, link, front }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.front.addr())
    }

    /// The replica stops receiving anything from now on (after it caught up).
    fn lag_from_here(&self) {
        self.replica.wait_caught_up(&self.primary).unwrap();
        self.link.pause();
    }

    /// kill -9 of the primary; the replica's link is cut (what it had not received is gone),
    /// the replica is promoted and the store's address now leads to it.
    fn fail_over(&mut self) {
        self.primary.kill9().unwrap();
        self.link.reset_all().unwrap();
        self.replica.promote().unwrap();
        self.front.retarget(self.replica.addr());
        self.front.reset_all().unwrap();
    }
}

/// Seqs each conversation skips after a takeover in these tests.
const GAP: u64 = 1000;

fn config(url: String) -> RedisStoreConfig {
    RedisStoreConfig { failover_seq_gap: GAP, ..RedisStoreConfig::new(url) }
}

/// Appends one message per cmid to `conv` (as one batch, resent with the same ids while the
/// store is unavailable, as a client does), returns seq -> cmid.
async fn append_all(store: &RedisStore, conv: &str, cmids: &[String]) -> BTreeMap<u64, String> {
    let out = append_retrying(store, cmids.iter().map(|c| message(conv, c)).collect()).await;
    out.into_iter().zip(cmids).map(|(a, c)| (a.seq, c.clone())).collect()
}

/// The first command on a connection that broke fails with Unavailable (the connection
/// manager reconnects behind it); a client resends. Bounded: a store that stays unavailable
/// fails the test.
async fn append_retrying(store: &RedisStore, batch: Vec<NewMessage>) -> Vec<tern_store::Appended> {
    for _ in 0..100 {
        match store.append(batch.clone()).await {
            Ok(out) => return out,
            Err(StoreError::Unavailable(e)) => eprintln!("append unavailable, resending: {e}"),
            Err(e) => panic!("append failed: {e}"),
        }
    }
    panic!("the store stayed unavailable");
}

fn cmids(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i}")).collect()
}

/// What a syncing client sees of `conv`: every seq up to last_seq is a stored message or
/// reported missing (the page's missing ranges); returns (stored seq -> cmid, missing, last).
async fn sync_view(store: &RedisStore, conv: &str) -> (BTreeMap<u64, String>, BTreeSet<u64>, u64) {
    let range = store.read_range(conv, 1, u32::MAX).await.unwrap();
    let mut stored = BTreeMap::new();
    for m in &range.messages {
        assert_eq!(m.body, m.client_msg_id.clone().into_bytes(), "seq {}", m.seq);
        assert!(stored.insert(m.seq, m.client_msg_id.clone()).is_none(), "seq {} twice", m.seq);
    }
    let missing = (1..=range.last_seq).filter(|s| !stored.contains_key(s)).collect();
    (stored, missing, range.last_seq)
}

/// Acked seqs from before and after the failover never name two different messages; what the
/// promoted replica lacks is reported missing by sync (never silently reused); resends of
/// acked messages that survived are answered as duplicates with their seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_lagging_replica_never_reuses_a_seq() {
    let mut pair = tokio::task::block_in_place(Pair::start);
    let store = RedisStore::connect(config(pair.url())).await.unwrap();
    // Replicated history: conversations a and b.
    let mut acked: BTreeMap<&str, BTreeMap<u64, String>> = BTreeMap::new();
    acked.insert("a", append_all(&store, "a", &cmids("a-old", 10)).await);
    acked.insert("b", append_all(&store, "b", &cmids("b-old", 4)).await);
    tokio::task::block_in_place(|| pair.lag_from_here());
    // Acknowledged by the primary, never reaching the replica: more of a, a new conversation c.
    let lost_a = append_all(&store, "a", &cmids("a-lost", 5)).await;
    let lost_c = append_all(&store, "c", &cmids("c-lost", 3)).await;
    assert_eq!(lost_a.keys().copied().collect::<Vec<_>>(), (11..=15).collect::<Vec<_>>());
    acked.get_mut("a").unwrap().extend(lost_a.clone());
    acked.insert("c", lost_c.clone());

    tokio::task::block_in_place(|| pair.fail_over());
    assert_eq!(history_field(&pair.replica, "gap"), None, "nothing fenced before an append");

    // The same store (its connection manager reconnects to the promoted replica) and a store
    // that connects afresh, as a worker started after the failover would.
    let fresh = RedisStore::connect(config(pair.url())).await.unwrap();
    for (i, s) in [&store, &fresh].into_iter().enumerate() {
        for conv in ["a", "b", "c"] {
            let new = append_all(s, conv, &cmids(&format!("{conv}-new{i}"), 3)).await;
            for (seq, cmid) in new {
                if let Some(old) = acked[conv].get(&seq) {
                    panic!("{conv}: seq {seq} handed out again: {old} before, {cmid} now");
                }
                acked.get_mut(conv).unwrap().insert(seq, cmid);
            }
        }
    }

    for (conv, acks) in &acked {
        let (stored, missing, last_seq) = sync_view(&fresh, conv).await;
        for (seq, cmid) in &stored {
            assert_eq!(acks.get(seq), Some(cmid), "{conv}: stored seq {seq} is what its ack named");
        }
        for seq in acks.keys().filter(|s| !stored.contains_key(s)) {
            assert!(missing.contains(seq), "{conv}: acked seq {seq} lost silently");
        }
        assert!(last_seq >= *acks.keys().next_back().unwrap(), "{conv}");
    }
    // Each conversation continued GAP above its highest stored seq (a: 10, b: 4, c: none).
    for (conv, first_new) in [("a", 10 + GAP + 1), ("b", 4 + GAP + 1), ("c", GAP + 1)] {
        let first = acked[conv].iter().find(|(_, c)| c.contains("-new0-")).map(|(s, _)| *s);
        assert_eq!(first, Some(first_new), "{conv}");
    }
    assert_eq!(history_field(&pair.replica, "gap").as_deref(), Some("1000"));
    // The lost messages are really lost (the replica never had them) ...
    let (a_stored, _, _) = sync_view(&fresh, "a").await;
    assert!(lost_a.keys().all(|s| !a_stored.contains_key(s)), "the tail did not replicate");
    // ... resends of survivors are duplicates with their seq, and a resend of a lost one is
    // stored again under a new, unused seq.
    let dup = append_retrying(&fresh, vec![message("a", "a-old-3")]).await;
    assert_eq!((dup[0].duplicate, dup[0].seq), (true, 3));
    let again = append_retrying(&fresh, vec![message("a", "a-lost-1")]).await;
    assert!(!again[0].duplicate);
    assert!(!acked["a"].contains_key(&again[0].seq), "resend got used seq {}", again[0].seq);
}

/// A field of the store's history record (`tern:history`), read on `server` directly.
fn history_field(server: &RedisServer, name: &str) -> Option<String> {
    match server.command(&[b"HGET", b"tern:history", name.as_bytes()]).unwrap() {
        tern_testkit::Reply::Bulk(v) => v.map(|b| String::from_utf8(b).unwrap()),
        other => panic!("HGET tern:history {name}: {other:?}"),
    }
}

fn is_fenced(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(text) if text.contains("refusing to append"))
}

/// With the defaults (`failover_seq_gap = 0`) a takeover is refused: the running store's
/// appends and a new store's connect fail, nothing is written, reads still work. A worker
/// configured with a gap then fences the history for everyone; a conversation whose counter
/// was lost (its messages kept) continues above its highest stored message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_is_refused_by_default() {
    let mut pair = tokio::task::block_in_place(Pair::start);
    let store = RedisStore::connect(RedisStoreConfig::new(pair.url())).await.unwrap();
    append_all(&store, "a", &cmids("a-old", 3)).await;
    append_all(&store, "b", &cmids("b-old", 2)).await;
    tokio::task::block_in_place(|| pair.lag_from_here());
    let lost = append_all(&store, "a", &cmids("a-lost", 2)).await;
    assert_eq!(lost.keys().copied().collect::<Vec<_>>(), [4, 5]);
    tokio::task::block_in_place(|| pair.fail_over());

    // The first append notices the broken connection; every one after it is refused.
    let mut refused = 0;
    for i in 0..100 {
        match store.append(vec![message("a", &format!("a-new-{i}"))]).await {
            Err(e) if is_fenced(&e) => refused += 1,
            Err(StoreError::Unavailable(_)) if refused == 0 => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        if refused == 3 {
            break;
        }
    }
    assert_eq!(refused, 3);
    match RedisStore::connect(RedisStoreConfig::new(pair.url())).await {
        Err(RedisStoreError::Fenced { detail }) => {
            assert!(detail.contains("took over"), "{detail}")
        }
        other => panic!("expected Fenced at connect, got {other:?}"),
    }
    assert_eq!(store.last_seq("a").await.unwrap(), 3, "nothing appended, reads work");
    assert_eq!(history_field(&pair.replica, "gap"), None);

    // b's counter is lost while its messages are kept (as an eviction would do it).
    pair.replica.command(&[b"HDEL", b"tern:{c:1:b}:meta", b"last_seq"]).unwrap();
    let fencer = RedisStore::connect(config(pair.url())).await.unwrap();
    assert_eq!(history_field(&pair.replica, "gap").as_deref(), Some("1000"));
    // Now every store goes on, the default-configured one too, above the gap.
    let a = append_all(&store, "a", &cmids("a-after", 1)).await;
    assert_eq!(a.keys().copied().collect::<Vec<_>>(), [3 + GAP + 1]);
    let b = append_all(&fencer, "b", &cmids("b-after", 1)).await;
    assert_eq!(b.keys().copied().collect::<Vec<_>>(), [2 + GAP + 1]);
    let a = append_all(&fencer, "a", &cmids("a-after2", 1)).await;
    assert_eq!(a.keys().copied().collect::<Vec<_>>(), [3 + GAP + 2], "fenced once only");
}

/// A promoted replica that restarted before any store reached it no longer shows the old
/// history as `master_replid2`; the node marker (written to the AOF only, never replicated)
/// still tells it from a restart of the node the store wrote to, so it is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_then_restarted_replica_is_still_a_takeover() {
    let mut pair = tokio::task::block_in_place(Pair::start);
    let store = RedisStore::connect(RedisStoreConfig::new(pair.url())).await.unwrap();
    append_all(&store, "a", &cmids("a-old", 3)).await;
    tokio::task::block_in_place(|| pair.lag_from_here());
    append_all(&store, "a", &cmids("a-lost", 2)).await;
    tokio::task::block_in_place(|| {
        pair.fail_over();
        pair.replica.restart().unwrap();
    });
    let replid2 = pair.replica.info_field("replication", "master_replid2").unwrap().unwrap();
    assert!(replid2.bytes().all(|b| b == b'0'), "the restart forgot the old history");
    match RedisStore::connect(RedisStoreConfig::new(pair.url())).await {
        Err(RedisStoreError::Fenced { .. }) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
    let fenced = RedisStore::connect(config(pair.url())).await.unwrap();
    let a = append_all(&fenced, "a", &cmids("a-new", 1)).await;
    assert_eq!(a.keys().copied().collect::<Vec<_>>(), [3 + GAP + 1]);
}

/// `min_replicas_acked = 1`: an append is acknowledged only once the replica has it. While the
/// replica lags, appends fail Unavailable, and so does another worker's resend of one of them
/// (it must not confirm a message the replica lacks); once the replica catches up the resend
/// is answered with the original seq, and after a failover every acknowledged message is on
/// the promoted replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_replicas_acked_holds_the_ack_until_the_replica_has_it() {
    let mut pair = tokio::task::block_in_place(Pair::start);
    let waiting = |url| RedisStoreConfig {
        min_replicas_acked: 1,
        command_timeout: Duration::from_secs(2),
        ..config(url)
    };
    let store = RedisStore::connect(waiting(pair.url())).await.unwrap();
    let other = RedisStore::connect(waiting(pair.url())).await.unwrap();
    let mut acked = append_all(&store, "w", &cmids("w-old", 4)).await;
    // A flushed script cache (any restart) is reloaded on the appends' own connection too.
    pair.primary.command(&[b"SCRIPT", b"FLUSH"]).unwrap();
    acked.extend(append_all(&store, "w", &cmids("w-flushed", 1)).await);
    tokio::task::block_in_place(|| pair.lag_from_here());
    let behind = store.append(vec![message("w", "w-held")]).await;
    assert!(
        matches!(&behind, Err(StoreError::Unavailable(t)) if t.contains("replicas acknowledged")),
        "{behind:?}"
    );
    let resend = other.append(vec![message("w", "w-held")]).await;
    assert!(matches!(&resend, Err(StoreError::Unavailable(_))), "{resend:?}");
    pair.link.resume();
    let out = append_retrying(&other, vec![message("w", "w-held")]).await;
    assert_eq!((out[0].duplicate, out[0].seq), (true, 6), "stored once, on the primary");
    acked.insert(6, "w-held".to_owned());
    acked.extend(append_all(&store, "w", &cmids("w-more", 3)).await);

    // Everything acknowledged reached the replica before its ack: a failover loses none.
    pair.link.pause();
    tokio::task::block_in_place(|| pair.fail_over());
    let after = RedisStore::connect(config(pair.url())).await.unwrap();
    let (stored, missing, _) = sync_view(&after, "w").await;
    assert_eq!(stored, acked);
    assert!(missing.is_empty());
}

/// A group change as dispatch writes it: `rows` at `expect`, sent by `owner`.
fn group_change(
    conv: &str,
    owner: &str,
    cmid: &str,
    expect: u64,
    rows: Vec<tern_store::MemberChange>,
) -> tern_store::Write {
    tern_store::Write::Group(tern_store::GroupWrite {
        event: NewMessage {
            kind: v1::MessageKind::GroupEvent,
            members: Vec::new(),
            sender_user_id: owner.to_owned(),
            ..message(conv, cmid)
        },
        expect_version: expect,
        meta: tern_store::GroupMeta { owner_user_id: owner.to_owned(), ..Default::default() },
        members: rows,
    })
}

fn join(user: &str) -> tern_store::MemberChange {
    tern_store::MemberChange::Join {
        user_id: user.to_owned(),
        role: tern_store::Role::Member,
        full_history: false,
    }
}

/// `store.commit(batch)`, resent while the store is unavailable (as `append_retrying`).
async fn commit_retrying(store: &RedisStore, batch: &[tern_store::Write]) -> Vec<Committed> {
    for _ in 0..100 {
        match store.commit(batch).await {
            Ok(out) => return out,
            Err(StoreError::Unavailable(e)) => eprintln!("commit unavailable, resending: {e}"),
            Err(e) => panic!("commit failed: {e}"),
        }
    }
    panic!("the store stayed unavailable");
}

/// A group change lost with the old primary: the promoted replica's group is at the version
/// it had, so a change computed from the lost one is refused (the lost member's sends too);
/// the next change is fenced like any append (its seq, and so the group's version, continues
/// above the gap) and sends carry that version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_group_change_is_a_version_conflict_and_versions_continue_above_the_gap() {
    let mut pair = tokio::task::block_in_place(Pair::start);
    let store = RedisStore::connect(config(pair.url())).await.unwrap();
    let create = group_change("g:f", "alice", "create", 0, vec![join("alice"), join("bob")]);
    commit_retrying(&store, &[create]).await;
    tokio::task::block_in_place(|| pair.lag_from_here());
    let lost = group_change("g:f", "alice", "add-carol", 1, vec![join("carol")]);
    let out = commit_retrying(&store, &[lost]).await;
    assert!(matches!(&out[0], Committed::Appended(a) if a.group_version == 2), "{out:?}");
    tokio::task::block_in_place(|| pair.fail_over());

    let carol = tern_store::Write::Append(NewMessage {
        sender_user_id: "carol".to_owned(),
        members: Vec::new(),
        ..message("g:f", "carol-1")
    });
    let stale = group_change("g:f", "alice", "add-dave", 2, vec![join("dave")]);
    let out = commit_retrying(&store, &[carol, stale]).await;
    assert_eq!(out[0], Committed::Refused(tern_store::Refusal::NotAMember));
    assert_eq!(out[1], Committed::Refused(tern_store::Refusal::VersionConflict { version: 1 }));
    let again = group_change("g:f", "alice", "add-dave-2", 1, vec![join("dave")]);
    let bob = tern_store::Write::Append(NewMessage {
        sender_user_id: "bob".to_owned(),
        members: Vec::new(),
        ..message("g:f", "bob-1")
    });
    let out = commit_retrying(&store, &[again, bob]).await;
    let version = 1 + GAP + 1;
    assert!(
        matches!(&out[0], Committed::Appended(a) if (a.seq, a.group_version) == (version, version)),
        "{out:?}"
    );
    assert!(
        matches!(&out[1], Committed::Appended(a) if (a.seq, a.group_version) == (version + 1, version)),
        "{out:?}"
    );
    assert_eq!(store.get_group("g:f").await.unwrap().unwrap().version, version);
    let dave = store.group_member("g:f", "dave").await.unwrap().unwrap();
    assert_eq!(dave.joined_seq, version);
    assert_eq!(store.group_member("g:f", "carol").await.unwrap(), None, "lost with its change");
}
