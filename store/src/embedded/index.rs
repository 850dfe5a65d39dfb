//! The index thread (`tern-index`): applies committed log records to the redb tables off the
//! ack path, many groups per redb transaction, and makes reads wait until the index holds
//! everything acknowledged.
//!
//! - **Batching.** Records wait until `batch` of them are queued, `interval` has passed since
//!   the oldest, or a reader needs them, whichever comes first; then one redb write
//!   transaction applies them all. Most of these commits are not fsynced
//!   (`redb::Durability::None`): the log already holds the records durably.
//! - **Checkpoints.** Every `checkpoint` (and at close) a commit is durable (fsync, quick
//!   repair). Every commit records the last lsn it applied (`index_meta`), so after a crash the
//!   index is exactly at some lsn and recovery replays the log after it; the log may drop
//!   segments up to the last durable checkpoint ([`Index::checkpointed`]).
//! - **Read barrier.** A read first waits until the index has applied the durable lsn as of
//!   the read's start ([`Index::wait_applied`]), asking for an immediate batch if needed, so a
//!   read never misses an acknowledged write.
//! - **Back-pressure.** When `max_pending` records wait, the commit path waits for the index.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redb::Database;

use super::entry::IndexOp;
use super::tables::{self, EmbeddedError};

/// When the index applies and checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexConfig {
    /// Longest a committed record waits before the index applies it (reads never wait for
    /// this: they ask for an immediate batch). Default 50 ms.
    pub interval: Duration,
    /// Apply at once when this many records wait. Default 8192.
    pub batch: usize,
    /// Time between durable index commits; bounds the log tail a restart replays. Default 5 s.
    pub checkpoint: Duration,
    /// Most records waiting for the index before commits wait for it. Default 262144.
    pub max_pending: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(50),
            batch: 8192,
            checkpoint: Duration::from_secs(5),
            max_pending: 262_144,
        }
    }
}

#[derive(Default)]
struct State {
    ops: Vec<IndexOp>,
    /// The log's durable lsn as last reported by the writer (ops cover everything up to it).
    durable: u64,
    /// When the oldest unapplied lsn arrived.
    since: Option<Instant>,
    flush: bool,
    closed: bool,
    failed: Option<String>,
}

/// The shared side of the index thread.
pub(crate) struct Index {
    db: Arc<Database>,
    state: Mutex<State>,
    work: Condvar,
    progress: Condvar,
    applied: AtomicU64,
    checkpointed: AtomicU64,
    cfg: IndexConfig,
}

