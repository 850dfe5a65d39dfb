//! [`RedisStore`]: the [`Store`] trait on one Redis primary, through an auto-reconnecting
//! [`ConnectionManager`]. Writes are Lua scripts ([`crate::scripts`]); reads are plain
//! commands (pipelined where a read touches several keys).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tern_proto::v1;
use tern_store::{
    Appended, BoxFuture, Committed, ConversationEntry, GroupState, Member, NewMessage, Range,
    Store, StoreError, WatermarkUpdate, Watermarks, Write,
};
use tracing::{info, warn};

use crate::config::RedisStoreConfig;
use crate::error::RedisStoreError;
use crate::failover::Failover;
use crate::keys::Keys;
use crate::scripts;
use tern_presence::redact_url;

/// The Redis-backed [`Store`]. Cheap to clone (a shared multiplexed connection); every clone
/// and every [`RedisStore::connect`] in any process sees the same data.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) conn: ConnectionManager,
    pub(crate) keys: Keys,
    pub(crate) timeout: Duration,
    pub(crate) addr: String,
    pub(crate) failover: Failover,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.addr)
            .field("keys", &self.keys)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects, checks durability (when `cfg.require_durable`) and loads the scripts.
    ///
    /// Fails with [`RedisStoreError::Config`] for a bad URL or key prefix,
    /// [`RedisStoreError::NotDurable`] when durability is required and Redis is not
    /// `appendonly yes` + `appendfsync always`, and [`RedisStoreError::Unavailable`] /
    /// [`RedisStoreError::Timeout`] when Redis cannot be reached within `command_timeout`.
    pub async fn connect(cfg: RedisStoreConfig) -> Result<Self, RedisStoreError> {
        if cfg.key_prefix.contains(['{', '}']) {
            return Err(RedisStoreError::Config(format!(
                "key_prefix {:?} must not contain '{{' or '}}' (they would change hash tags)",
                cfg.key_prefix
            )));
        }
        if cfg.command_timeout.is_zero() {
            return Err(RedisStoreError::Config("command_timeout must be above zero".into()));
        }
        let client = crate::client::client(&cfg)?;
        let addr = client.get_connection_info().addr().to_string();
        // One plain connection first: the manager below retries a refused password or an
        // untrusted certificate until the timeout; this reports them as they are.
        let probe = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(cfg.command_timeout))
            .set_response_timeout(Some(cfg.command_timeout));
        with_timeout(
            cfg.command_timeout,
            client.get_multiplexed_async_connection_with_config(&probe),
        )
        .await
        .map_err(|e| match e {
            RedisStoreError::Unavailable(e) | RedisStoreError::Redis(e)
                if crate::client::is_auth_error(&e) =>
            {
                RedisStoreError::Config(format!(
                    "url {}: {e} (check the user and password in the URL)",
                    redact_url(&cfg.url)
                ))
            }
            other => other,
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.command_timeout))
            .set_response_timeout(Some(cfg.command_timeout));
        let conn = with_timeout(
            cfg.command_timeout,
            ConnectionManager::new_with_config(client.clone(), manager_config.clone()),
        )
        .await?;
        let append_conn = match cfg.min_replicas_acked {
            0 => None,
            _ => Some(
                with_timeout(
                    cfg.command_timeout,
                    ConnectionManager::new_with_config(client, manager_config),
                )
                .await?,
            ),
        };
        let failover = Failover {
            seq_gap: cfg.failover_seq_gap,
            min_replicas_acked: cfg.min_replicas_acked,
            append_conn,
        };
        let store = Self {
            conn,
            keys: Keys::new(&cfg.key_prefix),
            timeout: cfg.command_timeout,
            addr,
            failover,
        };
        if cfg.require_durable {
            store.check_durable().await?;
        } else {
            warn!(addr = %store.addr, "Redis store durability not checked (require_durable = false)");
        }
        store.load_scripts().await?;
        store.check_history().await?;
        info!(addr = %store.addr, prefix = %cfg.key_prefix, "Redis store connected");
        Ok(store)
    }

    /// The Redis address (host:port) this store talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Refuses a Redis that can lose an acknowledged write.
    async fn check_durable(&self) -> Result<(), RedisStoreError> {
        let appendonly = self.config_get("appendonly").await?;
        let appendfsync = self.config_get("appendfsync").await?;
        if appendonly == "yes" && appendfsync == "always" {
            Ok(())
        } else {
            Err(RedisStoreError::NotDurable { addr: self.addr.clone(), appendonly, appendfsync })
        }
    }

    async fn config_get(&self, name: &'static str) -> Result<String, RedisStoreError> {
        let mut conn = self.conn.clone();
        let reply: Result<HashMap<String, String>, RedisStoreError> = with_timeout(
            self.timeout,
            redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut conn),
        )
        .await;
        let unknown = |detail: String| RedisStoreError::DurabilityUnknown {
            addr: self.addr.clone(),
            name,
            detail,
        };
        match reply {
            Ok(mut map) => map.remove(name).ok_or_else(|| unknown("no such setting".into())),
            Err(e) if e.is_retryable() => Err(e),
            Err(e) => Err(unknown(e.to_string())),
        }
    }

    /// Loads the scripts now so that a Redis refusing scripts fails at startup, not at the
    /// first send. (Later NOSCRIPT answers are handled by `redis::Script` itself.)
    async fn load_scripts(&self) -> Result<(), RedisStoreError> {
        let mut conn = self.conn.clone();
        for script in [
            &*scripts::COMMIT,
            &*scripts::SET_WATERMARK,
            &*scripts::HISTORY,
            &*scripts::GROUP_MEMBERS,
            &*crate::device::DEVICE_WRITE,
        ] {
            with_timeout(self.timeout, script.load_async(&mut conn)).await?;
        }
        if let Some(mut conn) = self.failover.append_conn.clone() {
            with_timeout(self.timeout, scripts::COMMIT.load_async(&mut conn)).await?;
        }
        Ok(())
    }

    /// Runs `f` with a connection handle, bounded by the command timeout.
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T, RedisStoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisStoreError>>,
    {
        match tokio::time::timeout(self.timeout, f(self.conn.clone())).await {
            Ok(result) => result,
            Err(_) => Err(RedisStoreError::Timeout(self.timeout)),
        }
    }
}

