//! Recall: the sender withdraws one of its messages within the recall window. The recall is an
//! event with its own seq (pushed like a message); the store clears the original's body.

use bytes::Bytes;
use tern_proto::ids::is_valid_client_msg_id;
use tern_proto::v1::{self, MessageKind, envelope::Body};
use tern_store::NewMessage;

use crate::dispatcher::{Dispatcher, Origin, unix_ms};
use crate::error::DispatchError;
use crate::membership;
use crate::pipeline::outcome;

/// Checks the recall and commits its event; answers with the event's SendAck.
///
/// Dedupe first: a recall of a message that is already recalled goes through the pipeline
/// only when its client_msg_id is already known (a resend of the recall that did it, answered
/// from dedupe with the original ack, or a reuse the pipeline refuses); any other is refused
/// with ALREADY_RECALLED, window or not.
pub async fn handle(
    d: &Dispatcher,
    origin: &Origin,
    req: v1::Recall,
) -> Result<Body, DispatchError> {
    if !is_valid_client_msg_id(&req.client_msg_id) {
        return Err(DispatchError::Invalid("client_msg_id must be 1 to 64 bytes".into()));
    }
    let members = membership::for_write(&req.conversation_id, &origin.user_id)?;
    let target = d
        .store
        .get_message(&req.conversation_id, req.seq)
        .await?
        .ok_or(DispatchError::UnknownMessage)?;
    if target.sender_user_id != origin.user_id {
        return Err(DispatchError::NotSender);
    }
    if target.kind != MessageKind::Normal as i32 {
        return Err(DispatchError::Invalid("only normal messages can be recalled".into()));
    }
    let now = unix_ms();
    let window = i64::try_from(d.cfg.recall_window.as_millis()).unwrap_or(i64::MAX);
    if target.recalled {
        // Read after the target: the recall that marked it stored its dedupe key no later.
        if !d.store.client_msg_id_known(&origin.user_id, &req.client_msg_id).await? {
            return Err(DispatchError::AlreadyRecalled);
        }
    } else if now.saturating_sub(target.server_time_ms) > window {
        return Err(DispatchError::RecallWindowPassed);
    }
    let event = NewMessage {
        mention_user_ids: Vec::new(),
        mention_all: false,
        conversation_id: members.conversation_id,
        members: members.users,
        sender_user_id: origin.user_id.clone(),
        sender_device_id: origin.device_id.clone(),
        client_msg_id: req.client_msg_id.clone(),
        kind: MessageKind::Recall,
        content_type: String::new(),
        body: Bytes::new(),
        recalled_seq: req.seq,
        server_time_ms: now,
    };
    let out = outcome(d.pipeline.submit(event, Some(origin.conn_ref()))).await?;
    Ok(Body::SendAck(v1::SendAck {
        conversation_id: out.conversation_id,
        seq: out.seq,
        server_time_ms: out.server_time_ms,
        client_msg_id: req.client_msg_id,
        duplicate: out.duplicate,
    }))
}
