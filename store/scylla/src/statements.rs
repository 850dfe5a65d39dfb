//! Every data statement the backend sends: its CQL text, whether it is idempotent, and its
//! consistency class. All are prepared at connect; unit tests check each against
//! `schema.cql` (columns exist, the whole partition key is restricted, no ALLOW FILTERING).
//!
//! Idempotence follows one rule: lightweight transactions (`IF ...`) are not idempotent (a
//! retry after an unknown outcome could apply twice); every other statement is a pure upsert
//! or read of fixed values and is idempotent (the driver may retry it on another node).
//! Statements whose ordering matters under concurrent writers carry `USING TIMESTAMP ?`
//! with a timestamp derived from the value they write (see the store's module doc).

use scylla::client::session::Session;
use scylla::errors::PrepareError;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

use crate::schema::KEYSPACE_PLACEHOLDER;

/// How a statement's consistency is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Plain read or write: the configured consistency (default LOCAL_QUORUM).
    Plain,
    /// Lightweight transaction: Paxos at the configured serial consistency (default
    /// SERIAL), commit at the configured consistency.
    Lwt,
    /// Read at the serial consistency: sees every accepted Paxos proposal (used to observe
    /// LWT-written rows linearizably).
    SerialRead,
    /// A plain read or write of a group member row, which the membership check of a send
    /// depends on: at the level [`membership_consistency`] gives, so that a row a change wrote
    /// in one datacentre is seen by a send checked in another.
    Membership,
}

/// The consistency of a [`Class::Membership`] statement: QUORUM (a majority of all replicas)
/// when LWTs are SERIAL (workers may write one group from several datacentres) and the
/// configured level is LOCAL_QUORUM, whose write and read quorums in two different
/// datacentres need not meet; `None` (the configured level) otherwise: with LOCAL_SERIAL
/// every conversation is written from one datacentre at a time, and QUORUM, EACH_QUORUM or
/// ALL already meet. In a single-datacentre cluster QUORUM is the same replicas as
/// LOCAL_QUORUM.
pub(crate) fn membership_consistency(
    configured: Consistency,
    serial: SerialConsistency,
) -> Option<Consistency> {
    (serial == SerialConsistency::Serial && configured == Consistency::LocalQuorum)
        .then_some(Consistency::Quorum)
}