/// Runs `fut` bounded by `timeout`, folding both failures into [`RedisStoreError`].
pub(crate) async fn with_timeout<T>(
    timeout: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, RedisStoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(RedisStoreError::from),
        Err(_) => Err(RedisStoreError::Timeout(timeout)),
    }
}

impl Store for RedisStore {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
        Box::pin(self.append_batch(batch))
    }

    fn commit<'a>(
        &'a self,
        batch: &'a [Write],
    ) -> BoxFuture<'a, Result<Vec<Committed>, StoreError>> {
        Box::pin(async move { Ok(self.commit_batch(batch).await?) })
    }

    fn read_range<'a>(
        &'a self,
        conversation_id: &'a str,
        from_seq: u64,
        window: u32,
    ) -> BoxFuture<'a, Result<Range, StoreError>> {
        Box::pin(async move { Ok(self.range(conversation_id, from_seq, window).await?) })
    }

    fn get_message<'a>(
        &'a self,
        conversation_id: &'a str,
        seq: u64,
    ) -> BoxFuture<'a, Result<Option<v1::Message>, StoreError>> {
        Box::pin(async move { Ok(self.message_at(conversation_id, seq).await?) })
    }

    fn last_seq<'a>(&'a self, conversation_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move { Ok(self.last_seq_of(conversation_id).await?) })
    }

    fn set_watermark<'a>(
        &'a self,
        conversation_id: &'a str,
        user_id: &'a str,
        kind: v1::ReceiptKind,
        seq: u64,
    ) -> BoxFuture<'a, Result<WatermarkUpdate, StoreError>> {
        Box::pin(async move { Ok(self.watermark(conversation_id, user_id, kind, seq).await?) })
    }

    fn client_msg_id_known<'a>(
        &'a self,
        sender_user_id: &'a str,
        client_msg_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let key = self.keys.dedupe(sender_user_id, client_msg_id);
        Box::pin(async move {
            let known: bool = self
                .run(|mut conn| async move {
                    Ok(redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await?)
                })
                .await?;
            Ok(known)
        })
    }

    fn watermarks<'a>(
        &'a self,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Watermarks)>, StoreError>> {
        Box::pin(async move { Ok(self.all_watermarks(conversation_id).await?) })
    }

    fn list_conversations<'a>(
        &'a self,
        user_id: &'a str,
        after: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<ConversationEntry>, StoreError>> {
        Box::pin(async move { Ok(self.conversations(user_id, after, limit).await?) })
    }

    fn muted_among<'a>(
        &'a self,
        conversation_id: &'a str,
        user_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move { Ok(self.muted_users(conversation_id, user_ids).await?) })
    }

    fn get_group<'a>(
        &'a self,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<GroupState>, StoreError>> {
        Box::pin(async move { Ok(self.group_state(conversation_id).await?) })
    }

    fn group_member<'a>(
        &'a self,
        conversation_id: &'a str,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Member>, StoreError>> {
        Box::pin(async move { Ok(self.member_row(conversation_id, user_id).await?) })
    }

    fn group_members<'a>(
        &'a self,
        conversation_id: &'a str,
        after: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Member>, StoreError>> {
        Box::pin(async move { Ok(self.current_members(conversation_id, after, limit).await?) })
    }

    fn health(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { Ok(self.probe().await?) })
    }

    fn device_write<'a>(
        &'a self,
        user_id: &'a str,
        device_id: &'a str,
        write: &'a tern_store::DeviceWrite,
    ) -> BoxFuture<'a, Result<tern_store::DeviceRecord, StoreError>> {
        Box::pin(async move { Ok(self.write_device(user_id, device_id, write).await?) })
    }

    fn device<'a>(
        &'a self,
        user_id: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<tern_store::DeviceRecord>, StoreError>> {
        Box::pin(async move { Ok(self.one_device(user_id, device_id).await?) })
    }

    fn devices<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<tern_store::DeviceRecord>, StoreError>> {
        Box::pin(async move { Ok(self.user_devices(user_id).await?) })
    }

    fn push_registrations<'a>(
        &'a self,
        user_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, tern_store::DeviceRecord)>, StoreError>> {
        Box::pin(async move { Ok(self.registrations(user_ids).await?) })
    }
}
