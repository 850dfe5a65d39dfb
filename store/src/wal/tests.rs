//! Write-ahead log tests: restarts, segment rolls, torn and corrupt tails, holes in the middle,
//! release, poisoning. Real files in a temporary directory; no sleeps, no timing.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{FRAME_HEADER, SEGMENT_HEADER, Stop};
use super::*;

const SMALL: u64 = 4096;

fn cfg(segment_bytes: u64) -> WalConfig {
    WalConfig { segment_bytes, fsync: false }
}

type Replayed = Vec<(u64, Vec<u8>)>;

fn open(dir: &Path, cfg: &WalConfig, after: u64) -> (Wal, Recovery, Replayed) {
    let mut seen = Vec::new();
    let (wal, rec) = Wal::open(dir, cfg, after, |lsn, p| {
        seen.push((lsn, p.to_vec()));
        Ok::<_, std::io::Error>(())
    })
    .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    (wal, rec, seen)
}

/// A payload that differs per lsn, 20..~200 bytes.
fn payload(lsn: u64) -> Vec<u8> {
    format!("record-{lsn:06}-").repeat(1 + (lsn % 13) as usize).into_bytes()
}

/// Appends records with [`payload`] for the next `n` lsns and commits; returns their lsns.
fn write(wal: &mut Wal, n: u64) -> Vec<u64> {
    let lsns: Vec<u64> = (0..n)
        .map(|_| {
            let lsn = wal.last_lsn() + 1;
            wal.append_with(|b| b.extend_from_slice(&payload(lsn)))
        })
        .collect();
    assert_eq!(wal.commit().ok(), lsns.last().copied().or(Some(wal.durable_lsn())));
    lsns
}

fn expected(lsns: impl IntoIterator<Item = u64>) -> Replayed {
    lsns.into_iter().map(|l| (l, payload(l))).collect()
}

/// Segment files with a written header (not the spare the background thread may be making).
fn used_segments(dir: &Path) -> Vec<PathBuf> {
    segments(dir)
        .into_iter()
        .filter(|s| {
            let head = std::fs::read(s).unwrap_or_default();
            matches!(record::decode_header(&head), record::Header::Valid { .. })
        })
        .collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// File offset of record `lsn` in a single-segment log written with [`payload`] from lsn 1.
fn offset_of(lsn: u64) -> u64 {
    SEGMENT_HEADER as u64 + (1..lsn).map(|l| (FRAME_HEADER + payload(l).len()) as u64).sum::<u64>()
}

fn frame_len(lsn: u64) -> u64 {
    (FRAME_HEADER + payload(lsn).len()) as u64
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn read_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut b = vec![0; len as usize];
    f.read_exact_at(&mut b, offset).unwrap();
    b
}

#[test]
fn records_survive_restarts_and_segment_rolls_and_lsns_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for (round, fsync) in [false, true, false, false, true].into_iter().enumerate() {
        let cfg = WalConfig { segment_bytes: SMALL, fsync };
        let (mut wal, rec, seen) = open(dir.path(), &cfg, 0);
        assert_eq!(seen, expected(all.iter().copied()), "round {round}");
        assert_eq!(rec.records, all.len() as u64);
        assert_eq!(rec.truncated, None);
        assert_eq!(wal.last_lsn(), all.len() as u64);
        for n in [1, 7, 22, 0, 40] {
            let lsns = write(&mut wal, n);
            assert_eq!(lsns, ((all.len() as u64 + 1)..=(all.len() as u64 + n)).collect::<Vec<_>>());
            all.extend(lsns);
            assert_eq!(wal.durable_lsn(), all.len() as u64);
        }
    }
    let used = used_segments(dir.path()).len();
    assert!(used >= 8, "{used} segments");
    // Every segment file (and the spare, if it was made before the drop) has its full size.
    for seg in segments(dir.path()) {
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), SMALL, "{}", seg.display());
    }
    let (_, _, seen) = open(dir.path(), &cfg(SMALL), 100);
    assert_eq!(seen, expected(101..=all.len() as u64));
}

