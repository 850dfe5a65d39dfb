//! Receipts as watermarks: "delivered up to N" and "read up to N" per member and conversation.
//! An update is stored (never moving back), pushed to the other members' and the user's other
//! devices when it moved a watermark, and answered with the user's resulting watermarks.

use tern_proto::v1::{self, ReceiptKind, envelope::Body};

use crate::dispatcher::{Dispatcher, Origin};
use crate::error::DispatchError;
use crate::membership;
use crate::push::fan_out;

/// Moves the caller's watermark forward.
pub async fn update(
    d: &Dispatcher,
    origin: &Origin,
    req: v1::Receipt,
) -> Result<Body, DispatchError> {
    let kind = ReceiptKind::try_from(req.kind)
        .ok()
        .filter(|k| *k != ReceiptKind::Unspecified)
        .ok_or_else(|| DispatchError::Invalid("receipt kind must be DELIVERED or READ".into()))?;
    let members = membership::resolve(&req.conversation_id, &origin.user_id)?;
    // A watermark cannot pass the conversation's end: a client only ever sees seqs up to the
    // conversation's last seq, so a higher one is a client bug, refused with nothing moved.
    let last = d.store.last_seq(&req.conversation_id).await?;
    if req.seq > last {
        return Err(DispatchError::Invalid(format!(
            "receipt seq {} is above the conversation's last seq {last}",
            req.seq
        )));
    }
    let up = d.store.set_watermark(&req.conversation_id, &origin.user_id, kind, req.seq).await?;
    d.metrics.receipts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let update = v1::ReceiptUpdate {
        conversation_id: req.conversation_id,
        user_id: origin.user_id.clone(),
        delivered_seq: up.watermarks.delivered,
        read_seq: up.watermarks.read,
    };
    // Only a move is news to the other devices; the caller gets its watermarks either way.
    if up.moved {
        fan_out(
            &*d.pusher,
            &members.users,
            Body::ReceiptUpdate(update.clone()),
            Some(&origin.conn_ref()),
        );
    }
    Ok(Body::ReceiptUpdate(update))
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
