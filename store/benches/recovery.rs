//! Recovery time of the embedded store (not run in CI): `cargo bench -p tern-store --bench
//! recovery`.
//!
//! Writes a log tail of `TERN_RECOVERY_BYTES` (default 1 GiB) of 1:1 messages
//! (`TERN_RECOVERY_BODY` bytes of body each, default 64, over 1,000 conversations, groups of
//! 512) that the index never checkpointed, closes the store as a crash would leave it, and
//! times the next open: log scan + checksum + decode + applying every record to the redb
//! index + the checkpoint. Run twice with `sync; echo 3 > /proc/sys/vm/drop_caches` in between
//! for a cold page cache. The store lives under `TMPDIR`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_proto::v1;
use tern_store::embedded::{Durability, EmbeddedConfig, EmbeddedStore, IndexConfig};
use tern_store::{NewMessage, Write};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let target = env_usize("TERN_RECOVERY_BYTES", 1 << 30) as u64;
    let body = vec![b'x'; env_usize("TERN_RECOVERY_BODY", 64)];
    let dir = tempfile::tempdir().expect("tempdir");
    let hour = Duration::from_secs(3600);
    let lazy = EmbeddedConfig {
        // Writing the tail without fsync only makes the setup faster; what is timed is the open.
        durability: Durability::NoSync,
        index: IndexConfig {
            interval: hour,
            batch: usize::MAX,
            checkpoint: hour,
            max_pending: usize::MAX,
        },
        ..EmbeddedConfig::default()
    };
    let store = EmbeddedStore::open_with(dir.path(), &lazy).expect("open");
    let Some(commit) = tern_store::Store::blocking_commit(&store) else {
        panic!("the embedded store commits on the calling thread")
    };
    let wal_dir = dir.path().join(tern_store::embedded::WAL_DIR_NAME);
    let started = Instant::now();
    let (mut written, mut messages) = (0u64, 0u64);
    // The log directory also holds one prepared spare segment.
    let spare = EmbeddedConfig::default().wal_segment_bytes;
    while written < target + spare {
        let batch: Vec<Write> = (0..512)
            .map(|i| {
                let n = messages + i;
                let (a, b) = (format!("a{}", n % 1000), format!("b{}", n % 1000));
                Write::Append(NewMessage {
                    mention_user_ids: Vec::new(),
                    mention_all: false,
                    conversation_id: format!("dm:{a}:{b}"),
                    members: vec![a.clone(), b],
                    sender_user_id: a,
                    sender_device_id: "phone".into(),
                    client_msg_id: format!("m{n}"),
                    kind: v1::MessageKind::Normal,
                    content_type: "text/plain".into(),
                    body: Bytes::from(body.clone()),
                    recalled_seq: 0,
                    server_time_ms: 1_700_000_000_000 + n as i64,
                })
            })
            .collect();
        commit.commit_now(&batch).expect("commit");
        messages += 512;
        if messages % (512 * 256) == 0 {
            written = dir_bytes(&wal_dir);
        }
    }
    written = dir_bytes(&wal_dir);
    println!(
        "wrote {messages} messages, a log tail of about {:.2} GB, in {:.1} s",
        written.saturating_sub(spare) as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
    store.close_as_if_crashed();
    let started = Instant::now();
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let took = started.elapsed();
    println!(
        "recovery: {messages} messages replayed into the index in {:.2} s ({:.0} messages/s)",
        took.as_secs_f64(),
        messages as f64 / took.as_secs_f64()
    );
    drop(store);
}