/// Opens the damaged log: it must replay exactly lsns 1..=kept, report a truncation at the
/// record after them (if `reported`), take new appends, and replay old + new on the next start.
fn check_recovers_to(dir: &Path, kept: u64, reported: bool, what: &str) {
    let (mut wal, rec, seen) = open(dir, &cfg(1 << 16), 0);
    assert_eq!(seen, expected(1..=kept), "{what}");
    match (&rec.truncated, reported) {
        (Some(t), true) => assert_eq!(t.offset, offset_of(kept + 1), "{what}: {t:?}"),
        (None, false) => {}
        (t, _) => panic!("{what}: truncated {t:?}, expected reported = {reported}"),
    }
    let new = write(&mut wal, 3);
    assert_eq!(new, [kept + 1, kept + 2, kept + 3], "{what}");
    drop(wal);
    let (_, rec, seen) = open(dir, &cfg(1 << 16), 0);
    assert_eq!(seen, expected(1..=kept + 3), "{what}: second reopen");
    assert_eq!(rec.truncated, None, "{what}: second reopen");
}

/// A fresh log with lsns 1..=5 (one commit each) in one segment; returns the segment.
fn five(dir: &Path) -> PathBuf {
    let (mut wal, _, _) = open(dir, &cfg(1 << 16), 0);
    for _ in 0..5 {
        write(&mut wal, 1);
    }
    drop(wal);
    segments(dir).into_iter().next().unwrap()
}

#[test]
fn a_torn_tail_is_cut_off_reported_and_appends_continue() {
    let len = frame_len(5);
    for k in 1..=len {
        // The last k bytes of the last record never reached the disk (still zeros).
        let dir = tempfile::tempdir().unwrap();
        let seg = five(dir.path());
        patch(&seg, offset_of(6) - k, &vec![0; k as usize]);
        // All of it zero is the clean end of the log: nothing torn to report.
        check_recovers_to(dir.path(), 4, k != len, &format!("zeroed last {k}"));
        // The file itself ends k bytes into the last record.
        let dir = tempfile::tempdir().unwrap();
        let seg = five(dir.path());
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(offset_of(6) - k).unwrap();
        check_recovers_to(dir.path(), 4, k != len, &format!("file cut {k} bytes short"));
    }
    for i in 0..len {
        let dir = tempfile::tempdir().unwrap();
        let seg = five(dir.path());
        let at = offset_of(5) + i;
        let byte = read_at(&seg, at, 1)[0];
        patch(&seg, at, &[byte ^ 0x10]);
        check_recovers_to(dir.path(), 4, true, &format!("flipped byte {i} of the last record"));
    }
    // Its header zeroed, its payload intact: data after zeros is a torn write.
    let dir = tempfile::tempdir().unwrap();
    let seg = five(dir.path());
    patch(&seg, offset_of(5), &[0; FRAME_HEADER]);
    check_recovers_to(dir.path(), 4, true, "zeroed header");
}

#[test]
fn a_torn_group_write_never_serves_the_records_after_the_damage() {
    for damage in ["payload", "header"] {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _, _) = open(dir.path(), &cfg(1 << 16), 0);
        // A, B and C in one group; B is torn, C reached the disk intact.
        let b_payload = b"BBBBBBBBBBBBBBBB".to_vec();
        wal.append_with(|b| b.extend_from_slice(b"A"));
        wal.append_with(|b| b.extend_from_slice(&b_payload));
        wal.append_with(|b| b.extend_from_slice(b"C"));
        wal.commit().unwrap();
        drop(wal);
        let seg = segments(dir.path()).remove(0);
        let b_at = SEGMENT_HEADER as u64 + (FRAME_HEADER + 1) as u64;
        match damage {
            "payload" => patch(&seg, b_at + FRAME_HEADER as u64 + 3, b"x"),
            _ => patch(&seg, b_at, &[0; FRAME_HEADER]),
        }
        let (mut wal, rec, seen) = open(dir.path(), &cfg(1 << 16), 0);
        assert_eq!(seen, [(1, b"A".to_vec())], "{damage}");
        assert_eq!(rec.truncated.map(|t| (t.segment, t.offset)), Some((seg.clone(), b_at)));
        // D has B's length, so were it written where B was, C would follow it with lsn D + 1.
        assert_eq!(wal.append_with(|b| b.extend_from_slice(b"DDDDDDDDDDDDDDDD")), 2);
        wal.commit().unwrap();
        drop(wal);
        let (_, rec, seen) = open(dir.path(), &cfg(1 << 16), 0);
        assert_eq!(seen, [(1, b"A".to_vec()), (2, b"DDDDDDDDDDDDDDDD".to_vec())], "{damage}");
        assert_eq!(rec.truncated, None);
    }
}

