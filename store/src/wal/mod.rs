//! A write-ahead log: the durability point of the embedded store's commit path, one sequential
//! append and one `fdatasync` per group commit.
//!
//! # Use
//! [`Wal::open`] recovers (replays every valid record after the lsn the index already holds);
//! then, on one thread (no tokio here: the caller is a dedicated commit thread),
//! [`Wal::append_with`] buffers records, [`Wal::commit`] writes them with one `write` call (two
//! or more only when a segment boundary is crossed) and one `fdatasync`, and [`Wal::release`]
//! drops the segments the index has durably absorbed.
//!
//! # Layout
//! A directory of segment files `<segment number, 20 digits>.log`, each with a 32-byte header
//! (magic, version, the segment's first lsn, CRC32C) and then records framed
//! `[u32 len][u32 crc32c over (lsn, len, payload)][u64 lsn][payload]`, little-endian (see
//! [`record`]). Lsns are 1, 2, 3 … with no gaps, across segments and restarts. Files are named
//! by segment number rather than first lsn so the next one can be made before its first lsn is
//! known.
//!
//! # Preallocated segments
//! A segment is created once at its full size (`segment_bytes`, 64 MiB by default) by writing
//! zeros, then fsynced, renamed into place and the directory fsynced. Appends then overwrite
//! blocks that are already allocated and sized, so the `fdatasync` after a commit flushes data
//! only, never file-size or extent metadata (which would cost a journal commit per group).
//! The zero-fill runs on a background thread ([`segment::Preparer`]) that makes the next
//! segment as soon as the previous spare is taken, while the current one fills; a roll only
//! waits if 64 MiB of appends outran 64 MiB of zero-filling. A thread (rather than doing it in
//! `release`) because `release` runs on the index's schedule, which may lag the log. The
//! thread is cancelled and joined on drop. Segments are deleted on release, not recycled: a
//! recycled file holds old records with valid CRCs after the live tail, and recovery could no
//! longer tell the clean end of the log ("zeros from here on") from a torn write.
//!
//! # Durability
//! `fdatasync` is `File::sync_data`. When [`Wal::commit`] returns `Ok(lsn)`, every record up to
//! `lsn` is on disk. With [`WalConfig::fsync`] `false` the sync is skipped: commits are only in
//! the page cache and a power cut loses them, which breaks "accepted means durable"; for tests
//! and benchmarks only. When a commit crosses into a new segment, the old segment is synced
//! before anything is written to the new one, so data in a later segment proves that earlier
//! segments were complete (recovery relies on it, below).
//!
//! # Failures poison the log
//! After a failed write or `fdatasync` every later commit fails with [`WalError::Poisoned`].
//! A failed `fsync` may already have dropped the dirty pages (the kernel marks them clean and
//! reports the error once: "fsyncgate", PostgreSQL 2018), so retrying and reporting success
//! would ack records that are not on disk. The only honest way on is a restart, which recovers
//! from what the disk really holds.
//!
//! # Recovery
//! Each segment is scanned until the first record that is zeroed, incomplete, fails its CRC,
//! or does not carry exactly the previous lsn + 1 (which also rejects stale records). What
//! follows the last valid record must be zeros (the preallocated rest); anything else is a
//! torn or corrupt tail. A tail is truncated (the file is cut at the last valid record and
//! fsynced; it is never served), reported in [`Recovery::truncated`] and logged with
//! `tracing::warn!`, and new appends then go to a new segment. That matters because a group
//! commit is one large write the disk may persist out of order: a crash can leave records
//! A B C with B torn but C complete. Recovery keeps A only; were D appended where B was, with
//! B's length, C would sit right after D with lsn D + 1 and be replayed on the next start even
//! though it was never acknowledged. Cutting the file and starting a fresh segment means
//! nothing after the cut point can ever follow new records. Damage followed by a later segment
//! that does not start at the next expected lsn is a hole in the middle of the log (given the
//! ordered syncs above, acknowledged records were lost): [`Wal::open`] returns
//! [`WalError::Corrupt`] naming the file and offset and does not start. Records at or below
//! `after` are no longer needed, so gaps among them are not errors.
//!
//! # Records larger than a segment
//! They get a segment of their own, sized to fit (made in the commit, rare: the store's
//! records are at most ~70 KiB). Payloads over [`MAX_PAYLOAD`] (1 GiB) are refused: they
//! poison the log with [`WalError::TooLarge`].

mod error;
pub mod record;
mod recovery;
pub mod segment;
#[cfg(test)]
mod tests;

#[doc(hidden)]
pub mod fuzzing;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::WalError;
pub use record::MAX_PAYLOAD;
pub use segment::TornReason;

