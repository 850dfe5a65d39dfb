//! Presence in Redis: which gateway holds each (user, device) connection. Gateways publish and
//! refresh entries in batches; dispatch workers look up the recipients of a batch of messages in
//! one pipelined round trip.
//!
//! # Layout
//!
//! One hash per user, `{prefix}p:{user}`: field = device id, value =
//! `"{gateway_id} {connection_id} {expires_at_ms}"`. Each entry carries its own expiry, so a
//! device whose gateway died disappears from lookups after the TTL even while the same user's
//! other devices keep the key alive; the key itself also gets a TTL, so users nobody refreshes
//! vanish entirely. Redis 7.0 has no per-field TTL; this is the portable equivalent.
//!
//! Presence is soft state: losing it (a Redis restart without persistence, a FLUSHALL) only
//! costs pushes until gateways republish (every refresh interval); clients never lose messages
//! because sync is the source of truth.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use thiserror::Error;

pub mod changes;
pub mod redis_url;
pub use changes::{Change, ChangeStream, Mark};
pub use redis_url::redact_url;

/// A presence failure. Always the backend's fault; callers degrade (skip pushes, retry later).
#[derive(Debug, Error)]
pub enum PresenceError {
    /// Redis is unreachable or answered with an error.
    #[error("presence redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the configured timeout (the connection is rebuilt).
    #[error("presence redis: no answer within {0:?}")]
    Timeout(Duration),
    /// A bad URL or CA file.
    #[error("presence redis: {0}")]
    Config(String),
}

/// One device's connection on a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The user.
    pub user_id: String,
    /// The user's device.
    pub device_id: String,
    /// The gateway holding the connection.
    pub gateway_id: String,
    /// The gateway's connection id.
    pub connection_id: u64,
}

/// Where one device of a looked-up user is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The device.
    pub device_id: String,
    /// Its gateway.
    pub gateway_id: String,
    /// The gateway's connection id.
    pub connection_id: u64,
}

/// Presence settings.
#[derive(Clone)]
pub struct PresenceConfig {
    /// Redis URL: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// PEM file of the CA(s) that sign the server's certificate (`rediss://` only); `None`
    /// trusts the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Key prefix (several clusters may share one Redis). Default `tern:`.
    pub key_prefix: String,
    /// How long an entry lives without a refresh. Gateways refresh every `ttl / 3`. Default 90 s.
    pub ttl: Duration,
    /// Timeout of one Redis round trip. Default 2 s.
    pub timeout: Duration,
}

impl PresenceConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_file: None,
            key_prefix: "tern:".into(),
            ttl: Duration::from_secs(90),
            timeout: Duration::from_secs(2),
        }
    }
}

