//! The single-node backend: every conversation in one redb database file, fsync per commit.
//!
//! # Files and tables
//!
//! [`EmbeddedStore::open`] creates the directory if needed and one database file in it,
//! [`DB_FILE_NAME`]. It holds these tables (keys are redb tuples, compared element by element):
//!
//! | table | key | value |
//! |---|---|---|
//! | `messages` | (conversation_id, seq) | protobuf-encoded [`v1::Message`] |
//! | `conversation_meta` | conversation_id | (last_seq, last_time_ms) |
//! | `dedupe` | (sender_user_id, client_msg_id) | (conversation_id, seq, server_time_ms) |
//! | `user_conversations` | (user_id, conversation_id) | (last_seq, last_time_ms) |
//! | `receipts` | (conversation_id, user_id) | (delivered, read) |
//! | `health` | probe name | Unix ms of the last [`Store::health`] probe |
//!
//! Every read is a point lookup or a range scan bounded by its key prefix and the caller's
//! window or limit. [`Store::append`] is one write transaction per call (the group commit:
//! dispatch batches many sends into one call), so the whole batch shares one fsync. redb allows
//! one write transaction at a time, which is what makes seq allocation (`last_seq + 1` read and
//! written in the same transaction) race-free within the process. The file is locked by the
//! process that opens it (redb's default `ConcurrencyMode::ExclusiveWriter`): one writer
//! process per file.
//!
//! redb is synchronous, so each operation runs on tokio's blocking pool
//! ([`tokio::task::spawn_blocking`]). Dropping an `append` future does not cancel the write:
//! it may still commit, and the client's resend is then answered by the dedupe table.
//!
//! # Why redb
//!
//! redb is pure Rust (no C/C++ toolchain in the build), a single-file ACID B-tree store with
//! copy-on-write pages and explicit durable commits (a commit with `Durability::Immediate` has
//! reached the disk when `commit` returns), and has a small dependency tree. fjall was
//! considered: an LSM tree with good write throughput, but a larger dependency tree and
//! journal-persist semantics that the caller has to manage to get "durable on return".
//!
//! Measured with `cargo bench -p tern-store --bench write_path` (2-core Debian 12 VM, virtio
//! disk, other builds running; ~100-byte bodies over 64 conversations; median time per
//! `append` call, durable commits, two runs): batch 1: 0.3–0.6 ms; batch 16: 1.6–4.0 ms;
//! batch 128: 3.9–4.7 ms (~27–33 k msgs/s); batch 512: ~8 ms (~64 k msgs/s). Without fsync
//! (bench-only [`Durability::NoSync`]) batch 512 takes 2.9–3.5 ms, so the fsync is most of the
//! cost of a small batch: that is why dispatch groups sends into one call.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tern_proto::v1;
use thiserror::Error;
use tracing::{info, warn};

use crate::{
    Appended, BoxFuture, ConversationEntry, NewMessage, Range, Store, StoreError, WatermarkUpdate,
    Watermarks,
};

/// Name of the database file inside the store's directory.
pub const DB_FILE_NAME: &str = "tern.redb";

/// (conversation_id, seq) -> protobuf-encoded `v1::Message`.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// conversation_id -> (last_seq, last_time_ms).
const CONV_META: TableDefinition<&str, (u64, i64)> = TableDefinition::new("conversation_meta");
/// (sender_user_id, client_msg_id) -> (conversation_id, seq, server_time_ms).
const DEDUPE: TableDefinition<(&str, &str), (&str, u64, i64)> = TableDefinition::new("dedupe");
/// (user_id, conversation_id) -> (last_seq, last_time_ms).
const USER_CONVS: TableDefinition<(&str, &str), (u64, i64)> =
    TableDefinition::new("user_conversations");
