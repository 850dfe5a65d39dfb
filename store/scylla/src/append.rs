//! Appending: dedupe and seq allocation with lightweight transactions (LWT), correct with any
//! number of dispatch workers writing at once.
//!
//! # The mechanism, per message
//!
//! 1. **Claim** the dedupe key: `INSERT INTO dedupe (sender, client_msg_id, ..., owner, seq = 0)
//!    IF NOT EXISTS` with a fresh owner token. Not applied: the key exists, see *resend* below.
//! 2. **Allocate** a seq: compare-and-set on the conversation's allocator row,
//!    `UPDATE conversation_meta SET last_seq = e + 1 ... IF last_seq = e` (`INSERT ... IF NOT
//!    EXISTS` for the first seq). Not applied: the result carries the current `last_seq`;
//!    retry with it, at most `cas_max_attempts` times, then UNAVAILABLE.
//! 3. **Bind** the seq to the claim: `UPDATE dedupe SET seq = s ... IF owner = me AND seq = 0`.
//!    This is the linearization point of the message: from here on (sender, client_msg_id)
//!    means seq `s`, and only `s`.
//! 4. **Write** (only before the write fence, `allocated_at + settle_grace / 2`): for a recall,
//!    mark the target recalled; the message row; every member's index entry (`USING TIMESTAMP
//!    seq`, so the highest seq wins whatever order concurrent writers land in).
//!
//! A message to a **group** conversation (`g:`) allocates at step 2 with
//! `IF last_seq = e AND group_version = v`, where `v` is the group version its sender's row was
//! checked at; a **group change** allocates its event's seq with the same row and moves
//! `group_version` in the same LWT (see *Groups* below and `group.rs`).
//!
//! **Resend** (claim not applied): the existing claim decides ([`judge`]). Seq bound and the
//! message row stored: a duplicate, answered with the original (conversation, seq, time).
//! Seq bound, not stored, before the fence: the first writer is in flight or died after the
//! bind; if the resend is the same request (its [`request_digest`] equals the claim's), it
//! writes the same message at the same seq (every write is an idempotent upsert with a
//! timestamp fixed by the message, so both writers produce the same row); any other request
//! under that key waits instead, so it never writes its own kind, body or recall target at the
//! claim's seq and conversation.
//! Claim without seq, or a bound seq unstored past `settle_grace`: abandoned; the resend takes
//! it over (`UPDATE dedupe SET owner = me, seq = 0 ... IF owner = old AND seq = old_seq`) and
//! continues at step 2. Otherwise it waits (polling the claim with SERIAL reads) up to
//! `claim_wait`, then answers UNAVAILABLE; the client resends later.
//!
//! A claim refused by the group rules (not a member, no such group, a version conflict) is
//! **released** (`DELETE ... IF owner = me AND seq = 0`): nothing of it was written, and the
//! same id may be used again at once (dispatch recomputes a conflicting change and commits it
//! under the same id). A writer waiting on a claim that vanishes claims the key itself.
//!
//! # Groups: membership and seq in one compare-and-set
//!
//! A group's version (the seq of its latest change) lives in the conversation's allocator row
//! (`conversation_meta.group_version`), so it is linearized with every seq of the group:
//!
//! - **Send**: read the row (`last_seq = e`, `group_version = v`, the pending change if any),
//!   read the sender's member row (the pending change's row for the users it names, see
//!   below), refuse if there is no group, it is dissolved, or the sender is not a current
//!   member; else allocate `e + 1` `IF last_seq = e AND group_version = v`. Not applied with
//!   the same version: only `last_seq` moved (another send), retry at once with the new one,
//!   the membership decision still holds; a new version: read again. So the message is
//!   sequenced at exactly the version it was checked at. A refusal is confirmed with a SERIAL
//!   read first (a plain read may be behind the version the caller saw).
//! - **Change**: the event's seq `s = e + 1` becomes the version in the same LWT
//!   (`SET last_seq = s, group_version = s, group_record = .., group_pending = ..
//!   IF last_seq = e AND group_version = v AND change_fence = f`), which also stores the change's
//!   completion record (`group_pending`: its event and the member rows after it). The rows, the
//!   event message and the changed users' index entries are written after it, by plain
//!   idempotent writes (`USING TIMESTAMP s`); then the event is bound to its dedupe key and
//!   `group_pending` cleared (`IF group_version = s`).
//!
//! **Why a message never gets a seq after its sender's removal.** A removal at seq `r` moves
//! `group_version` to `r` in the LWT that allocates `r`. A send checked at version `v < r`
//! allocates `IF group_version = v`: linearized before `r`'s LWT it gets a seq below `r`;
//! after it, its condition fails and it reads again, sees the removal (the pending change
//! names the removed user until it is complete) and is refused. The sender's row it checks is
//! exact at `v`: every change before `v` was completed (its rows written where the check's
//! read meets them, see the last failure case) before `v`'s LWT could apply, because every change completes the pending one
//! before it computes itself, and `v`'s own rows are read from `group_pending` while set.
//!
//! **Crash between the change's LWT and its row writes.** The change is committed (it is the
//! version, the record is in the same row): it is never lost or undone, only completed. The
//! next change of the group completes it before deciding, a `read_range`/`get_message` that
//! reaches the event's seq completes it, and so does a resend of it (its claim has no seq but
//! the pending change names its owner). Until then a reader sees: `get_group` the new version
//! and record; `group_member(s)` and the send check the pending rows laid over the table;
//! `list_conversations` the removal seq for a removed user, but **not yet** the group for a
//! user the change added (their index entry is written by the completion).
//!
//! **Takeover of a group claim.** A change's allocation is its commit, so a claim without a seq
//! in a `g:` conversation is taken over only with a fence: after the takeover LWT, the resend
//! moves `change_fence` (LWT) and reads the row at SERIAL. If the pending change is the old
//! owner's, it completes it (binding the key to that event) and answers a duplicate. A change
//! computed before the takeover cannot apply after the fence moved; one computed after it
//! checks its own claim (SERIAL read) after reading the fence and before its LWT, so it sees
//! the takeover and stops. Either way at most one event is ever stored per key.
//!
//! # Why no seq is ever given twice and no message stored twice
//!
//! The allocator row is written only by LWTs, which Paxos makes linearizable: each applied
//! compare-and-set moves `last_seq` from `e` to `e + 1` exactly once, so two writers can never
//! both win `e + 1`, and `last_seq` never moves back. No cache or second system (no Redis) sits
//! in this path, so nothing can lose the allocator's state and hand out a seq again. A
//! compare-and-set whose outcome is unknown (timeout) is settled by a SERIAL read of the row
//! (`last_owner` tells whether the winner was us); if that is still unclear the seq is left
//! alone and becomes a hole, never reused. The dedupe claim is likewise LWT-only: one owner at
//! a time, and a seq is bound once (`IF seq = 0`).
//!
//! # Failure cases
//!
//! - Crash after the claim, before the bind: the claim has no seq; a resend takes it over
//!   after `settle_grace`. A seq allocated by the dead writer is a **hole**.
//! - Crash after the bind, before the message write: a resend within the fence writes the
//!   message at the bound seq; without a resend the seq settles as a hole after
//!   `settle_grace`, and a later resend takes the claim over and gets a new seq.
//! - A slow writer overtaken by a takeover fails its bind (`IF owner = me`) or passes its
//!   fence and writes nothing: UNAVAILABLE, its seq a hole.
//! - Holes are allowed by the contract: sync lists them in `missing`. A sequence that is
//!   unstored but younger than `settle_grace` (judged by the allocation times of later seqs)
//!   may still be written, so `read_range` stops before it instead of reporting it missing
//!   ([`first_unsettled`]).
//! - Residual risk, stated plainly: a message write that the cluster applies more than
//!   `settle_grace - settle_grace / 2` after it was sent (for example a hinted handoff replayed
//!   late) can make a seq that sync already called a hole reappear, and a resend may then have
//!   stored the message at a second seq. Plain writes cannot be fenced by the cluster; making
//!   message rows LWT would close this at the cost of one more Paxos round per message.
//! - A group change's LWT with an unknown outcome cannot be left as a hole (its allocation is
//!   its commit, and a Paxos proposal a minority accepted can still be completed by a later
//!   round): the writer first runs one applied LWT on the row (`change_fence` set to itself),
//!   whose round completes the uncertain proposal or makes it unacceptable for good, then reads
//!   the row and its claim at SERIAL: the pending change is its own → complete it; its claim is
//!   bound → completed by another writer; else not applied, compute again. (An unknown send
//!   CAS needs no such round: completed later, it is only a hole.)
//! - Member rows are plain writes, and the send check reads them after the version: exact only
//!   if the write's and the read's quorums meet. With SERIAL LWTs (workers in several
//!   datacentres may write one group) and LOCAL_QUORUM configured, member rows are therefore
//!   written and read at QUORUM (`statements::membership_consistency`; in one datacentre the
//!   same replicas as LOCAL_QUORUM). With LOCAL_SERIAL the one-writer-DC rule already holds.
//!
//! Cost per new message: 3 LWTs (claim, allocate, bind; more under contention on one
//! conversation) + 1 read of the allocator (first message of a conversation per batch) +
//! 1 + members plain writes. A message to a group: the same 3 LWTs, the allocator read (with
//! the group columns), 1 read of the sender's member row, 1 plain write (no per-member
//! write: the members' lists read the group's allocator row). A group change: 4 LWTs (claim,
//! allocate, bind, clear) + 1 SERIAL read of its claim + reads of the allocator and the changed
//! rows + 1 + 3 x changed members plain writes. Conversations of one batch are appended
//! concurrently (up to `append_concurrency`); writes of one conversation strictly in batch
//! order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tern_store::{Appended, Committed, GroupWrite, NewMessage};
use tokio::task::JoinSet;
use tracing::warn;

