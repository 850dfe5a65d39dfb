//! The caller's conversation list with each conversation's latest seq, so that a client coming
//! back learns which conversations changed while it was away.

use tern_proto::ids::ConversationRef;
use tern_proto::v1::{self, ConversationKind, envelope::Body};

use crate::dispatcher::{Dispatcher, Origin};
use crate::error::DispatchError;

/// Serves one ListConversations page.
pub async fn list(
    d: &Dispatcher,
    origin: &Origin,
    req: v1::ListConversations,
) -> Result<Body, DispatchError> {
    let limit = d.cfg.page(req.limit);
    let mut entries = d
        .store
        .list_conversations(&origin.user_id, &req.after_conversation_id, limit.saturating_add(1))
        .await?;
    let has_more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let conversations = entries
        .into_iter()
        .map(|e| v1::ConversationSummary {
            kind: match ConversationRef::parse(&e.conversation_id) {
                Some(ConversationRef::Group(_)) => ConversationKind::Group,
                _ => ConversationKind::Direct,
            } as i32,
            conversation_id: e.conversation_id,
            last_seq: e.last_seq,
            last_time_ms: e.last_time_ms,
            delivered_seq: e.watermarks.delivered,
            read_seq: e.watermarks.read,
            unread_count: e.last_seq.saturating_sub(e.watermarks.read),
            mentioned: e.mention_seq > e.watermarks.read,
            muted: e.muted,
            pinned: e.pinned,
        })
        .collect();
    Ok(Body::ConversationList(v1::ConversationList { conversations, has_more }))
}

/// Sets the caller's muted / pinned flags of a conversation they belong to (a former group
/// member's too: they may still read it). Answered with Ok once durable.
pub async fn update(
    d: &Dispatcher,
    origin: &Origin,
    req: v1::UpdateConversation,
) -> Result<Body, DispatchError> {
    crate::membership::readable(&*d.store, &req.conversation_id, &origin.user_id).await?;
    let write = tern_store::Write::Flags(tern_store::FlagsWrite {
        conversation_id: req.conversation_id,
        user_id: origin.user_id.clone(),
        muted: req.muted,
        pinned: req.pinned,
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let then = crate::pipeline::Then::Done(tx);
    d.pipeline.push(crate::pipeline::Job { write, members: Vec::new(), skip: None, then });
    rx.await.unwrap_or(Err(DispatchError::Unavailable("commit thread stopped")))?;
    Ok(Body::Ok(v1::Ok {}))
}
