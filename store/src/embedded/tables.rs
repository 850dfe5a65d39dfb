//! The index: redb tables the log is applied to, the reads served from them, and how one
//! log record is applied.
//!
//! | table | key | value |
//! |---|---|---|
//! | `messages` | (conversation_id, seq) | protobuf-encoded [`v1::Message`] |
//! | `conversation_meta` | conversation_id | (last_seq, last_time_ms) |
//! | `dedupe` | (sender_user_id, client_msg_id) | (conversation_id, seq, server_time_ms) |
//! | `user_conversations` | (user_id, conversation_id) | (last_seq, last_time_ms) |
//! | `receipts` | (conversation_id, user_id) | (delivered, read) |
//! | `groups` | conversation_id | protobuf-encoded group record with its version |
//! | `group_members` | (conversation_id, user_id) | (role, joined_seq, visible_from, removed_seq) |
//! | `mentions` | (conversation_id, user_id or "" for all) | the latest seq mentioning them |
//! | `flags` | (user_id, conversation_id) | the user's muted / pinned bits |
//! | `devices` | (user_id, device_id) | protobuf-encoded device record (`super::device`) |
//! | `index_meta` | `"applied_lsn"` | the last log record applied (written in every index commit) |
//!
//! Every read is a point lookup or a range scan bounded by its key prefix and the caller's
//! window or limit.

use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tern_proto::v1;
use thiserror::Error;
use tracing::warn;

use super::entry::{GroupMetaRecord, IndexOp};
use super::filter::KeyFilter;
use crate::{ConversationEntry, GroupState, Member, Range, Role, StoreError, Watermarks};

/// (conversation_id, seq) -> protobuf-encoded `v1::Message`.
pub(super) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// conversation_id -> (last_seq, last_time_ms).
pub(super) const CONV_META: TableDefinition<&str, (u64, i64)> =
    TableDefinition::new("conversation_meta");
/// (sender_user_id, client_msg_id) -> (conversation_id, seq, server_time_ms).
pub(super) const DEDUPE: TableDefinition<(&str, &str), (&str, u64, i64)> =
    TableDefinition::new("dedupe");
/// (user_id, conversation_id) -> (last_seq, last_time_ms).
pub(super) const USER_CONVS: TableDefinition<(&str, &str), (u64, i64)> =
    TableDefinition::new("user_conversations");
/// (conversation_id, user_id) -> (delivered, read).
pub(super) const RECEIPTS: TableDefinition<(&str, &str), (u64, u64)> =
    TableDefinition::new("receipts");
/// conversation_id -> protobuf-encoded `GroupMetaRecord` (with the group's version).
pub(super) const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
/// (conversation_id, user_id) -> (role, joined_seq, visible_from, removed_seq).
pub(super) const GROUP_MEMBERS: TableDefinition<(&str, &str), (u64, u64, u64, u64)> =
    TableDefinition::new("group_members");
/// (conversation_id, user_id) -> the latest seq mentioning the user (user "" : mentioning all).
pub(super) const MENTIONS: TableDefinition<(&str, &str), u64> = TableDefinition::new("mentions");
/// (user_id, conversation_id) -> the user's flags ([`MUTED`] | [`PINNED`]).
pub(super) const FLAGS: TableDefinition<(&str, &str), u8> = TableDefinition::new("flags");
/// [`FLAGS`] bit: muted.
pub(super) const MUTED: u8 = 1;
/// [`FLAGS`] bit: pinned.
pub(super) const PINNED: u8 = 2;
/// "applied_lsn" -> the last log record the index holds.
pub(super) const INDEX_META: TableDefinition<&str, u64> = TableDefinition::new("index_meta");
/// The key of [`INDEX_META`]'s one row.
pub(super) const APPLIED_LSN: &str = "applied_lsn";

