//! Segment files: their names, the scan that recovery runs over each one, and the background
//! thread that zero-fills the next segment ahead of need.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use super::error::{WalError, io};
use super::record::{self, BadHeader, FRAME_HEADER, Record, Stop};

/// Bytes read (and zeros written) per system call while scanning or preparing.
const CHUNK: usize = 1 << 20;

/// The file name of segment number `seq`: `<seq zero-padded to 20 digits>.log`.
pub fn file_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

/// The segment number in a segment file name, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Why the valid part of a segment ends before the end of its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornReason {
    /// The record there is incomplete, damaged or out of sequence.
    Record(Stop),
    /// A zeroed record header, but non-zero bytes after it: a write torn out of order (later
    /// pages reached the disk, an earlier one did not).
    DataAfterZeros,
    /// The segment header is not valid.
    Header(BadHeader),
    /// The segment header is all zero but a later segment holds records.
    ZeroHeader,
}

impl fmt::Display for TornReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TornReason::Record(stop) => stop.fmt(f),
            TornReason::DataAfterZeros => write!(f, "zeroed record header followed by data"),
            TornReason::Header(bad) => bad.fmt(f),
            TornReason::ZeroHeader => write!(f, "zeroed segment header"),
        }
    }
}

/// Where and why a scan of one segment's records stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// Bytes of valid records (from the first record on, headers included).
    pub valid_bytes: u64,
    /// The lsn a record after the last valid one would carry.
    pub next_lsn: u64,
    /// `None` when everything after the last valid record is zero (or there is nothing): the
    /// segment ends cleanly. Otherwise why the rest is not valid.
    pub torn: Option<TornReason>,
}

/// A failure of [`scan`]: reading, or the record callback.
#[derive(Debug)]
pub enum ScanError<E> {
    /// Reading failed.
    Io(io::Error),
    /// The callback failed.
    Callback(E),
}

/// A read window over a file: bytes `buf[start..end]` are read and not yet consumed, `left`
/// bytes of the file are not read yet.
struct Window<'b, R> {
    reader: R,
    buf: &'b mut Vec<u8>,
    start: usize,
    end: usize,
    left: u64,
}

