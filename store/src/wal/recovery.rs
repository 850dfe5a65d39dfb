//! [`Wal::open`]: list the segments, check that their lsns continue, replay the records after
//! the caller's lsn, cut off a torn tail, and set the log up for appends.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::error::{WalError, io};
use super::record::{self, Header, SEGMENT_HEADER};
use super::segment::{self, Preparer, ScanError, TornReason};
use super::{Active, Closed, MIN_SEGMENT_BYTES, Recovery, TornTail, Wal, WalConfig};

/// One `<seq>.log` file as listed at open.
struct Listed {
    seq: u64,
    path: PathBuf,
    len: u64,
    header: Header,
}

/// The last segment with a valid header, as scanned.
struct Tail {
    index: usize,
    /// File offset just after its last valid record.
    end: u64,
    /// `Some` when the file holds more than zeros after `end`.
    torn: Option<TornReason>,
}

fn corrupt(path: &Path, offset: u64, reason: String) -> WalError {
    WalError::Corrupt { path: path.to_owned(), offset, reason }
}

fn list(dir: &Path) -> Result<Vec<Listed>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if name.ends_with(".tmp") {
            // A segment whose preparation a crash interrupted.
            fs::remove_file(&path).map_err(io("delete", &path))?;
            continue;
        }
        let Some(seq) = segment::parse_name(&name) else { continue };
        let mut file = File::open(&path).map_err(io("open", &path))?;
        let len = file.metadata().map_err(io("stat", &path))?.len();
        let mut head = [0; SEGMENT_HEADER];
        let mut got = 0;
        while got < SEGMENT_HEADER {
            match file.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io("read", &path)(e)),
            }
        }
        out.push(Listed { seq, path, len, header: record::decode_header(&head[..got]) });
    }
    out.sort_by_key(|s| s.seq);
    Ok(out)
}