/// Failures inside the embedded backend, folded into [`StoreError`] at the trait boundary.
#[derive(Debug, Error)]
pub(super) enum EmbeddedError {
    #[error(transparent)]
    Database(#[from] redb::DatabaseError),
    #[error(transparent)]
    Transaction(#[from] redb::TransactionError),
    #[error(transparent)]
    Table(#[from] redb::TableError),
    #[error(transparent)]
    Storage(#[from] redb::StorageError),
    #[error(transparent)]
    Commit(#[from] redb::CommitError),
    #[error(transparent)]
    Durability(#[from] redb::SetDurabilityError),
    #[error("message {conversation_id}/{seq}: {source}")]
    Decode { conversation_id: String, seq: u64, source: prost::DecodeError },
    #[error("conversation {0}: seq space exhausted")]
    SeqOverflow(String),
    #[error("{0}")]
    Probe(String),
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error("log record {lsn}: {reason}")]
    Record { lsn: u64, reason: String },
    #[error("the index stopped: {0}")]
    IndexStopped(String),
}

impl From<EmbeddedError> for StoreError {
    fn from(e: EmbeddedError) -> Self {
        match e {
            EmbeddedError::Decode { .. }
            | EmbeddedError::SeqOverflow(_)
            | EmbeddedError::Record { .. }
            | EmbeddedError::Wal(crate::wal::WalError::Corrupt { .. }) => {
                StoreError::Corrupt(e.to_string())
            }
            EmbeddedError::Wal(crate::wal::WalError::Poisoned { .. })
            | EmbeddedError::IndexStopped(_) => StoreError::Unavailable(e.to_string()),
            other => StoreError::Io(other.to_string()),
        }
    }
}

/// Creates every table so that read transactions never meet a missing one.
/// Returns the last log record the index holds.
pub(super) fn create_tables(db: &Database) -> Result<u64, EmbeddedError> {
    let txn = db.begin_write()?;
    txn.open_table(MESSAGES)?;
    txn.open_table(CONV_META)?;
    txn.open_table(DEDUPE)?;
    txn.open_table(USER_CONVS)?;
    txn.open_table(RECEIPTS)?;
    txn.open_table(GROUPS)?;
    txn.open_table(GROUP_MEMBERS)?;
    txn.open_table(MENTIONS)?;
    txn.open_table(FLAGS)?;
    txn.open_table(super::device::DEVICES)?;
    let applied = txn.open_table(INDEX_META)?.get(APPLIED_LSN)?.map_or(0, |g| g.value());
    txn.commit()?;
    Ok(applied)
}

/// The writer's filter of dedupe keys, holding every key of the `dedupe` table.
pub(super) fn dedupe_filter(db: &Database, bytes: usize) -> Result<KeyFilter, EmbeddedError> {
    let mut filter = KeyFilter::new(bytes);
    if bytes > 0 {
        let txn = db.begin_read()?;
        for entry in txn.open_table(DEDUPE)?.iter()? {
            let (key, _) = entry?;
            let (sender, id) = key.value();
            filter.insert(sender, id);
        }
    }
    Ok(filter)
}

/// Applies log records (in lsn order) and the new applied lsn in one write transaction,
/// committed with `durability` (quick repair on durable commits: a crash after them needs no
/// full repair scan).
pub(super) fn apply(
    db: &Database,
    ops: Vec<IndexOp>,
    applied_lsn: u64,
    durability: redb::Durability,
) -> Result<(), EmbeddedError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    if matches!(durability, redb::Durability::Immediate) {
        txn.set_quick_repair(true);
    }
    apply_in(&txn, ops)?;
    txn.open_table(INDEX_META)?.insert(APPLIED_LSN, applied_lsn)?;
    txn.commit()?;
    Ok(())
}

/// Applies `ops` in order. A conversation's meta row and each member's index row are written
/// once per call, with their last value: within a batch only the newest matters, and skipping
/// the rest halves the B-tree writes per message under load.
fn apply_in(txn: &WriteTransaction, ops: Vec<IndexOp>) -> Result<(), EmbeddedError> {
    use std::collections::HashMap;
    type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
    let mut messages = txn.open_table(MESSAGES)?;
    let mut dedupe = txn.open_table(DEDUPE)?;
    let mut receipts = txn.open_table(RECEIPTS)?;
    let mut groups = txn.open_table(GROUPS)?;
    let mut group_members = txn.open_table(GROUP_MEMBERS)?;
    let mut mentions = txn.open_table(MENTIONS)?;
    let mut flags = txn.open_table(FLAGS)?;
    // Last (seq, time) per conversation, and per (member, conversation).
    let mut latest: Map<&str, (u64, i64)> = Map::default();
    let mut members: Map<(&str, &str), (u64, i64)> = Map::default();
    for op in &ops {
        match op {
            IndexOp::Append(a) => {
                let conv = a.conversation_id();
                if a.recalled_seq > 0 {
                    recall_target(&mut messages, conv, a.recalled_seq)?;
                }
                messages.insert((conv, a.seq), a.encoded())?;
                dedupe.insert(
                    (a.sender_user_id(), a.client_msg_id()),
                    (conv, a.seq, a.server_time_ms),
                )?;
                latest.insert(conv, (a.seq, a.server_time_ms));
                if a.mentions {
                    let m = decode(conv, a.seq, a.encoded())?;
                    for user in &m.mention_user_ids {
                        mentions.insert((conv, user.as_str()), a.seq)?;
                    }
                    if m.mention_all {
                        mentions.insert((conv, ""), a.seq)?;
                    }
                }
                for member in a.members() {
                    members.insert((member, conv), (a.seq, a.server_time_ms));
                }
            }
            IndexOp::Watermark(w) => {
                receipts.insert(
                    (w.conversation_id.as_str(), w.user_id.as_str()),
                    (w.watermarks.delivered, w.watermarks.read),
                )?;
            }
            IndexOp::Device(d) => super::device::apply(txn, d)?,
            IndexOp::Flags(f) => {
                let key = (f.user_id.as_str(), f.conversation_id.as_str());
                let mut bits = flags.get(key)?.map_or(0, |g| g.value());
                for (set, bit) in [(f.muted, MUTED), (f.pinned, PINNED)] {
                    match set {
                        Some(true) => bits |= bit,
                        Some(false) => bits &= !bit,
                        None => {}
                    }
                }
                flags.insert(key, bits)?;
            }
            IndexOp::Group(g) => {
                let a = &g.event;
                let conv = a.conversation_id();
                messages.insert((conv, a.seq), a.encoded())?;
                dedupe.insert(
                    (a.sender_user_id(), a.client_msg_id()),
                    (conv, a.seq, a.server_time_ms),
                )?;
                latest.insert(conv, (a.seq, a.server_time_ms));
                let record = GroupMetaRecord::of(&g.meta, a.seq).encode_to_vec();
                groups.insert(conv, record.as_slice())?;
                for m in &g.members {
                    group_members.insert((conv, m.user_id.as_str()), member_row(m))?;
                    // The member's index row: where their view of the group ends (its last
                    // seq is read from the group while they are a member).
                    members.insert((m.user_id.as_str(), conv), (a.seq, a.server_time_ms));
                }
            }
        }
    }
    let mut meta = txn.open_table(CONV_META)?;
    let mut index = txn.open_table(USER_CONVS)?;
    for (conv, last) in latest {
        meta.insert(conv, last)?;
    }
    for (key, last) in members {
        index.insert(key, last)?;
    }
    Ok(())
}

pub(super) fn decode(
    conversation_id: &str,
    seq: u64,
    bytes: &[u8],
) -> Result<v1::Message, EmbeddedError> {
    v1::Message::decode(bytes).map_err(|source| EmbeddedError::Decode {
        conversation_id: conversation_id.to_owned(),
        seq,
        source,
    })
}

/// Marks the message at `seq` recalled and clears its body (dispatch checked that it exists;
/// a missing one is logged and skipped so the recall event itself is still stored).
fn recall_target(
    messages: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
    conversation_id: &str,
    seq: u64,
) -> Result<(), EmbeddedError> {
    let Some(bytes) = messages.get((conversation_id, seq))?.map(|g| g.value().to_vec()) else {
        warn!(conversation_id, seq, "recall of a message that is not stored");
        return Ok(());
    };
    let mut target = decode(conversation_id, seq, &bytes)?;
    target.recalled = true;
    target.body.clear();
    messages.insert((conversation_id, seq), target.encode_to_vec().as_slice())?;
    Ok(())
}

pub(super) fn read_range_blocking(
    db: &Database,
    conversation_id: &str,
    from_seq: u64,
    window: u32,
) -> Result<Range, EmbeddedError> {
    let txn = db.begin_read()?;
    let last_seq = txn.open_table(CONV_META)?.get(conversation_id)?.map_or(0, |g| g.value().0);
    let mut messages = Vec::new();
    if window > 0 {
        let last = from_seq.saturating_add(u64::from(window) - 1);
        let table = txn.open_table(MESSAGES)?;
        for entry in table.range((conversation_id, from_seq)..=(conversation_id, last))? {
            let (key, value) = entry?;
            messages.push(decode(conversation_id, key.value().1, value.value())?);
        }
    }
    Ok(Range { messages, last_seq })
}

pub(super) fn get_message_blocking(
    db: &Database,
    conversation_id: &str,
    seq: u64,
) -> Result<Option<v1::Message>, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(MESSAGES)?;
    let Some(guard) = table.get((conversation_id, seq))? else {
        return Ok(None);
    };
    decode(conversation_id, seq, guard.value()).map(Some)
}

pub(super) fn last_seq_blocking(
    db: &Database,
    conversation_id: &str,
) -> Result<u64, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(CONV_META)?;
    Ok(table.get(conversation_id)?.map_or(0, |g| g.value().0))
}

pub(super) fn read_watermarks(
    table: &impl ReadableTable<(&'static str, &'static str), (u64, u64)>,
    conversation_id: &str,
    user_id: &str,
) -> Result<Watermarks, EmbeddedError> {
    Ok(table.get((conversation_id, user_id))?.map_or_else(Watermarks::default, |g| {
        let (delivered, read) = g.value();
        Watermarks { delivered, read }
    }))
}

pub(super) fn client_msg_id_known_blocking(
    db: &Database,
    sender_user_id: &str,
    client_msg_id: &str,
) -> Result<bool, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(DEDUPE)?;
    Ok(table.get((sender_user_id, client_msg_id))?.is_some())
}

pub(super) fn watermarks_blocking(
    db: &Database,
    conversation_id: &str,
) -> Result<Vec<(String, Watermarks)>, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(RECEIPTS)?;
    let mut out = Vec::new();
    for entry in table.range((conversation_id, "")..)? {
        let (key, value) = entry?;
        let (conv, user) = key.value();
        if conv != conversation_id {
            break;
        }
        let (delivered, read) = value.value();
        out.push((user.to_owned(), Watermarks { delivered, read }));
    }
    Ok(out)
}