impl<R: Read> Window<'_, R> {
    fn avail(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Bytes from the window's start to the end of the file.
    fn remaining(&self) -> u64 {
        (self.end - self.start) as u64 + self.left
    }

    /// Reads until at least `need` bytes are available or the file is exhausted. The caller
    /// checks `need <= remaining()`, so the buffer never grows past the file's size.
    fn fill(&mut self, need: usize) -> io::Result<()> {
        if self.end - self.start >= need || self.left == 0 {
            return Ok(());
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let want = need.max(CHUNK.min(self.end + self.left as usize));
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        while self.end < need && self.left > 0 {
            let room =
                (self.buf.len() - self.end).min(usize::try_from(self.left).unwrap_or(usize::MAX));
            match self.reader.read(&mut self.buf[self.end..self.end + room]) {
                Ok(0) => self.left = 0, // shorter than its length said: the rest is missing
                Ok(n) => {
                    self.end += n;
                    self.left -= n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Consumes everything; true when all of it is zero.
    fn rest_is_zero(&mut self) -> io::Result<bool> {
        loop {
            if !self.avail().iter().all(|&b| b == 0) {
                return Ok(false);
            }
            self.start = self.end;
            if self.left == 0 {
                return Ok(true);
            }
            self.fill(1)?;
        }
    }
}

/// Scans the records of one segment: `reader` is positioned just after the segment header and
/// has `len` bytes left; the first record must carry `first_lsn`. Calls `on` for each valid
/// record in order and stops at the first one that is not (see [`ScanEnd`]). `buf` is a
/// scratch buffer reused across segments.
pub fn scan<R: Read, E>(
    reader: R,
    len: u64,
    first_lsn: u64,
    buf: &mut Vec<u8>,
    mut on: impl FnMut(Record<'_>) -> Result<(), E>,
) -> Result<ScanEnd, ScanError<E>> {
    let mut w = Window { reader, buf, start: 0, end: 0, left: len };
    let mut lsn = first_lsn;
    let mut valid = 0u64;
    let stop = loop {
        w.fill(FRAME_HEADER).map_err(ScanError::Io)?;
        match record::decode(w.avail(), lsn) {
            Ok(rec) => {
                let n = rec.frame_len();
                on(rec).map_err(ScanError::Callback)?;
                w.start += n;
                valid += n as u64;
                lsn += 1;
            }
            Err(Stop::Incomplete { need }) if need as u64 <= w.remaining() => {
                w.fill(need).map_err(ScanError::Io)?;
            }
            Err(stop) => break stop,
        }
    };
    let torn = match stop {
        // Nothing but zeros from here on: the clean end of a preallocated (or full) segment.
        Stop::Zero | Stop::Incomplete { .. } if w.rest_is_zero().map_err(ScanError::Io)? => None,
        Stop::Zero => Some(TornReason::DataAfterZeros),
        stop => Some(TornReason::Record(stop)),
    };
    Ok(ScanEnd { valid_bytes: valid, next_lsn: lsn, torn })
}

/// `fsync` of a directory, so that creations, renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync directory", dir))
}

/// A preallocated, zero-filled segment file not written to yet.
#[derive(Debug)]
pub struct Spare {
    /// Its segment number.
    pub seq: u64,
    /// Its path.
    pub path: PathBuf,
    /// Open for writing.
    pub file: File,
    /// Its size.
    pub capacity: u64,
}

/// Creates segment `seq` in `dir`: writes `size` zero bytes to `<seq>.tmp`, fsyncs it (data and
/// size), renames it to its segment name and fsyncs the directory (all syncs only with
/// `fsync`). A crash half way leaves only a `.tmp` file, which recovery deletes.
pub fn prepare(
    dir: &Path,
    seq: u64,
    size: u64,
    fsync: bool,
    cancel: &AtomicBool,
) -> Result<Spare, WalError> {
    let tmp = dir.join(format!("{seq:020}.tmp"));
    let path = dir.join(file_name(seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    let zeros = vec![0; CHUNK];
    let mut written = 0u64;
    while written < size && !cancel.load(Ordering::Relaxed) {
        let n = (size - written).min(CHUNK as u64) as usize;
        std::os::unix::fs::FileExt::write_all_at(&file, &zeros[..n], written)
            .map_err(io("zero-fill", &tmp))?;
        written += n as u64;
    }
    if written < size {
        let _ = fs::remove_file(&tmp);
        return Err(WalError::PreparerGone);
    }
    if fsync {
        file.sync_all().map_err(io("fsync", &tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
    if fsync {
        sync_dir(dir)?;
    }
    Ok(Spare { seq, path, file, capacity: size })
}

/// A background thread that prepares the next segment while the current one fills, so that a
/// roll never waits for 64 MiB of zeros to reach the disk. One request at a time.
pub struct Preparer {
    requests: Option<Sender<u64>>,
    ready: Receiver<Result<Spare, WalError>>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    outstanding: bool,
}

impl Preparer {
    /// Starts the thread; it creates segments of `size` bytes in `dir`.
    pub fn start(dir: PathBuf, size: u64, fsync: bool) -> Result<Self, WalError> {
        let (requests, todo) = mpsc::channel::<u64>();
        let (done, ready) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        let thread = std::thread::Builder::new()
            .name("tern-wal-prepare".into())
            .spawn(move || {
                for seq in todo {
                    let result = prepare(&dir, seq, size, fsync, &flag);
                    if done.send(result).is_err() {
                        break;
                    }
                }
            })
            .map_err(io("spawn the segment thread for", Path::new("")))?;
        Ok(Preparer {
            requests: Some(requests),
            ready,
            cancel,
            thread: Some(thread),
            outstanding: false,
        })
    }

    /// Asks for segment `seq` (unless one is already on its way).
    pub fn request(&mut self, seq: u64) {
        if self.outstanding {
            return;
        }
        if let Some(tx) = &self.requests
            && tx.send(seq).is_ok()
        {
            self.outstanding = true;
        }
    }

    /// Whether a segment is requested and not taken yet.
    pub fn outstanding(&self) -> bool {
        self.outstanding
    }

    /// Waits for the requested segment.
    pub fn take(&mut self) -> Result<Spare, WalError> {
        if !self.outstanding {
            return Err(WalError::PreparerGone);
        }
        self.outstanding = false;
        self.ready.recv().map_err(|_| WalError::PreparerGone)?
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(42), "00000000000000000042.log");
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name(&file_name(u64::MAX)), Some(u64::MAX));
        for bad in ["42.log", "0000000000000000004x.log", "00000000000000000042.tmp", "", ".log"] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn scan_stops_cleanly_at_zeros_and_reports_data_after_them() {
        let mut data = Vec::new();
        for lsn in 5..8 {
            record::encode_with(&mut data, lsn, |b| b.extend_from_slice(&[lsn as u8; 30])).unwrap();
        }
        let valid = data.len() as u64;
        data.resize(data.len() + 100, 0);
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        let end = scan(&data[..], data.len() as u64, 5, &mut buf, |r| {
            seen.push(r.lsn);
            Ok::<_, ()>(())
        });
        assert_eq!(end.ok(), Some(ScanEnd { valid_bytes: valid, next_lsn: 8, torn: None }));
        assert_eq!(seen, [5, 6, 7]);
        *data.last_mut().unwrap() = 1;
        let end = scan(&data[..], data.len() as u64, 5, &mut buf, |_| Ok::<_, ()>(()));
        assert_eq!(end.ok().and_then(|e| e.torn), Some(TornReason::DataAfterZeros));
    }
}