use crate::bucket::MAX_SEQ;
use crate::error::OpError;
use crate::group::{Snapshot, is_group};
use crate::row::{self, seq_from_cql};
use crate::statements::Stmt;
use crate::store::{Inner, now_ms};

mod decide;
mod write;
pub(crate) use decide::{
    Claim, DedupeRow, Verdict, fence_ms, first_unsettled, judge, request_digest,
};

/// One write of an append batch or of a commit's run of appends and group changes.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// A message (to a group: checked against its sender's row).
    Send(NewMessage),
    /// A group change with its event.
    Change(GroupWrite),
}

impl Item {
    /// The message this write stores (a change's event).
    pub(crate) fn message(&self) -> &NewMessage {
        match self {
            Item::Send(m) => m,
            Item::Change(w) => &w.event,
        }
    }
}

/// What one conversation's task of a batch knows from its own earlier writes (hints only:
/// every allocation still compares and sets).
#[derive(Debug, Default)]
pub(crate) struct Hint {
    /// The conversation's last seq after this task's previous message.
    pub last_known: Option<u64>,
    /// A group's head after this task's previous message.
    pub group: Option<Snapshot>,
}

/// A new owner token: unique per attempt across processes.
pub(crate) fn token(inner: &Inner) -> String {
    let n = inner.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:016x}-{n:x}", inner.token_seed)
}

