//! The group write paths (see `append.rs`, *Groups*): a message to a group, allocated at the
//! version its sender's row was checked at; a group change, compared and set on the version
//! and then completed; completing a committed change (by anyone); and the fence that makes
//! taking over a group claim safe.

use std::sync::Arc;
use std::time::Duration;

use scylla::serialize::row::SerializeRow;
use tern_store::{Appended, Committed, GroupWrite, Member, NewMessage};
use tokio::task::JoinSet;
use tracing::warn;

use super::decide::{
    self, Pending, RowWrite, Settled, Snapshot, Stamp, effective, may_send, plan_rows, settled,
};
use crate::append::{Claim, Hint, request_digest};
use crate::bucket::MAX_SEQ;
use crate::error::OpError;
use crate::row::group::{encode_pending, encode_record, member_values};
use crate::row::{self, seq_from_cql};
use crate::statements::Stmt;
use crate::store::{Inner, now_ms};

/// Plain writes of one completion in flight at once.
const COMPLETION_CONCURRENCY: usize = 64;

/// Attempts at a fence move or a settling LWT before giving up (UNAVAILABLE).
const FENCE_ATTEMPTS: u32 = 8;

fn next_seq(conv: &str, last: u64) -> Result<u64, OpError> {
    last.checked_add(1).filter(|&s| s <= MAX_SEQ).ok_or_else(|| OpError::SeqOverflow(conv.into()))
}

/// A short sleep after a few lost compare-and-sets (jittered by the owner token).
async fn back_off(attempt: u32, owner: &str) {
    if attempt >= 2 {
        let jitter = u64::from(owner.as_bytes().last().copied().unwrap_or(0) % 8);
        tokio::time::sleep(Duration::from_millis((1 << attempt.min(5)) + jitter)).await;
    }
}

impl Inner {
    /// A message to a group, for a claim this writer owns: refused (and the claim released)
    /// unless its sender is a current member at the version it is sequenced at.
    pub(crate) async fn group_send(
        &self,
        m: &NewMessage,
        owner: &str,
        hint: &mut Hint,
    ) -> Result<Committed, OpError> {
        let conv = m.conversation_id.as_str();
        let time = m.server_time_ms;
        let mut snap = match hint.group.take() {
            Some(s) => s,
            None => self.group_snapshot(conv, false).await?,
        };
        let mut serial = false;
        // The sender's row at a version, read (after the head) once per version.
        let mut sender: Option<(u64, Option<Member>)> = None;
        for attempt in 0..self.cfg.cas_max_attempts {
            let row = match &sender {
                Some((v, row)) if *v == snap.version => row.clone(),
                _ => {
                    let table = if snap.version == 0 {
                        None
                    } else {
                        self.member_row(conv, &m.sender_user_id).await?
                    };
                    let row = effective(snap.pending.as_ref(), &m.sender_user_id, table);
                    sender = Some((snap.version, row.clone()));
                    row
                }
            };
            let version = match may_send(&snap, row.as_ref()) {
                Ok(v) => v,
                Err(refusal) if serial => {
                    self.release_claim(m, owner).await;
                    return Ok(Committed::Refused(refusal));
                }
                Err(_) => {
                    // Confirm on the linearizable head: a plain read may be behind.
                    snap = self.group_snapshot(conv, true).await?;
                    serial = true;
                    continue;
                }
            };
            let next = next_seq(conv, snap.last_seq)?;
            let alloc_at = now_ms();
            let (n, e, v) = (next as i64, snap.last_seq as i64, snap.version_cql);
            let cas = if m.mention_all {
                // The mention of all is the group's, set with the seq (see flags.rs).
                let values = (n, time, alloc_at, owner, n, conv, e, v);
                self.lwt(Stmt::CasGroupSendMentionAll, values).await
            } else {
                self.lwt(Stmt::CasGroupSend, (n, time, alloc_at, owner, conv, e, v)).await
            };
            match cas {
                Ok(l) if l.applied => {
                    snap.last_seq = next;
                    snap.last_time_ms = time;
                    if m.mention_all {
                        snap.mention_all_seq = next;
                    }
                    hint.group = Some(snap);
                    let a = self.bind_and_write(m, owner, next, alloc_at, version).await?;
                    return Ok(Committed::Appended(a));
                }
                Ok(l) if l.i64("group_version") == snap.version_cql => {
                    // Only sends moved: the membership decision holds at this version.
                    snap.last_seq = seq_from_cql("conversation_meta.last_seq", l.i64("last_seq"))?;
                }
                Ok(_) => {
                    snap = self.group_snapshot(conv, true).await?;
                    serial = true;
                }
                Err(e) => {
                    warn!(error = %e, conversation_id = conv, "group send CAS outcome unknown");
                    let now = self.group_snapshot(conv, true).await?;
                    if now.last_seq == next && now.last_owner.as_deref() == Some(owner) {
                        let a = self.bind_and_write(m, owner, next, alloc_at, version).await?;
                        return Ok(Committed::Appended(a));
                    }
                    // Ours or not, `next` is never used by this writer: at worst a hole.
                    snap = now;
                    serial = true;
                }
            }
            back_off(attempt, owner).await;
        }
        Err(OpError::Contention {
            conversation_id: conv.to_owned(),
            attempts: self.cfg.cas_max_attempts,
        })
    }

