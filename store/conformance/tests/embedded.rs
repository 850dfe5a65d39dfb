//! Runs the conformance suite against the embedded (redb) store, plus its reopen durability.

use tempfile::TempDir;
use tern_proto::v1;
use tern_store::embedded::{EmbeddedConfig, EmbeddedStore};
use tern_store::{
    Committed, GroupMeta, GroupWrite, MemberChange, NewMessage, Refusal, Role, Store, Watermarks,
    Write,
};
use tern_store_conformance::Fixture;

/// A fresh store in its own temporary directory (removed on drop).
struct Setup {
    store: EmbeddedStore,
    _dir: TempDir,
}

impl Fixture for Setup {
    fn store(&self) -> &dyn Store {
        &self.store
    }
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    Setup { store, _dir: dir }
}

tern_store_conformance::conformance_tests!(setup);
tern_store_conformance::group_conformance_tests!(setup);
tern_store_conformance::flags_conformance_tests!(setup);
tern_store_conformance::device_conformance_tests!(setup);

/// The whole suite on one shared store, as a persistent backend would run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_one_store() {
    let setup = setup().await;
    tern_store_conformance::run_all(setup.store()).await;
    tern_store_conformance::run_all_groups(setup.store()).await;
    tern_store_conformance::run_all_flags(setup.store()).await;
    tern_store_conformance::run_all_devices(setup.store()).await;
}

fn message(conv: &str, user: &str, cmid: &str, time: i64) -> NewMessage {
    NewMessage {
        mention_user_ids: Vec::new(),
        mention_all: false,
        conversation_id: conv.to_owned(),
        members: vec![user.to_owned()],
        sender_user_id: user.to_owned(),
        sender_device_id: "d".to_owned(),
        client_msg_id: cmid.to_owned(),
        kind: v1::MessageKind::Normal,
        content_type: "text/plain".to_owned(),
        body: bytes::Bytes::from(cmid.to_owned()),
        recalled_seq: 0,
        server_time_ms: time,
    }
}

/// Data, seqs, dedupe, receipts and the conversation index survive closing and reopening the
/// directory, and seqs continue without reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data_and_continues_seqs() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let out = store
            .append(vec![message("c", "u", "m1", 1), message("c", "u", "m2", 2)])
            .await
            .unwrap();
        assert_eq!(out.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![1, 2]);
        store.set_watermark("c", "u", v1::ReceiptKind::Read, 2).await.unwrap();
        // A clone shares the database; both are dropped here, closing the file.
        let _clone = store.clone();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.last_seq("c").await.unwrap(), 2);
    let range = store.read_range("c", 1, 10).await.unwrap();
    assert_eq!(
        range.messages.iter().map(|m| m.client_msg_id.as_str()).collect::<Vec<_>>(),
        vec!["m1", "m2"]
    );
    let dup = store.append(vec![message("c", "u", "m2", 99)]).await.unwrap();
    assert!(dup[0].duplicate);
    assert_eq!((dup[0].seq, dup[0].server_time_ms), (2, 2));
    let next = store.append(vec![message("c", "u", "m3", 3)]).await.unwrap();
    assert_eq!((next[0].seq, next[0].duplicate), (3, false));
    assert_eq!(
        store.watermarks("c").await.unwrap(),
        vec![("u".to_owned(), Watermarks { delivered: 2, read: 2 })]
    );
    let listed = store.list_conversations("u", "", 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].last_seq, listed[0].last_time_ms), (3, 3));
}

/// A second open of a directory that is already open fails cleanly instead of sharing it.
#[tokio::test]
async fn second_open_of_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path()).unwrap();
    let second = EmbeddedStore::open_with(dir.path(), &EmbeddedConfig::default());
    assert!(matches!(second, Err(tern_store::StoreError::Io(_))), "{second:?}");
}

/// A file that is not a redb database is reported, not overwritten.
#[test]
fn garbage_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(tern_store::embedded::DB_FILE_NAME);
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    assert!(EmbeddedStore::open(dir.path()).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);
}