pub(super) fn list_conversations_blocking(
    db: &Database,
    user_id: &str,
    after: &str,
    limit: u32,
) -> Result<Vec<ConversationEntry>, EmbeddedError> {
    use std::ops::Bound;
    let txn = db.begin_read()?;
    let index = txn.open_table(USER_CONVS)?;
    let receipts = txn.open_table(RECEIPTS)?;
    let meta = txn.open_table(CONV_META)?;
    let members = txn.open_table(GROUP_MEMBERS)?;
    let mentions = txn.open_table(MENTIONS)?;
    let flags = txn.open_table(FLAGS)?;
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let after_key = (Bound::Excluded((user_id, after)), Bound::Unbounded);
    for entry in index.range::<(&str, &str)>(after_key)? {
        let (key, value) = entry?;
        let (user, conv) = key.value();
        if user != user_id {
            break;
        }
        let (mut last_seq, mut last_time_ms) = value.value();
        if conv.starts_with(GROUP_PREFIX) {
            // Read diffusion: a current member's entry shows the group's latest seq; a
            // former member's stays at their removal.
            let current = members.get((conv, user_id))?.is_some_and(|g| g.value().3 == 0);
            if current && let Some(g) = meta.get(conv)? {
                (last_seq, last_time_ms) = g.value();
            }
        }
        let bits = flags.get((user_id, conv))?.map_or(0, |g| g.value());
        out.push(ConversationEntry {
            conversation_id: conv.to_owned(),
            last_seq,
            last_time_ms,
            watermarks: read_watermarks(&receipts, conv, user_id)?,
            mention_seq: mention_seq(&mentions, conv, user_id, last_seq)?,
            muted: bits & MUTED != 0,
            pinned: bits & PINNED != 0,
        });
        if out.len() >= limit as usize {
            break;
        }
    }
    Ok(out)
}

