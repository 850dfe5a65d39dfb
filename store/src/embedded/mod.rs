//! The single-node backend: a write-ahead log as the durability point, and a redb index of
//! every conversation applied from it off the ack path.
//!
//! # Files
//!
//! [`EmbeddedStore::open`] creates the directory if needed, with the log in `wal/`
//! ([`crate::wal`]: CRC32C-framed records in preallocated segments) and the index in
//! [`DB_FILE_NAME`] (tables in [`tables`]).
//!
//! # The commit path
//!
//! A group of writes ([`Store::commit`]; dispatch's commit thread calls it through
//! [`BlockingCommit`] on its own thread) costs one sequential log write and one `fdatasync`:
//! the [`writer`] decides seqs, dedupe and watermark moves from its own maps (falling back to
//! the index for keys it does not hold), appends one record per new message and per moved
//! watermark (coalesced: one per member and conversation per group), syncs, and only then
//! answers. **Accepted means durable**: an answer is given only for records the log has
//! synced. No redb transaction is on this path.
//!
//! # The index
//!
//! The [`index`] thread applies committed records to redb in large transactions, most of them
//! not fsynced, with a durable checkpoint every few seconds; the log keeps every record after
//! the last checkpoint. Reads wait until the index holds everything acknowledged before the
//! read began, so a sync never misses an acknowledged message.
//!
//! # Recovery
//!
//! At open, the log is replayed from the lsn the index holds (`index_meta`) and applied, then
//! checkpointed, before the store serves anything. A torn or corrupt log tail (a record whose
//! checksum fails: a group write cut by a crash, never acknowledged) is truncated, never
//! served. The replay is bounded by the checkpoint interval times the write rate.
//!
//! # Why this design
//!
//! redb alone made every group a copy-on-write B-tree commit (page copies, checksums, two
//! fsyncs): ~300 µs of CPU even for one message, and receipts each took a transaction of their
//! own. The log makes a group's cost one `write` and one `fdatasync` plus a few µs per record,
//! and the index amortises redb's per-transaction cost over thousands of records. fjall (an
//! LSM tree with its own journal) was the other candidate; it was measured against this design
//! with the same workload (docs/BENCHMARKS.md).
//!
//! redb is synchronous: reads run on tokio's blocking pool; the async write methods too (the
//! dispatch commit thread uses [`BlockingCommit`] directly). Dropping an `append` future does
//! not cancel the write: it may still commit, and the client's resend is then answered by
//! dedupe. The database file is locked by the process that opens it: one process per store.

mod device;
mod entry;
mod filter;
pub mod fuzzing;
mod index;
mod tables;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase};
use tern_proto::v1;
use tracing::info;

pub use index::IndexConfig;
use tables::EmbeddedError;

use crate::wal::{Wal, WalConfig};
use crate::{
    Appended, BlockingCommit, BoxFuture, Committed, ConversationEntry, GroupState, Member,
    NewMessage, Range, Store, StoreError, WatermarkUpdate, WatermarkWrite, Watermarks, Write,
};

/// Name of the index database file inside the store's directory.
pub const DB_FILE_NAME: &str = "tern.redb";
/// Name of the log directory inside the store's directory.
pub const WAL_DIR_NAME: &str = "wal";

/// Log records applied per index transaction during recovery.
const REPLAY_BATCH: usize = 16_384;

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Every group commit is fsynced before it returns: the [`Store`] contract ("accepted
    /// means durable"). The default, and the only mode for a server.
    #[default]
    Fsync,
    /// The log is not fsynced: a power cut (not a process crash: the page cache survives that)
    /// loses what was acknowledged since the last index checkpoint. **Breaks the [`Store`]
    /// contract; for benchmarks and throwaway tests only.**
    NoSync,
}