/// (conversation_id, user_id) -> (delivered, read).
const RECEIPTS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("receipts");
/// probe name -> Unix ms of the last health probe (one row, rewritten by every probe).
const HEALTH: TableDefinition<&str, i64> = TableDefinition::new("health");

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is fsynced before it returns: the [`Store`] contract ("accepted means
    /// durable"). The default, and the only mode for a server.
    #[default]
    Fsync,
    /// Commits are not fsynced: a crash (even of the process alone) may lose every commit since
    /// the last `Fsync` commit. **Breaks the [`Store`] contract; for benchmarks and throwaway
    /// tests only.**
    NoSync,
}

/// Configuration of an [`EmbeddedStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Commit durability. Default [`Durability::Fsync`].
    pub durability: Durability,
    /// Page cache size in bytes. Cost: up to this much RAM; less means more disk reads for
    /// sync of old messages. Default 64 MiB.
    pub cache_size_bytes: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self { durability: Durability::Fsync, cache_size_bytes: 64 * 1024 * 1024 }
    }
}

/// The single-node [`Store`] on redb. Cheap to clone (an `Arc` of the open database).
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    durability: redb::Durability,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// Failures inside the embedded backend, folded into [`StoreError`] at the trait boundary.
#[derive(Debug, Error)]
enum EmbeddedError {
    #[error(transparent)]
    Database(#[from] redb::DatabaseError),
    #[error(transparent)]
    Transaction(#[from] redb::TransactionError),
    #[error(transparent)]
    Table(#[from] redb::TableError),
    #[error(transparent)]
    Storage(#[from] redb::StorageError),
    #[error(transparent)]
    Commit(#[from] redb::CommitError),
    #[error(transparent)]
    Durability(#[from] redb::SetDurabilityError),
    #[error("message {conversation_id}/{seq}: {source}")]
    Decode { conversation_id: String, seq: u64, source: prost::DecodeError },
    #[error("conversation {0}: seq space exhausted")]
    SeqOverflow(String),
    #[error("{0}")]
    Probe(String),
}

impl From<EmbeddedError> for StoreError {
    fn from(e: EmbeddedError) -> Self {
        match e {
            EmbeddedError::Decode { .. } | EmbeddedError::SeqOverflow(_) => {
                StoreError::Corrupt(e.to_string())
            }
            other => StoreError::Io(other.to_string()),
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` with the default config (fsync per commit).
    ///
    /// Blocking: call it at startup, not from inside an async task's hot path.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &EmbeddedConfig::default())
    }

    /// Opens (or creates) the store in `dir` with `config`.
    ///
    /// Creates `dir` if needed. Fails with [`StoreError::Io`] when another process holds the
    /// database open or the file is not a redb database.
    pub fn open_with(dir: &Path, config: &EmbeddedConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE_NAME);
        let db = Database::builder()
            .set_cache_size(config.cache_size_bytes)
            .create(&path)
            .map_err(|e| StoreError::Io(format!("open {}: {e}", path.display())))?;
        create_tables(&db)?;
        info!(path = %path.display(), durability = ?config.durability, "embedded store open");
        Ok(Self {
            db: Arc::new(db),
            durability: match config.durability {
                Durability::Fsync => redb::Durability::Immediate,
                Durability::NoSync => redb::Durability::None,
            },
            path: Arc::new(path),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the blocking pool with the database and the commit durability.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database, redb::Durability) -> Result<T, EmbeddedError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let durability = self.durability;
        match tokio::task::spawn_blocking(move || f(&db, durability)).await {
            Ok(result) => result.map_err(StoreError::from),
            Err(e) => Err(StoreError::Unavailable(format!("storage task failed: {e}"))),
        }
    }
}

/// Creates every table so that read transactions never meet a missing one.
fn create_tables(db: &Database) -> Result<(), StoreError> {
    let run = || -> Result<(), EmbeddedError> {
        let txn = db.begin_write()?;
        txn.open_table(MESSAGES)?;
        txn.open_table(CONV_META)?;
        txn.open_table(DEDUPE)?;
        txn.open_table(USER_CONVS)?;
        txn.open_table(RECEIPTS)?;
        txn.commit()?;
        Ok(())
    };
    run().map_err(StoreError::from)
}

fn decode(conversation_id: &str, seq: u64, bytes: &[u8]) -> Result<v1::Message, EmbeddedError> {
    v1::Message::decode(bytes).map_err(|source| EmbeddedError::Decode {
        conversation_id: conversation_id.to_owned(),
        seq,
        source,
    })
}

fn begin_write(
    db: &Database,
    durability: redb::Durability,
) -> Result<WriteTransaction, EmbeddedError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    Ok(txn)
}

/// The whole batch in one write transaction, committed once.
fn append_blocking(
    db: &Database,
    durability: redb::Durability,
    batch: Vec<NewMessage>,
) -> Result<Vec<Appended>, EmbeddedError> {
    let txn = begin_write(db, durability)?;
    let mut out = Vec::with_capacity(batch.len());
    {
        let mut messages = txn.open_table(MESSAGES)?;
        let mut meta = txn.open_table(CONV_META)?;
        let mut dedupe = txn.open_table(DEDUPE)?;
        let mut index = txn.open_table(USER_CONVS)?;
        for m in batch {
            let conv = m.conversation_id.as_str();
            let dedupe_key = (m.sender_user_id.as_str(), m.client_msg_id.as_str());
            // Written earlier in this transaction counts too: duplicates within a batch.
            let original = dedupe.get(dedupe_key)?.map(|g| {
                let (c, seq, time) = g.value();
                (c.to_owned(), seq, time)
            });
            if let Some((conversation_id, seq, server_time_ms)) = original {
                out.push(Appended { conversation_id, seq, server_time_ms, duplicate: true });
                continue;
            }
            let last_seq = meta.get(conv)?.map_or(0, |g| g.value().0);
            let seq = last_seq
                .checked_add(1)
                .ok_or_else(|| EmbeddedError::SeqOverflow(conv.to_owned()))?;
            if m.kind == v1::MessageKind::Recall {
                recall_target(&mut messages, conv, m.recalled_seq)?;
            }
            let stored = v1::Message {
                conversation_id: m.conversation_id.clone(),
                seq,
                sender_user_id: m.sender_user_id.clone(),
                sender_device_id: m.sender_device_id,
                client_msg_id: m.client_msg_id.clone(),
                server_time_ms: m.server_time_ms,
                kind: m.kind as i32,
                content_type: m.content_type,
                body: m.body,
                recalled_seq: m.recalled_seq,
                recalled: false,
            };
            messages.insert((conv, seq), stored.encode_to_vec().as_slice())?;
            meta.insert(conv, (seq, m.server_time_ms))?;
            dedupe.insert(dedupe_key, (conv, seq, m.server_time_ms))?;
            for member in &m.members {
                index.insert((member.as_str(), conv), (seq, m.server_time_ms))?;
            }
            out.push(Appended {
                conversation_id: m.conversation_id.clone(),
                seq,
                server_time_ms: m.server_time_ms,
                duplicate: false,
            });
        }
    }
    txn.commit()?;
    Ok(out)
}

/// Marks the message at `seq` recalled and clears its body (dispatch checked that it exists;
/// a missing one is logged and skipped so the recall event itself is still stored).
fn recall_target(
    messages: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
    conversation_id: &str,
    seq: u64,
) -> Result<(), EmbeddedError> {
    let Some(bytes) = messages.get((conversation_id, seq))?.map(|g| g.value().to_vec()) else {
        warn!(conversation_id, seq, "recall of a message that is not stored");
        return Ok(());
    };
    let mut target = decode(conversation_id, seq, &bytes)?;
    target.recalled = true;
    target.body.clear();
    messages.insert((conversation_id, seq), target.encode_to_vec().as_slice())?;
    Ok(())
}

fn read_range_blocking(
    db: &Database,
    conversation_id: &str,
    from_seq: u64,
    window: u32,
) -> Result<Range, EmbeddedError> {
    let txn = db.begin_read()?;
    let last_seq = txn.open_table(CONV_META)?.get(conversation_id)?.map_or(0, |g| g.value().0);
    let mut messages = Vec::new();
    if window > 0 {
        let last = from_seq.saturating_add(u64::from(window) - 1);
        let table = txn.open_table(MESSAGES)?;
        for entry in table.range((conversation_id, from_seq)..=(conversation_id, last))? {
            let (key, value) = entry?;
            messages.push(decode(conversation_id, key.value().1, value.value())?);
        }
    }
    Ok(Range { messages, last_seq })
}

fn get_message_blocking(
    db: &Database,
    conversation_id: &str,
    seq: u64,
) -> Result<Option<v1::Message>, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(MESSAGES)?;
    let Some(guard) = table.get((conversation_id, seq))? else {
        return Ok(None);
    };
    decode(conversation_id, seq, guard.value()).map(Some)
}

fn last_seq_blocking(db: &Database, conversation_id: &str) -> Result<u64, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(CONV_META)?;
    Ok(table.get(conversation_id)?.map_or(0, |g| g.value().0))
}

fn read_watermarks(
    table: &impl ReadableTable<(&'static str, &'static str), (u64, u64)>,
    conversation_id: &str,
    user_id: &str,
) -> Result<Watermarks, EmbeddedError> {
    Ok(table.get((conversation_id, user_id))?.map_or_else(Watermarks::default, |g| {
        let (delivered, read) = g.value();
        Watermarks { delivered, read }
    }))
}

fn set_watermark_blocking(
    db: &Database,
    durability: redb::Durability,
    conversation_id: &str,
    user_id: &str,
    kind: v1::ReceiptKind,
    seq: u64,
) -> Result<WatermarkUpdate, EmbeddedError> {
    if kind == v1::ReceiptKind::Unspecified {
        // The caller's bug: nothing to move; answer with the current watermarks.
        let txn = db.begin_read()?;
        let table = txn.open_table(RECEIPTS)?;
        let watermarks = read_watermarks(&table, conversation_id, user_id)?;
        return Ok(WatermarkUpdate { watermarks, moved: false });
    }
    let txn = begin_write(db, durability)?;
    let (current, next) = {
        let mut table = txn.open_table(RECEIPTS)?;
        let current = read_watermarks(&table, conversation_id, user_id)?;
        let next = match kind {
            v1::ReceiptKind::Read => {
                let read = current.read.max(seq);
                Watermarks { delivered: current.delivered.max(read), read }
            }
            _ => Watermarks { delivered: current.delivered.max(seq), read: current.read },
        };
        if next != current {
            table.insert((conversation_id, user_id), (next.delivered, next.read))?;
        }
        (current, next)
    };
    if next == current {
        // Nothing moved: no commit, no fsync.
        txn.abort()?;
    } else {
        txn.commit()?;
    }
    Ok(WatermarkUpdate { watermarks: next, moved: next != current })
}

fn client_msg_id_known_blocking(
    db: &Database,
    sender_user_id: &str,
    client_msg_id: &str,
) -> Result<bool, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(DEDUPE)?;
    Ok(table.get((sender_user_id, client_msg_id))?.is_some())
}

fn watermarks_blocking(
    db: &Database,
    conversation_id: &str,
) -> Result<Vec<(String, Watermarks)>, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(RECEIPTS)?;
    let mut out = Vec::new();
    for entry in table.range((conversation_id, "")..)? {
        let (key, value) = entry?;
        let (conv, user) = key.value();
        if conv != conversation_id {
            break;
        }
        let (delivered, read) = value.value();
        out.push((user.to_owned(), Watermarks { delivered, read }));
    }
    Ok(out)
}

fn list_conversations_blocking(
    db: &Database,
    user_id: &str,
    after: &str,
    limit: u32,
) -> Result<Vec<ConversationEntry>, EmbeddedError> {
    use std::ops::Bound;
    let txn = db.begin_read()?;
    let index = txn.open_table(USER_CONVS)?;
    let receipts = txn.open_table(RECEIPTS)?;
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let after_key = (Bound::Excluded((user_id, after)), Bound::Unbounded);
    for entry in index.range::<(&str, &str)>(after_key)? {
        let (key, value) = entry?;
        let (user, conv) = key.value();
        if user != user_id {
            break;
        }
        let (last_seq, last_time_ms) = value.value();
        out.push(ConversationEntry {
            conversation_id: conv.to_owned(),
            last_seq,
            last_time_ms,
            watermarks: read_watermarks(&receipts, conv, user_id)?,
        });
        if out.len() >= limit as usize {
            break;
        }
    }
    Ok(out)
}

impl Store for EmbeddedStore {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            self.blocking(move |db, durability| append_blocking(db, durability, batch)).await
        })
    }

    fn read_range<'a>(
        &'a self,
        conversation_id: &'a str,
        from_seq: u64,
        window: u32,
    ) -> BoxFuture<'a, Result<Range, StoreError>> {
        let conv = conversation_id.to_owned();
        Box::pin(self.blocking(move |db, _| read_range_blocking(db, &conv, from_seq, window)))
    }

    fn get_message<'a>(
        &'a self,
        conversation_id: &'a str,
        seq: u64,
    ) -> BoxFuture<'a, Result<Option<v1::Message>, StoreError>> {
        let conv = conversation_id.to_owned();
        Box::pin(self.blocking(move |db, _| get_message_blocking(db, &conv, seq)))
    }

    fn last_seq<'a>(&'a self, conversation_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let conv = conversation_id.to_owned();
        Box::pin(self.blocking(move |db, _| last_seq_blocking(db, &conv)))
    }

    fn set_watermark<'a>(
        &'a self,
        conversation_id: &'a str,
        user_id: &'a str,
        kind: v1::ReceiptKind,
        seq: u64,
    ) -> BoxFuture<'a, Result<WatermarkUpdate, StoreError>> {
        let conv = conversation_id.to_owned();
        let user = user_id.to_owned();
        Box::pin(self.blocking(move |db, durability| {
            set_watermark_blocking(db, durability, &conv, &user, kind, seq)
        }))
    }

    fn client_msg_id_known<'a>(
        &'a self,
        sender_user_id: &'a str,
        client_msg_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let (sender, id) = (sender_user_id.to_owned(), client_msg_id.to_owned());
        Box::pin(self.blocking(move |db, _| client_msg_id_known_blocking(db, &sender, &id)))
    }

    fn watermarks<'a>(
        &'a self,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Watermarks)>, StoreError>> {
        let conv = conversation_id.to_owned();
        Box::pin(self.blocking(move |db, _| watermarks_blocking(db, &conv)))
    }

    fn list_conversations<'a>(
        &'a self,
        user_id: &'a str,
        after: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<ConversationEntry>, StoreError>> {
        let user = user_id.to_owned();
        let after = after.to_owned();
        Box::pin(self.blocking(move |db, _| list_conversations_blocking(db, &user, &after, limit)))
    }

    fn health(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.blocking(health_blocking))
    }
}

/// Writes the probe row in a durable write transaction (like an append's) and reads it back.
fn health_blocking(db: &Database, durability: redb::Durability) -> Result<(), EmbeddedError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut tx = db.begin_write()?;
    tx.set_durability(durability)?;
    tx.open_table(HEALTH)?.insert(crate::HEALTH_PROBE_ID, now)?;
    tx.commit()?;
    let read = db.begin_read()?.open_table(HEALTH)?.get(crate::HEALTH_PROBE_ID)?.map(|v| v.value());
    if read == Some(now) {
        Ok(())
    } else {
        Err(EmbeddedError::Probe(format!("health probe wrote {now}, read back {read:?}")))
    }
}
