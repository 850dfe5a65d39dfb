//! [`RedisStore`]: the [`Store`] trait on one Redis primary, through an auto-reconnecting
//! [`ConnectionManager`]. Writes are Lua scripts ([`crate::scripts`]); reads are plain
//! commands (pipelined where a read touches several keys).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
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
use crate::group::{is_group, parse_member};
use crate::keys::{
    FLAG_MUTED, FLAG_PINNED, Keys, MENTION_ALL, bucket_of, bucket_spans, mention_field,
    message_fields,
};
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

    async fn last_seq_of(&self, conversation_id: &str) -> Result<u64, RedisStoreError> {
        let key = self.keys.meta(conversation_id);
        self.run(|mut conn| async move {
            let last: Option<u64> =
                redis::cmd("HGET").arg(&key).arg("last_seq").query_async(&mut conn).await?;
            Ok(last.unwrap_or(0))
        })
        .await
    }

    async fn range(
        &self,
        conversation_id: &str,
        from_seq: u64,
        window: u32,
    ) -> Result<Range, RedisStoreError> {
        let last_seq = self.last_seq_of(conversation_id).await?;
        let first = from_seq.max(1);
        let last = match window {
            0 => return Ok(Range { messages: Vec::new(), last_seq }),
            w => from_seq.saturating_add(u64::from(w) - 1).min(last_seq),
        };
        let spans = bucket_spans(first, last);
        if spans.is_empty() {
            return Ok(Range { messages: Vec::new(), last_seq });
        }
        let mut pipe = redis::pipe();
        for &(bucket, from, to) in &spans {
            let fields: Vec<String> = (from..=to).flat_map(message_fields).collect();
            pipe.cmd("HMGET").arg(self.keys.bucket(conversation_id, bucket)).arg(fields);
        }
        let replies: Vec<Vec<Option<Vec<u8>>>> =
            self.run(|mut conn| async move { Ok(pipe.query_async(&mut conn).await?) }).await?;
        if replies.len() != spans.len() {
            return Err(RedisStoreError::Corrupt {
                key: self.keys.conversation(conversation_id),
                what: format!("{} replies for {} buckets", replies.len(), spans.len()),
            });
        }
        let mut messages = Vec::new();
        for ((_, from, _), values) in spans.iter().zip(replies) {
            let mut values = values.into_iter();
            let mut seq = *from;
            while let (Some(header), Some(body), Some(recalled)) =
                (values.next(), values.next(), values.next())
            {
                if let Some(header) = header {
                    messages.push(self.message(conversation_id, seq, &header, body, recalled)?);
                }
                seq += 1;
            }
        }
        Ok(Range { messages, last_seq })
    }

    async fn message_at(
        &self,
        conversation_id: &str,
        seq: u64,
    ) -> Result<Option<v1::Message>, RedisStoreError> {
        if seq == 0 {
            return Ok(None);
        }
        let key = self.keys.bucket(conversation_id, bucket_of(seq));
        let fields = message_fields(seq);
        let values: Vec<Option<Vec<u8>>> = self
            .run(|mut conn| async move {
                Ok(redis::cmd("HMGET").arg(&key).arg(&fields[..]).query_async(&mut conn).await?)
            })
            .await?;
        let mut values = values.into_iter();
        match (values.next(), values.next(), values.next()) {
            (Some(Some(header)), Some(body), Some(recalled)) => {
                self.message(conversation_id, seq, &header, body, recalled).map(Some)
            }
            (Some(None), Some(_), Some(_)) => Ok(None),
            _ => Err(RedisStoreError::Corrupt {
                key: self.keys.bucket(conversation_id, bucket_of(seq)),
                what: "HMGET answered the wrong number of fields".into(),
            }),
        }
    }

    /// Rebuilds a stored message from its header, body field and recalled flag.
    fn message(
        &self,
        conversation_id: &str,
        seq: u64,
        header: &[u8],
        body: Option<Vec<u8>>,
        recalled: Option<Vec<u8>>,
    ) -> Result<v1::Message, RedisStoreError> {
        let mut m = v1::Message::decode(header).map_err(|e| RedisStoreError::Corrupt {
            key: format!("{} field {seq}", self.keys.bucket(conversation_id, bucket_of(seq))),
            what: e.to_string(),
        })?;
        m.conversation_id = conversation_id.to_owned();
        m.seq = seq;
        m.body = body.map_or_else(Bytes::new, Bytes::from);
        m.recalled = recalled.is_some();
        if m.recalled {
            m.body = Bytes::new();
        }
        Ok(m)
    }

    async fn watermark(
        &self,
        conversation_id: &str,
        user_id: &str,
        kind: v1::ReceiptKind,
        seq: u64,
    ) -> Result<WatermarkUpdate, RedisStoreError> {
        let key = self.keys.receipts(conversation_id);
        let kind = match kind {
            v1::ReceiptKind::Delivered => "d",
            v1::ReceiptKind::Read => "r",
            v1::ReceiptKind::Unspecified => {
                // The caller's bug: nothing to move; answer with the current watermarks.
                let record: Option<String> = self
                    .run(|mut conn| async move {
                        Ok(redis::cmd("HGET").arg(&key).arg(user_id).query_async(&mut conn).await?)
                    })
                    .await?;
                let watermarks = match record {
                    None => Watermarks::default(),
                    Some(r) => parse_watermarks(&r)
                        .ok_or_else(|| self.corrupt_receipt(conversation_id, user_id, &r))?,
                };
                return Ok(WatermarkUpdate { watermarks, moved: false });
            }
        };
        let reply: Vec<String> = self
            .run(|mut conn| async move {
                let mut invocation = scripts::SET_WATERMARK.prepare_invoke();
                invocation.key(&key).arg(user_id).arg(kind).arg(seq);
                Ok(invocation.invoke_async(&mut conn).await?)
            })
            .await?;
        match &reply[..] {
            [delivered, read, moved] => {
                let record = format!("{delivered}:{read}");
                let watermarks = parse_watermarks(&record)
                    .ok_or_else(|| self.corrupt_receipt(conversation_id, user_id, &record))?;
                Ok(WatermarkUpdate { watermarks, moved: moved == "1" })
            }
            _ => Err(self.corrupt_receipt(conversation_id, user_id, &format!("{reply:?}"))),
        }
    }

    pub(crate) fn corrupt_receipt(
        &self,
        conversation_id: &str,
        user_id: &str,
        record: &str,
    ) -> RedisStoreError {
        RedisStoreError::Corrupt {
            key: format!("{} field {user_id}", self.keys.receipts(conversation_id)),
            what: format!("receipt record {record:?}"),
        }
    }

    async fn all_watermarks(
        &self,
        conversation_id: &str,
    ) -> Result<Vec<(String, Watermarks)>, RedisStoreError> {
        let key = self.keys.receipts(conversation_id);
        let records: Vec<(String, String)> = self
            .run(|mut conn| async move {
                Ok(redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await?)
            })
            .await?;
        let mut out = records
            .into_iter()
            .map(|(user, record)| match parse_watermarks(&record) {
                Some(w) => Ok((user, w)),
                None => Err(self.corrupt_receipt(conversation_id, &user, &record)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn conversations(
        &self,
        user_id: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<ConversationEntry>, RedisStoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let index = self.keys.user_conversations(user_id);
        let ids: Vec<String> = self
            .run(|mut conn| async move {
                Ok(redis::cmd("ZRANGEBYLEX")
                    .arg(&index)
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One atomic round trip: the index entries, the user's flags, their receipts and latest
        // mentions (own and all), and for each group their member row and the group's latest
        // seq (read diffusion: a current member's entry shows the group's latest message; a
        // former member's stays at their removal).
        let mention = mention_field(user_id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("HMGET").arg(self.keys.user_last(user_id)).arg(&ids[..]);
        pipe.cmd("HMGET").arg(self.keys.user_flags(user_id)).arg(&ids[..]);
        for id in &ids {
            pipe.cmd("HGET").arg(self.keys.receipts(id)).arg(user_id);
            pipe.cmd("HMGET").arg(self.keys.mentions(id)).arg(&mention).arg(MENTION_ALL);
            if is_group(id) {
                pipe.cmd("HGET").arg(self.keys.group_members(id)).arg(user_id);
                pipe.cmd("HMGET").arg(self.keys.meta(id)).arg("last_seq").arg("last_time_ms");
            }
        }
        let replies: Vec<redis::Value> =
            self.run(|mut conn| async move { Ok(pipe.query_async(&mut conn).await?) }).await?;
        let wrong = || RedisStoreError::Corrupt {
            key: self.keys.user_last(user_id),
            what: "pipeline answered the wrong number of values".into(),
        };
        let mut replies = replies.into_iter();
        let lasts: Vec<Option<String>> =
            redis::from_redis_value(replies.next().ok_or_else(wrong)?)?;
        let flags: Vec<Option<String>> =
            redis::from_redis_value(replies.next().ok_or_else(wrong)?)?;
        if lasts.len() != ids.len() || flags.len() != ids.len() {
            return Err(wrong());
        }
        let mut out = Vec::with_capacity(ids.len());
        for ((conversation_id, last), flags) in ids.into_iter().zip(lasts).zip(flags) {
            let receipt: Option<String> =
                redis::from_redis_value(replies.next().ok_or_else(wrong)?)?;
            let (own, all): (Option<u64>, Option<u64>) =
                redis::from_redis_value(replies.next().ok_or_else(wrong)?)?;
            let (mut last_seq, mut last_time_ms) =
                last.as_deref().and_then(parse_last).ok_or_else(|| RedisStoreError::Corrupt {
                    key: format!("{} field {conversation_id}", self.keys.user_last(user_id)),
                    what: format!("index entry {last:?}"),
                })?;
            if is_group(&conversation_id) {
                let row: Option<String> =
                    redis::from_redis_value(replies.next().ok_or_else(wrong)?)?;
                let meta: (Option<u64>, Option<i64>) =
                    redis::from_redis_value(replies.next().ok_or_else(wrong)?)?;
                let current = match &row {
                    None => false,
                    Some(r) => parse_member(user_id, r)
                        .ok_or_else(|| RedisStoreError::Corrupt {
                            key: format!(
                                "{} field {user_id}",
                                self.keys.group_members(&conversation_id)
                            ),
                            what: format!("member row {r:?}"),
                        })?
                        .is_current(),
                };
                if current && let (Some(seq), Some(time)) = meta {
                    (last_seq, last_time_ms) = (seq, time);
                }
            }
            let watermarks = match receipt {
                None => Watermarks::default(),
                Some(r) => parse_watermarks(&r)
                    .ok_or_else(|| self.corrupt_receipt(&conversation_id, user_id, &r))?,
            };
            let bits = match flags {
                None => 0,
                Some(f) => f
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= FLAG_MUTED | FLAG_PINNED)
                    .ok_or_else(|| RedisStoreError::Corrupt {
                        key: format!("{} field {conversation_id}", self.keys.user_flags(user_id)),
                        what: format!("flags {f:?}"),
                    })?,
            };
            out.push(ConversationEntry {
                conversation_id,
                last_seq,
                last_time_ms,
                watermarks,
                // Capped at the entry's last seq, as in the embedded store (a former group
                // member's entry stays at their removal).
                // A mention after the entry's end (a former member's removal) is not theirs.
                mention_seq: [own, all]
                    .into_iter()
                    .flatten()
                    .filter(|s| *s <= last_seq)
                    .max()
                    .unwrap_or(0),
                muted: bits & FLAG_MUTED != 0,
                pinned: bits & FLAG_PINNED != 0,
            });
        }
        if replies.next().is_some() {
            return Err(wrong());
        }
        Ok(out)
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

/// The stored header: the message without conversation id, seq, body and recalled flag (those
/// come from the key, the field name and the body / recalled fields when read).
pub(crate) fn encode_header(m: &NewMessage) -> Vec<u8> {
    header(m).encode_to_vec()
}

/// The stored header of a group change's event message (never a recall).
pub(crate) fn encode_event_header(m: &NewMessage) -> Vec<u8> {
    v1::Message { recalled_seq: 0, ..header(m) }.encode_to_vec()
}

fn header(m: &NewMessage) -> v1::Message {
    v1::Message {
        conversation_id: String::new(),
        seq: 0,
        sender_user_id: m.sender_user_id.clone(),
        sender_device_id: m.sender_device_id.clone(),
        client_msg_id: m.client_msg_id.clone(),
        server_time_ms: m.server_time_ms,
        kind: m.kind as i32,
        content_type: m.content_type.clone(),
        body: Bytes::new(),
        recalled_seq: m.recalled_seq,
        recalled: false,
        mention_user_ids: m.mention_user_ids.clone(),
        mention_all: m.mention_all,
    }
}

/// `seq:time:conversation_id` (the conversation id may itself contain ':').
pub(crate) fn parse_dedupe_record(record: &str) -> Option<Appended> {
    let mut parts = record.splitn(3, ':');
    let seq = parts.next()?.parse().ok()?;
    let server_time_ms = parts.next()?.parse().ok()?;
    let conversation_id = parts.next()?.to_owned();
    Some(Appended { conversation_id, seq, server_time_ms, duplicate: true, group_version: 0 })
}

/// `delivered:read`.
pub(crate) fn parse_watermarks(record: &str) -> Option<Watermarks> {
    let (delivered, read) = record.split_once(':')?;
    Some(Watermarks { delivered: delivered.parse().ok()?, read: read.parse().ok()? })
}

/// `last_seq:last_time_ms`.
pub(crate) fn parse_last(record: &str) -> Option<(u64, i64)> {
    let (seq, time) = record.split_once(':')?;
    Some((seq.parse().ok()?, time.parse().ok()?))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_reject_garbage() {
        assert_eq!(
            parse_dedupe_record("7:-5:dm:a:b"),
            Some(Appended {
                conversation_id: "dm:a:b".into(),
                seq: 7,
                server_time_ms: -5,
                duplicate: true,
                group_version: 0,
            })
        );
        assert_eq!(parse_dedupe_record("x:1:c"), None);
        assert_eq!(parse_dedupe_record("1:2"), None);
        assert_eq!(parse_watermarks("9:7"), Some(Watermarks { delivered: 9, read: 7 }));
        assert_eq!(
            parse_watermarks("18446744073709551615:0"),
            Some(Watermarks { delivered: u64::MAX, read: 0 })
        );
        assert_eq!(parse_watermarks("9"), None);
        assert_eq!(parse_last("3:1700"), Some((3, 1700)));
        assert_eq!(parse_last("3:"), None);
    }

    #[test]
    fn header_leaves_out_what_the_key_and_fields_carry() {
        let m = NewMessage {
            mention_user_ids: Vec::new(),
            mention_all: false,
            conversation_id: "dm:a:b".into(),
            members: vec!["a".into()],
            sender_user_id: "a".into(),
            sender_device_id: "d".into(),
            client_msg_id: "c".into(),
            kind: v1::MessageKind::Recall,
            content_type: "t".into(),
            body: Bytes::from_static(b"secret"),
            recalled_seq: 4,
            server_time_ms: 9,
        };
        let header = v1::Message::decode(&encode_header(&m)[..]).unwrap();
        assert_eq!(header.conversation_id, "");
        assert_eq!(header.seq, 0);
        assert!(header.body.is_empty());
        assert_eq!(header.recalled_seq, 4);
        assert_eq!(header.kind, v1::MessageKind::Recall as i32);
        assert_eq!((header.sender_user_id.as_str(), header.server_time_ms), ("a", 9));
    }
}
