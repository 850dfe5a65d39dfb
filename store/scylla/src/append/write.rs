//! Step 4 of an append: the message write (before its write fence), a recall's target, the
//! index and mention writes (see `flags.rs`), and the message-row reads the resend path uses.

use std::sync::Arc;

use tern_proto::v1;
use tern_store::NewMessage;
use tokio::task::JoinSet;
use tracing::warn;

use super::{fence_ms, ms};
use crate::bucket::bucket_of;
use crate::error::OpError;
use crate::flags::{IndexWrite, direct_index_writes};
use crate::group::is_group;
use crate::row::{self, MessageRow};
use crate::statements::Stmt;
use crate::store::{Inner, now_ms};

impl Inner {
    /// Step 4, before the write fence: recall target, message row, members' index entries.
    pub(crate) async fn write(
        &self,
        m: &NewMessage,
        seq: u64,
        time: i64,
        allocated_at: i64,
    ) -> Result<(), OpError> {
        let grace = ms(self.cfg.settle_grace);
        let fenced = || {
            (now_ms() >= fence_ms(allocated_at, grace)).then(|| OpError::ClaimLost {
                sender: m.sender_user_id.clone(),
                client_msg_id: m.client_msg_id.clone(),
            })
        };
        if let Some(e) = fenced() {
            return Err(e);
        }
        let conv = m.conversation_id.as_str();
        let cql_seq = row::seq_to_cql(seq).ok_or_else(|| OpError::SeqOverflow(conv.to_owned()))?;
        let bucket = bucket_of(seq, self.cfg.bucket_size) as i64;
        if m.kind == v1::MessageKind::Recall {
            self.recall_target(conv, m.recalled_seq).await?;
        }
        let blob = row::encode(&row::stored_message(m, seq, time));
        let ts = time.saturating_mul(1000);
        self.exec(Stmt::InsertMessage, (conv, bucket, cql_seq, blob, allocated_at, ts)).await?;
        if is_group(conv) {
            // A group's members read its allocator row instead (read diffusion); its
            // mentions of all are in that row too, set by the allocating LWT.
            return self.write_group_mentions(m, cql_seq).await;
        }
        let mut index = JoinSet::new();
        for write in direct_index_writes(m) {
            let session = Arc::clone(&self.session);
            let (conv, seq) = (conv.to_owned(), cql_seq);
            // A member the message mentions (by id, or all) gets its mention seq in the same
            // write (see flags.rs).
            let (stmt, mention, member) = match write {
                IndexWrite::Entry(u) => (Stmt::UpsertIndex, None, u.to_owned()),
                IndexWrite::Mentioned(u) => (Stmt::UpsertIndexMention, Some(seq), u.to_owned()),
            };
            let stmt = self.stmts.get(stmt).clone();
            index.spawn(async move {
                match mention {
                    None => session.execute_unpaged(&stmt, (seq, seq, time, member, conv)).await,
                    Some(s) => {
                        session.execute_unpaged(&stmt, (seq, seq, time, s, member, conv)).await
                    }
                }
            });
        }
        while let Some(joined) = index.join_next().await {
            joined.map_err(|e| OpError::Task(e.to_string()))??;
        }
        Ok(())
    }

    /// Marks `seq` recalled with its body cleared; a missing target is logged and skipped.
    async fn recall_target(&self, conv: &str, seq: u64) -> Result<(), OpError> {
        let Some(target) = self.message(conv, seq).await? else {
            warn!(conversation_id = conv, seq, "recall of a message that is not stored");
            return Ok(());
        };
        let Some(cql_seq) = row::seq_to_cql(seq) else { return Ok(()) };
        // Above the target's own write timestamp, whatever the clocks say.
        let ts = now_ms().saturating_mul(1000).max(target.server_time_ms.saturating_mul(1000) + 1);
        let bucket = bucket_of(seq, self.cfg.bucket_size) as i64;
        self.exec(Stmt::RecallMessage, (ts, row::recalled_blob(target), conv, bucket, cql_seq))
            .await?;
        Ok(())
    }

    /// Whether the message row at `seq` holds a message.
    pub(crate) async fn message_stored(&self, conv: &str, seq: u64) -> Result<bool, OpError> {
        Ok(self.message_row(conv, seq).await?.is_some_and(|r| r.message.is_some()))
    }

    /// The raw message row at `seq`.
    pub(crate) async fn message_row(
        &self,
        conv: &str,
        seq: u64,
    ) -> Result<Option<MessageRow>, OpError> {
        let Some(cql_seq) = row::seq_to_cql(seq) else { return Ok(None) };
        let bucket = bucket_of(seq, self.cfg.bucket_size) as i64;
        self.select_one::<MessageRow>(Stmt::SelectMessage, (conv, bucket, cql_seq)).await
    }
}
