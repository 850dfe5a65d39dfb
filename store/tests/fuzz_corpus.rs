//! Replays the committed fuzz corpora of this crate's targets (`fuzz/corpus/wal_record/`,
//! `fuzz/corpus/store_record/`) through their fuzz bodies on stable, and keeps the generated seed files in that corpus up to date.
//!
//! To (re)write the seeds after changing them here: `TERN_WRITE_CORPUS=1 cargo test -p
//! tern-store --test fuzz_corpus`.

use std::path::PathBuf;

use tern_store::wal::fuzzing;
use tern_store::wal::record::{self, MAX_LSN, SEGMENT_HEADER};

const TARGET: &str = "wal_record";

fn corpus_dir() -> PathBuf {
    tern_testkit::corpus::corpus_dir(env!("CARGO_MANIFEST_DIR"), TARGET)
}

/// A segment file: the header for `first_lsn`, then one record per payload (lsns from
/// `first_lsn`), then `zeros` zero bytes; behind the read-size byte `mode`.
fn segment(mode: u8, first_lsn: u64, payloads: &[&[u8]], zeros: usize) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(&record::encode_header(first_lsn));
    for (i, p) in payloads.iter().enumerate() {
        if record::encode_with(&mut out, first_lsn + i as u64, |b| b.extend_from_slice(p)).is_err()
        {
            panic!("seed payload too large");
        }
    }
    out.resize(out.len() + zeros, 0);
    out
}

/// Offset (in a [`segment`] seed) of record `i`.
fn at(payloads: &[&[u8]], i: usize) -> usize {
    1 + SEGMENT_HEADER + payloads[..i].iter().map(|p| 16 + p.len()).sum::<usize>()
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let p: [&[u8]; 3] = [b"first record", b"", b"the third record, a little longer"];
    let clean = segment(0, 1, &p, 64);
    let mut torn = segment(5, 1, &p, 0);
    torn.truncate(torn.len() - 7);
    let mut bad_crc = clean.clone();
    bad_crc[at(&p, 2) + 20] ^= 0x08;
    let mut stale = segment(9, 10, &p, 0);
    let old = segment(0, 3, &p[..1], 0);
    stale.extend_from_slice(&old[1 + SEGMENT_HEADER..]);
    stale.resize(stale.len() + 32, 0);
    let mut after_zeros = clean.clone();
    after_zeros[at(&p, 1)..at(&p, 2)].fill(0);
    let mut bad_header = clean.clone();
    bad_header[4] ^= 1;
    let mut zero_header = clean.clone();
    zero_header[1..1 + SEGMENT_HEADER].fill(0);
    let mut huge_len = segment(2, 1, &p[..1], 32);
    huge_len[at(&p, 1)..at(&p, 1) + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    huge_len[at(&p, 1) + 4] = 1;
    vec![
        ("seed-three-records", clean.clone()),
        ("seed-three-records-chunked", [&[3u8][..], &clean[1..]].concat()),
        ("seed-torn-tail", torn),
        ("seed-bad-crc", bad_crc),
        ("seed-stale-lsn-after-tail", stale),
        ("seed-data-after-zeros", after_zeros),
        ("seed-bad-header", bad_header),
        ("seed-zero-header", zero_header),
        ("seed-huge-length", huge_len),
        ("seed-top-lsn", segment(1, MAX_LSN, &p, 16)),
        ("seed-empty", vec![0]),
    ]
}

#[test]
fn seed_corpus_is_committed_and_up_to_date() {
    tern_testkit::corpus::check_seeds(
        seeds().into_iter().map(|(name, bytes)| (corpus_dir().join(name), bytes)),
    );
}

#[test]
fn replay_wal_record_corpus() {
    tern_testkit::corpus::replay(&corpus_dir(), TARGET, fuzzing::wal_record);
}

const STORE_TARGET: &str = "store_record";

#[test]
fn store_record_seeds_are_committed_and_up_to_date() {
    let dir = tern_testkit::corpus::corpus_dir(env!("CARGO_MANIFEST_DIR"), STORE_TARGET);
    tern_testkit::corpus::check_seeds(
        tern_store::embedded::fuzzing::seeds().into_iter().map(|(name, b)| (dir.join(name), b)),
    );
}

#[test]
fn replay_store_record_corpus() {
    let dir = tern_testkit::corpus::corpus_dir(env!("CARGO_MANIFEST_DIR"), STORE_TARGET);
    tern_testkit::corpus::replay(&dir, STORE_TARGET, tern_store::embedded::fuzzing::store_record);
}

/// A stable-toolchain stand-in for a short fuzz run: deterministic mutations of the seeds
/// (byte flips, zeroed runs, cuts, spliced records) through the same body.
#[test]
fn mutated_seeds_keep_the_invariants() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound.max(1) as u64) as usize
    };
    let seeds: Vec<Vec<u8>> = seeds().into_iter().map(|(_, b)| b).filter(|b| b.len() > 1).collect();
    for round in 0..20_000 {
        let mut input = seeds[round % seeds.len()].clone();
        for _ in 0..1 + next(3) {
            let at = 1 + next(input.len() - 1);
            match next(4) {
                0 => input[at] ^= 1 << next(8),
                1 => {
                    let end = (at + 1 + next(24)).min(input.len());
                    input[at..end].fill(0);
                }
                2 => input.truncate(at.max(2)),
                _ => {
                    let other = &seeds[next(seeds.len())];
                    let from = 1 + next(other.len() - 1);
                    let end = (from + 1 + next(64)).min(other.len());
                    input.splice(at..at, other[from..end].iter().copied());
                }
            }
        }
        input[0] = next(256) as u8;
        fuzzing::wal_record(&input);
    }
}

/// The seeds mean what their names say (so the replay exercises records, not only rejects).
#[test]
fn seeds_decode_as_named() {
    use tern_store::wal::segment::{self, TornReason};
    let scan = |name: &str| {
        let Some((_, bytes)) = seeds().into_iter().find(|(n, _)| *n == name) else {
            panic!("no seed {name}")
        };
        let first = match record::decode_header(&bytes[1..]) {
            record::Header::Valid { first_lsn } => first_lsn,
            _ => 1,
        };
        let body = &bytes[1 + SEGMENT_HEADER..];
        let mut n = 0;
        let end = segment::scan(body, body.len() as u64, first, &mut Vec::new(), |_| {
            n += 1;
            Ok::<_, ()>(())
        });
        match end {
            Ok(end) => (n, end.torn),
            Err(_) => panic!("{name}: scan failed"),
        }
    };
    assert_eq!(scan("seed-three-records"), (3, None));
    assert_eq!(scan("seed-top-lsn"), (3, None));
    assert!(matches!(scan("seed-torn-tail"), (2, Some(TornReason::Record(_)))));
    assert!(matches!(scan("seed-bad-crc"), (2, Some(TornReason::Record(_)))));
    assert!(matches!(scan("seed-stale-lsn-after-tail"), (3, Some(TornReason::Record(_)))));
    assert_eq!(scan("seed-data-after-zeros"), (1, Some(TornReason::DataAfterZeros)));
}