    /// A group change, for a claim this writer owns: completes the group's pending change,
    /// decides on the rows as they are ([`plan_rows`]), and commits with one LWT on the
    /// allocator row, then completes itself. A refusal releases the claim.
    pub(crate) async fn group_change(
        &self,
        w: &GroupWrite,
        owner: &str,
        hint: &mut Hint,
    ) -> Result<Committed, OpError> {
        hint.group = None;
        let m = &w.event;
        let conv = m.conversation_id.as_str();
        let time = m.server_time_ms;
        let digest = request_digest(m);
        let record = encode_record(&w.meta);
        let mut snap = self.group_snapshot(conv, false).await?;
        let mut serial = false;
        for attempt in 0..self.cfg.cas_max_attempts {
            if let Some(p) = snap.pending.take() {
                // Every change completes the one before it: the table rows are then exact.
                self.complete(conv, &p).await?;
            }
            let before = self.rows_of(conv, w).await?;
            let seq = next_seq(conv, snap.last_seq)?;
            let rows = match plan_rows(&snap, w, &before, seq) {
                Ok(rows) => rows,
                Err(refusal) if serial => {
                    self.release_claim(m, owner).await;
                    return Ok(Committed::Refused(refusal));
                }
                Err(_) => {
                    snap = self.group_snapshot(conv, true).await?;
                    serial = true;
                    continue;
                }
            };
            // Read after the fence value the LWT conditions on: a takeover since then would
            // show here (see the takeover argument in append.rs).
            match self.read_claim(m).await? {
                Some(c) if c.owner == owner && c.seq == 0 => {}
                _ => return Err(claim_lost(m)),
            }
            let alloc_at = now_ms();
            let event = row::encode(&row::stored_message(m, seq, time));
            let stamp = Stamp { allocated_at_ms: alloc_at, owner, request_digest: digest, event };
            let pending = decide::pending(w, seq, rows, stamp);
            let blob = encode_pending(&pending);
            let s = seq as i64;
            let dissolved = w.meta.dissolved;
            let result = if snap.exists {
                let (e, v, f) = (snap.last_seq as i64, snap.version_cql, snap.fence);
                let values =
                    (s, time, alloc_at, owner, s, dissolved, &record, &blob, conv, e, v, f);
                self.lwt(Stmt::CasGroupChange, values).await
            } else {
                let values = (conv, s, time, alloc_at, owner, s, dissolved, &record, &blob, 0i64);
                self.lwt(Stmt::InsertGroup, values).await
            };
            match result {
                Ok(l) if l.applied => {
                    self.complete(conv, &pending).await?;
                    return Ok(Committed::Appended(applied(m, seq)));
                }
                Ok(_) => {
                    snap = self.group_snapshot(conv, true).await?;
                    serial = true;
                }
                Err(e) => {
                    warn!(error = %e, conversation_id = conv, "group change LWT outcome unknown");
                    let (outcome, now) = self.settle_change(conv, m, owner).await?;
                    match outcome {
                        Settled::Applied(p) => {
                            self.complete(conv, &p).await?;
                            return Ok(Committed::Appended(applied(m, p.seq)));
                        }
                        Settled::Completed { seq } => {
                            return Ok(Committed::Appended(applied(m, seq)));
                        }
                        Settled::Lost => return Err(claim_lost(m)),
                        Settled::NotApplied => {
                            snap = now;
                            serial = true;
                        }
                    }
                }
            }
            back_off(attempt, owner).await;
        }
        Err(OpError::Contention {
            conversation_id: conv.to_owned(),
            attempts: self.cfg.cas_max_attempts,
        })
    }

