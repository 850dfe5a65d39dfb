//! A user's conversation list (`user_conversations`, paged by `conversation_id > ? LIMIT ?`),
//! with each entry's watermarks, mentions and flags and, for a group, its read-diffusion
//! entry (the group's latest seq for a current member, the removal for a former one: see
//! `group.rs`) and its latest mention of all (see `flags.rs`).
//!
//! Round trips of one call: 1 page read of the user's partition (index entry, own mention
//! seq, muted, pinned: one row each), then per listed conversation, concurrently, 1 read of
//! its receipts row, and for a group 2 more (its head, with the mention of all, then the
//! user's member row). Mentions and flags add no read. A row that holds only flags (no
//! `last_seq`) is not listed; when a page had such rows, the next rows are read to fill it
//! (one more page read each time).

use std::sync::Arc;

use scylla::DeserializeRow;
use tern_store::{ConversationEntry, Watermarks};
use tokio::task::JoinSet;

use crate::error::OpError;
use crate::flags::mention_seq;
use crate::row::{RowError, seq_from_cql};
use crate::statements::Stmt;
use crate::store::{Inner, ReceiptRow, watermarks};

/// A row of `ListIndex`.
#[derive(Debug, Clone, Default, PartialEq, DeserializeRow)]
pub(crate) struct IndexRow {
    pub(crate) conversation_id: String,
    pub(crate) last_seq: Option<i64>,
    pub(crate) last_time_ms: Option<i64>,
    pub(crate) mention_seq: Option<i64>,
    pub(crate) muted: Option<bool>,
    pub(crate) pinned: Option<bool>,
}

/// What an index row says, before the per-conversation reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Indexed {
    pub(crate) conversation_id: String,
    /// (last_seq, last_time_ms) of the entry.
    pub(crate) entry: (u64, i64),
    /// The user's own latest mention seq.
    pub(crate) own_mention: u64,
    pub(crate) muted: bool,
    pub(crate) pinned: bool,
}

/// An index row as an entry to list, `None` for a row without `last_seq` (only flags: the
/// conversation has not reached the user).
pub(crate) fn indexed(r: IndexRow) -> Result<Option<Indexed>, RowError> {
    let Some(last_seq) = r.last_seq else { return Ok(None) };
    Ok(Some(Indexed {
        entry: (
            seq_from_cql("user_conversations.last_seq", Some(last_seq))?,
            r.last_time_ms.unwrap_or(0),
        ),
        own_mention: seq_from_cql("user_conversations.mention_seq", r.mention_seq)?,
        muted: r.muted == Some(true),
        pinned: r.pinned == Some(true),
        conversation_id: r.conversation_id,
    }))
}

/// The listed entry of `i`, given the user's watermarks there, the entry as the group shows
/// it (`entry`: the index row's own outside groups) and the latest mention of all that is not
/// in the row (`all`: a group's).
pub(crate) fn entry_of(
    i: Indexed,
    watermarks: Watermarks,
    entry: (u64, i64),
    all: u64,
) -> ConversationEntry {
    let (last_seq, last_time_ms) = entry;
    ConversationEntry {
        mention_seq: mention_seq(i.own_mention, all, last_seq),
        muted: i.muted,
        pinned: i.pinned,
        conversation_id: i.conversation_id,
        last_seq,
        last_time_ms,
        watermarks,
    }
}

/// What the per-conversation reads give an entry: the user's watermarks, the entry as the
/// group shows it, the group's latest mention of all.
type Read = (Watermarks, (u64, i64), u64);

impl Inner {
    /// Up to `limit` listable index rows after `after`, reading on past flags-only rows.
    async fn index_page(
        &self,
        user: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Indexed>, OpError> {
        let mut out = Vec::new();
        let mut cursor = after.to_owned();
        while out.len() < limit {
            let want = limit - out.len();
            let cql_limit = i32::try_from(want).unwrap_or(i32::MAX);
            let rows: Vec<IndexRow> =
                self.select_all(Stmt::ListIndex, (user, cursor.as_str(), cql_limit)).await?;
            let n = rows.len();
            match rows.last() {
                Some(last) => cursor.clone_from(&last.conversation_id),
                None => break,
            }
            for r in rows {
                if let Some(i) = indexed(r)? {
                    out.push(i);
                }
            }
            if n < want {
                break; // the partition has no more rows
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    pub(crate) async fn list_conversations(
        self: &Arc<Self>,
        user: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<ConversationEntry>, OpError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(i32::MAX as usize);
        let rows = self.index_page(user, after, limit).await?;
        let mut reads = JoinSet::new();
        for (i, r) in rows.iter().enumerate() {
            let inner = Arc::clone(self);
            let (conv, user, entry) = (r.conversation_id.clone(), user.to_owned(), r.entry);
            reads.spawn(async move {
                let row =
                    inner.select_one::<ReceiptRow>(Stmt::SelectReceipt, (&conv, &user)).await?;
                let wm = match row {
                    Some(r) => watermarks(r.delivered_seq, r.read_seq)?,
                    None => Watermarks::default(),
                };
                // Read diffusion: a group's entry follows the group (see group.rs).
                let (entry, all) = inner.group_list_entry(&conv, &user, entry).await?;
                Ok::<_, OpError>((i, wm, entry, all))
            });
        }
        let mut slots: Vec<Option<Read>> = vec![None; rows.len()];
        while let Some(joined) = reads.join_next().await {
            let (i, wm, entry, all) = joined.map_err(|e| OpError::Task(e.to_string()))??;
            slots[i] = Some((wm, entry, all));
        }
        rows.into_iter()
            .zip(slots)
            .map(|(r, slot)| {
                let (wm, entry, all) = slot.ok_or_else(|| OpError::Task("missing entry".into()))?;
                Ok(entry_of(r, wm, entry, all))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(conv: &str, last: Option<i64>) -> IndexRow {
        IndexRow {
            conversation_id: conv.into(),
            last_seq: last,
            last_time_ms: Some(70),
            mention_seq: Some(4),
            muted: Some(true),
            pinned: None,
        }
    }

    #[test]
    fn index_rows_map_to_entries() {
        let i = indexed(row("dm:a:b", Some(9))).unwrap().expect("listed");
        assert_eq!(i.entry, (9, 70));
        assert_eq!((i.own_mention, i.muted, i.pinned), (4, true, false));
        // Flags set before the conversation reached the user: not listed.
        assert_eq!(indexed(row("dm:a:c", None)), Ok(None));
        let bare =
            IndexRow { conversation_id: "x".into(), last_seq: Some(1), ..IndexRow::default() };
        let bare = indexed(bare).unwrap().expect("listed");
        assert_eq!(
            (bare.entry, bare.own_mention, bare.muted, bare.pinned),
            ((1, 0), 0, false, false)
        );
        let negative = IndexRow { mention_seq: Some(-1), ..row("x", Some(1)) };
        assert!(indexed(negative).is_err());
    }

    #[test]
    fn entries_combine_own_and_group_mentions() {
        let wm = Watermarks { delivered: 5, read: 3 };
        let i = indexed(row("g:x", Some(2))).unwrap().expect("listed");
        // A group entry follows the group (12); its mention of all (10) is newer than the own.
        let e = entry_of(i.clone(), wm, (12, 99), 10);
        assert_eq!((e.last_seq, e.last_time_ms, e.mention_seq, e.watermarks), (12, 99, 10, wm));
        assert!(e.muted && !e.pinned);
        // A former member's entry ends at the removal (6): the later mention of all is not
        // theirs, the own one before it is.
        assert_eq!(entry_of(i, wm, (6, 1), 10).mention_seq, 4);
    }
}
