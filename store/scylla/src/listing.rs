//! A user's conversation list (`user_conversations`, paged by `conversation_id > ? LIMIT ?`),
//! with each entry's watermarks and, for a group, its read-diffusion entry (the group's
//! latest seq for a current member, the removal for a former one: see `group.rs`).

use std::sync::Arc;

use scylla::DeserializeRow;
use tern_store::{ConversationEntry, Watermarks};
use tokio::task::JoinSet;

use crate::error::OpError;
use crate::row::seq_from_cql;
use crate::statements::Stmt;
use crate::store::{Inner, ReceiptRow, watermarks};

#[derive(Debug, DeserializeRow)]
struct IndexRow {
    conversation_id: String,
    last_seq: Option<i64>,
    last_time_ms: Option<i64>,
}

impl Inner {
    pub(crate) async fn list_conversations(
        self: &Arc<Self>,
        user: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<ConversationEntry>, OpError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<IndexRow> = self.select_all(Stmt::ListIndex, (user, after, limit)).await?;
        let mut receipts = JoinSet::new();
        for (i, r) in rows.iter().enumerate() {
            let inner = Arc::clone(self);
            let (conv, user) = (r.conversation_id.clone(), user.to_owned());
            let entry = (
                seq_from_cql("user_conversations.last_seq", r.last_seq)?,
                r.last_time_ms.unwrap_or(0),
            );
            receipts.spawn(async move {
                let row =
                    inner.select_one::<ReceiptRow>(Stmt::SelectReceipt, (&conv, &user)).await?;
                let wm = match row {
                    Some(r) => watermarks(r.delivered_seq, r.read_seq)?,
                    None => Watermarks::default(),
                };
                // Read diffusion: a group's entry follows the group (see group.rs).
                let entry = inner.group_list_entry(&conv, &user, entry).await?;
                Ok::<_, OpError>((i, wm, entry))
            });
        }
        let mut out: Vec<Option<ConversationEntry>> = vec![None; rows.len()];
        while let Some(joined) = receipts.join_next().await {
            let (i, watermarks, (last_seq, last_time_ms)) =
                joined.map_err(|e| OpError::Task(e.to_string()))??;
            let conversation_id = rows[i].conversation_id.clone();
            out[i] = Some(ConversationEntry {
                mention_seq: 0,
                muted: false,
                pinned: false,
                conversation_id,
                last_seq,
                last_time_ms,
                watermarks,
            });
        }
        out.into_iter().map(|e| e.ok_or_else(|| OpError::Task("missing entry".into()))).collect()
    }
}