impl Inner {
    /// Appends a batch: conversations concurrently, each conversation's writes in order.
    /// Every task runs to its end even when another fails (an abandoned claim would make the
    /// client's resend wait), then the first error, if any, is the batch's.
    pub(crate) async fn append_batch(
        self: &Arc<Self>,
        batch: Vec<Item>,
    ) -> Result<Vec<Committed>, OpError> {
        let n = batch.len();
        let mut groups: Vec<Vec<(usize, Item)>> = Vec::new();
        let mut by_conv: HashMap<String, usize> = HashMap::new();
        for (i, item) in batch.into_iter().enumerate() {
            let conv = item.message().conversation_id.clone();
            let g = *by_conv.entry(conv).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push((i, item));
        }
        let mut tasks = JoinSet::new();
        for group in groups {
            let inner = Arc::clone(self);
            tasks.spawn(async move {
                let _permit = inner.limiter.acquire().await;
                let mut hint = Hint::default();
                let mut out = Vec::with_capacity(group.len());
                for (i, item) in group {
                    let c = inner.append_one(&item, &mut hint).await?;
                    out.push((i, c));
                }
                Ok::<_, OpError>(out)
            });
        }
        let mut slots: Vec<Option<Committed>> = vec![None; n];
        let mut first_err = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(outs)) => {
                    for (i, c) in outs {
                        slots[i] = Some(c);
                    }
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(OpError::Task(e.to_string()));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        slots
            .into_iter()
            .map(|s| s.ok_or_else(|| OpError::Task("missing outcome".into())))
            .collect()
    }

