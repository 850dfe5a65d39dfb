//! [`LazyFs`]: a FUSE filesystem that loses, at a simulated power cut, every write not yet
//! fsynced, in the spirit of Jepsen's LazyFS. A SIGKILL does not prove that a program fsyncs
//! (the kernel's page cache survives the process); a cut of this filesystem does.
//!
//! # The model
//!
//! The mount is a passthrough of a *backing directory*. Every read sees everything written,
//! as on a real disk with a volatile cache. What a power cut ([`LazyFs::power_cut`]) leaves:
//!
//! - **File data and size**: each file as it was at its last `fsync`/`fdatasync` (on any
//!   descriptor of the file), plus what the [`Cut`] keeps of the writes since: nothing
//!   ([`Cut::DropAll`]), a prefix in write order (a torn tail: [`Cut::KeepPrefix`],
//!   [`Cut::KeepPercent`]), a random subset of 4 KiB pages ([`Cut::RandomPages`]), or all
//!   ([`Cut::KeepAll`], the control). Size changes (`set_len`/`ftruncate`, `fallocate`
//!   growing the file, `O_TRUNC`) are data too: lost with the writes unless synced. `close`
//!   does not sync. A write on a descriptor opened with `O_SYNC`/`O_DSYNC` is followed by an
//!   fsync of the whole file (a little kinder than a real disk, which would sync only that
//!   write's data).
//! - **Metadata** (create, mkdir, rename, unlink, rmdir, chmod, chown, times): durable at
//!   once, as if every directory were fsynced after each change; `fsync` of a directory is
//!   accepted and does nothing. A file created and never fsynced survives, empty. This is
//!   kinder than ext4 (which can lose a create or a rename that was not followed by a
//!   directory fsync), so a program that forgets the directory fsync is *not* caught here.
//! - **After the cut** every operation fails with EIO until [`LazyFs::unmount`] and a new
//!   [`LazyFs::mount`] on the same backing directory: the dying program cannot write after
//!   the power went. Kill it, unmount, mount again, restart it on what survived.
//!
//! [`FsyncMode::Ignore`] makes a lying disk: fsyncs are answered but commit nothing, so that
//! a test can show that a program's durability rests on its fsyncs. A cut can also be armed
//! to happen *at* the next fsync ([`LazyFs::power_cut_at_next_fsync`]): that fsync fails and
//! the writes it was to make durable are exactly the unsynced ones, which is how a test cuts
//! the power in the middle of a commit without timing luck.
//!
//! # Limits
//!
//! Symlinks, hard links, special files, extended attributes and POSIX locks served by the
//! filesystem are not supported (the kernel keeps `flock`/`fcntl` locks locally, which is
//! enough for one machine). Shared writable `mmap` works (its pages come back as writes) but
//! its data counts as written only when the kernel writes it back. Unsynced data is held in
//! memory, bounded by [`LazyFsOptions::max_unsynced_bytes`] (past it writes fail with ENOSPC).
//! Requests are served by one thread: enough for a database and its tests, not fast.
//!
//! # Mounting
//!
//! `fuser` is built without libfuse: as root it mounts with mount(2) directly, otherwise through
//! the setuid `fusermount3` (Debian package `fuse3`, which `scripts/test.sh` installs). Not with
//! `auto_unmount`: fusermount3 3.14 exits without unmounting here, and then the unmount hangs.
//! So a test process killed mid-test (a nextest timeout) leaves a dead mount in its temporary
//! directory (`umount -l` it). The tests skip (saying so) only when `/dev/fuse` is absent
//! ([`unavailable`]).

mod fs;
mod inodes;
mod pending;
mod state;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, MountOption};
use thiserror::Error;

pub use pending::{Cut, PAGE};

use fs::LazyFsCore;
use inodes::Inodes;
use state::{Shared, State};

/// What an fsync of the program above does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FsyncMode {
    /// Makes the file's data durable (survives a cut). The default.
    #[default]
    Honest,
    /// Answers success and makes nothing durable: a disk that lies about its cache.
    Ignore,
}

/// How a [`LazyFs`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LazyFsOptions {
    /// What an fsync does. Default [`FsyncMode::Honest`].
    pub fsync: FsyncMode,
    /// Unsynced data (new writes plus saved old pages) held in memory at most; past it writes
    /// fail with ENOSPC. Default 1 GiB.
    pub max_unsynced_bytes: u64,
}

impl Default for LazyFsOptions {
    fn default() -> Self {
        Self { fsync: FsyncMode::Honest, max_unsynced_bytes: 1 << 30 }
    }
}

/// Counters of a mount, for tests to assert on and to report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Write requests served.
    pub writes: u64,
    /// fsync/fdatasync requests of files and directories.
    pub fsyncs: u64,
    /// Unsynced bytes held now (written plus saved old pages).
    pub unsynced_bytes: u64,
    /// Files with unsynced data now.
    pub unsynced_files: usize,
    /// The cut made, if the power was cut.
    pub cut: Option<Cut>,
    /// Bytes written and not synced when the power was cut (what the [`Cut`] chose from).
    pub cut_unsynced_bytes: u64,
    /// Files with unsynced data when the power was cut.
    pub cut_unsynced_files: usize,
}

