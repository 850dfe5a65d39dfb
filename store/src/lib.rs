//! Tern's storage layer: one [`Store`] trait that dispatch talks to, with its backends beside it.
//!
//! - [`Store`], [`NewMessage`], [`Appended`], [`Watermarks`], [`WatermarkUpdate`],
//!   [`ConversationEntry`]: the contract.
//! - [`Write`], [`Committed`]: one group commit of appends and receipt watermarks
//!   ([`Store::commit`]).
//! - [`group`]: group conversations: [`GroupWrite`] (a change, committed with its event
//!   message), [`GroupState`], [`Member`].
//! - [`device`]: a user's devices (platform, last login, push registration, logout fence):
//!   [`DeviceRecord`], [`DeviceWrite`], read and written with the `device*` methods of
//!   [`Store`] (outside the group commit: logins and push registrations are their own writes).
//! - [`embedded`]: the single-node backend: a write-ahead log ([`wal`]) as the durability point
//!   and a redb index applied from it (pure Rust).
//! - The conformance suite every backend must pass lives beside this crate, in
//!   `store/conformance/` (crate `tern-store-conformance`).
//!
//! Messages are stored as protobuf-encoded [`tern_proto::v1::Message`]s.

pub mod device;
pub mod embedded;
mod error;
pub mod group;
pub mod wal;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tern_proto::v1;

pub use device::{DeviceRecord, DeviceWrite, Platform, PushProvider, PushRegistration};
pub use embedded::{EmbeddedConfig, EmbeddedStore};
pub use error::StoreError;
pub use group::{GroupMeta, GroupState, GroupWrite, History, Member, MemberChange, Role};

/// A boxed future, so that `Arc<dyn Store>` works for every backend.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message or event to append to a conversation. The store assigns `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// Target conversation.
    pub conversation_id: String,
    /// Users whose conversation index (see [`Store::list_conversations`]) must show the new
    /// last seq: every member of the conversation.
    pub members: Vec<String>,
    /// Who sent it.
    pub sender_user_id: String,
    /// From which device.
    pub sender_device_id: String,
    /// The sender's idempotency id: (sender_user_id, client_msg_id) is stored at most once.
    pub client_msg_id: String,
    /// Normal message, recall event or group event.
    pub kind: v1::MessageKind,
    /// Opaque content type.
    pub content_type: String,
    /// Opaque payload.
    pub body: Bytes,
    /// For a recall event: the seq of the message it recalls. The store marks that message
    /// recalled and clears its body in the same atomic write.
    pub recalled_seq: u64,
    /// Acceptance time, Unix milliseconds (chosen by dispatch).
    pub server_time_ms: i64,
    /// Users the message mentions (stored in the message; each one's conversation entry
    /// shows the mention until they read past it).
    pub mention_user_ids: Vec<String>,
    /// The message mentions every member.
    pub mention_all: bool,
}

/// The outcome of one appended message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The conversation the message is in (for a duplicate: where the original went).
    pub conversation_id: String,
    /// Its sequence number.
    pub seq: u64,
    /// Its acceptance time (for a duplicate: the original's).
    pub server_time_ms: i64,
    /// True when (sender, client_msg_id) was already stored: nothing new was written and the
    /// fields above describe the original.
    pub duplicate: bool,
    /// For a message in a group conversation: the group's version (the seq of its latest
    /// change) when the message was sequenced, so that a membership cache at that version or
    /// later knows exactly who was a member at `seq`. For a group write, its own seq. 0 for a
    /// direct conversation and for a duplicate (whose original's version is not kept).
    pub group_version: u64,
}

/// A member's receipt watermarks in one conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// Delivered up to this seq (always >= read).
    pub delivered: u64,
    /// Read up to this seq.
    pub read: u64,
}

/// The outcome of [`Store::set_watermark`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatermarkUpdate {
    /// The user's watermarks after the update.
    pub watermarks: Watermarks,
    /// Whether this update moved a watermark. Dispatch pushes a ReceiptUpdate only then. A
    /// backend that cannot tell exactly (its writes are blind) may say `true` for an update
    /// that raced with another one, never `false` for an update that moved something.
    pub moved: bool,
}

/// A receipt watermark move inside a group commit ([`Write::Watermark`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkWrite {
    /// The conversation.
    pub conversation_id: String,
    /// Whose watermark.
    pub user_id: String,
    /// DELIVERED or READ (READ also moves delivered).
    pub kind: v1::ReceiptKind,
    /// Move up to this seq. Refused when above the conversation's last seq.
    pub seq: u64,
}