use error::io;
use record::{FRAME_HEADER, SEGMENT_HEADER};
use segment::{Preparer, Spare};

/// The smallest segment size: smaller `segment_bytes` are raised to it.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

/// Log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// Size of each segment file (default 64 MiB; at least [`MIN_SEGMENT_BYTES`]). Larger
    /// means fewer rolls and files, but more disk held until the index absorbs a segment and
    /// more zeros written per roll.
    pub segment_bytes: u64,
    /// `fdatasync` each commit (default true). `false` breaks "accepted means durable": tests
    /// and benchmarks only.
    pub fsync: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig { segment_bytes: 64 << 20, fsync: true }
    }
}

/// A torn or corrupt tail that recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub segment: PathBuf,
    /// Byte offset in that file where the valid log ends.
    pub offset: u64,
    /// What was found there.
    pub reason: TornReason,
}

/// What [`Wal::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Records passed to the replay callback (those with lsn > `after`).
    pub records: u64,
    /// Their bytes on disk, frame headers included.
    pub bytes: u64,
    /// Segment files scanned (segments wholly at or below `after` are skipped unread).
    pub segments: usize,
    /// The tail that was cut off, if any.
    pub truncated: Option<TornTail>,
    /// Time the recovery took.
    pub elapsed: Duration,
}

/// A segment that is no longer appended to.
#[derive(Debug)]
struct Closed {
    first_lsn: u64,
    path: PathBuf,
}

/// The segment appends go to.
#[derive(Debug)]
struct Active {
    first_lsn: u64,
    path: PathBuf,
    file: File,
    /// Where the next record goes.
    offset: u64,
    capacity: u64,
    /// Written since the last `fdatasync`.
    dirty: bool,
}

/// The write-ahead log. See the module doc.
pub struct Wal {
    dir: PathBuf,
    cfg: WalConfig,
    /// Oldest first; each one's last lsn is the next one's first lsn minus one.
    closed: VecDeque<Closed>,
    /// `None` until the first commit after a recovery that could not continue a segment.
    active: Option<Active>,
    /// The number the next new segment gets.
    next_seq: u64,
    /// Frames appended and not committed yet.
    buf: Vec<u8>,
    next_lsn: u64,
    durable_lsn: u64,
    /// The first failure, once the log is poisoned.
    poisoned: Option<String>,
    /// A [`WalError::TooLarge`] the next commit returns.
    refused: Option<WalError>,
    preparer: Preparer,
}

impl Wal {
    /// Opens (creates) `dir`, scans the segments, calls `replay(lsn, payload)` for every valid
    /// record with lsn > `after`, in lsn order, and returns the log positioned for appends
    /// after the last valid record. If it returns an error after some callbacks, what they
    /// replayed must be discarded.
    pub fn open<E>(
        dir: &Path,
        cfg: &WalConfig,
        after: u64,
        replay: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(Wal, Recovery), WalError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        recovery::open(dir, cfg, after, replay)
    }