    /// One write: claim, then allocate, bind and write (see the module doc).
    async fn append_one(&self, item: &Item, hint: &mut Hint) -> Result<Committed, OpError> {
        let m = item.message();
        let grace = ms(self.cfg.settle_grace);
        let digest = request_digest(m);
        let deadline = tokio::time::Instant::now() + self.cfg.claim_wait;
        let mut backoff = Duration::from_millis(5);
        'claim: loop {
            let owner = token(self);
            let claimed_at = now_ms();
            let claim = self
                .lwt(
                    Stmt::ClaimDedupe,
                    (
                        &m.sender_user_id,
                        &m.client_msg_id,
                        &m.conversation_id,
                        &owner,
                        claimed_at,
                        0i64,
                        0i64,
                        digest,
                    ),
                )
                .await;
            let existing = match claim {
                Ok(l) if l.applied => None,
                Ok(l) => Some(Claim::from_lwt(&l)?),
                Err(e) => {
                    // Unknown outcome: the claim row itself says whether it is ours.
                    warn!(error = %e, "dedupe claim outcome unknown, reading it back");
                    match self.read_claim(m).await? {
                        Some(c) if c.owner == owner => None,
                        Some(c) => Some(c),
                        None => return Err(e),
                    }
                }
            };
            let Some(mut claim) = existing else {
                return self.owned(item, &owner, hint).await;
            };
            loop {
                // A group change's claim has no seq until its completion binds it: if the
                // conversation's pending change is this claim's, complete it (a duplicate).
                if claim.seq == 0
                    && is_group(&claim.conversation_id)
                    && let Some(original) = self.complete_claimed(&claim, false).await?
                {
                    return Ok(Committed::Appended(original));
                }
                let stored =
                    claim.seq > 0 && self.message_stored(&claim.conversation_id, claim.seq).await?;
                match judge(&claim, stored, now_ms(), grace, digest) {
                    Verdict::Duplicate => {
                        return Ok(Committed::Appended(Appended {
                            conversation_id: claim.conversation_id,
                            seq: claim.seq,
                            server_time_ms: claim.server_time_ms,
                            duplicate: true,
                            group_version: 0,
                        }));
                    }
                    Verdict::Complete => {
                        // The same request (equal digest), so `m` is what the claim's owner
                        // writes: same conversation, kind, recall target and content.
                        self.write(m, claim.seq, claim.server_time_ms, claim.allocated_at_ms)
                            .await?;
                        return Ok(Committed::Appended(Appended {
                            conversation_id: claim.conversation_id,
                            seq: claim.seq,
                            server_time_ms: claim.server_time_ms,
                            duplicate: false,
                            group_version: claim.group_version,
                        }));
                    }
                    Verdict::TakeOver => {
                        let old_seq = row::seq_to_cql(claim.seq).unwrap_or(i64::MAX);
                        let taken = self
                            .lwt(
                                Stmt::TakeOverDedupe,
                                (
                                    &owner,
                                    now_ms(),
                                    &m.conversation_id,
                                    0i64,
                                    digest,
                                    &m.sender_user_id,
                                    &m.client_msg_id,
                                    &claim.owner,
                                    old_seq,
                                ),
                            )
                            .await?;
                        if !taken.applied {
                            claim = Claim::from_lwt(&taken)?;
                            continue;
                        }
                        warn!(
                            sender = %m.sender_user_id,
                            client_msg_id = %m.client_msg_id,
                            abandoned_seq = claim.seq,
                            "took over an abandoned dedupe claim"
                        );
                        if claim.seq == 0 && is_group(&claim.conversation_id) {
                            // The old owner may have committed a group change: fence it off
                            // (or find it committed) before this writer goes on.
                            self.bump_fence(&claim.conversation_id).await?;
                            if let Some(original) = self.complete_claimed(&claim, true).await? {
                                return Ok(Committed::Appended(original));
                            }
                            match self.read_claim(m).await? {
                                Some(c) if c.owner == owner && c.seq == 0 => {}
                                Some(c) => {
                                    claim = c;
                                    continue;
                                }
                                None => continue 'claim,
                            }
                        }
                        return self.owned(item, &owner, hint).await;
                    }
                    Verdict::Wait => {}
                }
                if tokio::time::Instant::now() + backoff > deadline {
                    return Err(OpError::ClaimHeld {
                        sender: m.sender_user_id.clone(),
                        client_msg_id: m.client_msg_id.clone(),
                    });
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
                match self.read_claim(m).await? {
                    Some(c) => claim = c,
                    // Released (its write was refused): claim the key ourselves.
                    None => continue 'claim,
                }
            }
        }
    }

    /// The write itself, for a claim this writer owns.
    async fn owned(&self, item: &Item, owner: &str, hint: &mut Hint) -> Result<Committed, OpError> {
        match item {
            Item::Send(m) if is_group(&m.conversation_id) => self.group_send(m, owner, hint).await,
            Item::Send(m) => {
                let time = m.server_time_ms;
                let (seq, allocated_at) =
                    self.allocate(&m.conversation_id, time, owner, &mut hint.last_known).await?;
                self.bind_and_write(m, owner, seq, allocated_at, 0).await.map(Committed::Appended)
            }
            Item::Change(w) => self.group_change(w, owner, hint).await,
        }
    }