/// One write of a group commit ([`Store::commit`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Append a message (as [`Store::append`]).
    Append(NewMessage),
    /// Move a receipt watermark forward (as [`Store::set_watermark`], bounded by the
    /// conversation's last seq).
    Watermark(WatermarkWrite),
    /// Change a group: its event message, record and member rows together, if the group is
    /// still at the version the change was computed from.
    Group(GroupWrite),
    /// Set a user's own flags of a conversation.
    Flags(FlagsWrite),
}

/// A user's flags of one conversation inside a group commit ([`Write::Flags`]); `None`
/// leaves a flag as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagsWrite {
    /// The conversation.
    pub conversation_id: String,
    /// Whose flags.
    pub user_id: String,
    /// Muted (no notifications but mentions).
    pub muted: Option<bool>,
    /// Pinned (listed first by the app).
    pub pinned: Option<bool>,
}

/// Why a write of a group commit was not applied (nothing of it was written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An append to a group from a user who is not a current member at that point of the
    /// group's sequence.
    NotAMember,
    /// An append or change for a group that does not exist or was dissolved.
    NoSuchGroup,
    /// A group change computed from another version than the group's current one (or a
    /// create of a group that exists).
    VersionConflict {
        /// The group's version now (0: no such group).
        version: u64,
    },
}

/// The outcome of one [`Write`], in batch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// The append's outcome.
    Appended(Appended),
    /// The watermark write's outcome. Several writes for the same (conversation, user) in one
    /// batch are coalesced: each of their outcomes carries the watermarks after the whole
    /// batch, and `moved` says whether those differ from the watermarks before it.
    Watermark(WatermarkUpdate),
    /// The watermark write was refused: its seq is above the conversation's last seq (counting
    /// appends earlier in the same batch). Nothing of it was written.
    AboveLastSeq {
        /// The conversation's last seq at that point of the batch.
        last_seq: u64,
    },
    /// The append or group change was refused (see [`Refusal`]).
    Refused(Refusal),
    /// The flags write is durable.
    Flagged,
}

/// One entry of a user's conversation index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationEntry {
    /// The conversation.
    pub conversation_id: String,
    /// Its latest seq.
    pub last_seq: u64,
    /// Acceptance time of its latest message.
    pub last_time_ms: i64,
    /// The user's own watermarks there.
    pub watermarks: Watermarks,
    /// The latest seq of a message mentioning the user or all (0: none); the conversation is
    /// flagged as mentioning them while this is above their read watermark.
    pub mention_seq: u64,
    /// The user muted it.
    pub muted: bool,
    /// The user pinned it.
    pub pinned: bool,
}

/// Messages read from one conversation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Range {
    /// Stored messages with seq in the requested window, in seq order.
    pub messages: Vec<v1::Message>,
    /// The latest seq sync may settle now (0: empty conversation): the latest allocated seq,
    /// or, in a backend where a seq can be allocated before its message is written (Scylla),
    /// just below the oldest seq that is still being written, so that a seq a writer is about
    /// to store is never reported as missing.
    pub last_seq: u64,
}