/// [`crate::Store::muted_among`]: one point lookup of `flags` per user, in one read
/// transaction.
pub(super) fn muted_among_blocking(
    db: &Database,
    conversation_id: &str,
    user_ids: &[String],
) -> Result<Vec<String>, EmbeddedError> {
    let txn = db.begin_read()?;
    let flags = txn.open_table(FLAGS)?;
    let mut out = Vec::new();
    for user in user_ids {
        let bits = flags.get((user.as_str(), conversation_id))?.map_or(0, |g| g.value());
        if bits & MUTED != 0 {
            out.push(user.clone());
        }
    }
    Ok(out)
}

/// Group conversation ids start with this (`tern_proto::ids`).
pub(super) const GROUP_PREFIX: &str = "g:";

/// A member row as the `group_members` table stores it.
pub(super) fn member_row(m: &Member) -> (u64, u64, u64, u64) {
    (m.role as u64, m.joined_seq, m.visible_from, m.removed_seq)
}

/// A `group_members` row as a [`Member`].
pub(super) fn member_of(
    user_id: &str,
    (role, joined_seq, visible_from, removed_seq): (u64, u64, u64, u64),
) -> Result<Member, EmbeddedError> {
    let role = u8::try_from(role).ok().and_then(Role::from_u8).ok_or_else(|| {
        EmbeddedError::Probe(format!("member {user_id}: unknown role {role} in the index"))
    })?;
    Ok(Member { user_id: user_id.to_owned(), role, joined_seq, visible_from, removed_seq })
}