impl std::fmt::Debug for PresenceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceConfig")
            .field("url", &redact_url(&self.url))
            .field("ca_file", &self.ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A presence client (cheap to clone: one multiplexed, self-reconnecting connection).
///
/// Every call is bounded by `timeout`; after a call times out the connection is replaced by a
/// fresh one, so a connection wedged by a Redis restart cannot stall callers for long.
#[derive(Clone)]
pub struct Presence {
    conn: std::sync::Arc<std::sync::Mutex<ConnectionManager>>,
    client: redis::Client,
    cfg: PresenceConfig,
    remove_script: redis::Script,
    swap_script: redis::Script,
    refresh_script: redis::Script,
}

/// Sets each device's entry and returns what it replaced, for the logins of one batch, and
/// announces the change ([`changes`]): KEYS = user keys, then the feed's gen and epoch keys;
/// ARGV = key TTL in ms, then (device, value) pairs in KEYS order, then the key prefix's length
/// and the feed's channel.
const SWAP: &str = r#"
local n = #KEYS - 2
local out, users = {}, {}
local plen = tonumber(ARGV[2 * n + 2])
for i = 1, n do
  local key = KEYS[i]
  local dev = ARGV[2 * i]
  out[i] = redis.call('HGET', key, dev) or ''
  redis.call('HSET', key, dev, ARGV[2 * i + 1])
  redis.call('PEXPIRE', key, ARGV[1])
  users[i] = string.sub(key, plen + 1)
end
announce(users, KEYS[n + 1], KEYS[n + 2], ARGV[2 * n + 3])
return out
"#;

/// Sets each device's entry (a refresh) and announces only the users whose entry was missing,
/// expired, or named another gateway or connection: a refresh of what is already there changes
/// nobody's location, so caches keep it. KEYS = user keys, then the feed's gen and epoch keys;
/// ARGV = key TTL in ms, then (device, value) pairs in KEYS order, then the key prefix's
/// length, the feed's channel and the writer's clock (Unix ms, the clock of the expiry stamps).
const REFRESH: &str = r#"
local n = #KEYS - 2
local users = {}
local plen = tonumber(ARGV[2 * n + 2])
local now = tonumber(ARGV[2 * n + 4])
for i = 1, n do
  local key = KEYS[i]
  local dev = ARGV[2 * i]
  local new = ARGV[2 * i + 1]
  local old = redis.call('HGET', key, dev)
  redis.call('HSET', key, dev, new)
  redis.call('PEXPIRE', key, ARGV[1])
  local same = false
  if old then
    local at, exp = string.match(old, '^(.*) (%d+)$')
    same = at ~= nil and at == string.match(new, '^(.*) %d+$') and tonumber(exp) > now
  end
  if not same then users[#users + 1] = string.sub(key, plen + 1) end
end
if #users > 0 then announce(users, KEYS[n + 1], KEYS[n + 2], ARGV[2 * n + 3]) end
return #users
"#;

/// Deletes a device's field only if it still names this gateway and connection (a newer login
/// elsewhere may have replaced it), and then announces it: KEYS = user key, the feed's gen and
/// epoch keys; ARGV = device, value prefix, user id, channel.
const REMOVE: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.sub(v, 1, #ARGV[2]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  announce({ARGV[3]}, KEYS[2], KEYS[3], ARGV[4])
  return 1
end
return 0
"#;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Presence {
    /// Connects (and keeps reconnecting in the background when Redis goes away).
    pub async fn connect(cfg: PresenceConfig) -> Result<Self, PresenceError> {
        let client =
            redis_url::client(&cfg.url, cfg.ca_file.as_deref()).map_err(PresenceError::Config)?;
        let conn = Self::manager(&client, &cfg).await?;
        let p = Self {
            conn: std::sync::Arc::new(std::sync::Mutex::new(conn)),
            client,
            cfg,
            remove_script: redis::Script::new(&format!("{}{REMOVE}", changes::ANNOUNCE)),
            swap_script: redis::Script::new(&format!("{}{SWAP}", changes::ANNOUNCE)),
            refresh_script: redis::Script::new(&format!("{}{REFRESH}", changes::ANNOUNCE)),
        };
        // One command now, so that a missing or refused password fails at start, not at every
        // later call.
        let mut conn = p.conn();
        p.bounded(redis::cmd("PING").query_async::<()>(&mut conn)).await?;
        Ok(p)
    }

    async fn manager(
        client: &redis::Client,
        cfg: &PresenceConfig,
    ) -> Result<ConnectionManager, PresenceError> {
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_response_timeout(Some(cfg.timeout))
            .set_connection_timeout(Some(cfg.timeout))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(2);
        let fut = ConnectionManager::new_with_config(client.clone(), mgr_cfg);
        match tokio::time::timeout(cfg.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(PresenceError::Timeout(cfg.timeout)),
        }
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs one Redis call with the timeout; on a timeout, swaps in a fresh connection.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, PresenceError> {
        match tokio::time::timeout(self.cfg.timeout, call).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                tracing::warn!(
                    url = %redact_url(&self.cfg.url),
                    "presence call timed out; reconnecting"
                );
                if let Ok(fresh) = Self::manager(&self.client, &self.cfg).await {
                    *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                }
                Err(PresenceError::Timeout(self.cfg.timeout))
            }
        }
    }

    /// The settings.
    pub fn config(&self) -> &PresenceConfig {
        &self.cfg
    }

    fn key(&self, user: &str) -> String {
        format!("{}p:{user}", self.cfg.key_prefix)
    }

    /// Publishes (or refreshes) entries in one script call, and announces on the change feed
    /// only the users whose entry is new, moved (another gateway or connection) or had expired:
    /// the periodic refresh of every connection changes nobody's location, and announcing it
    /// would make every presence cache drop every user at every refresh.
    pub async fn publish(&self, entries: &[Entry]) -> Result<(), PresenceError> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let expires = now + self.cfg.ttl.as_millis() as u64;
        let mut inv = self.refresh_script.prepare_invoke();
        for e in entries {
            inv.key(self.key(&e.user_id));
        }
        inv.key(self.gen_key()).key(self.epoch_key());
        inv.arg(self.cfg.ttl.as_millis() as u64 * 2);
        for e in entries {
            inv.arg(&e.device_id).arg(format!("{} {} {expires}", e.gateway_id, e.connection_id));
        }
        inv.arg(self.cfg.key_prefix.len() + 2).arg(self.channel()).arg(now);
        let mut conn = self.conn();
        self.bounded(inv.invoke_async::<u64>(&mut conn)).await.map(drop)
    }

    /// Publishes logins and returns, for each entry, the location it replaced (a connection of
    /// the same device elsewhere, which the caller kicks), in one round trip.
    pub async fn publish_logins(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<Option<Location>>, PresenceError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let expires = now_ms() + self.cfg.ttl.as_millis() as u64;
        let mut inv = self.swap_script.prepare_invoke();
        for e in entries {
            inv.key(self.key(&e.user_id));
        }
        inv.key(self.gen_key()).key(self.epoch_key());
        inv.arg(self.cfg.ttl.as_millis() as u64 * 2);
        for e in entries {
            inv.arg(&e.device_id).arg(format!("{} {} {expires}", e.gateway_id, e.connection_id));
        }
        inv.arg(self.cfg.key_prefix.len() + 2).arg(self.channel());
        let mut conn = self.conn();
        let old: Vec<String> = self.bounded(inv.invoke_async(&mut conn)).await?;
        let now = now_ms();
        Ok(entries
            .iter()
            .zip(old)
            .map(|(e, v)| parse_locations(vec![(e.device_id.clone(), v)], now).pop())
            .collect())
    }

    /// Claims this gateway's marker key if it is missing, returning true when it was: the
    /// first call after start, and the first call after Redis lost its data (a FLUSHALL or a
    /// restart without persistence). The gateway then republishes every connection at once
    /// instead of waiting for its next refresh.
    pub async fn marker_was_missing(&self, gateway_id: &str) -> Result<bool, PresenceError> {
        let key = format!("{}gw:{gateway_id}", self.cfg.key_prefix);
        let mut conn = self.conn();
        let set: Option<String> = self
            .bounded(redis::cmd("SET").arg(&key).arg(1).arg("NX").query_async(&mut conn))
            .await?;
        Ok(set.is_some())
    }

    /// Removes entries (connections that closed), each only if it still names its connection.
    pub async fn remove(&self, entries: &[Entry]) -> Result<(), PresenceError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        // Load once so the pipeline can use EVALSHA.
        self.bounded(self.remove_script.load_async(&mut conn)).await?;
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.cmd("EVALSHA")
                .arg(self.remove_script.get_hash())
                .arg(3)
                .arg(self.key(&e.user_id))
                .arg(self.gen_key())
                .arg(self.epoch_key())
                .arg(&e.device_id)
                .arg(format!("{} {} ", e.gateway_id, e.connection_id))
                .arg(&e.user_id)
                .arg(self.channel())
                .ignore();
        }
        self.bounded(pipe.query_async::<()>(&mut conn)).await
    }

    /// Where each of `users` is connected (same order as `users`), one pipelined round trip.
    /// Expired entries are left out.
    pub async fn lookup(&self, users: &[String]) -> Result<Vec<Vec<Location>>, PresenceError> {
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        self.locate(&users).await
    }

    /// As [`Presence::lookup`], for borrowed ids.
    pub async fn locate(&self, users: &[&str]) -> Result<Vec<Vec<Location>>, PresenceError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for u in users {
            pipe.hgetall(self.key(u));
        }
        let mut conn = self.conn();
        let maps: Vec<Vec<(String, String)>> = self.bounded(pipe.query_async(&mut conn)).await?;
        let now = now_ms();
        Ok(maps.into_iter().map(|fields| parse_locations(fields, now)).collect())
    }
}