macro_rules! statements {
    ($( $(#[$doc:meta])* $name:ident: $class:ident, $cql:expr; )*) => {
        /// A statement of the backend; `Stmt as usize` indexes [`Prepared`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Stmt { $( $(#[$doc])* $name, )* }

        impl Stmt {
            /// Every statement, in declaration (= index) order.
            pub(crate) const ALL: &'static [Stmt] = &[$(Stmt::$name),*];

            /// CQL text with the `${keyspace}` placeholder.
            pub(crate) fn cql(self) -> &'static str {
                match self { $(Stmt::$name => $cql,)* }
            }

            /// Consistency class.
            pub(crate) fn class(self) -> Class {
                match self { $(Stmt::$name => Class::$class,)* }
            }
        }
    };
}

statements! {
    /// Writes a message row. Timestamp: server_time_ms * 1000, the same for every writer of
    /// this (seq, message), so a rewrite by a completing resend never overrides a recall.
    InsertMessage: Plain,
        "INSERT INTO ${keyspace}.messages (conversation_id, bucket, seq, message, allocated_at_ms) \
         VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
    /// Marks a message recalled and replaces its blob with the body-less one.
    RecallMessage: Plain,
        "UPDATE ${keyspace}.messages USING TIMESTAMP ? SET message = ?, recalled = true \
         WHERE conversation_id = ? AND bucket = ? AND seq = ?";
    /// One bucket's part of a read window.
    SelectMessages: Plain,
        "SELECT seq, message, recalled, allocated_at_ms FROM ${keyspace}.messages \
         WHERE conversation_id = ? AND bucket = ? AND seq >= ? AND seq <= ?";
    /// One message.
    SelectMessage: Plain,
        "SELECT seq, message, recalled, allocated_at_ms FROM ${keyspace}.messages \
         WHERE conversation_id = ? AND bucket = ? AND seq = ?";
    /// The allocator row (latest allocated seq; for a group, the version of its latest change).
    SelectMeta: Plain,
        "SELECT last_seq, last_alloc_ms, last_owner, group_version FROM ${keyspace}.conversation_meta \
         WHERE conversation_id = ?";
    /// The allocator row, linearizably (after an LWT with unknown outcome).
    SelectMetaSerial: SerialRead,
        "SELECT last_seq, last_alloc_ms, last_owner, group_version FROM ${keyspace}.conversation_meta \
         WHERE conversation_id = ?";
    /// Allocates seq 1... of a new conversation (expected last_seq 0: no row yet).
    InsertMeta: Lwt,
        "INSERT INTO ${keyspace}.conversation_meta \
         (conversation_id, last_seq, last_time_ms, last_alloc_ms, last_owner) VALUES (?, ?, ?, ?, ?) \
         IF NOT EXISTS";
    /// Allocates the next seq by compare-and-set on last_seq.
    CasMeta: Lwt,
        "UPDATE ${keyspace}.conversation_meta SET last_seq = ?, last_time_ms = ?, last_alloc_ms = ?, last_owner = ? \
         WHERE conversation_id = ? IF last_seq = ?";
    /// Claims (sender, client_msg_id) with seq 0 (no seq yet).
    ClaimDedupe: Lwt,
        "INSERT INTO ${keyspace}.dedupe \
         (sender_user_id, client_msg_id, conversation_id, owner, claimed_at_ms, seq, server_time_ms, request_digest) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS";
    /// Takes over an abandoned claim (no seq yet, or a seq that settled as a hole), resetting
    /// it to "claimed, no seq".
    TakeOverDedupe: Lwt,
        "UPDATE ${keyspace}.dedupe SET owner = ?, claimed_at_ms = ?, conversation_id = ?, seq = ?, request_digest = ? \
         WHERE sender_user_id = ? AND client_msg_id = ? IF owner = ? AND seq = ?";
    /// Binds the allocated seq to the claim (only while still its owner and unbound), with
    /// the group version a group message was sequenced at (0 outside groups).
    BindDedupe: Lwt,
        "UPDATE ${keyspace}.dedupe SET seq = ?, server_time_ms = ?, allocated_at_ms = ?, group_version = ? \
         WHERE sender_user_id = ? AND client_msg_id = ? IF owner = ? AND seq = ?";
    /// A claim, linearizably.
    SelectDedupeSerial: SerialRead,
        "SELECT conversation_id, owner, claimed_at_ms, seq, server_time_ms, allocated_at_ms, request_digest, group_version \
         FROM ${keyspace}.dedupe \
         WHERE sender_user_id = ? AND client_msg_id = ?";
    /// Releases a claim this writer holds without a seq (its write was refused), so that the
    /// same id can be used again at once (e.g. a group change recomputed after a conflict).
    ReleaseDedupe: Lwt,
        "DELETE FROM ${keyspace}.dedupe \
         WHERE sender_user_id = ? AND client_msg_id = ? IF owner = ? AND seq = ?";
    /// Binds a committed group change's event to its dedupe key, whoever holds the claim
    /// now (the change is the truth once allocated; see `group.rs`): sets the original's
    /// conversation, seq, time and digest on a key without a seq.
    BindGroupEvent: Lwt,
        "UPDATE ${keyspace}.dedupe SET conversation_id = ?, seq = ?, server_time_ms = ?, allocated_at_ms = ?, request_digest = ?, group_version = ? \
         WHERE sender_user_id = ? AND client_msg_id = ? IF seq = ?";
    /// Moves a member's index entry to a seq (timestamp = seq: the highest seq wins).
    UpsertIndex: Plain,
        "UPDATE ${keyspace}.user_conversations USING TIMESTAMP ? SET last_seq = ?, last_time_ms = ? \
         WHERE user_id = ? AND conversation_id = ?";
    /// Moves a member's index entry to a seq that mentions them, with their mention seq
    /// (timestamp = seq, as `UpsertIndex`).
    UpsertIndexMention: Plain,
        "UPDATE ${keyspace}.user_conversations USING TIMESTAMP ? SET last_seq = ?, last_time_ms = ?, mention_seq = ? \
         WHERE user_id = ? AND conversation_id = ?";
    /// Moves a group member's mention seq (timestamp = seq; their entry itself follows the
    /// group: read diffusion).
    UpsertMention: Plain,
        "UPDATE ${keyspace}.user_conversations USING TIMESTAMP ? SET mention_seq = ? \
         WHERE user_id = ? AND conversation_id = ?";
    /// Sets a user's flags of a conversation (timestamp = the writer's clock in microseconds;
    /// an unset value leaves that flag as it is).
    SetFlags: Plain,
        "UPDATE ${keyspace}.user_conversations USING TIMESTAMP ? SET muted = ?, pinned = ? \
         WHERE user_id = ? AND conversation_id = ?";
    /// Sets a user's mute of a conversation in the conversation's mutes (written with
    /// `SetFlags`, the same timestamp and value).
    SetMute: Plain,
        "UPDATE ${keyspace}.conversation_mutes USING TIMESTAMP ? SET muted = ? \
         WHERE conversation_id = ? AND user_id = ?";
    /// Every user who ever set a mute of a conversation, with their mute (paged).
    SelectMutes: Plain,
        "SELECT user_id, muted FROM ${keyspace}.conversation_mutes WHERE conversation_id = ?";
    /// One page of a user's conversations after an id, with the user's mentions and flags.
    ListIndex: Plain,
        "SELECT conversation_id, last_seq, last_time_ms, mention_seq, muted, pinned FROM ${keyspace}.user_conversations \
         WHERE user_id = ? AND conversation_id > ? LIMIT ?";
    /// Raises the delivered watermark (timestamp = value: the highest value wins).
    SetDelivered: Plain,
        "UPDATE ${keyspace}.receipts USING TIMESTAMP ? SET delivered_seq = ? \
         WHERE conversation_id = ? AND user_id = ?";
    /// Raises the read watermark (timestamp = value: the highest value wins).
    SetRead: Plain,
        "UPDATE ${keyspace}.receipts USING TIMESTAMP ? SET read_seq = ? \
         WHERE conversation_id = ? AND user_id = ?";
    /// One member's watermarks.
    SelectReceipt: Plain,
        "SELECT delivered_seq, read_seq FROM ${keyspace}.receipts \
         WHERE conversation_id = ? AND user_id = ?";
    /// Every member's watermarks of a conversation.
    SelectReceipts: Plain,
        "SELECT user_id, delivered_seq, read_seq FROM ${keyspace}.receipts \
         WHERE conversation_id = ?";
    /// A group's head: allocator, version, record and pending change.
    SelectGroup: Plain,
        "SELECT last_seq, last_time_ms, last_owner, group_version, group_dissolved, group_record, group_pending, change_fence, mention_all_seq \
         FROM ${keyspace}.conversation_meta WHERE conversation_id = ?";
    /// A group's head, linearizably (before a refusal, after an LWT with unknown outcome).
    SelectGroupSerial: SerialRead,
        "SELECT last_seq, last_time_ms, last_owner, group_version, group_dissolved, group_record, group_pending, change_fence, mention_all_seq \
         FROM ${keyspace}.conversation_meta WHERE conversation_id = ?";
    /// Allocates a group message's seq at the version its sender was checked at.
    CasGroupSend: Lwt,
        "UPDATE ${keyspace}.conversation_meta SET last_seq = ?, last_time_ms = ?, last_alloc_ms = ?, last_owner = ? \
         WHERE conversation_id = ? IF last_seq = ? AND group_version = ?";
    /// As `CasGroupSend`, for a message mentioning all: its seq becomes the group's
    /// `mention_all_seq` in the same LWT (read diffusion: no per-member write).
    CasGroupSendMentionAll: Lwt,
        "UPDATE ${keyspace}.conversation_meta SET last_seq = ?, last_time_ms = ?, last_alloc_ms = ?, last_owner = ?, mention_all_seq = ? \
         WHERE conversation_id = ? IF last_seq = ? AND group_version = ?";
    /// Creates a group (no row yet): seq, version, record and pending change at once.
    InsertGroup: Lwt,
        "INSERT INTO ${keyspace}.conversation_meta \
         (conversation_id, last_seq, last_time_ms, last_alloc_ms, last_owner, group_version, group_dissolved, group_record, group_pending, change_fence) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS";
    /// Commits a group change: its event's seq becomes the version, with the record and the
    /// pending change, if nothing moved since the change was computed.
    CasGroupChange: Lwt,
        "UPDATE ${keyspace}.conversation_meta SET last_seq = ?, last_time_ms = ?, last_alloc_ms = ?, last_owner = ?, \
         group_version = ?, group_dissolved = ?, group_record = ?, group_pending = ? \
         WHERE conversation_id = ? IF last_seq = ? AND group_version = ? AND change_fence = ?";
    /// Clears a completed change (only while it is still the latest one).
    ClearPending: Lwt,
        "UPDATE ${keyspace}.conversation_meta SET group_pending = ? \
         WHERE conversation_id = ? IF group_version = ?";
    /// A fence row for a conversation without one (no seq, no group).
    InsertFence: Lwt,
        "INSERT INTO ${keyspace}.conversation_meta (conversation_id, last_seq, group_version, change_fence) \
         VALUES (?, ?, ?, ?) IF NOT EXISTS";
    /// Moves the change fence (to a higher value; the same value to settle an unknown outcome).
    CasFence: Lwt,
        "UPDATE ${keyspace}.conversation_meta SET change_fence = ? \
         WHERE conversation_id = ? IF change_fence = ?";
    /// One member row (timestamp = the event's seq: the latest change wins).
    UpsertMember: Membership,
        "UPDATE ${keyspace}.group_members USING TIMESTAMP ? SET role = ?, joined_seq = ?, visible_from = ?, removed_seq = ? \
         WHERE conversation_id = ? AND user_id = ?";
    /// One user's member row, current or former.
    SelectMember: Membership,
        "SELECT user_id, role, joined_seq, visible_from, removed_seq FROM ${keyspace}.group_members \
         WHERE conversation_id = ? AND user_id = ?";
    /// A current member's row (timestamp = the event's seq).
    UpsertCurrent: Membership,
        "UPDATE ${keyspace}.group_current USING TIMESTAMP ? SET role = ?, joined_seq = ?, visible_from = ? \
         WHERE conversation_id = ? AND user_id = ?";
    /// A removal from the current members (timestamp = the event's seq).
    DeleteCurrent: Membership,
        "DELETE FROM ${keyspace}.group_current USING TIMESTAMP ? \
         WHERE conversation_id = ? AND user_id = ?";
    /// One page of a group's current members after a user id.
    ListCurrent: Membership,
        "SELECT user_id, role, joined_seq, visible_from FROM ${keyspace}.group_current \
         WHERE conversation_id = ? AND user_id > ? LIMIT ?";
    /// Records a setting at first start; returns the stored one when it exists.
    InsertSetting: Lwt,
        "INSERT INTO ${keyspace}.settings (setting, int_value) VALUES (?, ?) IF NOT EXISTS";
    /// A device's check-in (timestamp = its time: the latest check-in wins).
    CheckInDevice: Plain,
        "UPDATE ${keyspace}.devices USING TIMESTAMP ? SET platform = ?, last_seen_ms = ? \
         WHERE user_id = ? AND device_id = ?";
    /// A device's push registration (timestamp = its registration time).
    SetDevicePush: Plain,
        "UPDATE ${keyspace}.devices USING TIMESTAMP ? SET push = ? \
         WHERE user_id = ? AND device_id = ?";
    /// Removes a device's push registration (timestamp = now: earlier registrations go).
    ClearDevicePush: Plain,
        "DELETE push FROM ${keyspace}.devices USING TIMESTAMP ? \
         WHERE user_id = ? AND device_id = ?";
    /// A logout's fence (timestamp = the fence: the highest wins).
    FenceDevice: Plain,
        "UPDATE ${keyspace}.devices USING TIMESTAMP ? SET revoked_before_ms = ? \
         WHERE user_id = ? AND device_id = ?";
    /// One device.
    SelectDevice: Plain,
        "SELECT device_id, platform, last_seen_ms, revoked_before_ms, push FROM ${keyspace}.devices \
         WHERE user_id = ? AND device_id = ?";
    /// Every device of a user.
    SelectDevices: Plain,
        "SELECT device_id, platform, last_seen_ms, revoked_before_ms, push FROM ${keyspace}.devices \
         WHERE user_id = ?";
}

impl Stmt {
    /// Whether the driver may retry the statement after an unknown outcome.
    pub(crate) fn idempotent(self) -> bool {
        self.class() != Class::Lwt
    }

    /// The text for `keyspace`.
    pub(crate) fn render(self, keyspace: &str) -> String {
        self.cql().replace(KEYSPACE_PLACEHOLDER, keyspace)
    }
}

/// Every [`Stmt`], prepared, with idempotence and consistency set.
#[derive(Debug)]
pub(crate) struct Prepared {
    by_stmt: Vec<PreparedStatement>,
}

impl Prepared {
    /// Prepares every statement for `keyspace` (one round trip each, in turn).
    pub(crate) async fn prepare(
        session: &Session,
        keyspace: &str,
        consistency: Consistency,
        serial: SerialConsistency,
        page_size: i32,
    ) -> Result<Self, (Stmt, PrepareError)> {
        let mut by_stmt = Vec::with_capacity(Stmt::ALL.len());
        for &stmt in Stmt::ALL {
            let mut p = session.prepare(stmt.render(keyspace)).await.map_err(|e| (stmt, e))?;
            p.set_is_idempotent(stmt.idempotent());
            p.set_page_size(page_size.max(1));
            match stmt.class() {
                Class::SerialRead => p.set_consistency(match serial {
                    SerialConsistency::Serial => Consistency::Serial,
                    SerialConsistency::LocalSerial => Consistency::LocalSerial,
                }),
                Class::Membership => {
                    if let Some(c) = membership_consistency(consistency, serial) {
                        p.set_consistency(c);
                    }
                }
                Class::Plain | Class::Lwt => {}
            }
            by_stmt.push(p);
        }
        Ok(Self { by_stmt })
    }

    /// The prepared form of `stmt`.
    pub(crate) fn get(&self, stmt: Stmt) -> &PreparedStatement {
        // Built from Stmt::ALL in index order, so every index is present.
        &self.by_stmt[stmt as usize]
    }
}

#[cfg(test)]
mod tests;
