//! Send: validate, resolve the conversation, enter the commit pipeline, answer with SendAck.

use tern_proto::ids::is_valid_client_msg_id;
use tern_proto::v1::{self, MessageKind, envelope::Body};
use tern_store::NewMessage;

use crate::dispatcher::{Dispatcher, Origin, unix_ms};
use crate::error::DispatchError;
use crate::membership;
use crate::pipeline::{Pending, outcome};

/// Validates a Send and submits it to the pipeline (synchronously, to keep order).
/// Returns the pending outcome and the client_msg_id to echo in the ack.
pub fn submit(
    d: &Dispatcher,
    origin: &Origin,
    req: v1::Send,
) -> Result<(Pending, String), DispatchError> {
    if !is_valid_client_msg_id(&req.client_msg_id) {
        return Err(DispatchError::Invalid("client_msg_id must be 1 to 64 bytes".into()));
    }
    if req.body.len() > d.cfg.max_body_bytes {
        return Err(DispatchError::Invalid(format!(
            "body of {} bytes exceeds the maximum of {}",
            req.body.len(),
            d.cfg.max_body_bytes
        )));
    }
    if req.content_type.len() > d.cfg.max_content_type_bytes {
        return Err(DispatchError::Invalid("content_type too long".into()));
    }
    let members = match (req.conversation_id.is_empty(), req.peer_user_id.is_empty()) {
        (false, true) => membership::resolve(&req.conversation_id, &origin.user_id)?,
        (true, false) => membership::direct(&origin.user_id, &req.peer_user_id)?,
        _ => {
            return Err(DispatchError::Invalid(
                "set exactly one of conversation_id and peer_user_id".into(),
            ));
        }
    };
    let msg = NewMessage {
        conversation_id: members.conversation_id,
        members: members.users,
        sender_user_id: origin.user_id.clone(),
        sender_device_id: origin.device_id.clone(),
        client_msg_id: req.client_msg_id.clone(),
        kind: MessageKind::Normal,
        content_type: req.content_type,
        body: req.body,
        recalled_seq: 0,
        server_time_ms: unix_ms(),
    };
    Ok((d.pipeline.submit(msg, Some(origin.conn_ref()))?, req.client_msg_id))
}

/// Waits for the commit and builds the SendAck.
pub async fn answer(pending: Pending, client_msg_id: String) -> Result<Body, DispatchError> {
    let out = outcome(pending).await?;
    Ok(Body::SendAck(v1::SendAck {
        conversation_id: out.conversation_id,
        seq: out.seq,
        server_time_ms: out.server_time_ms,
        client_msg_id,
        duplicate: out.duplicate,
    }))
}