/// Durable storage for conversations. Every backend passes the conformance suite
/// (`tern-store-conformance`).
///
/// Guarantees callers rely on:
/// - [`Store::append`] is durable when it returns `Ok`: a crash afterwards loses nothing.
/// - Within a conversation seqs start at 1 and strictly increase in append order; no two
///   messages share one, even with several writers (processes) at once.
/// - (sender_user_id, client_msg_id) is stored at most once; appending it again returns the
///   original's outcome with `duplicate = true`, also within one batch, and writes nothing of
///   the new request (whatever its conversation, kind, body or recall target: dispatch
///   compares the stored original with the request and refuses a reuse that differs).
pub trait Store: Send + Sync + 'static {
    /// Appends a batch of messages in one durable write (group commit: the whole batch shares
    /// one fsync). Outcomes are in batch order. Seqs are assigned in batch order.
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>>;

    /// Commits a group of appends and watermark moves, in batch order, as one durable write
    /// where the backend can (the embedded store: one log append and one fsync). Outcomes are
    /// in batch order (see [`Committed`] for watermark coalescing and the last-seq bound).
    /// When it returns `Ok`, every write is durable; on `Err` any of them may or may not have
    /// been written (appends are deduplicated on retry, watermarks are monotonic).
    ///
    /// The default runs consecutive appends as one [`Store::append`] and each watermark move
    /// as [`Store::last_seq`] + [`Store::set_watermark`]; backends override it to do the whole
    /// group in one round trip.
    fn commit<'a>(
        &'a self,
        batch: &'a [Write],
    ) -> BoxFuture<'a, Result<Vec<Committed>, StoreError>> {
        Box::pin(commit_in_steps(self, batch))
    }

    /// For a backend whose writes are local blocking I/O (the embedded store): the same group
    /// commit run on the calling thread. The dispatch commit thread uses it when offered,
    /// which saves a hand-off to another thread per group. Default: `None` (use `commit`).
    fn blocking_commit(&self) -> Option<&dyn BlockingCommit> {
        None
    }

    /// Reads stored messages of `conversation_id` with `from_seq <= seq < from_seq + window`,
    /// in seq order, and the conversation's latest seq.
    fn read_range<'a>(
        &'a self,
        conversation_id: &'a str,
        from_seq: u64,
        window: u32,
    ) -> BoxFuture<'a, Result<Range, StoreError>>;

    /// One message, if stored.
    fn get_message<'a>(
        &'a self,
        conversation_id: &'a str,
        seq: u64,
    ) -> BoxFuture<'a, Result<Option<v1::Message>, StoreError>>;

    /// The conversation's latest seq (0 when it has none).
    fn last_seq<'a>(&'a self, conversation_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Moves `user_id`'s watermark of `kind` forward to `seq` (never back; read also moves
    /// delivered). Returns the resulting watermarks and whether anything moved. The store does
    /// not bound `seq` by the conversation's last seq: dispatch refuses a seq above it first.
    fn set_watermark<'a>(
        &'a self,
        conversation_id: &'a str,
        user_id: &'a str,
        kind: v1::ReceiptKind,
        seq: u64,
    ) -> BoxFuture<'a, Result<WatermarkUpdate, StoreError>>;

    /// Whether (sender_user_id, client_msg_id) is already stored, or claimed by a write that
    /// may still be in flight (a backend whose dedupe claim precedes the write). Dispatch asks
    /// it before refusing a recall of an already recalled message, so that a resend of the
    /// recall that did it still gets its original ack.
    fn client_msg_id_known<'a>(
        &'a self,
        sender_user_id: &'a str,
        client_msg_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Every member's watermarks in a conversation, by user id order (members without any
    /// receipt are absent).
    fn watermarks<'a>(
        &'a self,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Watermarks)>, StoreError>>;

    /// The user's conversations with id > `after`, in id order, at most `limit`.
    fn list_conversations<'a>(
        &'a self,
        user_id: &'a str,
        after: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<ConversationEntry>, StoreError>>;

    /// Of `user_ids`, those who muted `conversation_id` ([`FlagsWrite::muted`]), in
    /// `user_ids` order (an id given twice is answered twice), in one round trip per backend:
    /// what the offline-push stage reads for a message's recipients. Unknown users and a
    /// conversation never flagged answer nothing.
    fn muted_among<'a>(
        &'a self,
        conversation_id: &'a str,
        user_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let _ = (conversation_id, user_ids);
        Box::pin(async { Err(StoreError::Unsupported("conversation flags")) })
    }

    /// A group's record and version (`None`: no such group; a dissolved one is returned).
    fn get_group<'a>(
        &'a self,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<GroupState>, StoreError>> {
        let _ = conversation_id;
        Box::pin(async { Err(StoreError::Unsupported("groups")) })
    }

    /// One user's row in a group, current or former (`None`: never a member).
    fn group_member<'a>(
        &'a self,
        conversation_id: &'a str,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Member>, StoreError>> {
        let _ = (conversation_id, user_id);
        Box::pin(async { Err(StoreError::Unsupported("groups")) })
    }

    /// A group's current members with user id > `after`, in user id order, at most `limit`.
    fn group_members<'a>(
        &'a self,
        conversation_id: &'a str,
        after: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Member>, StoreError>> {
        let _ = (conversation_id, after, limit);
        Box::pin(async { Err(StoreError::Unsupported("groups")) })
    }

    /// Applies `write` to the record of `user_id`'s device `device_id` (creating it), durably
    /// (fsynced, or what the backend's durability setting promises for commits), and returns
    /// the record after it. Concurrent writes of one device are serialized (no lost update).
    fn device_write<'a>(
        &'a self,
        user_id: &'a str,
        device_id: &'a str,
        write: &'a DeviceWrite,
    ) -> BoxFuture<'a, Result<DeviceRecord, StoreError>> {
        let _ = (user_id, device_id, write);
        Box::pin(async { Err(StoreError::Unsupported("devices")) })
    }

    /// One device's record (`None`: it never logged in).
    fn device<'a>(
        &'a self,
        user_id: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<DeviceRecord>, StoreError>> {
        let _ = (user_id, device_id);
        Box::pin(async { Err(StoreError::Unsupported("devices")) })
    }

    /// Every device of `user_id`, in device id order.
    fn devices<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeviceRecord>, StoreError>> {
        let _ = user_id;
        Box::pin(async { Err(StoreError::Unsupported("devices")) })
    }

    /// The devices with a push registration of every user in `user_ids` (each user once, in
    /// `user_ids` order, a user's devices in device id order), in one round trip where the
    /// backend can: what the notifier reads for the offline members of a conversation. The
    /// default asks [`Store::devices`] per user.
    fn push_registrations<'a>(
        &'a self,
        user_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, DeviceRecord)>, StoreError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for (i, u) in user_ids.iter().enumerate() {
                if user_ids[..i].contains(u) {
                    continue;
                }
                for d in self.devices(u).await? {
                    if d.push.is_some() {
                        out.push((u.clone(), d));
                    }
                }
            }
            Ok(out)
        })
    }

    /// A cheap health probe for `/healthz`: a write round-trip where the backend can do one
    /// (a small probe record outside every conversation, written with the store's normal
    /// durability and read back), so `Ok` means the store takes writes right now. The three
    /// backends override it; this default only reads (the latest seq of a conversation id no
    /// client can use).
    fn health(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.last_seq(HEALTH_PROBE_ID).await.map(drop) })
    }
}

