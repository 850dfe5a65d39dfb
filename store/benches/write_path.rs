//! Append-path benchmark: time per `Store::append` call (one redb write transaction) by batch size.
//!
//! Each batch spreads ~100-byte messages over 64 two-member conversations, as dispatch's group
//! commit would. `durable` fsyncs every commit (the production setting); `no_sync` shows what
//! the fsync costs. Divan's items/s column is messages per second.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use divan::Bencher;
use divan::counter::ItemsCount;
use tern_proto::v1;
use tern_store::embedded::{Durability, EmbeddedConfig, EmbeddedStore};
use tern_store::{NewMessage, Store};

const BATCH_SIZES: [usize; 4] = [1, 16, 128, 512];
const CONVERSATIONS: u64 = 64;

fn main() {
    divan::main();
}

fn batch(size: usize, next_id: &AtomicU64, body: &Bytes) -> Vec<NewMessage> {
    (0..size)
        .map(|_| {
            let n = next_id.fetch_add(1, Ordering::Relaxed);
            let conv = n % CONVERSATIONS;
            NewMessage {
                mention_user_ids: Vec::new(),
                mention_all: false,
                conversation_id: format!("g:bench-{conv}"),
                members: vec![format!("user-{conv}-a"), format!("user-{conv}-b")],
                sender_user_id: format!("user-{conv}-a"),
                sender_device_id: "device-1".to_owned(),
                client_msg_id: format!("cm-{n}"),
                kind: v1::MessageKind::Normal,
                content_type: "text/plain".to_owned(),
                body: body.clone(),
                recalled_seq: 0,
                server_time_ms: 1_700_000_000_000 + n as i64,
            }
        })
        .collect()
}

fn run(bencher: Bencher, size: usize, durability: Durability) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig { durability, ..EmbeddedConfig::default() };
    let store = EmbeddedStore::open_with(dir.path(), &config).unwrap();
    let next_id = AtomicU64::new(0);
    let body = Bytes::from(vec![b'x'; 100]);
    bencher
        .counter(ItemsCount::new(size))
        .with_inputs(|| batch(size, &next_id, &body))
        .bench_local_values(|b| rt.block_on(store.append(b)).unwrap());
}

/// Fsync per commit: what a client's ack waits for.
#[divan::bench(args = BATCH_SIZES, sample_count = 40, sample_size = 1)]
fn durable(bencher: Bencher, size: usize) {
    run(bencher, size, Durability::Fsync);
}

/// No fsync (bench-only mode): the CPU and page-cache cost of the same commits.
#[divan::bench(args = BATCH_SIZES, sample_count = 40, sample_size = 1)]
fn no_sync(bencher: Bencher, size: usize) {
    run(bencher, size, Durability::NoSync);
}
