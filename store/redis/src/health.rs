//! The Redis store's health probe: a write round-trip on a key of this process's own.

use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::RedisStoreError;
use crate::store::RedisStore;

/// How long a probe key lives when the process stops probing (it is rewritten by every probe).
const PROBE_TTL_MS: u64 = 60_000;

/// This process's probe name: random, so that processes sharing one Redis never read each
/// other's probe.
fn probe_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let random = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        format!("{}-{random:016x}", std::process::id())
    })
}

/// Probes of this process so far: every probe writes a new value.
static PROBES: AtomicU64 = AtomicU64::new(0);

impl RedisStore {
    /// `SET` a fresh value (with a TTL) and `GET` it back in one round trip: fails when Redis
    /// is unreachable, refuses writes (a read-only replica, a full disk with AOF errors,
    /// `min-replicas-to-write` unmet) or answers something else.
    pub(crate) async fn probe(&self) -> Result<(), RedisStoreError> {
        let key = self.keys.health(probe_name());
        let value = PROBES.fetch_add(1, Ordering::Relaxed).to_string();
        let read: Option<String> = self
            .run(|mut conn| {
                let (key, value) = (key.clone(), value.clone());
                async move {
                    let (read,): (Option<String>,) = redis::pipe()
                        .cmd("SET")
                        .arg(&key)
                        .arg(&value)
                        .arg("PX")
                        .arg(PROBE_TTL_MS)
                        .ignore()
                        .cmd("GET")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await?;
                    Ok(read)
                }
            })
            .await?;
        if read.as_deref() == Some(value.as_str()) {
            Ok(())
        } else {
            Err(RedisStoreError::Corrupt {
                key,
                what: format!("health probe wrote {value}, read back {read:?}"),
            })
        }
    }
}