/// Parses a user's hash fields into live locations (malformed or expired values are skipped).
pub fn parse_locations(fields: Vec<(String, String)>, now_ms: u64) -> Vec<Location> {
    fields
        .into_iter()
        .filter_map(|(device_id, value)| {
            let mut parts = value.split(' ');
            let gateway_id = parts.next()?.to_owned();
            let connection_id = parts.next()?.parse().ok()?;
            let expires: u64 = parts.next()?.parse().ok()?;
            (expires > now_ms && !gateway_id.is_empty()).then_some(Location {
                device_id,
                gateway_id,
                connection_id,
            })
        })
        .collect()
}

/// Worker discovery: dispatch workers announce their link address with an expiry; gateways
/// list the live ones. Key `{prefix}workers`: field = worker id, value = `"{addr} {expires_ms}"`.
impl Presence {
    fn workers_key(&self) -> String {
        format!("{}workers", self.cfg.key_prefix)
    }

    /// Announces (or refreshes) worker `id` at `addr`, live for `ttl`.
    pub async fn announce_worker(
        &self,
        id: &str,
        addr: &str,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let expires = now_ms() + ttl.as_millis() as u64;
        let mut conn = self.conn();
        self.bounded(
            redis::cmd("HSET")
                .arg(self.workers_key())
                .arg(id)
                .arg(format!("{addr} {expires}"))
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Withdraws worker `id` (clean shutdown).
    pub async fn withdraw_worker(&self, id: &str) -> Result<(), PresenceError> {
        let mut conn = self.conn();
        self.bounded(
            redis::cmd("HDEL").arg(self.workers_key()).arg(id).query_async::<()>(&mut conn),
        )
        .await
    }

    /// Live workers as (id, addr), sorted by id.
    pub async fn list_workers(&self) -> Result<Vec<(String, String)>, PresenceError> {
        let mut conn = self.conn();
        let fields: Vec<(String, String)> = self
            .bounded(redis::cmd("HGETALL").arg(self.workers_key()).query_async(&mut conn))
            .await?;
        let now = now_ms();
        let mut live: Vec<(String, String)> = fields
            .into_iter()
            .filter_map(|(id, v)| {
                let (addr, expires) = v.split_once(' ')?;
                (expires.parse::<u64>().ok()? > now).then(|| (id, addr.to_owned()))
            })
            .collect();
        live.sort();
        Ok(live)
    }

    /// A write round-trip for health checks: `SET` of `<prefix>health:<node_id>` (expiring
    /// after a minute) must be answered OK. Fails when presence Redis is unreachable or refuses
    /// writes (e.g. a read-only replica).
    pub async fn probe(&self, node_id: &str) -> Result<(), PresenceError> {
        let key = format!("{}health:{node_id}", self.cfg.key_prefix);
        let mut conn = self.conn();
        self.bounded(
            redis::cmd("SET")
                .arg(key)
                .arg(now_ms())
                .arg("PX")
                .arg(60_000)
                .query_async::<()>(&mut conn),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_logs_or_debug_output() {
        let cfg = PresenceConfig::new("rediss://tern:secret@h:1/");
        assert!(!format!("{cfg:?}").contains("secret"));
    }

    #[test]
    fn parses_live_entries_and_skips_expired_or_malformed() {
        let fields = vec![
            ("phone".to_string(), "gw1 42 2000".to_string()),
            ("old".to_string(), "gw2 7 999".to_string()),
            ("junk".to_string(), "gw3".to_string()),
            ("junk2".to_string(), "gw3 x 5000".to_string()),
        ];
        let got = parse_locations(fields, 1000);
        assert_eq!(
            got,
            vec![Location {
                device_id: "phone".into(),
                gateway_id: "gw1".into(),
                connection_id: 42
            }]
        );
    }
}