/// A `groups` row as a [`GroupState`].
pub(super) fn group_of(conversation_id: &str, bytes: &[u8]) -> Result<GroupState, EmbeddedError> {
    let bad = |reason: String| EmbeddedError::Probe(format!("group {conversation_id}: {reason}"));
    let record = GroupMetaRecord::decode(bytes).map_err(|e| bad(e.to_string()))?;
    Ok(GroupState {
        conversation_id: conversation_id.to_owned(),
        meta: record.to_meta().map_err(bad)?,
        version: record.version,
    })
}

pub(super) fn get_group_blocking(
    db: &Database,
    conversation_id: &str,
) -> Result<Option<GroupState>, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(GROUPS)?;
    let Some(guard) = table.get(conversation_id)? else { return Ok(None) };
    group_of(conversation_id, guard.value()).map(Some)
}

pub(super) fn group_member_blocking(
    db: &Database,
    conversation_id: &str,
    user_id: &str,
) -> Result<Option<Member>, EmbeddedError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(GROUP_MEMBERS)?;
    let Some(guard) = table.get((conversation_id, user_id))? else { return Ok(None) };
    member_of(user_id, guard.value()).map(Some)
}

pub(super) fn group_members_blocking(
    db: &Database,
    conversation_id: &str,
    after: &str,
    limit: u32,
) -> Result<Vec<Member>, EmbeddedError> {
    use std::ops::Bound;
    let txn = db.begin_read()?;
    let table = txn.open_table(GROUP_MEMBERS)?;
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let from = (Bound::Excluded((conversation_id, after)), Bound::Unbounded);
    for entry in table.range::<(&str, &str)>(from)? {
        let (key, value) = entry?;
        let (conv, user) = key.value();
        if conv != conversation_id {
            break;
        }
        let member = member_of(user, value.value())?;
        if member.is_current() {
            out.push(member);
            if out.len() >= limit as usize {
                break;
            }
        }
    }
    Ok(out)
}

/// The latest seq of `conv` mentioning `user` or all, up to `last_seq` (the entry's end: a
/// former member's removal). Only the latest mention of each kind is kept, so a mention after
/// a removal hides an earlier one: the entry then shows none rather than one the user cannot
/// see.
fn mention_seq(
    table: &impl ReadableTable<(&'static str, &'static str), u64>,
    conv: &str,
    user: &str,
    last_seq: u64,
) -> Result<u64, EmbeddedError> {
    let own = table.get((conv, user))?.map(|g| g.value());
    let all = table.get((conv, ""))?.map(|g| g.value());
    Ok([own, all].into_iter().flatten().filter(|s| *s <= last_seq).max().unwrap_or(0))
}
