//! The mount's shared state behind one lock: the inode table, the open files, each file's
//! unsynced data, and whether (and how) the power was cut.
//!
//! Every FUSE request and every control call ([`LazyFs::power_cut`](super::LazyFs::power_cut))
//! takes the lock for its whole length, so a cut falls between two operations, never inside
//! one, and no operation runs after it.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::inodes::Inodes;
use super::pending::{Cut, Pending};
use super::{FsyncMode, LazyFsOptions, Stats};

/// An open file.
#[derive(Debug)]
pub struct Handle {
    pub ino: u64,
    pub file: Arc<File>,
    /// Opened with `O_SYNC` or `O_DSYNC`: each write is followed by an fsync of the file.
    pub sync: bool,
}

/// See the module doc.
#[derive(Debug)]
pub struct State {
    pub inodes: Inodes,
    pub handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Unsynced data per FUSE inode.
    pending: HashMap<u64, Pending>,
    /// Sum of [`Pending::bytes`] over `pending`.
    pending_bytes: u64,
    /// Set by the power cut; from then on every operation fails with EIO.
    pub cut: Option<Cut>,
    /// A cut to make instead of an fsync: at the fsync (of a file with unsynced writes) when
    /// the count is 1.
    armed: Option<(u64, Cut)>,
    /// What went wrong while restoring the backing files at the cut, if anything.
    pub cut_error: Option<String>,
    pub stats: Stats,
}

impl State {
    pub fn new(inodes: Inodes) -> Self {
        Self {
            inodes,
            handles: HashMap::new(),
            next_fh: 1,
            pending: HashMap::new(),
            pending_bytes: 0,
            cut: None,
            armed: None,
            cut_error: None,
            stats: Stats::default(),
        }
    }

    /// Registers an open file; returns its handle number.
    pub fn open_handle(&mut self, ino: u64, file: File, sync: bool) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, file: Arc::new(file), sync });
        fh
    }

    /// The open file `fh`, which must belong to `ino`.
    pub fn handle(&self, ino: u64, fh: u64) -> io::Result<(Arc<File>, bool)> {
        match self.handles.get(&fh) {
            Some(h) if h.ino == ino => Ok((h.file.clone(), h.sync)),
            _ => Err(io::Error::from_raw_os_error(nix::libc::EBADF)),
        }
    }

    /// Records a data operation on `ino` (backing `file`, read-write) before it is done:
    /// `record` gets the file's [`Pending`], made now if the file had nothing unsynced.
    /// Fails with ENOSPC past [`LazyFsOptions::max_unsynced_bytes`].
    pub fn record(
        &mut self,
        options: &LazyFsOptions,
        ino: u64,
        file: &File,
        incoming: u64,
        record: impl FnOnce(&mut Pending) -> io::Result<()>,
    ) -> io::Result<()> {
        if self.pending_bytes.saturating_add(incoming) > options.max_unsynced_bytes {
            tracing::warn!(
                unsynced = self.pending_bytes,
                limit = options.max_unsynced_bytes,
                "lazyfs: unsynced data over the limit; write refused with ENOSPC"
            );
            return Err(io::Error::from_raw_os_error(nix::libc::ENOSPC));
        }
        let pending = match self.pending.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Pending::new(file.try_clone()?)?)
            }
        };
        let before = pending.bytes();
        let result = record(pending);
        self.pending_bytes = self.pending_bytes - before + pending.bytes();
        result
    }

    /// An fsync of `ino` from the program above: commits its unsynced data (or, as options
    /// and an armed cut say, ignores it or cuts the power). `Err` is the answer to give.
    pub fn fsync(&mut self, options: &LazyFsOptions, ino: u64) -> io::Result<()> {
        self.stats.fsyncs += 1;
        // Only an fsync with written data to make durable counts for an armed cut.
        let has_data = self.pending.get(&ino).is_some_and(|p| p.written() > 0);
        match self.armed {
            Some((1, cut)) if has_data => {
                self.power_cut(cut);
                return Err(io::Error::from_raw_os_error(nix::libc::EIO));
            }
            Some((n, cut)) if has_data => self.armed = Some((n - 1, cut)),
            _ => {}
        }
        if options.fsync == FsyncMode::Honest {
            self.commit(ino);
        }
        Ok(())
    }

    /// Makes the unsynced data of `ino` durable.
    pub fn commit(&mut self, ino: u64) {
        if let Some(p) = self.pending.remove(&ino) {
            self.pending_bytes -= p.bytes();
        }
    }

    /// Forgets the unsynced data of a file that is gone from the namespace.
    pub fn forget_data(&mut self, ino: u64) {
        self.commit(ino);
    }

    /// Arms a cut at the `nth` fsync from now (1: the next one) of a file with unsynced writes.
    pub fn arm(&mut self, nth: u64, cut: Cut) {
        self.armed = Some((nth.max(1), cut));
    }

    /// The power cut: every file back to its last fsync (plus what `cut` keeps); from now on
    /// every operation fails. A second cut does nothing.
    pub fn power_cut(&mut self, cut: Cut) {
        if self.cut.is_some() {
            return;
        }
        self.cut = Some(cut);
        self.armed = None;
        let files = self.pending.len();
        self.stats.cut_unsynced_files = files;
        self.stats.cut_unsynced_bytes = self.pending.values().map(Pending::written).sum();
        let mut errors = Vec::new();
        for (ino, pending) in self.pending.drain() {
            let path = self.inodes.path(ino).map(|p| p.display().to_string()).unwrap_or_default();
            if let Err(e) = pending.cut(cut) {
                errors.push(format!("{path}: {e}"));
            }
        }
        let unsynced = self.stats.cut_unsynced_bytes;
        tracing::info!(?cut, files, unsynced, "lazyfs: power cut");
        self.pending_bytes = 0;
        if !errors.is_empty() {
            self.cut_error = Some(errors.join("; "));
        }
    }

    pub fn snapshot(&self) -> Stats {
        Stats {
            unsynced_bytes: self.pending_bytes,
            unsynced_files: self.pending.len(),
            cut: self.cut,
            ..self.stats
        }
    }
}

/// The state and the condition variable the cut is announced on.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    pub cut_done: Condvar,
    pub options: LazyFsOptions,
}

impl Shared {
    pub fn new(state: State, options: LazyFsOptions) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(state), cut_done: Condvar::new(), options })
    }

    /// The state, even if a panic poisoned the lock (the state stays usable: every change
    /// is made before the reply).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
