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
//!
//! Cost per new message: 3 LWTs (claim, allocate, bind; more under contention on one
//! conversation) + 1 read of the allocator (first message of a conversation per batch) +
//! 1 + members plain writes. Conversations of one batch are appended concurrently (up to
//! `append_concurrency`); messages of one conversation strictly in batch order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use scylla::DeserializeRow;
use tern_proto::v1;
use tern_store::{Appended, NewMessage};
use tokio::task::JoinSet;
use tracing::warn;

use crate::bucket::{MAX_SEQ, bucket_of};
use crate::error::OpError;
use crate::row::{self, MessageRow, seq_from_cql};
use crate::statements::Stmt;
use crate::store::{Inner, Lwt, now_ms};

/// A dedupe claim as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    pub conversation_id: String,
    pub owner: String,
    pub claimed_at_ms: i64,
    /// 0: no seq bound yet.
    pub seq: u64,
    pub server_time_ms: i64,
    pub allocated_at_ms: i64,
    /// [`request_digest`] of the request that claimed it (`None`: a row written before the
    /// column existed).
    pub request_digest: Option<i64>,
}

/// A row of `SelectDedupeSerial`.
#[derive(Debug, DeserializeRow)]
pub(crate) struct DedupeRow {
    conversation_id: Option<String>,
    owner: Option<String>,
    claimed_at_ms: Option<i64>,
    seq: Option<i64>,
    server_time_ms: Option<i64>,
    allocated_at_ms: Option<i64>,
    request_digest: Option<i64>,
}

impl Claim {
    fn from_row(r: DedupeRow) -> Result<Self, OpError> {
        Ok(Claim {
            conversation_id: r.conversation_id.unwrap_or_default(),
            owner: r.owner.unwrap_or_default(),
            claimed_at_ms: r.claimed_at_ms.unwrap_or(0),
            seq: seq_from_cql("dedupe.seq", r.seq)?,
            server_time_ms: r.server_time_ms.unwrap_or(0),
            allocated_at_ms: r.allocated_at_ms.unwrap_or(0),
            request_digest: r.request_digest,
        })
    }

    /// The existing row that a not-applied LWT on `dedupe` returns.
    fn from_lwt(l: &Lwt) -> Result<Self, OpError> {
        let owner =
            l.text("owner").ok_or_else(|| OpError::LwtShape("dedupe row without owner".into()))?;
        Ok(Claim {
            conversation_id: l.text("conversation_id").unwrap_or_default().to_owned(),
            owner: owner.to_owned(),
            claimed_at_ms: l.i64("claimed_at_ms").unwrap_or(0),
            seq: seq_from_cql("dedupe.seq", l.i64("seq"))?,
            server_time_ms: l.i64("server_time_ms").unwrap_or(0),
            allocated_at_ms: l.i64("allocated_at_ms").unwrap_or(0),
            request_digest: l.i64("request_digest"),
        })
    }
}

/// What a writer that found an existing claim does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Stored already: answer with the original outcome.
    Duplicate,
    /// Seq bound, message not stored, fence not passed, and the resend is the very request
    /// that claimed it: write it at the bound seq.
    Complete,
    /// Abandoned: take the claim over and allocate a new seq.
    TakeOver,
    /// Another writer is at work: poll again later.
    Wait,
}

/// The write fence of a seq allocated at `allocated_at_ms`: no message write starts later.
pub(crate) fn fence_ms(allocated_at_ms: i64, grace_ms: i64) -> i64 {
    allocated_at_ms.saturating_add(grace_ms / 2)
}

/// A stable 64-bit digest (FNV-1a) of what a request would store: conversation, kind, recall
/// target, content type and body (each length-prefixed). Equal for a true resend; any other
/// request under the same (sender, client_msg_id) differs (up to a 2^-64 accident).
pub(crate) fn request_digest(m: &NewMessage) -> i64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    let mut field = |bytes: &[u8]| {
        h.write(&(bytes.len() as u64).to_le_bytes());
        h.write(bytes);
    };
    field(m.conversation_id.as_bytes());
    field(&(m.kind as i32).to_le_bytes());
    field(&m.recalled_seq.to_le_bytes());
    field(m.content_type.as_bytes());
    field(&m.body);
    h.finish() as i64
}

