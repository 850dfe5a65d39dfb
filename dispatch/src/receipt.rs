//! Receipts as watermarks: "delivered up to N" and "read up to N" per member and conversation.
//! An update is stored (never moving back), pushed to the other members' and the user's other
//! devices when it moved a watermark, and answered with the user's resulting watermarks.

use std::sync::Arc;

use tern_proto::v1::{self, ReceiptKind, envelope::Body};

use tern_store::{WatermarkWrite, Write};

use crate::dispatcher::{Dispatcher, Origin};
use crate::error::DispatchError;
use crate::membership;
use crate::pipeline::{Job, Reply, Then};

/// Validates a receipt and queues its watermark move for the next group commit, where it is
/// bounded by the conversation's last seq (a higher seq is a client bug, refused with nothing
/// moved) and coalesced with other moves of the same user; `reply` gets the user's resulting
/// watermarks. The pipeline pushes a move to the other members and the user's other devices
/// once per group, and only when it moved a watermark.
///
/// In a group the caller must be a current member; the move is pushed to every member only
/// in groups of at most `receipt_push_max_members` (else to the user's own other devices:
/// large groups keep watermarks for unread counts, not read-by lists).
pub fn submit(
    d: &Arc<Dispatcher>,
    origin: &Origin,
    request_id: u64,
    req: v1::Receipt,
    reply: Reply,
) {
    let kind = ReceiptKind::try_from(req.kind).ok().filter(|k| *k != ReceiptKind::Unspecified);
    let Some(kind) = kind else {
        let e = DispatchError::Invalid("receipt kind must be DELIVERED or READ".into());
        return reply(e.to_frame(request_id));
    };
    if membership::is_group(&req.conversation_id) {
        let (d, origin) = (d.clone(), origin.clone());
        d.clone().spawn(async move {
            match group_audience(&d, &origin, &req.conversation_id).await {
                Ok(members) => queue(&d, &origin, request_id, req, kind, members, reply),
                Err(e) => reply(e.to_frame(request_id)),
            }
        });
        return;
    }
    let members = match membership::resolve(&req.conversation_id, &origin.user_id) {
        Ok(m) => m.users,
        Err(e) => return reply(e.to_frame(request_id)),
    };
    queue(d, origin, request_id, req, kind, members, reply);
}

/// Who hears of a group member's receipt: every member in a small group, else only the
/// user's other devices. Refuses a caller who is not a current member.
async fn group_audience(
    d: &Dispatcher,
    origin: &Origin,
    conv: &str,
) -> Result<Vec<String>, DispatchError> {
    let state = small_group(d, origin, conv).await?;
    if !state {
        return Ok(vec![origin.user_id.clone()]);
    }
    let members = match d.groups.fresh(conv, 0) {
        Some(c) => c,
        None => d.groups.load(conv).await?,
    };
    Ok(members.members.iter().map(|m| m.user_id.clone()).collect())
}

/// Whether the caller, a current member (else an error), is in a group small enough for
/// per-member receipts.
async fn small_group(d: &Dispatcher, origin: &Origin, conv: &str) -> Result<bool, DispatchError> {
    match membership::readable(&*d.store, conv, &origin.user_id).await? {
        membership::Access::Group(row) if row.is_current() => {}
        _ => return Err(DispatchError::NotAMember),
    }
    let state = d.store.get_group(conv).await?.ok_or(DispatchError::UnknownConversation)?;
    Ok(state.meta.member_count <= d.cfg.receipt_push_max_members)
}

fn queue(
    d: &Dispatcher,
    origin: &Origin,
    request_id: u64,
    req: v1::Receipt,
    kind: ReceiptKind,
    members: Vec<String>,
    reply: Reply,
) {
    d.pipeline.push(Job {
        write: Write::Watermark(WatermarkWrite {
            conversation_id: req.conversation_id,
            user_id: origin.user_id.clone(),
            kind,
            seq: req.seq,
        }),
        members,
        skip: Some(origin.conn_ref()),
        then: Then::Receipt { request_id, reply },
    });
}

/// Every member's watermarks in a conversation.
pub async fn get(
    d: &Dispatcher,
    origin: &Origin,
    req: v1::GetReceipts,
) -> Result<Body, DispatchError> {
    let everyone = match membership::is_group(&req.conversation_id) {
        true => small_group(d, origin, &req.conversation_id).await?,
        false => membership::resolve(&req.conversation_id, &origin.user_id).map(|_| true)?,
    };
    let members = d
        .store
        .watermarks(&req.conversation_id)
        .await?
        .into_iter()
        // In a large group, only the caller's own (per-member receipts are for small groups).
        .filter(|(user, _)| everyone || *user == origin.user_id)
        .map(|(user_id, w)| v1::ReceiptUpdate {
            conversation_id: req.conversation_id.clone(),
            user_id,
            delivered_seq: w.delivered,
            read_seq: w.read,
        })
        .collect();
    Ok(Body::Receipts(v1::Receipts { conversation_id: req.conversation_id, members }))
}
