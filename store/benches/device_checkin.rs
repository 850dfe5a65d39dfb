//! What the device check-in of one login costs the embedded store (not a timing test; a
//! figure for docs/BENCHMARKS.md): the user's device list read plus the durable check-in write
//! (`Store::devices` + `Store::device_write(CheckIn)`, what dispatch does per login), with the
//! log fsynced. Logins of `USERS` users with 2 devices each; `serial` runs one at a time,
//! `storm` `CONCURRENCY` at once (the device writes' own group commit then shares fsyncs).
//! Prints wall time and process CPU (user + system, from /proc/self/stat) per check-in.
//!
//! Usage: `cargo bench -p tern-store --bench device_checkin -- [LOGINS] [CONCURRENCY]`.

use std::sync::Arc;
use std::time::Instant;

use tern_store::{DeviceWrite, EmbeddedStore, Platform, Store};

/// Process CPU time (user + system) in seconds, from /proc/self/stat (clock ticks of 10 ms).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

async fn check_in(store: &dyn Store, i: u64) {
    let user = format!("user{}", i % 1000);
    let device = if i.is_multiple_of(2) { "phone" } else { "desk" };
    store.devices(&user).await.expect("devices");
    let w = DeviceWrite::CheckIn { platform: Platform::Ios, now_ms: 1_700_000_000_000 + i as i64 };
    store.device_write(&user, device, &w).await.expect("check-in");
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with("--")).collect();
    let logins: u64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(5000);
    let concurrency: u64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(64);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let rt = rt.expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    rt.block_on(async {
        for (name, width) in [("serial", 1), ("storm", concurrency)] {
            let (t0, c0) = (Instant::now(), cpu_secs());
            let mut next = 0;
            while next < logins {
                let mut tasks = Vec::new();
                for _ in 0..width.min(logins - next) {
                    let (s, i) = (store.clone(), next + if name == "storm" { logins } else { 0 });
                    tasks.push(tokio::spawn(async move { check_in(&*s, i).await }));
                    next += 1;
                }
                for t in tasks {
                    t.await.expect("task");
                }
            }
            let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_secs() - c0);
            let per = |s: f64| s * 1e6 / logins as f64;
            println!(
                "{name} (x{width}): {logins} check-ins in {wall:.2} s: {:.0} us wall, {:.0} us CPU each",
                per(wall),
                per(cpu)
            );
        }
    });
}