    /// Buffers one record; `encode` appends the payload to the given buffer (no extra copy).
    /// Returns its lsn. Nothing is written until [`Wal::commit`]. A payload over
    /// [`MAX_PAYLOAD`] is dropped and poisons the log (the next commit returns
    /// [`WalError::TooLarge`]).
    pub fn append_with(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> u64 {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        if let Err(len) = record::encode_with(&mut self.buf, lsn, encode)
            && self.poisoned.is_none()
        {
            let err = WalError::TooLarge { lsn, len, max: MAX_PAYLOAD };
            tracing::error!(%err, "wal poisoned");
            self.poisoned = Some(err.to_string());
            self.refused = Some(err);
        }
        lsn
    }

    /// Writes every buffered record (one write call unless a segment boundary is crossed) and
    /// fdatasyncs. When `Ok`, every record appended so far is durable; returns the last durable
    /// lsn. Any failure poisons the log.
    pub fn commit(&mut self) -> Result<u64, WalError> {
        if let Some(err) = self.refused.take() {
            return Err(err);
        }
        if let Some(cause) = &self.poisoned {
            self.buf.clear(); // never written: do not let it grow
            return Err(WalError::Poisoned { cause: cause.clone() });
        }
        if self.buf.is_empty() {
            return Ok(self.durable_lsn);
        }
        match self.write_buffered() {
            Ok(()) => {
                self.buf.clear();
                self.durable_lsn = self.next_lsn - 1;
                Ok(self.durable_lsn)
            }
            Err(err) => {
                tracing::error!(%err, "wal write failed; the log is poisoned");
                self.poisoned = Some(err.to_string());
                Err(err)
            }
        }
    }

    fn write_buffered(&mut self) -> Result<(), WalError> {
        let mut pos = 0;
        let mut lsn = self.durable_lsn + 1;
        while pos < self.buf.len() {
            let first = record::frame_len(&self.buf[pos..]);
            let mut active = match self.active.take() {
                Some(a) if a.capacity - a.offset >= first as u64 => a,
                old => {
                    if let Some(old) = old {
                        self.close(old)?;
                    }
                    self.roll(lsn, first)?
                }
            };
            let room = active.capacity - active.offset;
            let mut end = pos;
            while end < self.buf.len() {
                let len = record::frame_len(&self.buf[end..]);
                if (end - pos + len) as u64 > room {
                    break;
                }
                end += len;
                lsn += 1;
            }
            let bytes = &self.buf[pos..end];
            active.file.write_all_at(bytes, active.offset).map_err(io("write", &active.path))?;
            active.offset += bytes.len() as u64;
            active.dirty = true;
            pos = end;
            self.active = Some(active);
        }
        if let Some(active) = &mut self.active {
            self.cfg.sync(active)?;
        }
        Ok(())
    }

    /// Syncs `old` (before anything goes to a later segment) and files it as closed.
    fn close(&mut self, mut old: Active) -> Result<(), WalError> {
        self.cfg.sync(&mut old)?;
        self.closed.push_back(Closed { first_lsn: old.first_lsn, path: old.path });
        Ok(())
    }

    /// Starts a new segment whose first record is `first_lsn`, `frame` bytes long.
    fn roll(&mut self, first_lsn: u64, frame: usize) -> Result<Active, WalError> {
        self.preparer.request(self.next_seq);
        let Spare { seq, path, file, mut capacity } = self.preparer.take()?;
        self.next_seq = self.next_seq.max(seq + 1);
        let needed = (SEGMENT_HEADER + frame) as u64;
        if capacity < needed {
            // A record larger than a segment: this one is grown to fit it.
            file.set_len(needed).map_err(io("extend", &path))?;
            if self.cfg.fsync {
                file.sync_all().map_err(io("fsync", &path))?;
            }
            capacity = needed;
        }
        file.write_all_at(&record::encode_header(first_lsn), 0).map_err(io("write", &path))?;
        self.preparer.request(self.next_seq);
        self.next_seq += 1;
        tracing::debug!(segment = %path.display(), first_lsn, "wal segment started");
        Ok(Active { first_lsn, path, file, offset: SEGMENT_HEADER as u64, capacity, dirty: true })
    }

    /// Deletes the segments whose records all have lsn <= `upto` (never the one appends go
    /// to). No directory fsync: a deleted segment that reappears after a crash holds only
    /// records at or below what the index had absorbed, which recovery skips.
    pub fn release(&mut self, upto: u64) -> Result<(), WalError> {
        while let Some(oldest) = self.closed.front() {
            let next_first = match (self.closed.get(1), &self.active) {
                (Some(next), _) => next.first_lsn,
                (None, Some(active)) => active.first_lsn,
                (None, None) => self.durable_lsn + 1,
            };
            if next_first - 1 > upto {
                break;
            }
            std::fs::remove_file(&oldest.path).map_err(io("delete", &oldest.path))?;
            tracing::debug!(segment = %oldest.path.display(), "wal segment released");
            self.closed.pop_front();
        }
        Ok(())
    }

    /// The lsn of the last appended record (durable or not); 0 for an empty log.
    pub fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// The lsn of the last durable record.
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn
    }

    /// Bytes appended and not committed yet (frame headers included), for sizing batches.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Whether an earlier failure poisoned the log (every commit fails until a restart).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Segment files on disk that hold records (closed ones and the active one).
    pub fn segment_count(&self) -> usize {
        self.closed.len() + usize::from(self.active.is_some())
    }

    /// Test hook: swaps the active segment's file for a read-only handle to the same file, so
    /// that the next write really fails in the kernel (EBADF).
    #[cfg(test)]
    fn break_active_file(&mut self) {
        if let Some(active) = &mut self.active
            && let Ok(file) = File::open(&active.path)
        {
            active.file = file;
        }
    }
}

impl WalConfig {
    /// `fdatasync`s `active` if it has unsynced writes (and syncing is on).
    fn sync(&self, active: &mut Active) -> Result<(), WalError> {
        if active.dirty && self.fsync {
            active.file.sync_data().map_err(io("fdatasync", &active.path))?;
        }
        active.dirty = false;
        Ok(())
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &self.segment_count())
            .field("last_lsn", &self.last_lsn())
            .field("durable_lsn", &self.durable_lsn)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// Frame header size, for callers that size their batches in bytes.
pub const RECORD_OVERHEAD: usize = FRAME_HEADER;