/// An index that applies nothing unless a read asks and never checkpoints on its own: what a
/// test writes stays in the log only.
fn lazy_index() -> EmbeddedConfig {
    let hour = std::time::Duration::from_secs(3600);
    EmbeddedConfig {
        index: tern_store::embedded::IndexConfig {
            interval: hour,
            batch: usize::MAX,
            checkpoint: hour,
            max_pending: usize::MAX,
        },
        ..EmbeddedConfig::default()
    }
}

/// Everything acknowledged is in the log: after a crash that left the index at its last
/// checkpoint, reopening replays messages, dedupe keys, recalls and watermarks, and seqs
/// continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_the_index_checkpoint_replays_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open_with(dir.path(), &lazy_index()).unwrap();
        for i in 1..=20 {
            let out = store.append(vec![message("c", "u", &format!("m{i}"), i)]).await.unwrap();
            assert_eq!(out[0].seq, i as u64);
        }
        let mut recall = message("c", "u", "r1", 21);
        recall.kind = v1::MessageKind::Recall;
        recall.recalled_seq = 3;
        assert_eq!(store.append(vec![recall]).await.unwrap()[0].seq, 21);
        store.set_watermark("c", "u", v1::ReceiptKind::Read, 20).await.unwrap();
        store.close_as_if_crashed();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.last_seq("c").await.unwrap(), 21);
    let range = store.read_range("c", 1, 100).await.unwrap();
    assert_eq!(range.messages.len(), 21);
    assert!(range.messages[2].recalled && range.messages[2].body.is_empty());
    assert_eq!(range.messages[19].body.as_ref(), b"m20");
    let dup = store.append(vec![message("c", "u", "m7", 99)]).await.unwrap();
    assert_eq!((dup[0].seq, dup[0].duplicate), (7, true));
    let next = store.append(vec![message("c", "u", "m22", 22)]).await.unwrap();
    assert_eq!((next[0].seq, next[0].duplicate), (22, false));
    assert_eq!(
        store.watermarks("c").await.unwrap(),
        vec![("u".to_owned(), Watermarks { delivered: 20, read: 20 })]
    );
    assert_eq!(store.list_conversations("u", "", 10).await.unwrap()[0].last_seq, 22);
}

/// The newest segment file of the store's log that holds records (a prepared spare holds
/// none).
fn newest_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let wal = dir.join(tern_store::embedded::WAL_DIR_NAME);
    let mut files: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
        .into_iter()
        .rev()
        .find(|p| std::fs::read(p).unwrap().iter().skip(64).any(|&b| b != 0))
        .expect("a log segment with records")
}

/// A torn last record (a group write cut by a power loss, never acknowledged) is detected by
/// its checksum and cut off: the store starts with every earlier message, never serves the
/// torn one, and gives its seq to the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_log_tail_is_truncated_never_served() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open_with(dir.path(), &lazy_index()).unwrap();
        for i in 1..=10 {
            store.append(vec![message("c", "u", &format!("m{i}"), i)]).await.unwrap();
        }
        store.close_as_if_crashed();
    }
    // Damage the last record: its last bytes (the end of its payload) become zeros.
    let segment = newest_segment(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).expect("records in the segment") + 1;
    bytes[end - 3..end].fill(0);
    std::fs::write(&segment, &bytes).unwrap();

    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.last_seq("c").await.unwrap(), 9);
    let range = store.read_range("c", 1, 100).await.unwrap();
    let ids: Vec<_> = range.messages.iter().map(|m| m.client_msg_id.clone()).collect();
    assert_eq!(ids, (1..=9).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let next = store.append(vec![message("c", "u", "m11", 11)]).await.unwrap();
    assert_eq!((next[0].seq, next[0].duplicate), (10, false));
    // The torn message was never acknowledged: its resend is new, not a duplicate.
    let resent = store.append(vec![message("c", "u", "m10", 12)]).await.unwrap();
    assert_eq!((resent[0].seq, resent[0].duplicate), (11, false));
    drop(store);
    // And the cut stays cut after another restart.
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.last_seq("c").await.unwrap(), 11);
}

