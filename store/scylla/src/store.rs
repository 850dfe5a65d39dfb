//! [`ScyllaStore`]: session setup (policies, timeouts, schema, prepared statements) and the
//! [`Store`] implementation; appends live in `append.rs`, commits in `commit.rs`, row reads in
//! `select.rs`, groups in `group.rs`.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::{SystemTime, UNIX_EPOCH};

use scylla::DeserializeRow;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::retry::DefaultRetryPolicy;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::value::{CqlValue, Row};
use tern_proto::v1;
use tern_store::{
    Appended, BoxFuture, Committed, ConversationEntry, GroupState, Member, NewMessage, Range,
    Store, StoreError, WatermarkUpdate, Watermarks, Write,
};
use tokio::sync::Semaphore;
use tracing::info;

use crate::append::{Item, first_unsettled};
use crate::bucket::{self, MAX_SEQ};
use crate::config::ScyllaConfig;
use crate::error::{ConnectError, OpError};
use crate::group::is_group;
use crate::row::{self, MessageRow, seq_from_cql};
use crate::schema;
use crate::statements::{Prepared, Stmt};

/// Unix milliseconds of the local wall clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The ScyllaDB [`Store`]. Cheap to clone (an `Arc` of the session and prepared statements).
#[derive(Clone)]
pub struct ScyllaStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("nodes", &self.inner.cfg.nodes)
            .field("keyspace", &self.inner.cfg.keyspace)
            .finish_non_exhaustive()
    }
}

/// What every operation shares.
pub(crate) struct Inner {
    pub(crate) session: Arc<Session>,
    pub(crate) stmts: Prepared,
    pub(crate) cfg: ScyllaConfig,
    /// Random per process: owner tokens are `seed-counter`.
    pub(crate) token_seed: u64,
    pub(crate) counter: AtomicU64,
    /// The latest flags write timestamp of this process (see `flags.rs`).
    pub(crate) flag_clock: AtomicI64,
    /// Bounds the conversations of one batch appended at once.
    pub(crate) limiter: Semaphore,
}

/// The outcome of a lightweight transaction: `[applied]` and, by column name, the row the
/// server returned (the current values when not applied).
#[derive(Debug)]
pub(crate) struct Lwt {
    pub(crate) applied: bool,
    columns: Vec<(String, Option<CqlValue>)>,
}

impl Lwt {
    /// Reads an LWT result: first row, `[applied]` by name.
    pub(crate) fn from_result(result: QueryResult) -> Result<Self, OpError> {
        let rows = result.into_rows_result()?;
        let names: Vec<String> = rows.column_specs().iter().map(|c| c.name().to_owned()).collect();
        let row = rows
            .maybe_first_row::<Row>()?
            .ok_or_else(|| OpError::LwtShape("no row in an LWT result".into()))?;
        let lwt = Lwt { applied: false, columns: names.into_iter().zip(row.columns).collect() };
        Self::with_applied(lwt)
    }

    fn with_applied(mut self) -> Result<Self, OpError> {
        self.applied = self
            .get("[applied]")
            .and_then(CqlValue::as_boolean)
            .ok_or_else(|| OpError::LwtShape("no [applied] column".into()))?;
        Ok(self)
    }

    fn get(&self, name: &str) -> Option<&CqlValue> {
        self.columns.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_ref())
    }

    /// A bigint column of the returned row.
    pub(crate) fn i64(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(CqlValue::as_bigint)
    }

    /// A text column of the returned row.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(CqlValue::as_text).map(String::as_str)
    }
}

#[derive(Debug, DeserializeRow)]
struct MetaRow {
    last_seq: Option<i64>,
    last_alloc_ms: Option<i64>,
    last_owner: Option<String>,
    group_version: Option<i64>,
}

#[derive(Debug, DeserializeRow)]
pub(crate) struct ReceiptRow {
    pub(crate) delivered_seq: Option<i64>,
    pub(crate) read_seq: Option<i64>,
}