/// Decides about an existing claim. `stored`: whether the message row at the claim's seq
/// exists (only consulted when a seq is bound). `digest`: the resending request's
/// [`request_digest`]: only the very request that claimed the key may complete its write (a
/// different one, e.g. a Recall reusing a Send's client_msg_id in another conversation, would
/// otherwise write its own kind, body and recall target at the claim's seq); a different
/// request waits instead, and gets the original's outcome (which dispatch then refuses as a
/// reuse) or, once the claim is abandoned, takes it over.
pub(crate) fn judge(
    claim: &Claim,
    stored: bool,
    now_ms: i64,
    grace_ms: i64,
    digest: i64,
) -> Verdict {
    if claim.seq > 0 {
        if stored {
            Verdict::Duplicate
        } else if now_ms < fence_ms(claim.allocated_at_ms, grace_ms) {
            if claim.request_digest == Some(digest) { Verdict::Complete } else { Verdict::Wait }
        } else if now_ms >= claim.allocated_at_ms.saturating_add(grace_ms) {
            Verdict::TakeOver
        } else {
            Verdict::Wait
        }
    } else if now_ms >= claim.claimed_at_ms.saturating_add(grace_ms) {
        Verdict::TakeOver
    } else {
        Verdict::Wait
    }
}

/// The first seq of `[first, last]` that is not stored and may still be written: a seq is
/// settled (a hole) once some later allocation - a stored row after it, or the conversation's
/// latest allocation (`meta_alloc_ms`) - is older than `grace_ms`. `stored` holds the window's
/// stored (seq, allocated_at_ms) in seq order.
pub(crate) fn first_unsettled(
    first: u64,
    last: u64,
    stored: &[(u64, i64)],
    meta_alloc_ms: i64,
    now_ms: i64,
    grace_ms: i64,
) -> Option<u64> {
    let old = |t: i64| now_ms.saturating_sub(t) >= grace_ms;
    // later_old[i]: some allocation at or after stored[i] is old.
    let mut later_old = vec![old(meta_alloc_ms); stored.len() + 1];
    for i in (0..stored.len()).rev() {
        later_old[i] = later_old[i + 1] || old(stored[i].1);
    }
    let mut expect = first;
    for (i, &(seq, _)) in stored.iter().enumerate() {
        if seq > expect && !later_old[i] {
            return Some(expect);
        }
        expect = seq.saturating_add(1);
    }
    (expect <= last && !later_old[stored.len()]).then_some(expect)
}

/// A new owner token: unique per attempt across processes.
fn token(inner: &Inner) -> String {
    let n = inner.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:016x}-{n:x}", inner.token_seed)
}