impl Index {
    /// Starts the thread over `db`, which already holds everything up to `applied` durably.
    pub(crate) fn start(
        db: Arc<Database>,
        applied: u64,
        cfg: IndexConfig,
    ) -> std::io::Result<(Arc<Index>, std::thread::JoinHandle<()>)> {
        let index = Arc::new(Index {
            db,
            state: Mutex::new(State { durable: applied, ..State::default() }),
            work: Condvar::new(),
            progress: Condvar::new(),
            applied: AtomicU64::new(applied),
            checkpointed: AtomicU64::new(applied),
            cfg,
        });
        let me = index.clone();
        let thread =
            std::thread::Builder::new().name("tern-index".into()).spawn(move || me.run())?;
        Ok((index, thread))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent; a panic elsewhere does not
        // corrupt it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last lsn the index has applied (visible to reads).
    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// The last lsn the index holds durably: the log may drop records up to it.
    pub(crate) fn checkpointed(&self) -> u64 {
        self.checkpointed.load(Ordering::Acquire)
    }

    /// Hands over the records of a commit whose log is durable up to `durable`. Waits while
    /// the index is `max_pending` records behind.
    pub(crate) fn push(&self, ops: Vec<IndexOp>, durable: u64) -> Result<(), EmbeddedError> {
        let mut s = self.lock();
        while s.ops.len() >= self.cfg.max_pending && s.failed.is_none() && !s.closed {
            s.flush = true;
            self.work.notify_one();
            s = self.progress.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(why) = &s.failed {
            return Err(EmbeddedError::IndexStopped(why.clone()));
        }
        if s.since.is_none() && durable > s.durable {
            s.since = Some(Instant::now());
            self.work.notify_one();
        }
        if s.ops.is_empty() {
            s.ops = ops;
        } else {
            s.ops.extend(ops);
        }
        s.durable = s.durable.max(durable);
        if s.ops.len() >= self.cfg.batch {
            self.work.notify_one();
        }
        Ok(())
    }

    /// Waits until the index has applied everything up to `lsn` (asking for it at once).
    pub(crate) fn wait_applied(&self, lsn: u64) -> Result<(), EmbeddedError> {
        if self.applied() >= lsn {
            return Ok(());
        }
        let mut s = self.lock();
        loop {
            if self.applied() >= lsn {
                return Ok(());
            }
            if let Some(why) = &s.failed {
                return Err(EmbeddedError::IndexStopped(why.clone()));
            }
            if s.closed && s.durable <= self.applied() {
                return Err(EmbeddedError::IndexStopped("the store is closed".into()));
            }
            s.flush = true;
            self.work.notify_one();
            s = self.progress.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Stops the thread without applying what waits (tests: the index then holds only its
    /// last checkpoint, as after a crash).
    pub(crate) fn abandon(&self) {
        self.lock().failed = Some("abandoned".into());
        self.work.notify_one();
        self.progress.notify_all();
    }

    /// Applies what waits, checkpoints, and lets the thread end.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.work.notify_one();
    }

    fn run(&self) {
        let mut last_checkpoint = Instant::now();
        loop {
            let mut s = self.lock();
            let (ops, upto, durable) = loop {
                if s.failed.is_some() {
                    return;
                }
                let pending = s.durable > self.applied();
                let dirty = self.applied() > self.checkpointed();
                let full = s.ops.len() >= self.cfg.batch;
                let aged = s.since.is_some_and(|t| t.elapsed() >= self.cfg.interval);
                let checkpoint_due = last_checkpoint.elapsed() >= self.cfg.checkpoint;
                if pending && (s.flush || s.closed || full || aged) {
                    let durable = s.closed || checkpoint_due;
                    break (std::mem::take(&mut s.ops), s.durable, durable);
                }
                if dirty && (s.closed || checkpoint_due) {
                    break (Vec::new(), self.applied(), true);
                }
                if s.closed {
                    return;
                }
                let mut wait = None::<Duration>;
                if let Some(t) = s.since {
                    wait = Some(self.cfg.interval.saturating_sub(t.elapsed()));
                }
                if dirty {
                    let left = self.cfg.checkpoint.saturating_sub(last_checkpoint.elapsed());
                    wait = Some(wait.map_or(left, |w| w.min(left)));
                }
                s = match wait {
                    Some(d) => self.work.wait_timeout(s, d).unwrap_or_else(|p| p.into_inner()).0,
                    None => self.work.wait(s).unwrap_or_else(|p| p.into_inner()),
                };
            };
            s.flush = false;
            s.since = None;
            drop(s);
            let durability =
                if durable { redb::Durability::Immediate } else { redb::Durability::None };
            let result = tables::apply(&self.db, ops, upto, durability);
            let mut s = self.lock();
            match result {
                Ok(()) => {
                    self.applied.store(upto, Ordering::Release);
                    if durable {
                        self.checkpointed.store(upto, Ordering::Release);
                        last_checkpoint = Instant::now();
                    }
                    if s.durable > upto && s.since.is_none() {
                        s.since = Some(Instant::now());
                    }
                }
                Err(e) => {
                    // The records are in the log: a restart replays them. Until then reads
                    // and commits fail.
                    tracing::error!(error = %e, "applying the log to the index failed; the store stops");
                    s.failed = Some(e.to_string());
                }
            }
            drop(s);
            self.progress.notify_all();
            if self.lock().failed.is_some() {
                return;
            }
        }
    }
}