#[derive(Debug, DeserializeRow)]
struct ReceiptsRow {
    user_id: String,
    delivered_seq: Option<i64>,
    read_seq: Option<i64>,
}

pub(crate) fn watermarks(delivered: Option<i64>, read: Option<i64>) -> Result<Watermarks, OpError> {
    Ok(Watermarks {
        delivered: seq_from_cql("receipts.delivered_seq", delivered)?,
        read: seq_from_cql("receipts.read_seq", read)?,
    })
}

impl ScyllaStore {
    /// Connects, applies `schema.cql` (idempotent), checks the keyspace's bucket size and
    /// prepares every statement.
    ///
    /// Requests use one execution profile: the configured consistency (default
    /// LOCAL_QUORUM) and serial consistency (default SERIAL), the request timeout, the
    /// driver's `DefaultRetryPolicy` (retries only idempotent statements, never LWTs at a
    /// serial level) and a token-aware `DefaultPolicy` preferring `local_dc` when set.
    pub async fn connect(cfg: ScyllaConfig) -> Result<Self, ConnectError> {
        cfg.validate()?;
        if cfg.serial_consistency == scylla::statement::SerialConsistency::LocalSerial {
            tracing::warn!(
                "LWTs at LOCAL_SERIAL are linearizable only within one datacentre: safe only if \
                 every conversation is written from one DC at a time (docs/DEPLOYMENT.md)"
            );
        }
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if let Some(dc) = &cfg.local_dc {
            policy = policy.prefer_datacenter(dc.clone()).permit_dc_failover(false);
        }
        let profile = ExecutionProfile::builder()
            .consistency(cfg.consistency)
            .serial_consistency(Some(cfg.serial_consistency))
            .request_timeout(Some(cfg.request_timeout))
            .load_balancing_policy(policy.build())
            .retry_policy(Arc::new(DefaultRetryPolicy::new()))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&cfg.nodes)
            .connection_timeout(cfg.connect_timeout)
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .map_err(Box::new)?;
        for statement in schema::render(&cfg.keyspace, &cfg.replication) {
            if let Err(source) = session.query_unpaged(statement.as_str(), ()).await {
                return Err(ConnectError::Schema { statement, source: Box::new(source) });
            }
        }
        session.await_schema_agreement().await.map_err(Box::new)?;
        let stmts = Prepared::prepare(
            &session,
            &cfg.keyspace,
            cfg.consistency,
            cfg.serial_consistency,
            cfg.page_size,
        )
        .await
        .map_err(|(stmt, source)| ConnectError::Prepare {
            statement: stmt.render(&cfg.keyspace),
            source: Box::new(source),
        })?;
        let token_seed = RandomState::new().hash_one((std::process::id(), now_ms()));
        let inner = Inner {
            session: Arc::new(session),
            stmts,
            limiter: Semaphore::new(cfg.append_concurrency.max(1)),
            cfg,
            token_seed,
            counter: AtomicU64::new(0),
            flag_clock: AtomicI64::new(0),
        };
        inner.check_bucket_size().await?;
        info!(nodes = ?inner.cfg.nodes, keyspace = %inner.cfg.keyspace, "scylla store ready");
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ScyllaConfig {
        &self.inner.cfg
    }
}

impl Inner {
    pub(crate) async fn exec(
        &self,
        stmt: Stmt,
        values: impl SerializeRow,
    ) -> Result<QueryResult, OpError> {
        Ok(self.session.execute_unpaged(self.stmts.get(stmt), values).await?)
    }

    pub(crate) async fn lwt(&self, stmt: Stmt, values: impl SerializeRow) -> Result<Lwt, OpError> {
        Lwt::from_result(self.exec(stmt, values).await?)
    }

