//! Write-ahead log benchmarks (not run in CI): `cargo bench -p tern-store --bench wal`.
//!
//! - `commit`: one group commit (append N records of ~200 B, one write, one fdatasync) by batch
//!   size, fsync on: the latency an ack waits for. Divan's items/s column is records per second.
//! - `replay`: `Wal::open` replaying a 1 GiB log of 200-B records (written with fsync off, so
//!   it is mostly in the page cache: this is the CPU cost of recovery, not the disk's) with a
//!   trivial callback. Prints MB/s and seconds per GB. `TERN_WAL_BENCH_BYTES` changes the size.
//!
//! The log lives in a temporary directory under `TMPDIR` (put it on the disk you mean to
//! measure: a tmpfs fdatasync costs nothing).

use std::cell::RefCell;

use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use tern_store::wal::{Wal, WalConfig};

const BATCH_SIZES: [usize; 3] = [1, 16, 256];
const RECORD: usize = 200;

fn main() {
    divan::main();
}

fn open(dir: &std::path::Path, cfg: &WalConfig) -> Wal {
    match Wal::open(dir, cfg, 0, |_, _| Ok::<_, std::io::Error>(())) {
        Ok((wal, _)) => wal,
        Err(e) => panic!("open: {e}"),
    }
}

/// One group commit of `size` records, fsync on.
#[divan::bench(args = BATCH_SIZES, sample_count = 200, sample_size = 1)]
fn commit(bencher: Bencher, size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let wal = RefCell::new(open(dir.path(), &WalConfig::default()));
    let body = [b'x'; RECORD];
    bencher.counter(ItemsCount::new(size)).bench_local(|| {
        let mut wal = wal.borrow_mut();
        for _ in 0..size {
            wal.append_with(|b| b.extend_from_slice(&body));
        }
        wal.commit().unwrap()
    });
}

/// Replay of a 1 GiB log (or `TERN_WAL_BENCH_BYTES`).
#[divan::bench(sample_count = 3, sample_size = 1)]
fn replay(bencher: Bencher) {
    let total: u64 =
        std::env::var("TERN_WAL_BENCH_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 30);
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig { fsync: false, ..WalConfig::default() };
    let mut wal = open(dir.path(), &cfg);
    let body = [b'r'; RECORD];
    let frames = total / (RECORD as u64 + 16);
    for i in 0..frames {
        wal.append_with(|b| b.extend_from_slice(&body));
        if i % 4096 == 4095 {
            wal.commit().unwrap();
        }
    }
    wal.commit().unwrap();
    drop(wal);
    bencher.counter(BytesCount::new(total)).bench_local(|| {
        let mut n = 0u64;
        let (wal, rec) = Wal::open(dir.path(), &cfg, 0, |_, p| {
            n += p.len() as u64;
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
        let secs = rec.elapsed.as_secs_f64();
        eprintln!(
            "replay: {} records, {:.0} MB in {} segments in {secs:.3} s: {:.0} MB/s, {:.3} s/GB",
            rec.records,
            rec.bytes as f64 / 1e6,
            rec.segments,
            rec.bytes as f64 / 1e6 / secs,
            secs / (rec.bytes as f64 / 1e9),
        );
        assert_eq!(rec.records, frames);
        drop(wal);
        n
    });
}