#[test]
fn a_stale_record_after_the_tail_is_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let seg = five(dir.path());
    // A valid frame of an earlier lsn lands after the tail (as a recycled file would hold).
    let stale = read_at(&seg, offset_of(2), frame_len(2));
    patch(&seg, offset_of(6), &stale);
    let (_, rec, seen) = open(dir.path(), &cfg(1 << 16), 0);
    assert_eq!(seen, expected(1..=5));
    let reason = rec.truncated.map(|t| t.reason);
    assert_eq!(reason, Some(TornReason::Record(Stop::WrongLsn { expected: 6, found: 2 })));
    check_recovers_to(dir.path(), 5, false, "after the stale record was cut");
}

/// A log over several small segments; returns the lsn of the last record.
fn several_segments(dir: &Path) -> u64 {
    let (mut wal, _, _) = open(dir, &cfg(SMALL), 0);
    for _ in 0..30 {
        write(&mut wal, 12);
    }
    assert!(segments(dir).len() >= 5);
    wal.last_lsn()
}

fn first_lsn_of(seg: &Path) -> u64 {
    match record::decode_header(&read_at(seg, 0, SEGMENT_HEADER as u64)) {
        record::Header::Valid { first_lsn } => first_lsn,
        h => panic!("{}: {h:?}", seg.display()),
    }
}

#[test]
fn damage_in_the_middle_of_the_log_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let last = several_segments(dir.path());
    let segs = segments(dir.path());
    let victim = &segs[1];
    let at = SEGMENT_HEADER as u64 + 20; // inside its first record
    patch(victim, at, b"!");
    let err = Wal::open(dir.path(), &cfg(SMALL), 0, |_, _| Ok::<_, std::io::Error>(())).err();
    match err {
        Some(WalError::Corrupt { path, offset, reason }) => {
            assert_eq!((&path, offset), (victim, SEGMENT_HEADER as u64), "{reason}");
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Nothing was deleted or cut.
    assert_eq!(segments(dir.path()), segs);
    // Once the index holds everything up to the damaged segment's end, it is not needed.
    let after = first_lsn_of(&segs[2]) - 1;
    let (_, rec, seen) = open(dir.path(), &cfg(SMALL), after);
    assert_eq!(seen, expected(after + 1..=last));
    assert_eq!(rec.truncated, None);

    // A damaged segment header in the middle is refused too.
    let dir = tempfile::tempdir().unwrap();
    several_segments(dir.path());
    let segs = segments(dir.path());
    patch(&segs[2], 3, b"?");
    let err = Wal::open(dir.path(), &cfg(SMALL), 0, |_, _| Ok::<_, std::io::Error>(())).err();
    assert!(
        matches!(&err, Some(WalError::Corrupt { path, offset: 0, .. }) if path == &segs[2]),
        "{err:?}"
    );
}

#[test]
fn release_deletes_absorbed_segments_and_replay_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _, _) = open(dir.path(), &cfg(SMALL), 0);
    for _ in 0..10 {
        write(&mut wal, 12);
    }
    let last = wal.last_lsn();
    let before = used_segments(dir.path());
    let upto = first_lsn_of(&before[3]) + 2; // inside segment 3: segments 0..3 may go
    wal.release(upto).unwrap();
    let after_release = used_segments(dir.path());
    assert_eq!(after_release[..], before[3..]);
    wal.release(u64::MAX).unwrap();
    let active = used_segments(dir.path());
    assert_eq!(active.len(), 1, "the active segment stays: {active:?}");
    assert!(active.iter().any(|s| first_lsn_of(s) <= last));
    drop(wal);
    let (mut wal, rec, seen) = open(dir.path(), &cfg(SMALL), last - 3);
    assert_eq!(seen, expected(last - 2..=last));
    assert_eq!(rec.segments, 1);
    assert_eq!(write(&mut wal, 2), [last + 1, last + 2]);
}