    /// (last_seq, last_alloc_ms) of the allocator row (0, 0 when absent).
    pub(crate) async fn meta(&self, conv: &str) -> Result<(u64, i64), OpError> {
        let (last_seq, last_alloc_ms, _) = self.meta_with_version(conv).await?;
        Ok((last_seq, last_alloc_ms))
    }

    /// (last_seq, last_alloc_ms, group_version) of the allocator row (zeros when absent).
    pub(crate) async fn meta_with_version(&self, conv: &str) -> Result<(u64, i64, u64), OpError> {
        let row = self.select_one::<MetaRow>(Stmt::SelectMeta, (conv,)).await?;
        match row {
            Some(r) => Ok((
                seq_from_cql("conversation_meta.last_seq", r.last_seq)?,
                r.last_alloc_ms.unwrap_or(0),
                seq_from_cql("conversation_meta.group_version", r.group_version)?,
            )),
            None => Ok((0, 0, 0)),
        }
    }

    /// (last_seq, last_owner), read linearizably.
    pub(crate) async fn meta_owner(&self, conv: &str) -> Result<(u64, Option<String>), OpError> {
        let row = self.select_one::<MetaRow>(Stmt::SelectMetaSerial, (conv,)).await?;
        match row {
            Some(r) => Ok((seq_from_cql("conversation_meta.last_seq", r.last_seq)?, r.last_owner)),
            None => Ok((0, None)),
        }
    }

    /// One stored message.
    pub(crate) async fn message(
        &self,
        conv: &str,
        seq: u64,
    ) -> Result<Option<v1::Message>, OpError> {
        match self.message_row(conv, seq).await? {
            Some(r) => Ok(row::decode_row(conv, r)?),
            None => Ok(None),
        }
    }

    async fn check_bucket_size(&self) -> Result<(), ConnectError> {
        let configured = self.cfg.bucket_size;
        let l = self.lwt(Stmt::InsertSetting, ("bucket_size", configured as i64)).await?;
        if l.applied {
            return Ok(());
        }
        let stored = l.i64("int_value").unwrap_or(0);
        if u64::try_from(stored).ok() == Some(configured) {
            Ok(())
        } else {
            Err(ConnectError::BucketSizeMismatch { stored: stored.max(0) as u64, configured })
        }
    }

    async fn read_range(&self, conv: &str, from: u64, window: u32) -> Result<Range, OpError> {
        let (last_seq, meta_alloc_ms, group_version) = self.meta_with_version(conv).await?;
        let Some((first, last)) = bucket::clip_window(from, window, last_seq) else {
            return Ok(Range { messages: Vec::new(), last_seq });
        };
        let mut messages = Vec::new();
        let mut stored = Vec::new();
        for span in bucket::spans(first, last, self.cfg.bucket_size) {
            let rows: Vec<MessageRow> = self
                .select_all(
                    Stmt::SelectMessages,
                    (conv, span.bucket as i64, span.first as i64, span.last as i64),
                )
                .await?;
            for r in rows {
                let allocated_at = r.allocated_at_ms.unwrap_or(0);
                if let Some(m) = row::decode_row(conv, r)? {
                    stored.push((m.seq, allocated_at));
                    messages.push(m);
                }
            }
        }
        // A group's latest change may be committed but not yet completed (its writer crashed,
        // or is at work): complete it here, so its event is never reported missing.
        if is_group(conv)
            && (first..=last).contains(&group_version)
            && !stored.iter().any(|&(seq, _)| seq == group_version)
            && let Some(r) = self.complete_event(conv, group_version).await?
        {
            let allocated_at = r.allocated_at_ms.unwrap_or(0);
            if let Some(m) = row::decode_row(conv, r)? {
                let at = messages.partition_point(|x| x.seq < m.seq);
                stored.insert(at, (m.seq, allocated_at));
                messages.insert(at, m);
            }
        }
        let grace = i64::try_from(self.cfg.settle_grace.as_millis()).unwrap_or(i64::MAX);
        match first_unsettled(first, last, &stored, meta_alloc_ms, now_ms(), grace) {
            // An unstored seq that may still be written: stop before it, so sync does not
            // call it missing; the client asks again from there.
            Some(cut) => {
                messages.retain(|m| m.seq < cut);
                Ok(Range { messages, last_seq: cut - 1 })
            }
            None => Ok(Range { messages, last_seq }),
        }
    }

