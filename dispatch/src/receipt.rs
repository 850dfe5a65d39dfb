//! Receipts as watermarks: "delivered up to N" and "read up to N" per member and conversation.
//! An update is stored (never moving back), pushed to the other members' and the user's other
//! devices when it moved a watermark, and answered with the user's resulting watermarks.

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
pub fn submit(d: &Dispatcher, origin: &Origin, request_id: u64, req: v1::Receipt, reply: Reply) {
    let kind = ReceiptKind::try_from(req.kind).ok().filter(|k| *k != ReceiptKind::Unspecified);
    let Some(kind) = kind else {
        let e = DispatchError::Invalid("receipt kind must be DELIVERED or READ".into());
        return reply(e.to_frame(request_id));
    };
    let members = match membership::resolve(&req.conversation_id, &origin.user_id) {
        Ok(m) => m,
        Err(e) => return reply(e.to_frame(request_id)),
    };
    d.pipeline.push(Job {
        write: Write::Watermark(WatermarkWrite {
            conversation_id: req.conversation_id,
            user_id: origin.user_id.clone(),
            kind,
            seq: req.seq,
        }),
        members: members.users,
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
    membership::resolve(&req.conversation_id, &origin.user_id)?;
    let members = d
        .store
        .watermarks(&req.conversation_id)
        .await?
        .into_iter()
        .map(|(user_id, w)| v1::ReceiptUpdate {
            conversation_id: req.conversation_id.clone(),
            user_id,
            delivered_seq: w.delivered,
            read_seq: w.read,
        })
        .collect();
    Ok(Body::Receipts(v1::Receipts { conversation_id: req.conversation_id, members }))
}