/// A resend whose original only the index holds (the writer dropped it from its map once the
/// index applied it, or a reopen emptied the map) is still answered by dedupe, with the
/// writer's key filter at its default size, tiny (mostly "maybe") and off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_of_an_original_only_in_the_index_is_a_duplicate() {
    for filter in [EmbeddedConfig::default().dedupe_filter_bytes, 8, 0] {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig { dedupe_filter_bytes: filter, ..EmbeddedConfig::default() };
        {
            let store = EmbeddedStore::open_with(dir.path(), &config).unwrap();
            let first: Vec<_> = (0..50).map(|i| message("c", "u", &format!("m{i}"), i)).collect();
            store.append(first).await.unwrap();
            // The read barrier: the index holds them; the next commit prunes the writer's map.
            assert_eq!(store.last_seq("c").await.unwrap(), 50);
            store.append(vec![message("c", "u", "n1", 100)]).await.unwrap();
            let again = store.append(vec![message("c2", "u", "m7", 999)]).await.unwrap();
            assert_eq!((again[0].conversation_id.as_str(), again[0].seq), ("c", 8), "{filter}");
            assert_eq!((again[0].server_time_ms, again[0].duplicate), (7, true), "{filter}");
            let new = store.append(vec![message("c", "u", "m50", 50)]).await.unwrap();
            assert_eq!((new[0].seq, new[0].duplicate), (52, false), "{filter}");
        }
        let store = EmbeddedStore::open_with(dir.path(), &config).unwrap();
        let again = store.append(vec![message("c", "u", "m3", 999)]).await.unwrap();
        assert_eq!((again[0].seq, again[0].duplicate), (4, true), "{filter}");
        let again = store.append(vec![message("c", "u", "n1", 999)]).await.unwrap();
        assert_eq!((again[0].seq, again[0].duplicate), (51, true), "{filter}");
    }
}

/// A group change, as dispatch writes it, at `expect_version`.
fn group_change(
    conv: &str,
    id: &str,
    expect_version: u64,
    count: u32,
    members: Vec<MemberChange>,
) -> Write {
    let mut event = message(conv, "owner", id, 1);
    event.kind = v1::MessageKind::GroupEvent;
    event.members.clear();
    let meta = GroupMeta { name: "team".into(), member_count: count, ..GroupMeta::default() };
    Write::Group(GroupWrite { event, expect_version, meta, members })
}

/// Group changes are in the log like messages: after a crash that left them out of the index,
/// the record, the rows and the membership check of new sends are as acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_the_index_checkpoint_keeps_group_changes() {
    let dir = tempfile::tempdir().unwrap();
    let join = |u: &str, role| MemberChange::Join { user_id: u.into(), role, full_history: false };
    let send = |u: &str, id: &str| {
        let mut m = message("g:team", u, id, 2);
        m.members.clear();
        Write::Append(m)
    };
    {
        let store = EmbeddedStore::open_with(dir.path(), &lazy_index()).unwrap();
        let create = group_change(
            "g:team",
            "c1",
            0,
            2,
            vec![join("owner", Role::Owner), join("bob", Role::Member)],
        );
        let remove = group_change(
            "g:team",
            "r1",
            1,
            1,
            vec![MemberChange::Remove { user_id: "bob".into() }],
        );
        let out = store.commit(&[create, send("bob", "b1"), remove]).await.unwrap();
        assert!(out.iter().all(|c| matches!(c, Committed::Appended(_))), "{out:?}");
        store.close_as_if_crashed();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let state = store.get_group("g:team").await.unwrap().unwrap();
    assert_eq!((state.version, state.meta.member_count), (3, 1));
    let bob = store.group_member("g:team", "bob").await.unwrap().unwrap();
    assert_eq!((bob.joined_seq, bob.removed_seq), (1, 3));
    let out = store.commit(&[send("bob", "b2"), send("owner", "o1")]).await.unwrap();
    assert_eq!(out[0], Committed::Refused(Refusal::NotAMember));
    assert!(matches!(&out[1], Committed::Appended(a) if a.seq == 4 && a.group_version == 3));
}