    /// Completes a committed change: its event, member rows, current rows and index entries
    /// (plain idempotent writes, see [`decide::completion`]), then binds its dedupe key and
    /// clears it from the allocator row. Safe to run by several writers, late, or twice.
    pub(crate) async fn complete(&self, conv: &str, p: &Pending) -> Result<(), OpError> {
        let seq = row::seq_to_cql(p.seq).ok_or_else(|| OpError::SeqOverflow(conv.to_owned()))?;
        let writes = decide::completion(p, self.cfg.bucket_size);
        for chunk in writes.chunks(COMPLETION_CONCURRENCY) {
            let mut set = JoinSet::new();
            for write in chunk {
                let (c, time) = (conv.to_owned(), p.server_time_ms);
                match *write {
                    RowWrite::Event { bucket } => {
                        let values = (
                            c,
                            bucket as i64,
                            seq,
                            p.event.clone(),
                            p.allocated_at_ms,
                            time.saturating_mul(1000),
                        );
                        self.spawn_exec(&mut set, Stmt::InsertMessage, values);
                    }
                    RowWrite::Member(m) => {
                        let (role, joined, visible, removed) = values_of(conv, m)?;
                        let values = (seq, role, joined, visible, removed, c, m.user_id.clone());
                        self.spawn_exec(&mut set, Stmt::UpsertMember, values);
                    }
                    RowWrite::Current(m) => {
                        let (role, joined, visible, _) = values_of(conv, m)?;
                        let values = (seq, role, joined, visible, c, m.user_id.clone());
                        self.spawn_exec(&mut set, Stmt::UpsertCurrent, values);
                    }
                    RowWrite::NotCurrent(user) => {
                        self.spawn_exec(&mut set, Stmt::DeleteCurrent, (seq, c, user.to_owned()));
                    }
                    RowWrite::Index(user) => {
                        let values = (seq, seq, time, user.to_owned(), c);
                        self.spawn_exec(&mut set, Stmt::UpsertIndex, values);
                    }
                }
            }
            while let Some(joined) = set.join_next().await {
                joined.map_err(|e| OpError::Task(e.to_string()))??;
            }
        }
        let bind = (
            conv,
            seq,
            p.server_time_ms,
            p.allocated_at_ms,
            p.request_digest,
            seq,
            &p.sender_user_id,
            &p.client_msg_id,
            0i64,
        );
        let bound = self.lwt(Stmt::BindGroupEvent, bind).await?;
        if !bound.applied && bound.i64("seq") != Some(seq) {
            warn!(
                conversation_id = conv,
                seq = p.seq,
                sender = %p.sender_user_id,
                client_msg_id = %p.client_msg_id,
                bound = ?bound.i64("seq"),
                "a group event's dedupe key is bound to another seq"
            );
        }
        if let Err(e) = self.lwt(Stmt::ClearPending, (None::<Vec<u8>>, conv, seq)).await {
            // The next completer clears it: everything above is idempotent.
            warn!(error = %e, conversation_id = conv, "clearing a completed group change failed");
        }
        Ok(())
    }

    fn spawn_exec<V>(&self, set: &mut JoinSet<Result<(), OpError>>, stmt: Stmt, values: V)
    where
        V: SerializeRow + Send + 'static,
    {
        let session = Arc::clone(&self.session);
        let prepared = self.stmts.get(stmt).clone();
        set.spawn(async move {
            session.execute_unpaged(&prepared, values).await?;
            Ok(())
        });
    }