    pub(crate) async fn set_watermark(
        &self,
        conv: &str,
        user: &str,
        kind: v1::ReceiptKind,
        seq: u64,
    ) -> Result<WatermarkUpdate, OpError> {
        // The writes are blind, so "moved" compares a read before with a read after: an update
        // that moved something always sees a change (watermarks only grow); one that raced
        // with another may see the other's move too (a spare push, never a missing one).
        let before = self.receipt(conv, user).await?;
        let wanted = match kind {
            v1::ReceiptKind::Unspecified => false,
            v1::ReceiptKind::Delivered => seq > before.delivered,
            v1::ReceiptKind::Read => seq > before.read,
        };
        if !wanted {
            return Ok(WatermarkUpdate { watermarks: before, moved: false });
        }
        // Timestamp = value: the highest value wins, so a watermark never moves back.
        let v = seq.min(MAX_SEQ) as i64;
        match kind {
            v1::ReceiptKind::Unspecified => {}
            v1::ReceiptKind::Delivered => {
                self.exec(Stmt::SetDelivered, (v, v, conv, user)).await?;
            }
            v1::ReceiptKind::Read => {
                let (read, delivered) = tokio::join!(
                    self.exec(Stmt::SetRead, (v, v, conv, user)),
                    self.exec(Stmt::SetDelivered, (v, v, conv, user)),
                );
                read?;
                delivered?;
            }
        }
        let after = self.receipt(conv, user).await?;
        Ok(WatermarkUpdate { watermarks: after, moved: after != before })
    }

    /// One member's watermarks.
    async fn receipt(&self, conv: &str, user: &str) -> Result<Watermarks, OpError> {
        let row = self.select_one::<ReceiptRow>(Stmt::SelectReceipt, (conv, user)).await?;
        match row {
            Some(r) => watermarks(r.delivered_seq, r.read_seq),
            None => Ok(Watermarks::default()),
        }
    }

    /// Whether a dedupe claim exists for (sender, client_msg_id), read linearizably.
    async fn dedupe_known(&self, sender: &str, client_msg_id: &str) -> Result<bool, OpError> {
        let row = self
            .select_one::<crate::append::DedupeRow>(
                Stmt::SelectDedupeSerial,
                (sender, client_msg_id),
            )
            .await?;
        Ok(row.is_some())
    }

    async fn watermarks(&self, conv: &str) -> Result<Vec<(String, Watermarks)>, OpError> {
        let rows: Vec<ReceiptsRow> = self.select_all(Stmt::SelectReceipts, (conv,)).await?;
        rows.into_iter()
            .map(|r| Ok((r.user_id, watermarks(r.delivered_seq, r.read_seq)?)))
            .collect()
    }
}

