//! The group decisions, as pure functions of the rows read: may this sender send, what does
//! this change write (or why is it refused), which rows a reader sees while a change is being
//! completed, and what completing a change writes. The LWT code (`write.rs`, `read.rs`) reads
//! rows, calls these and executes their answers; the unit tests (`tests.rs`) drive them alone.

use tern_store::{GroupMeta, GroupWrite, Member, MemberChange, Refusal};

/// A group conversation's head as one read of its `conversation_meta` row gives it.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Snapshot {
    /// The row exists (a group create on a missing row inserts it, on a row that exists
    /// updates it).
    pub exists: bool,
    /// The latest allocated seq of the conversation.
    pub last_seq: u64,
    /// Its acceptance time.
    pub last_time_ms: i64,
    /// The owner token of the latest allocation (settles an LWT with unknown outcome).
    pub last_owner: Option<String>,
    /// The seq of the group's latest change (0: no group).
    pub version: u64,
    /// `group_version` as stored, for the LWT condition (`None`: null).
    pub version_cql: Option<i64>,
    /// `change_fence` as stored, for the LWT condition (`None`: null).
    pub fence: Option<i64>,
    /// The latest change dissolved the group.
    pub dissolved: bool,
    /// The record after the latest change (`None` without a group).
    pub record: Option<GroupMeta>,
    /// The latest change, while it is not known to be completed.
    pub pending: Option<Pending>,
    /// The latest seq of a message mentioning all (0: none).
    pub mention_all_seq: u64,
}

/// A committed group change's completion record (`conversation_meta.group_pending`):
/// everything needed to write its event and rows, by anyone, any number of times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    /// The event's seq (= the group's version it made).
    pub seq: u64,
    /// The event's acceptance time.
    pub server_time_ms: i64,
    /// When its seq was allocated (the message row's `allocated_at_ms`).
    pub allocated_at_ms: i64,
    /// Owner token of the writer that claimed its dedupe key.
    pub owner: String,
    /// The event's dedupe key: sender...
    pub sender_user_id: String,
    /// ...and client message id.
    pub client_msg_id: String,
    /// The event request's digest (bound into the dedupe key with the seq).
    pub request_digest: i64,
    /// The event as stored (encoded `tern.v1.Message`, seq set).
    pub event: Vec<u8>,
    /// The member rows after the change, one per changed user, in the change's order.
    pub rows: Vec<Member>,
}

impl Pending {
    /// The row the change gives `user`, if it changes it.
    pub(crate) fn row(&self, user: &str) -> Option<&Member> {
        self.rows.iter().find(|m| m.user_id == user)
    }
}

/// `user`'s row at the snapshot's version: the pending change's row when it names the user
/// (it is the truth, its writes may not have landed), else the table's (every earlier change
/// was completed before this one was committed).
pub(crate) fn effective(
    pending: Option<&Pending>,
    user: &str,
    table: Option<Member>,
) -> Option<Member> {
    match pending.and_then(|p| p.row(user)) {
        Some(row) => Some(row.clone()),
        None => table,
    }
}

/// Whether the sender whose row at `s.version` is `sender` may send to the group now: the
/// version to sequence the message at (the allocation is conditional on it), or the refusal.
pub(crate) fn may_send(s: &Snapshot, sender: Option<&Member>) -> Result<u64, Refusal> {
    if s.version == 0 || s.dissolved {
        return Err(Refusal::NoSuchGroup);
    }
    if sender.is_some_and(Member::is_current) { Ok(s.version) } else { Err(Refusal::NotAMember) }
}

/// The rows a change gives at `seq` (= `s.last_seq + 1`), or why it is refused. `before[i]`:
/// the row of `w.members[i]`'s user at `s.version` (see [`effective`]).
///
/// The same order of checks as the other backends: a version other than the expected one
/// (0: no group) → `VersionConflict` with the current version; a dissolved group →
/// `NoSuchGroup`; a row change that does not fit the row (a join of a current member, a role
/// or removal of a non-member) → `VersionConflict`, so the caller recomputes from the
/// current state.
pub(crate) fn plan_rows(
    s: &Snapshot,
    w: &GroupWrite,
    before: &[Option<Member>],
    seq: u64,
) -> Result<Vec<Member>, Refusal> {
    if s.version != w.expect_version {
        return Err(Refusal::VersionConflict { version: s.version });
    }
    if s.dissolved {
        return Err(Refusal::NoSuchGroup);
    }
    let stale = Refusal::VersionConflict { version: s.version };
    if before.len() != w.members.len() {
        return Err(stale);
    }
    w.members
        .iter()
        .zip(before)
        .map(|(change, row)| {
            let current = row.clone().filter(Member::is_current);
            match (change, current) {
                (MemberChange::Join { user_id, role, full_history }, None) => Ok(Member {
                    user_id: user_id.clone(),
                    role: *role,
                    joined_seq: seq,
                    visible_from: if *full_history { 1 } else { seq },
                    removed_seq: 0,
                }),
                (MemberChange::SetRole { role, .. }, Some(b)) => Ok(Member { role: *role, ..b }),
                (MemberChange::Remove { .. }, Some(b)) => Ok(Member { removed_seq: seq, ..b }),
                _ => Err(stale),
            }
        })
        .collect()
}

/// What the writer adds to the rows [`plan_rows`] accepted to make a change's completion
/// record.
pub(crate) struct Stamp<'a> {
    /// Allocation time.
    pub allocated_at_ms: i64,
    /// Owner token of the claim.
    pub owner: &'a str,
    /// The event request's digest.
    pub request_digest: i64,
    /// The event as stored.
    pub event: Vec<u8>,
}

