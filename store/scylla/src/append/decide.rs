//! The pure decisions of the append path: dedupe claims as stored ([`Claim`]), what a writer
//! that finds one does ([`judge`]), the write fence, request digests, and when an unstored seq
//! counts as a hole ([`first_unsettled`]). Tested in `tests.rs` without a node.

use scylla::DeserializeRow;
use tern_store::NewMessage;

use crate::error::OpError;
use crate::row::seq_from_cql;
use crate::store::Lwt;

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
    /// For a message to a group: the group version it was sequenced at (0 otherwise).
    pub group_version: u64,
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
    group_version: Option<i64>,
}

impl Claim {
    pub(crate) fn from_row(r: DedupeRow) -> Result<Self, OpError> {
        Ok(Claim {
            conversation_id: r.conversation_id.unwrap_or_default(),
            owner: r.owner.unwrap_or_default(),
            claimed_at_ms: r.claimed_at_ms.unwrap_or(0),
            seq: seq_from_cql("dedupe.seq", r.seq)?,
            server_time_ms: r.server_time_ms.unwrap_or(0),
            allocated_at_ms: r.allocated_at_ms.unwrap_or(0),
            request_digest: r.request_digest,
            group_version: seq_from_cql("dedupe.group_version", r.group_version)?,
        })
    }

    /// The existing row that a not-applied LWT on `dedupe` returns.
    pub(crate) fn from_lwt(l: &Lwt) -> Result<Self, OpError> {
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
            group_version: seq_from_cql("dedupe.group_version", l.i64("group_version"))?,
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
