//! [`ScyllaConfig`]: where the cluster is and how the backend talks to it; parsed from env.

use std::time::Duration;

use scylla::statement::{Consistency, SerialConsistency};
use thiserror::Error;

/// Environment variable: comma-separated `host:port` contact points. Required by
/// [`ScyllaConfig::from_env`]; its presence also enables the live conformance tests.
pub const ENV_NODES: &str = "TERN_SCYLLA_NODES";
/// Environment variable: keyspace name (default [`DEFAULT_KEYSPACE`]).
pub const ENV_KEYSPACE: &str = "TERN_SCYLLA_KEYSPACE";
/// Environment variable: replication map, CQL map literal (default [`DEFAULT_REPLICATION`]).
pub const ENV_REPLICATION: &str = "TERN_SCYLLA_REPLICATION";
/// Environment variable: local datacenter name (default: none, no DC preference).
pub const ENV_LOCAL_DC: &str = "TERN_SCYLLA_LOCAL_DC";
/// Environment variable: consistency of reads and writes, e.g. `LOCAL_QUORUM`.
pub const ENV_CONSISTENCY: &str = "TERN_SCYLLA_CONSISTENCY";
/// Environment variable: serial consistency of lightweight transactions, `LOCAL_SERIAL` or
/// `SERIAL`.
pub const ENV_SERIAL_CONSISTENCY: &str = "TERN_SCYLLA_SERIAL_CONSISTENCY";
/// Environment variable: client-side request timeout in milliseconds.
pub const ENV_REQUEST_TIMEOUT_MS: &str = "TERN_SCYLLA_REQUEST_TIMEOUT_MS";
/// Environment variable: messages per partition of the `messages` table.
pub const ENV_BUCKET_SIZE: &str = "TERN_SCYLLA_BUCKET_SIZE";

/// Default keyspace name.
pub const DEFAULT_KEYSPACE: &str = "tern";
/// Default replication: one replica, for a single development node only.
pub const DEFAULT_REPLICATION: &str = "{'class': 'SimpleStrategy', 'replication_factor': 1}";
/// Default bucket size (messages per `messages` partition).
pub const DEFAULT_BUCKET_SIZE: u64 = 1024;

/// Configuration of a [`ScyllaStore`](crate::ScyllaStore). Plain data: the binary layers file,
/// env and flags; [`ScyllaConfig::from_env`] is the env layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaConfig {
    /// Contact points, `host:port` each (the driver discovers the rest of the cluster).
    pub nodes: Vec<String>,
    /// Keyspace holding Tern's tables; created if missing.
    pub keyspace: String,
    /// Replication map used when the keyspace is created (a CQL map literal such as
    /// `{'class': 'NetworkTopologyStrategy', 'dc1': 3}`). Ignored when it already exists.
    pub replication: String,
    /// Datacenter to route requests to (token-aware within it). `None`: no preference, which
    /// is only right for a single-DC cluster.
    pub local_dc: Option<String>,
    /// Consistency of every read and plain write. Default `LOCAL_QUORUM`: with a quorum on
    /// both sides a read sees every acknowledged write of the same DC.
    pub consistency: Consistency,
    /// Serial consistency of lightweight transactions (seq allocation, dedupe claims) and of
    /// the serial reads that settle them. Default `SERIAL`: Paxos over the replicas of every
    /// DC, linearizable across datacentres, so workers in several DCs may write one
    /// conversation. Cost: each LWT waits for a quorum of all replicas, so with the keyspace
    /// in several DCs every LWT (3 per new message) takes at least two cross-DC round trips
    /// (about four under contention). `LOCAL_SERIAL` keeps Paxos in the local DC (no cross-DC
    /// wait) but is linearizable only within it: it is safe only when every conversation is
    /// written from one DC at a time (single writer DC per conversation, docs/DEPLOYMENT.md),
    /// or the cluster has one DC.
    pub serial_consistency: SerialConsistency,
    /// Client-side timeout of one request (each retry included). Default 5 s. Cost: a dead
    /// coordinator holds a send this long before it fails over.
    pub request_timeout: Duration,
    /// Timeout of establishing one connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Messages per partition of the `messages` table (bucket = seq / bucket_size). Default
    /// 1024. Fixed for the life of a keyspace: `connect` refuses a different value than the
    /// one stored at creation.
    pub bucket_size: u64,
    /// Compare-and-set attempts for one seq before `append` gives up with UNAVAILABLE.
    /// Default 64. Cost: under heavy contention on one conversation each attempt is a Paxos
    /// round (about 4 round trips).
    pub cas_max_attempts: u32,
    /// How long `append` waits for another writer's fresh dedupe claim (one without a seq
    /// yet) before it answers UNAVAILABLE (the client resends later). Default 2 s.
    pub claim_wait: Duration,
    /// How long an allocated seq may stay unstored before sync reports it as a hole, and the
    /// age after which an unfinished dedupe claim counts as abandoned and may be taken over.
    /// A writer never starts a message write later than half of it after the allocation
    /// (its write fence), so it must exceed 2 x `request_timeout` plus the worst clock skew
    /// between dispatch workers. Default 20 s. Cost: a sync stops at an unstored seq for up
    /// to this long, and a resend of a message whose writer crashed waits up to this long.
    pub settle_grace: Duration,
    /// Conversations of one batch appended at once. Default 32. Cost: that many requests in
    /// flight per batch.
    pub append_concurrency: usize,
    /// Rows per page of multi-row reads. Default 256.
    pub page_size: i32,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".to_owned()],
            keyspace: DEFAULT_KEYSPACE.to_owned(),
            replication: DEFAULT_REPLICATION.to_owned(),
            local_dc: None,
            consistency: Consistency::LocalQuorum,
            serial_consistency: SerialConsistency::Serial,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            bucket_size: DEFAULT_BUCKET_SIZE,
            cas_max_attempts: 64,
            claim_wait: Duration::from_secs(2),
            settle_grace: Duration::from_secs(20),
            append_concurrency: 32,
            page_size: 256,
        }
    }
}