/// The pending change that the allocating LWT stores.
pub(crate) fn pending(w: &GroupWrite, seq: u64, rows: Vec<Member>, stamp: Stamp<'_>) -> Pending {
    Pending {
        seq,
        server_time_ms: w.event.server_time_ms,
        allocated_at_ms: stamp.allocated_at_ms,
        owner: stamp.owner.to_owned(),
        sender_user_id: w.event.sender_user_id.clone(),
        client_msg_id: w.event.client_msg_id.clone(),
        request_digest: stamp.request_digest,
        event: stamp.event,
        rows,
    }
}

/// One plain write of a change's completion. Every one is an upsert (or delete) of values fixed
/// by the change, with a write timestamp fixed by it, so writing it twice, late, or after a
/// later change's writes changes nothing: the later change (higher seq, higher timestamp)
/// wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RowWrite<'a> {
    /// The event message row (timestamp: server_time_ms * 1000, as every message row).
    Event {
        /// Its bucket.
        bucket: u64,
    },
    /// The user's `group_members` row (timestamp: seq).
    Member(&'a Member),
    /// The user's `group_current` row, current member (timestamp: seq).
    Current(&'a Member),
    /// Deletes the user's `group_current` row (timestamp: seq).
    NotCurrent(&'a str),
    /// The user's `user_conversations` entry at (seq, time) (timestamp: seq).
    Index(&'a str),
}

/// What completing `p` writes, before its dedupe key is bound and the pending record cleared:
/// the event, then per changed user their member row, current row (or its deletion) and index
/// entry.
pub(crate) fn completion(p: &Pending, bucket_size: u64) -> Vec<RowWrite<'_>> {
    let mut out = Vec::with_capacity(1 + 3 * p.rows.len());
    out.push(RowWrite::Event { bucket: crate::bucket::bucket_of(p.seq, bucket_size) });
    for row in &p.rows {
        out.push(RowWrite::Member(row));
        out.push(if row.is_current() {
            RowWrite::Current(row)
        } else {
            RowWrite::NotCurrent(&row.user_id)
        });
        out.push(RowWrite::Index(&row.user_id));
    }
    out
}

/// How many rows to ask the table for so that a page of `limit` current members survives the
/// pending change's removals.
pub(crate) fn page_query_limit(pending: Option<&Pending>, limit: u32) -> u32 {
    let removals = pending.map_or(0, |p| p.rows.iter().filter(|m| !m.is_current()).count());
    limit.saturating_add(u32::try_from(removals).unwrap_or(u32::MAX))
}

/// A page of current members with id > `after`, at most `limit`: `table` (the current-member
/// rows with id > `after`, in id order, `queried` asked for) with the pending change's rows laid
/// over it. A pending row past the last table row of a full answer belongs to a later page.
pub(crate) fn page(
    table: Vec<Member>,
    queried: u32,
    pending: Option<&Pending>,
    after: &str,
    limit: u32,
) -> Vec<Member> {
    let full = table.len() >= queried as usize;
    let horizon = if full { table.last().map(|m| m.user_id.clone()) } else { None };
    let mut rows = table;
    if let Some(p) = pending {
        for row in &p.rows {
            if row.user_id.as_str() <= after
                || horizon.as_ref().is_some_and(|h| row.user_id.as_str() > h.as_str())
            {
                continue;
            }
            rows.retain(|m| m.user_id != row.user_id);
            if row.is_current() {
                rows.push(row.clone());
            }
        }
        rows.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    }
    rows.truncate(limit as usize);
    rows
}

/// The (last_seq, last_time_ms) a user's conversation list shows for a group (read diffusion:
/// no per-member write per message). `entry`: the user's index entry (written at each change
/// of their row); `row`: their row at the snapshot's version. A current member sees the
/// group's latest seq; a former member their removal (also while the removal's index write
/// is pending).
pub(crate) fn list_entry(entry: (u64, i64), s: &Snapshot, row: Option<&Member>) -> (u64, i64) {
    match row {
        Some(m) if m.is_current() => {
            if s.last_seq >= entry.0 {
                (s.last_seq, s.last_time_ms)
            } else {
                entry
            }
        }
        Some(m) if m.removed_seq > entry.0 => {
            let time = s
                .pending
                .as_ref()
                .filter(|p| p.seq == m.removed_seq)
                .map_or(entry.1, |p| p.server_time_ms);
            (m.removed_seq, time)
        }
        _ => entry,
    }
}

/// What a writer learns after an allocating LWT of a group change whose outcome it does not
/// know, from SERIAL reads (taken after a settling LWT on the row) of the head and of its own
/// dedupe claim.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Settled {
    /// The change is the pending one: it was applied; complete it.
    Applied(Pending),
    /// Applied and already completed by another writer: the claim carries the seq.
    Completed {
        /// The event's seq.
        seq: u64,
    },
    /// The claim is no longer this writer's (taken over: it was slower than `settle_grace`):
    /// stop; the client's resend learns the outcome from the dedupe key.
    Lost,
    /// Not applied (and, after the settling round, never will be): compute again.
    NotApplied,
}

/// See [`Settled`]. `claim`: (whether its owner is `owner`, its seq); `None` when it is gone.
pub(crate) fn settled(s: &Snapshot, owner: &str, claim: Option<(bool, u64)>) -> Settled {
    match (&s.pending, claim) {
        (Some(p), _) if p.owner == owner => Settled::Applied(p.clone()),
        (_, Some((true, seq))) if seq > 0 => Settled::Completed { seq },
        (_, Some((true, _))) => Settled::NotApplied,
        _ => Settled::Lost,
    }
}