/// What went wrong with a [`LazyFs`].
#[derive(Debug, Error)]
pub enum LazyFsError {
    /// The backing directory or the mountpoint is missing or unusable.
    #[error("lazyfs: {what} {path}: {source}")]
    Path { what: &'static str, path: PathBuf, source: std::io::Error },
    /// The kernel refused the mount (is /dev/fuse there? are we root or is fusermount3 here?).
    #[error("lazyfs: cannot mount on {mountpoint}: {source}")]
    Mount { mountpoint: PathBuf, source: std::io::Error },
    /// Unmounting failed (a process still has a file open on the mount?).
    #[error("lazyfs: cannot unmount {mountpoint}: {source}")]
    Unmount { mountpoint: PathBuf, source: std::io::Error },
    /// Restoring the backing files at the cut failed: the result is not what the cut said.
    #[error("lazyfs: the power cut could not restore every file: {0}")]
    Restore(String),
    /// An armed cut did not happen in time (no fsync came).
    #[error("lazyfs: no fsync came within {0:?}, so the armed power cut did not happen")]
    NoCut(Duration),
}

/// Why FUSE tests cannot run here, or `None` when they can (`/dev/fuse` exists).
pub fn unavailable() -> Option<String> {
    if Path::new("/dev/fuse").exists() {
        None
    } else {
        Some("no /dev/fuse on this machine (load the fuse module, or give the container --device /dev/fuse)".into())
    }
}

/// A mounted power-cut filesystem. See the module doc. Dropping it unmounts.
pub struct LazyFs {
    backing: PathBuf,
    mountpoint: PathBuf,
    shared: Arc<Shared>,
    session: Option<BackgroundSession>,
}

impl std::fmt::Debug for LazyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyFs")
            .field("backing", &self.backing)
            .field("mountpoint", &self.mountpoint)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl LazyFs {
    /// Mounts a passthrough of `backing` (an existing directory) on `mountpoint` (an existing
    /// empty directory) with the default options.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Self, LazyFsError> {
        Self::mount_with(backing, mountpoint, LazyFsOptions::default())
    }

    /// [`mount`](Self::mount) with options.
    pub fn mount_with(
        backing: &Path,
        mountpoint: &Path,
        options: LazyFsOptions,
    ) -> Result<Self, LazyFsError> {
        let path_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| LazyFsError::Path { what, path, source }
        };
        let backing = backing.canonicalize().map_err(path_err("backing directory", backing))?;
        let mountpoint = mountpoint.canonicalize().map_err(path_err("mountpoint", mountpoint))?;
        let inodes = Inodes::new(&backing).map_err(path_err("backing directory", &backing))?;
        let shared = Shared::new(State::new(inodes), options);

        let mut config = fuser::Config::default();
        config.mount_options =
            vec![MountOption::FSName("lazyfs".into()), MountOption::Subtype("lazyfs".into())];
        config.n_threads = Some(1);
        let core = LazyFsCore { shared: shared.clone() };
        let session = fuser::spawn_mount(core, &mountpoint, &config)
            .map_err(|source| LazyFsError::Mount { mountpoint: mountpoint.clone(), source })?;
        tracing::debug!(backing = %backing.display(), mountpoint = %mountpoint.display(), "lazyfs: mounted");
        Ok(Self { backing, mountpoint, shared, session: Some(session) })
    }

    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory (what survives a cut is there after it).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Cuts the power now: every file goes back to its last fsync plus what `cut` keeps, and
    /// every later operation on the mount fails with EIO. A second cut does nothing. `Err`
    /// means a backing file could not be restored (the test must not trust what is left).
    pub fn power_cut(&self, cut: Cut) -> Result<(), LazyFsError> {
        let mut state = self.shared.lock();
        state.power_cut(cut);
        self.shared.cut_done.notify_all();
        state.cut_error.clone().map_or(Ok(()), |e| Err(LazyFsError::Restore(e)))
    }

    /// Arms a power cut that happens at the next fsync of a file with unsynced writes, instead
    /// of that fsync (which fails with EIO): the cut falls inside a commit, and what is lost is
    /// exactly what that commit was making durable. An fsync with no written data to sync (of
    /// a size change alone, of an unchanged file, of a directory) passes and does not count.
    /// Wait for the cut with [`wait_for_cut`](Self::wait_for_cut).
    pub fn power_cut_at_next_fsync(&self, cut: Cut) {
        self.power_cut_at_fsync(1, cut);
    }

    /// Like [`power_cut_at_next_fsync`](Self::power_cut_at_next_fsync), at the `nth` fsync
    /// from now (1: the next): the fsyncs of one commit of a store that makes several (data,
    /// then header) can each be the one the power fails at.
    pub fn power_cut_at_fsync(&self, nth: u64, cut: Cut) {
        self.shared.lock().arm(nth, cut);
    }

    /// Waits (at most `timeout`, a failure guard) until the power was cut.
    pub fn wait_for_cut(&self, timeout: Duration) -> Result<Cut, LazyFsError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(cut) = state.cut {
                return state.cut_error.clone().map_or(Ok(cut), |e| Err(LazyFsError::Restore(e)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LazyFsError::NoCut(timeout));
            }
            state = match self.shared.cut_done.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// The mount's counters now.
    pub fn stats(&self) -> Stats {
        self.shared.lock().snapshot()
    }

    /// Unmounts and joins the FUSE session thread. Every file on the mount must be closed
    /// (kill the processes using it first), or the unmount fails with EBUSY.
    pub fn unmount(mut self) -> Result<(), LazyFsError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), LazyFsError> {
        let Some(session) = self.session.take() else { return Ok(()) };
        session
            .umount_and_join()
            .map_err(|source| LazyFsError::Unmount { mountpoint: self.mountpoint.clone(), source })
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!("{e}");
        }
    }
}
