//! The write-ahead log's error type: the disk's fault (I/O, corruption), the caller's (a record
//! too large, a failing replay callback), or an earlier failure the log will not paper over.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A write-ahead log failure.
#[derive(Debug, Error)]
pub enum WalError {
    /// A file system call failed.
    #[error("wal: cannot {op} {}: {source}", path.display())]
    Io {
        /// What the log was doing ("write", "fdatasync", "open", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Acknowledged records are missing or damaged in the middle of the log (not at its tail):
    /// the log refuses to start rather than silently serve a log with a hole.
    #[error("wal corrupt: {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The segment file where the damage is.
        path: PathBuf,
        /// Byte offset of the damage in that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write or fdatasync failed, so records this log handed out may be lost: it
    /// refuses every later commit (see the module doc, "Failures poison the log").
    #[error("wal poisoned by an earlier failure ({cause}); restart to recover from the log")]
    Poisoned {
        /// The first failure.
        cause: String,
    },
    /// A record's payload is over [`super::MAX_PAYLOAD`] (the caller's fault; it poisons the
    /// log, since its lsn was already handed out).
    #[error("wal record {lsn} too large: {len} bytes (max {max})")]
    TooLarge {
        /// Its lsn.
        lsn: u64,
        /// Its payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The replay callback of [`super::Wal::open`] failed on a record.
    #[error("wal replay of record {lsn} failed: {source}")]
    Replay {
        /// The record's lsn.
        lsn: u64,
        /// The callback's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The thread that prepares segments is gone (it panicked).
    #[error("wal segment preparation thread is gone")]
    PreparerGone,
}

/// `map_err` helper: an [`WalError::Io`] for `op` on `path`.
pub(crate) fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io { op, path: path.to_owned(), source }
}