impl Inner {
    /// Appends a batch: conversations concurrently, each conversation's messages in order.
    /// Every task runs to its end even when another fails (an abandoned claim would make the
    /// client's resend wait), then the first error, if any, is the batch's.
    pub(crate) async fn append_batch(
        self: &Arc<Self>,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Appended>, OpError> {
        let n = batch.len();
        let mut groups: Vec<Vec<(usize, NewMessage)>> = Vec::new();
        let mut by_conv: HashMap<String, usize> = HashMap::new();
        for (i, m) in batch.into_iter().enumerate() {
            let g = *by_conv.entry(m.conversation_id.clone()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push((i, m));
        }
        let mut tasks = JoinSet::new();
        for group in groups {
            let inner = Arc::clone(self);
            tasks.spawn(async move {
                let _permit = inner.limiter.acquire().await;
                let mut last_known = None;
                let mut out = Vec::with_capacity(group.len());
                for (i, m) in group {
                    let a = inner.append_one(&m, &mut last_known).await?;
                    out.push((i, a));
                }
                Ok::<_, OpError>(out)
            });
        }
        let mut slots: Vec<Option<Appended>> = vec![None; n];
        let mut first_err = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(outs)) => {
                    for (i, a) in outs {
                        slots[i] = Some(a);
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

    /// One message: claim, allocate, bind, write (see the module doc). `last_known`: this
    /// conversation's last seq as seen by this batch (saves the allocator read).
    async fn append_one(
        &self,
        m: &NewMessage,
        last_known: &mut Option<u64>,
    ) -> Result<Appended, OpError> {
        let grace = ms(self.cfg.settle_grace);
        let owner = token(self);
        let digest = request_digest(m);
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
            return self.allocate_bind_write(m, &owner, last_known).await;
        };
        let deadline = tokio::time::Instant::now() + self.cfg.claim_wait;
        let mut backoff = Duration::from_millis(5);
        loop {
            let stored =
                claim.seq > 0 && self.message_stored(&claim.conversation_id, claim.seq).await?;
            match judge(&claim, stored, now_ms(), grace, digest) {
                Verdict::Duplicate => {
                    return Ok(Appended {
                        conversation_id: claim.conversation_id,
                        seq: claim.seq,
                        server_time_ms: claim.server_time_ms,
                        duplicate: true,
                        group_version: 0,
                    });
                }
                Verdict::Complete => {
                    // The same request (equal digest), so `m` is what the claim's owner
                    // writes: same conversation, kind, recall target and content.
                    self.write(m, claim.seq, claim.server_time_ms, claim.allocated_at_ms).await?;
                    return Ok(Appended {
                        conversation_id: claim.conversation_id,
                        seq: claim.seq,
                        server_time_ms: claim.server_time_ms,
                        duplicate: false,
                        group_version: 0,
                    });
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
                    if taken.applied {
                        warn!(
                            sender = %m.sender_user_id,
                            client_msg_id = %m.client_msg_id,
                            abandoned_seq = claim.seq,
                            "took over an abandoned dedupe claim"
                        );
                        return self.allocate_bind_write(m, &owner, last_known).await;
                    }
                    claim = Claim::from_lwt(&taken)?;
                    continue;
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
                None => {
                    return Err(OpError::LwtShape("dedupe claim vanished while waiting".into()));
                }
            }
        }
    }

    /// Steps 2-4 for a claim this writer owns.
    async fn allocate_bind_write(
        &self,
        m: &NewMessage,
        owner: &str,
        last_known: &mut Option<u64>,
    ) -> Result<Appended, OpError> {
        let time = m.server_time_ms;
        let (seq, allocated_at) =
            self.allocate(&m.conversation_id, time, owner, last_known).await?;
        let cql_seq =
            row::seq_to_cql(seq).ok_or_else(|| OpError::SeqOverflow(m.conversation_id.clone()))?;
        let bind = self
            .lwt(
                Stmt::BindDedupe,
                (cql_seq, time, allocated_at, &m.sender_user_id, &m.client_msg_id, owner, 0i64),
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
            group_version: 0,
        })
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

    /// Step 4, before the write fence: recall target, message row, members' index entries.
    async fn write(
        &self,
        m: &NewMessage,
        seq: u64,
        time: i64,
        allocated_at: i64,
    ) -> Result<(), OpError> {
        let grace = ms(self.cfg.settle_grace);
        let fenced = || {
            (now_ms() >= fence_ms(allocated_at, grace)).then(|| OpError::ClaimLost {
                sender: m.sender_user_id.clone(),
                client_msg_id: m.client_msg_id.clone(),
            })
        };
        if let Some(e) = fenced() {
            return Err(e);
        }
        let conv = m.conversation_id.as_str();
        let cql_seq = row::seq_to_cql(seq).ok_or_else(|| OpError::SeqOverflow(conv.to_owned()))?;
        let bucket = bucket_of(seq, self.cfg.bucket_size) as i64;
        if m.kind == v1::MessageKind::Recall {
            self.recall_target(conv, m.recalled_seq).await?;
        }
        let blob = row::encode(&row::stored_message(m, seq, time));
        let ts = time.saturating_mul(1000);
        self.exec(Stmt::InsertMessage, (conv, bucket, cql_seq, blob, allocated_at, ts)).await?;
        let mut index = JoinSet::new();
        for member in &m.members {
            let session = Arc::clone(&self.session);
            let stmt = self.stmts.get(Stmt::UpsertIndex).clone();
            let values = (cql_seq, cql_seq, time, member.clone(), conv.to_owned());
            index.spawn(async move { session.execute_unpaged(&stmt, values).await });
        }
        while let Some(joined) = index.join_next().await {
            joined.map_err(|e| OpError::Task(e.to_string()))??;
        }
        Ok(())
    }

    /// Marks `seq` recalled with its body cleared; a missing target is logged and skipped.
    async fn recall_target(&self, conv: &str, seq: u64) -> Result<(), OpError> {
        let Some(target) = self.message(conv, seq).await? else {
            warn!(conversation_id = conv, seq, "recall of a message that is not stored");
            return Ok(());
        };
        let Some(cql_seq) = row::seq_to_cql(seq) else { return Ok(()) };
        // Above the target's own write timestamp, whatever the clocks say.
        let ts = now_ms().saturating_mul(1000).max(target.server_time_ms.saturating_mul(1000) + 1);
        let bucket = bucket_of(seq, self.cfg.bucket_size) as i64;
        self.exec(Stmt::RecallMessage, (ts, row::recalled_blob(target), conv, bucket, cql_seq))
            .await?;
        Ok(())
    }

    /// Whether the message row at `seq` holds a message.
    async fn message_stored(&self, conv: &str, seq: u64) -> Result<bool, OpError> {
        Ok(self.message_row(conv, seq).await?.is_some_and(|r| r.message.is_some()))
    }

    /// The raw message row at `seq`.
    pub(crate) async fn message_row(
        &self,
        conv: &str,
        seq: u64,
    ) -> Result<Option<MessageRow>, OpError> {
        let Some(cql_seq) = row::seq_to_cql(seq) else { return Ok(None) };
        let bucket = bucket_of(seq, self.cfg.bucket_size) as i64;
        self.select_one::<MessageRow>(Stmt::SelectMessage, (conv, bucket, cql_seq)).await
    }

    /// The claim of `m`'s dedupe key, read linearizably.
    async fn read_claim(&self, m: &NewMessage) -> Result<Option<Claim>, OpError> {
        self.select_one::<DedupeRow>(
            Stmt::SelectDedupeSerial,
            (&m.sender_user_id, &m.client_msg_id),
        )
        .await?
        .map(Claim::from_row)
        .transpose()
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
