//! Send: validate, resolve the conversation, enter the commit pipeline (which answers with the
//! SendAck once the message is durable).

use tern_proto::ids::is_valid_client_msg_id;
use tern_proto::v1::{self, MessageKind};
use tern_store::NewMessage;

use tern_store::Write;

use crate::dispatcher::{Dispatcher, Origin, unix_ms};
use crate::error::DispatchError;
use crate::membership;
use crate::pipeline::{Job, Reply, Then};

/// Validates a Send and queues it for the next group commit (synchronously, to keep order);
/// `reply` gets the SendAck once it is durable, or the error.
pub fn submit(d: &Dispatcher, origin: &Origin, request_id: u64, req: v1::Send, reply: Reply) {
    match prepare(d, origin, req) {
        Ok(msg) => d.pipeline.push(Job {
            write: Write::Append(msg),
            members: Vec::new(),
            skip: Some(origin.conn_ref()),
            then: Then::Ack { request_id, reply },
        }),
        Err(e) => reply(e.to_frame(request_id)),
    }
}

/// The message a valid Send appends.
fn prepare(d: &Dispatcher, origin: &Origin, req: v1::Send) -> Result<NewMessage, DispatchError> {
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
        (false, true) => membership::for_write(&req.conversation_id, &origin.user_id)?,
        (true, false) => membership::direct(&origin.user_id, &req.peer_user_id)?,
        _ => {
            return Err(DispatchError::Invalid(
                "set exactly one of conversation_id and peer_user_id".into(),
            ));
        }
    };
    Ok(NewMessage {
        conversation_id: members.conversation_id,
        members: members.users,
        sender_user_id: origin.user_id.clone(),
        sender_device_id: origin.device_id.clone(),
        client_msg_id: req.client_msg_id,
        kind: MessageKind::Normal,
        content_type: req.content_type,
        body: req.body,
        recalled_seq: 0,
        server_time_ms: unix_ms(),
    })
}