impl Store for ScyllaStore {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let items = batch.into_iter().map(Item::Send).collect();
            self.inner
                .append_batch(items)
                .await?
                .into_iter()
                .map(|c| match c {
                    Committed::Appended(a) => Ok(a),
                    Committed::Refused(r) => Err(StoreError::Refused(r)),
                    _ => Err(StoreError::Corrupt("append outcome of another kind".into())),
                })
                .collect()
        })
    }

    fn commit<'a>(
        &'a self,
        batch: &'a [Write],
    ) -> BoxFuture<'a, Result<Vec<Committed>, StoreError>> {
        Box::pin(async move { Ok(self.inner.commit(batch).await?) })
    }

    fn read_range<'a>(
        &'a self,
        conversation_id: &'a str,
        from_seq: u64,
        window: u32,
    ) -> BoxFuture<'a, Result<Range, StoreError>> {
        Box::pin(async move { Ok(self.inner.read_range(conversation_id, from_seq, window).await?) })
    }

    fn get_message<'a>(
        &'a self,
        conversation_id: &'a str,
        seq: u64,
    ) -> BoxFuture<'a, Result<Option<v1::Message>, StoreError>> {
        Box::pin(async move {
            if seq == 0 || seq > MAX_SEQ {
                return Ok(None);
            }
            let conv = conversation_id;
            if let Some(m) = self.inner.message(conv, seq).await? {
                return Ok(Some(m));
            }
            // A group event committed but not yet written: complete it (see group.rs).
            if is_group(conv)
                && self.inner.meta_with_version(conv).await?.2 == seq
                && let Some(r) = self.inner.complete_event(conv, seq).await?
            {
                return Ok(row::decode_row(conv, r).map_err(OpError::from)?);
            }
            Ok(None)
        })
    }

    fn last_seq<'a>(&'a self, conversation_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move { Ok(self.inner.meta(conversation_id).await?.0) })
    }

    fn set_watermark<'a>(
        &'a self,
        conversation_id: &'a str,
        user_id: &'a str,
        kind: v1::ReceiptKind,
        seq: u64,
    ) -> BoxFuture<'a, Result<WatermarkUpdate, StoreError>> {
        Box::pin(
            async move { Ok(self.inner.set_watermark(conversation_id, user_id, kind, seq).await?) },
        )
    }

    fn client_msg_id_known<'a>(
        &'a self,
        sender_user_id: &'a str,
        client_msg_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move { Ok(self.inner.dedupe_known(sender_user_id, client_msg_id).await?) })
    }

    fn watermarks<'a>(
        &'a self,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Watermarks)>, StoreError>> {
        Box::pin(async move { Ok(self.inner.watermarks(conversation_id).await?) })
    }

    fn list_conversations<'a>(
        &'a self,
        user_id: &'a str,
        after: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<ConversationEntry>, StoreError>> {
        Box::pin(async move { Ok(self.inner.list_conversations(user_id, after, limit).await?) })
    }

    fn muted_among<'a>(
        &'a self,
        conversation_id: &'a str,
        user_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move { Ok(self.inner.muted_among(conversation_id, user_ids).await?) })
    }

    fn get_group<'a>(
        &'a self,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<GroupState>, StoreError>> {
        Box::pin(async move { Ok(self.inner.get_group(conversation_id).await?) })
    }

    fn group_member<'a>(
        &'a self,
        conversation_id: &'a str,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Member>, StoreError>> {
        Box::pin(async move { Ok(self.inner.group_member(conversation_id, user_id).await?) })
    }

    fn group_members<'a>(
        &'a self,
        conversation_id: &'a str,
        after: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Member>, StoreError>> {
        Box::pin(async move { Ok(self.inner.group_members(conversation_id, after, limit).await?) })
    }

    fn health(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { Ok(self.inner.probe().await?) })
    }

    fn device_write<'a>(
        &'a self,
        user_id: &'a str,
        device_id: &'a str,
        write: &'a tern_store::DeviceWrite,
    ) -> BoxFuture<'a, Result<tern_store::DeviceRecord, StoreError>> {
        Box::pin(async move { Ok(self.inner.device_write(user_id, device_id, write).await?) })
    }

    fn device<'a>(
        &'a self,
        user_id: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<tern_store::DeviceRecord>, StoreError>> {
        Box::pin(async move { Ok(self.inner.device(user_id, device_id).await?) })
    }

    fn devices<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<tern_store::DeviceRecord>, StoreError>> {
        Box::pin(async move { Ok(self.inner.devices(user_id).await?) })
    }

    fn push_registrations<'a>(
        &'a self,
        user_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, tern_store::DeviceRecord)>, StoreError>> {
        Box::pin(async move { Ok(self.inner.push_registrations(user_ids).await?) })
    }
}
