//! Send: validate, resolve the conversation, enter the commit pipeline (which answers with the
//! SendAck once the message is durable).

use std::sync::Arc;

use tern_proto::ids::{is_valid_client_msg_id, is_valid_id};
use tern_proto::v1::{self, MessageKind};
use tern_store::NewMessage;

use tern_store::Write;

use crate::dispatcher::{Dispatcher, Origin, unix_ms};
use crate::error::DispatchError;
use crate::membership::{self, is_group};
use crate::pipeline::{Job, Reply, Then};

/// Validates a Send and queues it for the next group commit (synchronously, to keep order);
/// `reply` gets the SendAck once it is durable, or the error.
///
/// A mention of all in a group first checks the sender's role (a task: such a send may then
/// be sequenced after the connection's later sends, which in-flight sends never promise).
pub fn submit(d: &Arc<Dispatcher>, origin: &Origin, request_id: u64, req: v1::Send, reply: Reply) {
    let msg = match prepare(d, origin, req) {
        Ok(msg) => msg,
        Err(e) => return reply(e.to_frame(request_id)),
    };
    let job = |msg| Job {
        write: Write::Append(msg),
        members: Vec::new(),
        skip: Some(origin.conn_ref()),
        then: Then::Ack { request_id, reply },
    };
    if !msg.mention_all {
        return d.pipeline.push(job(msg));
    }
    let (d2, origin2, job) = (d.clone(), origin.clone(), job(msg));
    d.spawn(async move {
        let Write::Append(msg) = &job.write else { return };
        match may_mention_all(&d2, &origin2, &msg.conversation_id).await {
            Ok(()) => d2.pipeline.push(job),
            Err(e) => job.then.fail(e),
        }
    });
}

/// Only a group's owner and admins mention all.
async fn may_mention_all(d: &Dispatcher, origin: &Origin, conv: &str) -> Result<(), DispatchError> {
    match d.store.group_member(conv, &origin.user_id).await? {
        Some(m) if m.is_current() && m.role >= tern_store::Role::Admin => Ok(()),
        Some(m) if m.is_current() => {
            Err(DispatchError::Forbidden("only the owner or an admin may mention all".into()))
        }
        _ => Err(DispatchError::NotAMember),
    }
}

/// Most users one message mentions.
pub const MAX_MENTIONS: usize = 50;

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
    if req.mention_user_ids.len() > MAX_MENTIONS {
        return Err(DispatchError::Invalid(format!("more than {MAX_MENTIONS} mentions")));
    }
    if let Some(bad) = req.mention_user_ids.iter().find(|u| !is_valid_id(u)) {
        return Err(DispatchError::Invalid(format!("mention of an invalid user id {bad:?}")));
    }
    let mut mentions = req.mention_user_ids;
    mentions.sort_unstable();
    mentions.dedup();
    let members = match (req.conversation_id.is_empty(), req.peer_user_id.is_empty()) {
        (false, true) => membership::for_write(&req.conversation_id, &origin.user_id)?,
        (true, false) => membership::direct(&origin.user_id, &req.peer_user_id)?,
        _ => {
            return Err(DispatchError::Invalid(
                "set exactly one of conversation_id and peer_user_id".into(),
            ));
        }
    };
    let mention_all = req.mention_all && is_group(&members.conversation_id);
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
        mention_all,
        mention_user_ids: mentions,
    })
}