/// A group commit on the calling thread ([`Store::blocking_commit`]).
pub trait BlockingCommit: Send + Sync {
    /// As [`Store::commit`], blocking the calling thread until the group is durable.
    fn commit_now(&self, batch: &[Write]) -> Result<Vec<Committed>, StoreError>;
}

/// An id no client can use (ids never contain a space): the default [`Store::health`] reads
/// it, and backends may key their probe record with it.
pub const HEALTH_PROBE_ID: &str = "tern health probe";

/// [`Store::commit`] out of the single-purpose calls: runs of appends as one `append`, each
/// watermark move bounded by `last_seq`, then coalesced per (conversation, user).
async fn commit_in_steps<S: Store + ?Sized>(
    store: &S,
    batch: &[Write],
) -> Result<Vec<Committed>, StoreError> {
    let mut out: Vec<Committed> = Vec::with_capacity(batch.len());
    let mut appends = Vec::new();
    let mut iter = batch.iter().peekable();
    // (conversation, user) -> index of the latest outcome of that key, and whether any moved.
    let mut groups: std::collections::HashMap<(String, String), (Vec<usize>, bool)> =
        std::collections::HashMap::new();
    while let Some(write) = iter.next() {
        match write {
            Write::Append(m) => {
                appends.push(m.clone());
                if !matches!(iter.peek(), Some(Write::Append(_))) {
                    let run = std::mem::take(&mut appends);
                    let n = run.len();
                    let done = store.append(run).await?;
                    if done.len() != n {
                        return Err(StoreError::Corrupt("wrong number of append outcomes".into()));
                    }
                    out.extend(done.into_iter().map(Committed::Appended));
                }
            }
            Write::Group(_) => return Err(StoreError::Unsupported("groups")),
            Write::Flags(_) => return Err(StoreError::Unsupported("conversation flags")),
            Write::Watermark(w) => {
                let last_seq = store.last_seq(&w.conversation_id).await?;
                if w.seq > last_seq {
                    out.push(Committed::AboveLastSeq { last_seq });
                    continue;
                }
                let up = store.set_watermark(&w.conversation_id, &w.user_id, w.kind, w.seq).await?;
                let key = (w.conversation_id.clone(), w.user_id.clone());
                let group = groups.entry(key).or_default();
                group.0.push(out.len());
                group.1 |= up.moved;
                out.push(Committed::Watermark(up));
            }
        }
    }
    // Coalesce: every outcome of a key carries the final watermarks and the group's `moved`.
    for (indexes, moved) in groups.into_values() {
        let Some(&last) = indexes.last() else { continue };
        let Committed::Watermark(fin) = out[last] else { continue };
        for i in indexes {
            out[i] = Committed::Watermark(WatermarkUpdate { watermarks: fin.watermarks, moved });
        }
    }
    Ok(out)
}