#[test]
fn a_failed_write_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _, _) = open(dir.path(), &cfg(1 << 16), 0);
    write(&mut wal, 3);
    wal.break_active_file();
    wal.append_with(|b| b.extend_from_slice(b"lost"));
    match wal.commit() {
        Err(WalError::Io { op: "write", .. }) => {}
        other => panic!("expected a write error, got {other:?}"),
    }
    assert_eq!(wal.durable_lsn(), 3);
    assert!(wal.is_poisoned());
    wal.append_with(|b| b.extend_from_slice(b"also lost"));
    match wal.commit() {
        Err(WalError::Poisoned { cause }) => assert!(cause.contains("write"), "{cause}"),
        other => panic!("expected Poisoned, got {other:?}"),
    }
    assert!(matches!(wal.commit(), Err(WalError::Poisoned { .. })));
    drop(wal);
    let (mut wal, rec, seen) = open(dir.path(), &cfg(1 << 16), 0);
    assert_eq!((seen, rec.truncated), (expected(1..=3), None));
    assert_eq!(write(&mut wal, 1), [4]);
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _, _) = open(dir.path(), &cfg(SMALL), 0);
    write(&mut wal, 3);
    let big = vec![7u8; 3 * SMALL as usize];
    assert_eq!(wal.append_with(|b| b.extend_from_slice(&big)), 4);
    wal.append_with(|b| b.extend_from_slice(&payload(5)));
    assert_eq!(wal.commit().ok(), Some(5));
    write(&mut wal, 2);
    drop(wal);
    let (_, rec, seen) = open(dir.path(), &cfg(SMALL), 0);
    let mut want = expected(1..=7);
    want[3].1 = big;
    assert_eq!((seen, rec.truncated), (want, None));
}

#[test]
fn an_index_ahead_of_an_empty_log_sets_the_first_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, rec, seen) = open(dir.path(), &cfg(SMALL), 100);
    assert_eq!((rec.records, seen.len(), wal.last_lsn()), (0, 0, 100));
    assert_eq!(write(&mut wal, 2), [101, 102]);
    drop(wal);
    let (_, _, seen) = open(dir.path(), &cfg(SMALL), 100);
    assert_eq!(seen, expected(101..=102));
}

#[test]
fn a_failing_replay_callback_stops_the_open() {
    let dir = tempfile::tempdir().unwrap();
    five(dir.path());
    let err = Wal::open(dir.path(), &cfg(1 << 16), 0, |lsn, _| {
        if lsn == 3 { Err("index is full") } else { Ok(()) }
    })
    .err();
    assert!(matches!(err, Some(WalError::Replay { lsn: 3, .. })), "{err:?}");
}

#[test]
fn the_log_stays_free_of_async_runtimes() {
    // It runs on a dedicated commit thread; blocking calls are its job.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/wal");
    let banned = [concat!("tok", "io::"), concat!("async", " fn"), concat!(".aw", "ait")];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for word in banned {
            assert!(!text.contains(word), "{} mentions {word}", path.display());
        }
    }
}

#[test]
fn the_log_can_move_to_a_commit_thread() {
    fn send<T: Send>() {}
    send::<Wal>();
    send::<WalError>();
}