pub(super) fn open<E>(
    dir: &Path,
    cfg: &WalConfig,
    after: u64,
    mut replay: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(Wal, Recovery), WalError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let cfg = WalConfig { segment_bytes: cfg.segment_bytes.max(MIN_SEGMENT_BYTES), ..cfg.clone() };
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let segs = list(dir)?;
    let mut recovery = Recovery {
        records: 0,
        bytes: 0,
        segments: 0,
        truncated: None,
        elapsed: Default::default(),
    };
    let floor = after.saturating_add(1).min(record::MAX_LSN);
    // The lsn the next valid segment must start with (`None`: any lsn up to `floor`).
    let mut expected: Option<u64> = None;
    // Where the valid log stopped, if it did not stop cleanly and nothing resolved it yet.
    let mut damage: Option<TornTail> = None;
    let mut tail: Option<Tail> = None;
    let mut valid: Vec<usize> = Vec::new();
    let mut prev_first = 0;
    let mut buf = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        let first_lsn = match seg.header {
            Header::Valid { first_lsn } => first_lsn,
            Header::Zero | Header::Bad(_) => {
                let reason = match seg.header {
                    Header::Bad(bad) => TornReason::Header(bad),
                    _ => TornReason::ZeroHeader,
                };
                let later_valid =
                    segs[i + 1..].iter().any(|s| matches!(s.header, Header::Valid { .. }));
                if damage.is_none() && (later_valid || matches!(seg.header, Header::Bad(_))) {
                    damage = Some(TornTail { segment: seg.path.clone(), offset: 0, reason });
                }
                continue;
            }
        };
        // Do the lsns continue?
        let gap = match expected {
            Some(exp) => first_lsn != exp && (first_lsn > floor || first_lsn < exp),
            None => first_lsn > floor || first_lsn <= prev_first,
        };
        if gap {
            let wanted = expected.unwrap_or(floor);
            let reason = format!(
                "segment {} starts at lsn {first_lsn} where {wanted} was expected: records are missing",
                seg.path.display()
            );
            return Err(match damage {
                Some(d) => corrupt(&d.segment, d.offset, format!("{}; {reason}", d.reason)),
                None => corrupt(&seg.path, 0, reason),
            });
        }
        if let Some(d) = damage.take() {
            tracing::warn!(
                segment = %d.segment.display(), offset = d.offset, reason = %d.reason,
                "wal: damage followed by a segment that continues the lsns; no record is missing"
            );
        }
        prev_first = first_lsn;
        valid.push(i);
        // A segment followed by one starting at or below `floor` holds nothing needed.
        let next_first = segs[i + 1..].iter().find_map(|s| match s.header {
            Header::Valid { first_lsn } => Some(first_lsn),
            _ => None,
        });
        if next_first.is_some_and(|n| n <= floor && n > first_lsn) {
            expected = None;
            continue;
        }
        let mut file = File::open(&seg.path).map_err(io("open", &seg.path))?;
        file.seek(SeekFrom::Start(SEGMENT_HEADER as u64)).map_err(io("seek", &seg.path))?;
        let data_len = seg.len.saturating_sub(SEGMENT_HEADER as u64);
        recovery.segments += 1;
        let end = segment::scan(file, data_len, first_lsn, &mut buf, |rec| {
            if rec.lsn > after {
                replay(rec.lsn, rec.payload)
                    .map_err(|e| WalError::Replay { lsn: rec.lsn, source: e.into() })?;
                recovery.records += 1;
                recovery.bytes += rec.frame_len() as u64;
            }
            Ok(())
        })
        .map_err(|e| match e {
            ScanError::Io(e) => io("read", &seg.path)(e),
            ScanError::Callback(e) => e,
        })?;
        let end_offset = SEGMENT_HEADER as u64 + end.valid_bytes;
        expected = Some(end.next_lsn);
        if let Some(reason) = end.torn {
            damage = Some(TornTail { segment: seg.path.clone(), offset: end_offset, reason });
        }
        tail = Some(Tail { index: i, end: end_offset, torn: end.torn });
    }

    let last_valid = expected.map_or(0, |e| e - 1);
    let next_lsn = expected.unwrap_or(1).max(floor);
    if next_lsn > last_valid + 1 && last_valid > 0 {
        tracing::warn!(
            last_valid,
            after,
            "wal: the index is ahead of the log; continuing after it"
        );
    }
    // Cut off the tail and drop every file after the last valid segment.
    let keep_upto = tail.as_ref().map_or(0, |t| t.index + 1);
    if let Some(torn) = damage {
        tracing::warn!(
            segment = %torn.segment.display(), offset = torn.offset, reason = %torn.reason,
            "wal: torn or corrupt tail truncated"
        );
        if let Some(t) = &tail
            && t.torn.is_some()
        {
            let path = &segs[t.index].path;
            let file = OpenOptions::new().write(true).open(path).map_err(io("open", path))?;
            file.set_len(t.end).map_err(io("truncate", path))?;
            if cfg.fsync {
                file.sync_all().map_err(io("fsync", path))?;
            }
        }
        recovery.truncated = Some(torn);
    }
    let mut removed = false;
    for seg in segs
        .iter()
        .skip(keep_upto)
        .chain(segs.iter().take(keep_upto).filter(|s| !matches!(s.header, Header::Valid { .. })))
    {
        fs::remove_file(&seg.path).map_err(io("delete", &seg.path))?;
        removed = true;
    }
    if removed && cfg.fsync {
        segment::sync_dir(dir)?;
    }

    // Continue in the last segment only if nothing was cut, it has room and the lsns follow on.
    let mut closed: VecDeque<Closed> = valid
        .iter()
        .map(|&i| Closed { first_lsn: header_lsn(&segs[i].header), path: segs[i].path.clone() })
        .collect();
    let mut active = None;
    if let Some(t) = &tail
        && recovery.truncated.is_none()
        && next_lsn == last_valid + 1
        && t.end < segs[t.index].len
        && let Some(last) = closed.pop_back()
    {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&last.path)
            .map_err(io("open", &last.path))?;
        active = Some(Active {
            first_lsn: last.first_lsn,
            path: last.path,
            file,
            offset: t.end,
            capacity: segs[t.index].len,
            dirty: false,
        });
    }
    let mut next_seq = match segs.last() {
        None => 1,
        Some(last) => last.seq.checked_add(2).map(|n| n - 1).ok_or_else(|| {
            corrupt(&last.path, 0, "segment number at the top of the range".into())
        })?,
    };
    let mut preparer = Preparer::start(dir.to_owned(), cfg.segment_bytes, cfg.fsync)?;
    preparer.request(next_seq);
    next_seq += 1;
    recovery.elapsed = started.elapsed();
    tracing::info!(
        records = recovery.records,
        bytes = recovery.bytes,
        segments = recovery.segments,
        next_lsn,
        elapsed_ms = recovery.elapsed.as_millis() as u64,
        "wal recovered"
    );
    let wal = Wal {
        dir: dir.to_owned(),
        cfg,
        closed,
        active,
        next_seq,
        buf: Vec::new(),
        next_lsn,
        durable_lsn: next_lsn - 1,
        poisoned: None,
        refused: None,
        preparer,
    };
    Ok((wal, recovery))
}

fn header_lsn(header: &Header) -> u64 {
    match header {
        Header::Valid { first_lsn } => *first_lsn,
        _ => 0,
    }
}