    /// The outcome of the claim `claim` (without a seq, in a group conversation) when the
    /// group's pending change is its owner's: that change completed, as a duplicate.
    pub(crate) async fn complete_claimed(
        &self,
        claim: &Claim,
        serial: bool,
    ) -> Result<Option<Appended>, OpError> {
        let conv = claim.conversation_id.as_str();
        let s = self.group_snapshot(conv, serial).await?;
        let Some(p) = s.pending.filter(|p| p.owner == claim.owner) else { return Ok(None) };
        self.complete(conv, &p).await?;
        Ok(Some(Appended {
            conversation_id: conv.to_owned(),
            seq: p.seq,
            server_time_ms: p.server_time_ms,
            duplicate: true,
            group_version: 0,
        }))
    }

    /// Moves `conv`'s change fence after a takeover of one of its claims: once this returns,
    /// no group change computed from a head read before the takeover can commit
    /// (`CasGroupChange` conditions on the fence, `InsertGroup` on the row's absence).
    pub(crate) async fn bump_fence(&self, conv: &str) -> Result<(), OpError> {
        let mut s = self.group_snapshot(conv, true).await?;
        for _ in 0..FENCE_ATTEMPTS {
            if !s.exists {
                // Applied or not, the row exists from now on: no create computed on its
                // absence can apply any more.
                match self.lwt(Stmt::InsertFence, (conv, 0i64, 0i64, 1i64)).await {
                    Ok(_) => return Ok(()),
                    Err(e) => warn!(error = %e, conversation_id = conv, "fence insert unknown"),
                }
            } else {
                let next = s.fence.unwrap_or(0).saturating_add(1);
                match self.lwt(Stmt::CasFence, (next, conv, s.fence)).await {
                    // Applied, or moved by someone else since our read (after the takeover).
                    Ok(l) if l.applied || l.i64("change_fence") != s.fence => return Ok(()),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, conversation_id = conv, "fence move unknown"),
                }
            }
            let now = self.group_snapshot(conv, true).await?;
            if now.exists && (!s.exists || now.fence != s.fence) {
                return Ok(());
            }
            s = now;
        }
        Err(OpError::Contention { conversation_id: conv.to_owned(), attempts: FENCE_ATTEMPTS })
    }

    /// After a group change LWT with unknown outcome: one applied LWT on the row (its Paxos
    /// round either completes our proposal or makes it unacceptable for good), then SERIAL
    /// reads of the head and of our claim decide ([`settled`]).
    async fn settle_change(
        &self,
        conv: &str,
        m: &NewMessage,
        owner: &str,
    ) -> Result<(Settled, Snapshot), OpError> {
        let mut settled_round = false;
        for _ in 0..FENCE_ATTEMPTS {
            let s = self.group_snapshot(conv, true).await?;
            let round = if s.exists {
                self.lwt(Stmt::CasFence, (s.fence, conv, s.fence)).await
            } else {
                self.lwt(Stmt::InsertFence, (conv, 0i64, 0i64, 1i64)).await
            };
            match round {
                Ok(l) if l.applied || !s.exists => {
                    settled_round = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, conversation_id = conv, "settling round unknown"),
            }
        }
        if !settled_round {
            return Err(OpError::Contention {
                conversation_id: conv.into(),
                attempts: FENCE_ATTEMPTS,
            });
        }
        let s = self.group_snapshot(conv, true).await?;
        let claim = self.read_claim(m).await?;
        let claim = claim.map(|c| (c.owner == owner, c.seq));
        Ok((settled(&s, owner, claim), s))
    }
}

/// The outcome of a committed change at `seq`.
fn applied(m: &NewMessage, seq: u64) -> Appended {
    Appended {
        conversation_id: m.conversation_id.clone(),
        seq,
        server_time_ms: m.server_time_ms,
        duplicate: false,
        group_version: seq,
    }
}

fn claim_lost(m: &NewMessage) -> OpError {
    OpError::ClaimLost { sender: m.sender_user_id.clone(), client_msg_id: m.client_msg_id.clone() }
}

fn values_of(conv: &str, m: &Member) -> Result<(i32, i64, i64, i64), OpError> {
    member_values(m).ok_or_else(|| OpError::SeqOverflow(conv.to_owned()))
}