    /// Steps 3-4 for a seq this writer allocated: bind it to the claim, write the message.
    pub(crate) async fn bind_and_write(
        &self,
        m: &NewMessage,
        owner: &str,
        seq: u64,
        allocated_at: i64,
        group_version: u64,
    ) -> Result<Appended, OpError> {
        let time = m.server_time_ms;
        let cql_seq =
            row::seq_to_cql(seq).ok_or_else(|| OpError::SeqOverflow(m.conversation_id.clone()))?;
        let version = row::seq_to_cql(group_version).unwrap_or(0);
        let bind = self
            .lwt(
                Stmt::BindDedupe,
                (
                    cql_seq,
                    time,
                    allocated_at,
                    version,
                    &m.sender_user_id,
                    &m.client_msg_id,
                    owner,
                    0i64,
                ),
            )
            .await;
        let bound = match bind {
            Ok(l) => l.applied,
            Err(e) => {
                warn!(error = %e, "dedupe bind outcome unknown, reading it back");
                match self.read_claim(m).await? {
                    Some(c) => c.owner == owner && c.seq == seq,
                    None => false,
                }
            }
        };
        if !bound {
            warn!(conversation_id = %m.conversation_id, seq, "claim lost before bind: seq is a hole");
            return Err(OpError::ClaimLost {
                sender: m.sender_user_id.clone(),
                client_msg_id: m.client_msg_id.clone(),
            });
        }
        self.write(m, seq, time, allocated_at).await?;
        Ok(Appended {
            conversation_id: m.conversation_id.clone(),
            seq,
            server_time_ms: time,
            duplicate: false,
            group_version,
        })
    }

    /// Releases this writer's claim without a seq (its write was refused). Best effort: a claim
    /// left behind is taken over after `settle_grace`.
    pub(crate) async fn release_claim(&self, m: &NewMessage, owner: &str) {
        let released =
            self.lwt(Stmt::ReleaseDedupe, (&m.sender_user_id, &m.client_msg_id, owner, 0i64)).await;
        if let Err(e) = released {
            warn!(error = %e, sender = %m.sender_user_id, "releasing a refused claim failed");
        }
    }

    /// Step 2: compare-and-set on the allocator row. Returns the seq and the allocation time.
    async fn allocate(
        &self,
        conv: &str,
        time: i64,
        owner: &str,
        last_known: &mut Option<u64>,
    ) -> Result<(u64, i64), OpError> {
        let mut expected = match *last_known {
            Some(s) => s,
            None => self.meta(conv).await?.0,
        };
        for attempt in 0..self.cfg.cas_max_attempts {
            let next = expected
                .checked_add(1)
                .filter(|&s| s <= MAX_SEQ)
                .ok_or_else(|| OpError::SeqOverflow(conv.to_owned()))?;
            let alloc_at = now_ms();
            let next_cql = next as i64;
            let result = if expected == 0 {
                self.lwt(Stmt::InsertMeta, (conv, next_cql, time, alloc_at, owner)).await
            } else {
                self.lwt(Stmt::CasMeta, (next_cql, time, alloc_at, owner, conv, expected as i64))
                    .await
            };
            match result {
                Ok(l) if l.applied => {
                    *last_known = Some(next);
                    return Ok((next, alloc_at));
                }
                Ok(l) => {
                    expected = seq_from_cql("conversation_meta.last_seq", l.i64("last_seq"))?;
                }
                Err(e) => {
                    warn!(error = %e, conversation_id = conv, "seq CAS outcome unknown, reading back");
                    let (current, current_owner) = self.meta_owner(conv).await?;
                    if current == next && current_owner.as_deref() == Some(owner) {
                        *last_known = Some(next);
                        return Ok((next, alloc_at));
                    }
                    // Ours or not, `next` is never used by this writer: at worst a hole.
                    expected = current;
                }
            }
            if attempt >= 2 {
                // Heavy contention: back off a little (jittered by the owner token).
                let jitter = u64::from(owner.as_bytes().last().copied().unwrap_or(0) % 8);
                tokio::time::sleep(Duration::from_millis((1 << attempt.min(5)) + jitter)).await;
            }
        }
        Err(OpError::Contention {
            conversation_id: conv.to_owned(),
            attempts: self.cfg.cas_max_attempts,
        })
    }

    /// The claim of `m`'s dedupe key, read linearizably.
    pub(crate) async fn read_claim(&self, m: &NewMessage) -> Result<Option<Claim>, OpError> {
        self.select_one::<DedupeRow>(
            Stmt::SelectDedupeSerial,
            (&m.sender_user_id, &m.client_msg_id),
        )
        .await?
        .map(Claim::from_row)
        .transpose()
    }
}

/// A duration in whole milliseconds (saturating).
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