/// A configuration value that cannot be used: the operator's fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No contact point given.
    #[error("{ENV_NODES} is not set or empty: give comma-separated host:port contact points")]
    NoNodes,
    /// A contact point is not `host:port` with a numeric port.
    #[error("contact point {0:?} is not host:port")]
    BadNode(String),
    /// The keyspace name is not a plain CQL identifier.
    #[error("keyspace {0:?} must be 1-48 ASCII letters, digits or '_', starting with a letter")]
    BadKeyspace(String),
    /// The replication map is not a `{...}` literal (or contains `;`).
    #[error("replication {0:?} must be one CQL map literal such as {DEFAULT_REPLICATION}")]
    BadReplication(String),
    /// Unknown consistency name.
    #[error("{var}: unknown consistency {value:?}")]
    BadConsistency {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// `settle_grace` must exceed twice the request timeout (see its doc).
    #[error("settle_grace {grace:?} must exceed 2 x request_timeout {request_timeout:?}")]
    GraceTooShort {
        /// The grace.
        grace: Duration,
        /// The request timeout.
        request_timeout: Duration,
    },
    /// A number could not be parsed or is out of range.
    #[error("{var}: {value:?} is not a valid number ({why})")]
    BadNumber {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl ScyllaConfig {
    /// The defaults overlaid with the `TERN_SCYLLA_*` environment variables;
    /// [`ENV_NODES`] is required.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`ScyllaConfig::from_env`], reading variables through `lookup` (for tests and for
    /// layering on other sources).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut cfg = Self::default();
        let nodes = lookup(ENV_NODES).unwrap_or_default();
        cfg.nodes = parse_nodes(&nodes)?;
        if let Some(ks) = non_empty(lookup(ENV_KEYSPACE)) {
            cfg.keyspace = ks;
        }
        if let Some(r) = non_empty(lookup(ENV_REPLICATION)) {
            cfg.replication = r;
        }
        cfg.local_dc = non_empty(lookup(ENV_LOCAL_DC));
        if let Some(c) = non_empty(lookup(ENV_CONSISTENCY)) {
            cfg.consistency = parse_consistency(&c)
                .ok_or(ConfigError::BadConsistency { var: ENV_CONSISTENCY, value: c })?;
        }
        if let Some(c) = non_empty(lookup(ENV_SERIAL_CONSISTENCY)) {
            cfg.serial_consistency = parse_serial_consistency(&c)
                .ok_or(ConfigError::BadConsistency { var: ENV_SERIAL_CONSISTENCY, value: c })?;
        }
        if let Some(v) = non_empty(lookup(ENV_REQUEST_TIMEOUT_MS)) {
            let ms = parse_positive(ENV_REQUEST_TIMEOUT_MS, &v)?;
            cfg.request_timeout = Duration::from_millis(ms);
        }
        if let Some(v) = non_empty(lookup(ENV_BUCKET_SIZE)) {
            cfg.bucket_size = parse_positive(ENV_BUCKET_SIZE, &v)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values that end up inside CQL text or arithmetic.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::NoNodes);
        }
        for node in &self.nodes {
            check_node(node)?;
        }
        if !valid_keyspace(&self.keyspace) {
            return Err(ConfigError::BadKeyspace(self.keyspace.clone()));
        }
        if !valid_replication(&self.replication) {
            return Err(ConfigError::BadReplication(self.replication.clone()));
        }
        if self.settle_grace <= self.request_timeout * 2 {
            return Err(ConfigError::GraceTooShort {
                grace: self.settle_grace,
                request_timeout: self.request_timeout,
            });
        }
        if self.bucket_size == 0 || self.bucket_size > i64::MAX as u64 {
            return Err(ConfigError::BadNumber {
                var: ENV_BUCKET_SIZE,
                value: self.bucket_size.to_string(),
                why: "must be between 1 and i64::MAX",
            });
        }
        Ok(())
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn parse_nodes(list: &str) -> Result<Vec<String>, ConfigError> {
    let nodes: Vec<String> =
        list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    if nodes.is_empty() {
        return Err(ConfigError::NoNodes);
    }
    for node in &nodes {
        check_node(node)?;
    }
    Ok(nodes)
}

fn check_node(node: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::BadNode(node.to_owned());
    let (host, port) = node.rsplit_once(':').ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(())
}

fn parse_positive(var: &'static str, value: &str) -> Result<u64, ConfigError> {
    match value.parse::<u64>() {
        Ok(0) => Err(ConfigError::BadNumber { var, value: value.to_owned(), why: "must be > 0" }),
        Ok(n) => Ok(n),
        Err(_) => {
            Err(ConfigError::BadNumber { var, value: value.to_owned(), why: "not an integer" })
        }
    }
}

/// A keyspace name that can be pasted into CQL unquoted.
pub(crate) fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 48
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One `{...}` map literal: no statement separator, no comment, balanced outer braces.
pub(crate) fn valid_replication(map: &str) -> bool {
    let map = map.trim();
    map.starts_with('{')
        && map.ends_with('}')
        && map.matches('{').count() == 1
        && map.matches('}').count() == 1
        && !map.contains(';')
        && !map.contains("--")
        && !map.contains("/*")
        && map.contains("'class'")
}

/// `LOCAL_QUORUM`, `quorum`, `local-one`... (case and `-`/`_` insensitive). Serial levels are
/// refused here: they are not valid for plain writes.
pub fn parse_consistency(name: &str) -> Option<Consistency> {
    Some(match normalize(name).as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => return None,
    })
}

/// `LOCAL_SERIAL` or `SERIAL`.
pub fn parse_serial_consistency(name: &str) -> Option<SerialConsistency> {
    match normalize(name).as_str() {
        "SERIAL" => Some(SerialConsistency::Serial),
        "LOCAL_SERIAL" => Some(SerialConsistency::LocalSerial),
        _ => None,
    }
}

fn normalize(name: &str) -> String {
    name.trim().to_ascii_uppercase().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<ScyllaConfig, ConfigError> {
        let map: HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        ScyllaConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn nodes_only_gives_defaults() {
        let cfg = from(&[(ENV_NODES, " 10.0.0.1:9042, scylla-2:19042 ,")]).unwrap();
        assert_eq!(cfg.nodes, vec!["10.0.0.1:9042", "scylla-2:19042"]);
        assert_eq!(cfg.keyspace, "tern");
        assert_eq!(cfg.replication, DEFAULT_REPLICATION);
        assert_eq!(cfg.local_dc, None);
        assert_eq!(cfg.consistency, Consistency::LocalQuorum);
        assert_eq!(cfg.serial_consistency, SerialConsistency::Serial, "safe across DCs by default");
        assert_eq!(cfg.request_timeout, Duration::from_secs(5));
        assert_eq!(cfg.bucket_size, 1024);
    }

    #[test]
    fn every_variable_is_read() {
        let cfg = from(&[
            (ENV_NODES, "[::1]:9042"),
            (ENV_KEYSPACE, "tern_prod"),
            (ENV_REPLICATION, "{'class': 'NetworkTopologyStrategy', 'eu1': 3, 'us1': 3}"),
            (ENV_LOCAL_DC, "eu1"),
            (ENV_CONSISTENCY, "quorum"),
            (ENV_SERIAL_CONSISTENCY, "serial"),
            (ENV_REQUEST_TIMEOUT_MS, "1500"),
            (ENV_BUCKET_SIZE, "4096"),
        ])
        .unwrap();
        assert_eq!(cfg.nodes, vec!["[::1]:9042"]);
        assert_eq!(cfg.keyspace, "tern_prod");
        assert!(cfg.replication.contains("'us1': 3"));
        assert_eq!(cfg.local_dc.as_deref(), Some("eu1"));
        assert_eq!(cfg.consistency, Consistency::Quorum);
        assert_eq!(cfg.serial_consistency, SerialConsistency::Serial);
        assert_eq!(cfg.request_timeout, Duration::from_millis(1500));
        assert_eq!(cfg.bucket_size, 4096);
    }

    #[test]
    fn serial_consistency_is_serial_unless_local_serial_is_asked_for() {
        let nodes = (ENV_NODES, "127.0.0.1:9042");
        assert_eq!(ScyllaConfig::default().serial_consistency, SerialConsistency::Serial);
        for (value, expected) in [
            ("", SerialConsistency::Serial),
            ("SERIAL", SerialConsistency::Serial),
            ("local_serial", SerialConsistency::LocalSerial),
            ("LOCAL-SERIAL", SerialConsistency::LocalSerial),
        ] {
            let cfg = from(&[nodes, (ENV_SERIAL_CONSISTENCY, value)]).unwrap();
            assert_eq!(cfg.serial_consistency, expected, "{value:?}");
        }
        for bad in ["QUORUM", "LOCAL_QUORUM", "serial!"] {
            assert!(matches!(
                from(&[nodes, (ENV_SERIAL_CONSISTENCY, bad)]),
                Err(ConfigError::BadConsistency { .. })
            ));
        }
    }

    #[test]
    fn missing_or_bad_nodes_are_refused() {
        assert_eq!(from(&[]), Err(ConfigError::NoNodes));
        assert_eq!(from(&[(ENV_NODES, " , ")]), Err(ConfigError::NoNodes));
        for bad in ["localhost", "host:", ":9042", "host:port", "host:0", "host:70000"] {
            assert_eq!(from(&[(ENV_NODES, bad)]), Err(ConfigError::BadNode(bad.to_owned())));
        }
    }

    #[test]
    fn values_pasted_into_cql_are_checked() {
        let n = (ENV_NODES, "h:9042");
        for bad in ["1tern", "tern;DROP", "tern-x", "", &"k".repeat(49)] {
            let r = from(&[n, (ENV_KEYSPACE, bad)]);
            // An empty value means "default".
            if bad.is_empty() {
                assert!(r.is_ok());
            } else {
                assert_eq!(r, Err(ConfigError::BadKeyspace(bad.to_owned())));
            }
        }
        for bad in [
            "'class': 'SimpleStrategy'",
            "{'class': 'SimpleStrategy'}; DROP KEYSPACE x",
            "{'replication_factor': 3}",
            "{'class': 'X'} -- c",
            "{'class': 'X'} AND {",
        ] {
            assert_eq!(
                from(&[n, (ENV_REPLICATION, bad)]),
                Err(ConfigError::BadReplication(bad.to_owned()))
            );
        }
    }

    #[test]
    fn bad_numbers_and_levels_are_refused() {
        let n = (ENV_NODES, "h:9042");
        assert!(matches!(
            from(&[n, (ENV_BUCKET_SIZE, "0")]),
            Err(ConfigError::BadNumber { var: ENV_BUCKET_SIZE, .. })
        ));
        assert!(matches!(
            from(&[n, (ENV_REQUEST_TIMEOUT_MS, "5s")]),
            Err(ConfigError::BadNumber { var: ENV_REQUEST_TIMEOUT_MS, .. })
        ));
        assert!(matches!(
            from(&[n, (ENV_CONSISTENCY, "LOCAL_SERIAL")]),
            Err(ConfigError::BadConsistency { var: ENV_CONSISTENCY, .. })
        ));
        assert!(matches!(
            from(&[n, (ENV_SERIAL_CONSISTENCY, "LOCAL_QUORUM")]),
            Err(ConfigError::BadConsistency { var: ENV_SERIAL_CONSISTENCY, .. })
        ));
        assert!(matches!(
            from(&[n, (ENV_REQUEST_TIMEOUT_MS, "10000")]),
            Err(ConfigError::GraceTooShort { .. })
        ));
        assert_eq!(parse_consistency("local-one"), Some(Consistency::LocalOne));
        assert_eq!(parse_consistency("Each_Quorum"), Some(Consistency::EachQuorum));
    }
}
