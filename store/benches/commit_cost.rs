//! Commit-path cost per message, for instruction counts under callgrind (not a timing bench).
//!
//! Drives [`EmbeddedStore`] through `BlockingCommit::commit_now` with the loadtest's `pairs`
//! pattern: 100 conversations `dm:ppr{i}:pps{i}` (sender `pps{i}`, members both), 64-byte
//! bodies, unique client_msg_ids. `big`: groups of 380 appends plus 4 watermark writes (the
//! saturated server); `small`: groups of one append and, every other group, one watermark (the
//! low-rate case). The log is not fsynced (`Durability::NoSync`) so the kernel's fsync does
//! not dominate. `WARM` messages go in first (the index then holds them), the index catches up,
//! then `zero_point` runs, then `MEASURE` messages, then the store closes (the index applies
//! the rest). So, per message:
//!
//! ```text
//! valgrind --tool=callgrind --zero-before='*zero_point*' --callgrind-out-file=cg.out \
//!     target/release/deps/commit_cost-<hash> big 100000 50000
//! callgrind_annotate --inclusive=yes cg.out | grep -E 'Writer::commit|tables::apply'
//! ```
//!
//! and divide the inclusive counts of `Writer::commit` (commit path) and `tables::apply`
//! (index apply) by `MEASURE`. Usage: `commit_cost big|small [WARM] [MEASURE]`.

use std::time::Duration;

use bytes::Bytes;
use tern_proto::v1;
use tern_store::embedded::{Durability, EmbeddedConfig, EmbeddedStore, IndexConfig};
use tern_store::{BlockingCommit, NewMessage, Store, WatermarkWrite, Write};

const PAIRS: u64 = 100;

struct Load {
    next: u64,
    seqs: Vec<u64>,
    body: Bytes,
}

impl Load {
    fn append(&mut self) -> Write {
        let k = self.next;
        self.next += 1;
        let i = k % PAIRS;
        self.seqs[i as usize] += 1;
        Write::Append(NewMessage {
            mention_user_ids: Vec::new(),
            mention_all: false,
            conversation_id: format!("dm:ppr{i}:pps{i}"),
            members: vec![format!("ppr{i}"), format!("pps{i}")],
            sender_user_id: format!("pps{i}"),
            sender_device_id: "d1".to_owned(),
            client_msg_id: format!("{:08x}-{k}", 0xab),
            kind: v1::MessageKind::Normal,
            content_type: "text/plain".to_owned(),
            body: self.body.clone(),
            recalled_seq: 0,
            server_time_ms: 1_700_000_000_000 + k as i64,
        })
    }

    fn receipt(&self, i: u64) -> Write {
        Write::Watermark(WatermarkWrite {
            conversation_id: format!("dm:ppr{i}:pps{i}"),
            user_id: format!("ppr{i}"),
            kind: v1::ReceiptKind::Read,
            seq: self.seqs[i as usize],
        })
    }

    /// One group of the given shape.
    fn group(&mut self, big: bool, n: u64) -> Vec<Write> {
        if big {
            let mut g: Vec<Write> = (0..380).map(|_| self.append()).collect();
            g.extend((0..4).map(|j| self.receipt((n * 4 + j) % PAIRS)));
            g
        } else {
            let mut g = vec![self.append()];
            if n % 2 == 1 {
                g.push(self.receipt((self.next - 1) % PAIRS));
            }
            g
        }
    }

    fn run(&mut self, store: &EmbeddedStore, big: bool, messages: u64) {
        let start = self.next;
        let mut n = 0;
        while self.next - start < messages {
            let g = self.group(big, n);
            n += 1;
            store.commit_now(&g).expect("commit");
        }
    }
}

/// Callgrind zeroes its counters when this is entered.
#[inline(never)]
fn zero_point() {
    std::hint::black_box(());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let big = match args.first().map(String::as_str) {
        Some("small") => false,
        Some("big") | None => true,
        Some(other) => panic!("unknown shape {other}: big or small"),
    };
    let warm: u64 = args.get(1).map_or(100_000, |a| a.parse().expect("WARM"));
    let measure: u64 = args.get(2).map_or(50_000, |a| a.parse().expect("MEASURE"));
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    // The index applies only when 8192 records wait (or a read or the close asks): the
    // number of index transactions does not depend on timing under valgrind.
    let index = IndexConfig {
        interval: Duration::from_secs(3600),
        checkpoint: Duration::from_secs(3600),
        ..IndexConfig::default()
    };
    let config =
        EmbeddedConfig { durability: Durability::NoSync, index, ..EmbeddedConfig::default() };
    let store = EmbeddedStore::open_with(dir.path(), &config).expect("open");
    let mut load =
        Load { next: 0, seqs: vec![0; PAIRS as usize], body: Bytes::from(vec![0xab; 64]) };
    load.run(&store, true, warm);
    // The read barrier: the index has applied the warm-up.
    rt.block_on(store.last_seq("dm:ppr0:pps0")).expect("read");
    let start = load.next;
    zero_point();
    load.run(&store, big, measure);
    drop(store);
    let shape = if big { "big" } else { "small" };
    println!("shape {shape} warm {start} measured {}", load.next - start);
}
