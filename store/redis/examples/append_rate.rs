//! Rough append throughput of the Redis store against a throwaway durable redis-server
//! (`appendonly yes`, `appendfsync always`) started by the testkit: median time per `append`
//! call for several batch sizes, ~100-byte bodies over 64 conversations.
//!
//! `cargo run -p tern-store-redis --example append_rate [--release]`

use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_proto::v1;
use tern_store::{NewMessage, Store};
use tern_store_redis::{RedisStore, RedisStoreConfig};
use tern_testkit::RedisServer;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = tokio::task::spawn_blocking(RedisServer::start).await??;
    let store = RedisStore::connect(RedisStoreConfig::new(server.url())).await?;
    let body = Bytes::from(vec![b'x'; 100]);
    let mut n = 0u64;
    for batch_size in [1usize, 16, 128, 512] {
        let mut times: Vec<Duration> = Vec::new();
        for _ in 0..40 {
            let batch: Vec<NewMessage> = (0..batch_size)
                .map(|i| {
                    n += 1;
                    NewMessage {
                        mention_user_ids: Vec::new(),
                        mention_all: false,
                        conversation_id: format!("conv-{}", i % 64),
                        members: vec!["alice".into(), "bob".into()],
                        sender_user_id: "alice".into(),
                        sender_device_id: "d".into(),
                        client_msg_id: format!("m{n}"),
                        kind: v1::MessageKind::Normal,
                        content_type: "text/plain".into(),
                        body: body.clone(),
                        recalled_seq: 0,
                        server_time_ms: 0,
                    }
                })
                .collect();
            let started = Instant::now();
            store.append(batch).await?;
            times.push(started.elapsed());
        }
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "batch {batch_size:>4}: median {:>8.2?} per append, ~{:.0} msgs/s",
            median,
            batch_size as f64 / median.as_secs_f64()
        );
    }
    Ok(())
}