/// Configuration of an [`EmbeddedStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Commit durability. Default [`Durability::Fsync`].
    pub durability: Durability,
    /// Index page cache size in bytes. Cost: up to this much RAM; less means more disk reads
    /// for sync of old messages. Default 64 MiB.
    pub cache_size_bytes: usize,
    /// Size of each log segment (preallocated). Default 64 MiB.
    pub wal_segment_bytes: u64,
    /// When the index applies and checkpoints.
    pub index: IndexConfig,
    /// Size of the writer's filter of stored dedupe keys (a Bloom filter, filled at open by
    /// a scan of the whole dedupe table), which lets a new client_msg_id skip an index
    /// lookup. Cost: this much RAM, and the scan at open; once it holds more than about one
    /// key per 4 bytes most lookups happen again (never a wrong answer). 0 disables it.
    /// Default 16 MiB.
    pub dedupe_filter_bytes: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            cache_size_bytes: 64 * 1024 * 1024,
            wal_segment_bytes: WalConfig::default().segment_bytes,
            index: IndexConfig::default(),
            dedupe_filter_bytes: 16 << 20,
        }
    }
}

/// The single-node [`Store`]. Cheap to clone; the last clone closes it (applying and
/// checkpointing what the index has not, and joining its thread).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    writer: Mutex<writer::Writer>,
    index: Arc<index::Index>,
    index_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The log's durable lsn: what reads must see.
    durable: AtomicU64,
    /// Device writes waiting for the log, and device rows not in the index yet.
    devices: device::DeviceQueue,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.index.close();
        let thread = self.index_thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread
            && t.join().is_err()
        {
            tracing::error!("the index thread panicked");
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` with the default config (fsync per commit).
    ///
    /// Blocking (it replays the log): call it at startup, not from an async task's hot path.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &EmbeddedConfig::default())
    }

    /// Opens (or creates) the store in `dir` with `config`, replaying the log tail into the
    /// index first.
    ///
    /// Fails with [`StoreError::Io`] when another process holds the database open or the file
    /// is not a redb database, and with [`StoreError::Corrupt`] when the log has a hole in the
    /// middle (acknowledged records lost: the store does not start on it).
    pub fn open_with(dir: &Path, config: &EmbeddedConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE_NAME);
        let db = Database::builder()
            .set_cache_size(config.cache_size_bytes)
            .create(&path)
            .map_err(|e| StoreError::Io(format!("open {}: {e}", path.display())))?;
        let (db, wal) = recover(db, dir, config).map_err(StoreError::from)?;
        let known =
            tables::dedupe_filter(&db, config.dedupe_filter_bytes).map_err(StoreError::from)?;
        let db = Arc::new(db);
        let applied = wal.durable_lsn();
        let (index, thread) = index::Index::start(db.clone(), applied, config.index.clone())
            .map_err(|e| StoreError::Io(format!("start the index thread: {e}")))?;
        info!(path = %path.display(), durability = ?config.durability, "embedded store open");
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                writer: Mutex::new(writer::Writer::new(wal, known)),
                index,
                index_thread: Mutex::new(Some(thread)),
                durable: AtomicU64::new(applied),
                devices: device::DeviceQueue::default(),
                path,
            }),
        })
    }

    /// Closes the store as a crash would leave it: the index keeps only its last durable
    /// checkpoint and the next open replays the log. For recovery tests and benchmarks.
    #[doc(hidden)]
    pub fn close_as_if_crashed(self) {
        self.inner.index.abandon();
    }

    /// Path of the index database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Commits `batch` on the calling thread (`bounded`: refuse watermarks above the last seq).
    fn commit_blocking(
        &self,
        batch: &[Write],
        bounded: bool,
    ) -> Result<Vec<Committed>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &*self.inner;
        let mut w = inner
            .writer
            .lock()
            .map_err(|_| StoreError::Unavailable("an earlier commit panicked".into()))?;
        w.housekeeping(inner.index.applied(), inner.index.checkpointed());
        let (out, ops, durable) = w.commit(&inner.db, batch, bounded)?;
        inner.index.push(ops, durable)?;
        inner.durable.store(durable, Ordering::Release);
        Ok(out)
    }

    /// Runs `f` on the blocking pool against `self`.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&EmbeddedStore) -> Result<T, StoreError> + Send + 'static,
    {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || f(&me)).await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Unavailable(format!("storage task failed: {e}"))),
        }
    }

    /// A read on the blocking pool, once the index holds everything acknowledged so far.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, EmbeddedError> + Send + 'static,
    {
        let lsn = self.inner.durable.load(Ordering::Acquire);
        self.blocking(move |s| {
            s.inner.index.wait_applied(lsn)?;
            f(&s.inner.db).map_err(StoreError::from)
        })
        .await
    }
}

/// Replays the log after what the index holds, then checkpoints the index.
fn recover(
    db: Database,
    dir: &Path,
    config: &EmbeddedConfig,
) -> Result<(Database, Wal), EmbeddedError> {
    let applied = tables::create_tables(&db)?;
    let wal_cfg = WalConfig {
        segment_bytes: config.wal_segment_bytes,
        fsync: config.durability == Durability::Fsync,
    };
    let mut pending = Vec::new();
    let (wal, report) = Wal::open(&dir.join(WAL_DIR_NAME), &wal_cfg, applied, |lsn, payload| {
        if let Some(op) = entry::decode(lsn, payload)? {
            pending.push(op);
        }
        if pending.len() >= REPLAY_BATCH {
            tables::apply(&db, std::mem::take(&mut pending), lsn, redb::Durability::None)?;
        }
        Ok::<(), EmbeddedError>(())
    })?;
    let last = wal.durable_lsn().max(applied);
    tables::apply(&db, pending, last, redb::Durability::Immediate)?;
    let mut wal = wal;
    if let Err(e) = wal.release(last) {
        tracing::warn!(error = %e, "releasing replayed log segments failed");
    }
    if report.records > 0 || report.truncated.is_some() {
        info!(
            records = report.records,
            bytes = report.bytes,
            segments = report.segments,
            torn_tail = report.truncated.is_some(),
            elapsed_ms = report.elapsed.as_millis() as u64,
            "replayed the log into the index"
        );
    }
    Ok((db, wal))
}

impl BlockingCommit for EmbeddedStore {
    fn commit_now(&self, batch: &[Write]) -> Result<Vec<Committed>, StoreError> {
        self.commit_blocking(batch, true)
    }
}

impl Store for EmbeddedStore {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
        Box::pin(self.blocking(move |s| {
            let writes: Vec<Write> = batch.into_iter().map(Write::Append).collect();
            s.commit_blocking(&writes, true)?
                .into_iter()
                .map(|c| match c {
                    Committed::Appended(a) => Ok(a),
                    Committed::Refused(r) => Err(StoreError::Refused(r)),
                    _ => Err(StoreError::Corrupt("append outcome of another kind".into())),
                })
                .collect()
        }))
    }

    fn commit<'a>(
        &'a self,
        batch: &'a [Write],
    ) -> BoxFuture<'a, Result<Vec<Committed>, StoreError>> {
        let batch = batch.to_vec();
        Box::pin(self.blocking(move |s| s.commit_blocking(&batch, true)))
    }

    fn blocking_commit(&self) -> Option<&dyn BlockingCommit> {
        Some(self)
    }

    fn read_range<'a>(
        &'a self,
        conversation_id: &'a str,
        from_seq: u64,
        window: u32,
    ) -> BoxFuture<'a, Result<Range, StoreError>> {
        let conv = conversation_id.to_owned();
        Box::pin(self.read(move |db| tables::read_range_blocking(db, &conv, from_seq, window)))
    }

    fn get_message<'a>(
        &'a self,
        conversation_id: &'a str,
        seq: u64,
    ) -> BoxFuture<'a, Result<Option<v1::Message>, StoreError>> {
        let conv = conversation_id.to_owned();
        Box::pin(self.read(move |db| tables::get_message_blocking(db, &conv, seq)))
    }

    fn last_seq<'a>(&'a self, conversation_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let conv = conversation_id.to_owned();
        Box::pin(self.read(move |db| tables::last_seq_blocking(db, &conv)))
    }

    fn set_watermark<'a>(
        &'a self,
        conversation_id: &'a str,
        user_id: &'a str,
        kind: v1::ReceiptKind,
        seq: u64,
    ) -> BoxFuture<'a, Result<WatermarkUpdate, StoreError>> {
        let write = Write::Watermark(WatermarkWrite {
            conversation_id: conversation_id.to_owned(),
            user_id: user_id.to_owned(),
            kind,
            seq,
        });
        Box::pin(self.blocking(move |s| match s.commit_blocking(&[write], false)?.pop() {
            Some(Committed::Watermark(up)) => Ok(up),
            _ => Err(StoreError::Corrupt("watermark outcome of another kind".into())),
        }))
    }

    fn client_msg_id_known<'a>(
        &'a self,
        sender_user_id: &'a str,
        client_msg_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let (sender, id) = (sender_user_id.to_owned(), client_msg_id.to_owned());
        Box::pin(self.read(move |db| tables::client_msg_id_known_blocking(db, &sender, &id)))
    }

    fn watermarks<'a>(
        &'a self,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Watermarks)>, StoreError>> {
        let conv = conversation_id.to_owned();
        Box::pin(self.read(move |db| tables::watermarks_blocking(db, &conv)))
    }

    fn list_conversations<'a>(
        &'a self,
        user_id: &'a str,
        after: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<ConversationEntry>, StoreError>> {
        let (user, after) = (user_id.to_owned(), after.to_owned());
        Box::pin(self.read(move |db| tables::list_conversations_blocking(db, &user, &after, limit)))
    }

    fn muted_among<'a>(
        &'a self,
        conversation_id: &'a str,
        user_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let (conv, users) = (conversation_id.to_owned(), user_ids.to_vec());
        Box::pin(self.read(move |db| tables::muted_among_blocking(db, &conv, &users)))
    }

    fn get_group<'a>(
        &'a self,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<GroupState>, StoreError>> {
        let conv = conversation_id.to_owned();
        Box::pin(self.read(move |db| tables::get_group_blocking(db, &conv)))
    }

    fn group_member<'a>(
        &'a self,
        conversation_id: &'a str,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Member>, StoreError>> {
        let (conv, user) = (conversation_id.to_owned(), user_id.to_owned());
        Box::pin(self.read(move |db| tables::group_member_blocking(db, &conv, &user)))
    }

    fn group_members<'a>(
        &'a self,
        conversation_id: &'a str,
        after: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Member>, StoreError>> {
        let (conv, after) = (conversation_id.to_owned(), after.to_owned());
        Box::pin(self.read(move |db| tables::group_members_blocking(db, &conv, &after, limit)))
    }

    fn device_write<'a>(
        &'a self,
        user_id: &'a str,
        device_id: &'a str,
        write: &'a crate::DeviceWrite,
    ) -> BoxFuture<'a, Result<crate::DeviceRecord, StoreError>> {
        self.device_write_impl(user_id, device_id, write)
    }

    fn device<'a>(
        &'a self,
        user_id: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::DeviceRecord>, StoreError>> {
        self.device_impl(user_id, device_id)
    }

    fn devices<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<crate::DeviceRecord>, StoreError>> {
        self.devices_impl(user_id)
    }

    fn push_registrations<'a>(
        &'a self,
        user_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, crate::DeviceRecord)>, StoreError>> {
        self.push_registrations_impl(user_ids)
    }

    /// Writes a probe record through the log (one fsync, like a commit) and opens an index
    /// read, so `Ok` means both take work right now.
    fn health(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.blocking(|s| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            {
                let mut w =
                    s.inner.writer.lock().map_err(|_| {
                        StoreError::Unavailable("an earlier commit panicked".into())
                    })?;
                w.wal.append_with(|buf| entry::encode_probe(now, buf));
                let durable = w.wal.commit().map_err(EmbeddedError::from)?;
                s.inner.index.push(Vec::new(), durable)?;
                s.inner.durable.store(durable, Ordering::Release);
            }
            s.inner.db.begin_read().map_err(EmbeddedError::from)?;
            Ok(())
        }))
    }
}
