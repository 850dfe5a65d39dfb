//! Runs the conformance suite against the embedded (redb) store, plus its reopen durability.

use tempfile::TempDir;
use tern_proto::v1;
use tern_store::embedded::{EmbeddedConfig, EmbeddedStore};
use tern_store::{NewMessage, Store, Watermarks};
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

/// The whole suite on one shared store, as a persistent backend would run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_one_store() {
    let setup = setup().await;
    tern_store_conformance::run_all(setup.store()).await;
}

fn message(conv: &str, user: &str, cmid: &str, time: i64) -> NewMessage {
    NewMessage {
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
