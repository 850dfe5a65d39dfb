//! [`RedisStoreError`]: what can go wrong in the Redis backend, and how it folds into the
//! backend-independent [`StoreError`] (retryable `Unavailable` vs `Io` vs `Corrupt`).

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};
use tern_store::StoreError;
use thiserror::Error;

/// A failure of the Redis backend. Whose fault: `Config` is the operator's (fix the config);
/// `NotDurable` is the Redis deployment's; `Unavailable` and `Timeout` are passing (retry);
/// `Redis` is an unexpected command failure; `Corrupt` means stored bytes are not what this
/// backend writes.
#[derive(Debug, Error)]
pub enum RedisStoreError {
    /// The configuration cannot work (bad URL, bad key prefix).
    #[error("invalid Redis store config: {0}")]
    Config(String),
    /// The Redis does not make an acknowledged write durable.
    #[error(
        "the store Redis at {addr} has appendonly={appendonly} appendfsync={appendfsync}; Tern \
         acknowledges a message only once it is durable, so the store Redis must run with \
         appendonly yes and appendfsync always (set require_durable = false only for tests \
         and benchmarks)"
    )]
    NotDurable { addr: String, appendonly: String, appendfsync: String },
    /// The durability settings could not be read (CONFIG disabled or renamed, or no answer).
    #[error(
        "cannot check the durability of the store Redis at {addr} (CONFIG GET {name}: {detail}); \
         allow CONFIG GET or set require_durable = false if durability is ensured otherwise"
    )]
    DurabilityUnknown { addr: String, name: &'static str, detail: String },
    /// Redis cannot be reached, is loading its data, or is not a writable primary right now.
    #[error("Redis unavailable: {0}")]
    Unavailable(RedisError),
    /// The operation did not finish within `command_timeout` (it may still take effect).
    #[error("Redis operation timed out after {0:?}")]
    Timeout(Duration),
    /// The operation is not implemented by this backend yet.
    #[error("the Redis store does not support {0} yet")]
    Unsupported(&'static str),
    /// Redis answered with an error this backend does not expect.
    #[error("Redis command failed: {0}")]
    Redis(RedisError),
    /// The store Redis took over from the node the store wrote to (a promoted replica) and
    /// `failover_seq_gap` is 0: appending could hand out seqs clients have already seen.
    #[error(
        "refusing to append: {detail}. Set store.redis_failover_seq_gap (see DEPLOYMENT.md, \
         Redis store failover) on a worker to continue above every seq the old primary may \
         have handed out"
    )]
    Fenced { detail: String },
    /// `WAIT` saw fewer replicas than `min_replicas_acked` take the batch in time. The batch
    /// is applied on the primary; a resend is answered from it.
    #[error("only {acked} of {wanted} replicas acknowledged the append within {timeout:?}")]
    ReplicasBehind { acked: u32, wanted: u32, timeout: Duration },
    /// A stored record or a script's answer is not in the format this backend writes.
    #[error("corrupt record {key}: {what}")]
    Corrupt { key: String, what: String },
}

impl RedisStoreError {
    /// Whether retrying later can succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RedisStoreError::Unavailable(_)
                | RedisStoreError::Timeout(_)
                | RedisStoreError::ReplicasBehind { .. }
        )
    }
}

impl From<RedisError> for RedisStoreError {
    fn from(e: RedisError) -> Self {
        if e.code() == Some("TERNFENCED") {
            let detail = e.detail().unwrap_or_default().to_owned();
            RedisStoreError::Fenced { detail }
        } else if is_unavailable(&e) {
            RedisStoreError::Unavailable(e)
        } else if matches!(e.kind(), ErrorKind::Parse | ErrorKind::UnexpectedReturnType) {
            RedisStoreError::Corrupt { key: "(reply)".to_owned(), what: e.to_string() }
        } else {
            RedisStoreError::Redis(e)
        }
    }
}

impl From<redis::ParsingError> for RedisStoreError {
    fn from(e: redis::ParsingError) -> Self {
        RedisStoreError::Corrupt { key: "(reply)".to_owned(), what: e.to_string() }
    }
}

/// Connection-level and "not now" failures: retrying after Redis heals succeeds.
fn is_unavailable(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        return true;
    }
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::ReadOnly,
        ) => true,
        ErrorKind::ClusterConnectionNotFound => true,
        // MISCONF: Redis refuses writes because it cannot persist them (disk error).
        _ => e.code() == Some("MISCONF"),
    }
}

impl From<RedisStoreError> for StoreError {
    fn from(e: RedisStoreError) -> Self {
        match e {
            RedisStoreError::Unavailable(_)
            | RedisStoreError::Timeout(_)
            | RedisStoreError::NotDurable { .. }
            | RedisStoreError::Fenced { .. }
            | RedisStoreError::ReplicasBehind { .. } => StoreError::Unavailable(e.to_string()),
            RedisStoreError::Corrupt { .. } => StoreError::Corrupt(e.to_string()),
            RedisStoreError::Unsupported(what) => StoreError::Unsupported(what),
            RedisStoreError::Config(_)
            | RedisStoreError::DurabilityUnknown { .. }
            | RedisStoreError::Redis(_) => StoreError::Io(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> RedisError {
        RedisError::from(std::io::Error::from(kind))
    }

    #[test]
    fn connection_failures_are_retryable_unavailable() {
        for kind in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::TimedOut,
        ] {
            let e = RedisStoreError::from(io(kind));
            assert!(e.is_retryable(), "{kind:?}: {e}");
            assert!(matches!(StoreError::from(e), StoreError::Unavailable(_)), "{kind:?}");
        }
        let timeout = RedisStoreError::Timeout(Duration::from_secs(1));
        assert!(matches!(StoreError::from(timeout), StoreError::Unavailable(_)));
    }

    #[test]
    fn other_failures_are_not_unavailable() {
        let parse = RedisStoreError::from(RedisError::from((ErrorKind::Parse, "bad")));
        assert!(matches!(StoreError::from(parse), StoreError::Corrupt(_)));
        let client = RedisStoreError::from(RedisError::from((ErrorKind::Client, "bad")));
        assert!(!client.is_retryable());
        assert!(matches!(StoreError::from(client), StoreError::Io(_)));
        let corrupt = RedisStoreError::Corrupt { key: "k".into(), what: "w".into() };
        assert!(matches!(StoreError::from(corrupt), StoreError::Corrupt(_)));
    }

    #[test]
    fn not_durable_explains_why() {
        let e = RedisStoreError::NotDurable {
            addr: "127.0.0.1:1".into(),
            appendonly: "no".into(),
            appendfsync: "everysec".into(),
        };
        let text = e.to_string();
        assert!(text.contains("appendonly yes and appendfsync always"), "{text}");
        assert!(text.contains("require_durable"), "{text}");
    }
}
