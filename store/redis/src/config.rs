//! [`RedisStoreConfig`]: where the store Redis is, how keys are named, how long a command may
//! take, whether a non-durable Redis is refused, and the failover settings.

use std::fmt;
use std::time::Duration;

use tern_presence::redact_url;

/// Configuration of a [`RedisStore`](crate::RedisStore). A plain struct: the binary layers
/// file, environment and flags into it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS) of the store Redis (a
    /// single primary; see the crate doc). Never the presence Redis: that one may be flushed.
    pub url: String,
    /// PEM file of the CA(s) that sign the server's certificate, for a `rediss://` (TLS)
    /// `url`; `None` trusts the system's roots. Default `None`.
    pub ca_file: Option<std::path::PathBuf>,
    /// Prepended to every key, so that several deployments (or tests) can share one Redis.
    /// Must not contain `{` or `}` (they would change the keys' hash tags). Default `"tern:"`.
    pub key_prefix: String,
    /// Upper bound on one store operation, including waiting for a reconnect: past it the
    /// operation fails with `StoreError::Unavailable`. Cost: a caller (a dispatch worker's
    /// commit task) waits up to this long while Redis is down. Default 5 s.
    pub command_timeout: Duration,
    /// Refuse (at connect) a Redis that is not `appendonly yes` + `appendfsync always`: with
    /// anything else an acknowledged append can be lost by a crash, which breaks "accepted
    /// means durable". Default true; only tests and benches may turn it off.
    pub require_durable: bool,
    /// After each append batch, `WAIT` until this many replicas have it (up to half of
    /// `command_timeout`; fewer is an `Unavailable` error, the batch stays on the primary and
    /// a resend is answered from it). With a replica and 1 here, a promoted replica holds
    /// every acknowledged message. Cost: one replica round trip per batch, and appends use a
    /// connection of their own. Default 0: no wait (replication is asynchronous, a failover
    /// can lose the last acknowledged messages; see the crate doc, "Failover").
    pub min_replicas_acked: u32,
    /// Seqs every conversation skips when the store finds itself on a node that took over
    /// from the one it wrote to (a promoted replica): it must cover the most seqs one
    /// conversation can have been given on the old primary that the new one never received.
    /// Skipped seqs are reported missing by sync (one page per 500 of them). Default 0:
    /// refuse to append after such a takeover (appends fail `Unavailable` until a worker
    /// configured with a gap runs) rather than risk handing out a seq twice.
    pub failover_seq_gap: u64,
}

impl RedisStoreConfig {
    /// The defaults for the Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_file: None,
            key_prefix: "tern:".to_owned(),
            command_timeout: Duration::from_secs(5),
            require_durable: true,
            min_replicas_acked: 0,
            failover_seq_gap: 0,
        }
    }
}

impl fmt::Debug for RedisStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreConfig")
            .field("url", &redact_url(&self.url))
            .field("ca_file", &self.ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("require_durable", &self.require_durable)
            .field("min_replicas_acked", &self.min_replicas_acked)
            .field("failover_seq_gap", &self.failover_seq_gap)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_durable_and_prefixed() {
        let cfg = RedisStoreConfig::new("redis://127.0.0.1:7000/");
        assert_eq!(cfg.key_prefix, "tern:");
        assert!(cfg.require_durable);
        assert_eq!((cfg.min_replicas_acked, cfg.failover_seq_gap), (0, 0));
        assert_eq!(cfg.command_timeout, Duration::from_secs(5));
    }

    #[test]
    fn credentials_never_reach_debug_output() {
        let cfg = RedisStoreConfig::new("redis://u:secret@h:1/");
        assert!(!format!("{cfg:?}").contains("secret"));
    }
}
