//! What a user's conversation list shows beyond seqs, on Scylla: mentions and the user's own
//! flags (muted, pinned), with the same semantics as the embedded and Redis stores
//! (`tern-store-conformance`, `flags.rs`).
//!
//! | what | where | written by |
//! |---|---|---|
//! | mentions by id, direct conversation | `user_conversations.mention_seq` of each mentioned member | the message's own index write (`UpsertIndexMention` instead of `UpsertIndex`) |
//! | mention of all, direct conversation | the same cell of every member | the same index writes |
//! | mentions by id, group | `user_conversations.mention_seq` of each mentioned user with a member row | `UpsertMention`, after one head read and one member-row read per mentioned user |
//! | mention of all, group | `conversation_meta.mention_all_seq` | the allocating LWT (`CasGroupSendMentionAll`) |
//! | muted / pinned | `user_conversations.muted` / `.pinned` | `SetFlags` (`Write::Flags`) |
//! | muted, by conversation | `conversation_mutes.muted` (row per user who ever set it) | `SetMute`, with `SetFlags` |
//!
//! Every cell keeps only the latest value, as the other backends keep only the latest mention
//! of each kind: `mention_seq` is written `USING TIMESTAMP = seq` (the highest seq wins in any
//! landing order), flags with a per-process strictly increasing wall-clock timestamp in
//! microseconds ([`next_stamp`]: the latest write wins). An entry's mention seq is the latest
//! of the user's own and of all at or below the entry's last seq ([`mention_seq`]: a former
//! group member's entry ends at their removal, so a mention after it is not theirs and hides
//! an earlier one, as documented in PROTOCOL.md).
//!
//! Mentions never add a row to a user's partition: in a direct conversation only members are
//! written (in the row their index entry writes anyway), in a group only users who have a
//! member row, current or former (whose index row every change of theirs writes). A
//! mentioned non-member gets nothing ("no effect beyond the stored ids", PROTOCOL.md; the
//! ids themselves are in the message blob).
//!
//! Costs: a message without mentions writes nothing more. A direct message with mentions:
//! no extra statement. A group message mentioning k users: 1 head read, then k member-row
//! reads and at most k writes (concurrent). A mention of all in a group: nothing more (a
//! column of the allocating LWT). A flags write: 1 plain write, 2 (concurrent) when it sets
//! muted. `list_conversations` reads all of it with the rows it reads anyway (see
//! `listing.rs`). `muted_among` (which of n recipients muted a conversation: the offline-push
//! read) is one single-partition read of `conversation_mutes` (`SelectMutes`, paged at the
//! driver's page size: ceil(m / page) round trips for the m users who ever set the
//! conversation's mute, whatever n is), then a hash-set filter of the n ids in the caller's
//! order. Reading `user_conversations` instead would be n partitions, n queries.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};

use scylla::value::MaybeUnset;
use tern_store::{FlagsWrite, NewMessage};
use tokio::task::JoinSet;

use crate::error::OpError;
use crate::group::effective;
use crate::row::group::{MemberRow, member_of};
use crate::statements::Stmt;
use crate::store::{Inner, now_ms};

/// One `user_conversations` write of a message to a direct (non-group) conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexWrite<'a> {
    /// The member's entry moves to the message's seq (`UpsertIndex`).
    Entry(&'a str),
    /// The member's entry moves to the message's seq, which mentions them
    /// (`UpsertIndexMention`).
    Mentioned(&'a str),
}

/// The index writes of `m` in a direct conversation: one per member, [`IndexWrite::Mentioned`]
/// for a member it mentions by id or for every member when it mentions all.
pub(crate) fn direct_index_writes(m: &NewMessage) -> Vec<IndexWrite<'_>> {
    m.members
        .iter()
        .map(|u| {
            if m.mention_all || m.mention_user_ids.contains(u) {
                IndexWrite::Mentioned(u)
            } else {
                IndexWrite::Entry(u)
            }
        })
        .collect()
}

/// The users a group message mentions by id, each once, in the message's order.
pub(crate) fn mentioned_users(m: &NewMessage) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::with_capacity(m.mention_user_ids.len());
    for u in &m.mention_user_ids {
        if !out.contains(&u.as_str()) {
            out.push(u);
        }
    }
    out
}

/// The mention seq an entry shows: the latest of the user's own (`own`) and of all (`all`)
/// at or below the entry's `last_seq` (0: none).
pub(crate) fn mention_seq(own: u64, all: u64, last_seq: u64) -> u64 {
    [own, all].into_iter().filter(|&s| s > 0 && s <= last_seq).max().unwrap_or(0)
}

/// The bound values (muted, pinned) of `SetFlags` for `w`: `Unset` leaves a flag as it is.
/// `None`: `w` changes nothing, no write is needed.
pub(crate) fn flag_values(w: &FlagsWrite) -> Option<(MaybeUnset<bool>, MaybeUnset<bool>)> {
    let value = |f: Option<bool>| f.map_or(MaybeUnset::Unset, MaybeUnset::Set);
    (w.muted.is_some() || w.pinned.is_some()).then(|| (value(w.muted), value(w.pinned)))
}

/// The next flags timestamp: the wall clock in microseconds (`now_us`), but strictly above
/// every earlier one of this process (`last`), so that two flags writes of one batch land
/// in batch order whatever the clock does.
pub(crate) fn next_stamp(last: &AtomicI64, now_us: i64) -> i64 {
    let mut prev = last.load(Ordering::Relaxed);
    loop {
        let next = now_us.max(prev.saturating_add(1));
        match last.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => prev = seen,
        }
    }
}

/// Of `user_ids`, in their order, those whose `conversation_mutes` row (`rows`: user id,
/// muted; null = false) says muted.
pub(crate) fn muted_of(rows: Vec<(String, Option<bool>)>, user_ids: &[String]) -> Vec<String> {
    let muted: HashSet<String> =
        rows.into_iter().filter(|(_, m)| *m == Some(true)).map(|(u, _)| u).collect();
    if muted.is_empty() {
        return Vec::new();
    }
    user_ids.iter().filter(|u| muted.contains(u.as_str())).cloned().collect()
}

impl Inner {
    /// A [`FlagsWrite`]: one plain write of the flags it sets (none when it sets nothing).
    pub(crate) async fn set_flags(&self, w: &FlagsWrite) -> Result<(), OpError> {
        let Some((muted, pinned)) = flag_values(w) else { return Ok(()) };
        let ts = next_stamp(&self.flag_clock, now_ms().saturating_mul(1000));
        let values = (ts, muted, pinned, w.user_id.as_str(), w.conversation_id.as_str());
        let flags = self.exec(Stmt::SetFlags, values);
        let Some(mute) = w.muted else { return flags.await.map(drop) };
        let values = (ts, mute, w.conversation_id.as_str(), w.user_id.as_str());
        tokio::try_join!(flags, self.exec(Stmt::SetMute, values))?;
        Ok(())
    }

    /// [`tern_store::Store::muted_among`]: the conversation's `conversation_mutes` partition,
    /// then `user_ids` filtered by it in their order.
    pub(crate) async fn muted_among(
        &self,
        conversation_id: &str,
        user_ids: &[String],
    ) -> Result<Vec<String>, OpError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Option<bool>)> =
            self.select_all(Stmt::SelectMutes, (conversation_id,)).await?;
        Ok(muted_of(rows, user_ids))
    }

    /// The mentions by id of a group message at `seq`: each mentioned user with a member row
    /// (current or former; the group's pending change laid over the table, read after the
    /// head as every group read) gets their `mention_seq` moved to `seq`.
    pub(crate) async fn write_group_mentions(
        &self,
        m: &NewMessage,
        seq: i64,
    ) -> Result<(), OpError> {
        let users = mentioned_users(m);
        if users.is_empty() {
            return Ok(());
        }
        let conv = m.conversation_id.as_str();
        let head = self.group_snapshot(conv, false).await?;
        let mut rows = JoinSet::new();
        for (i, user) in users.iter().enumerate() {
            let (session, stmt) =
                (self.session.clone(), self.stmts.get(Stmt::SelectMember).clone());
            let values = (conv.to_owned(), (*user).to_owned());
            rows.spawn(async move {
                let rows = session.execute_unpaged(&stmt, values).await?.into_rows_result()?;
                let row = rows.maybe_first_row::<MemberRow>()?;
                Ok::<_, OpError>((i, row.map(member_of).transpose()?))
            });
        }
        let mut writes = JoinSet::new();
        while let Some(joined) = rows.join_next().await {
            let (i, row) = joined.map_err(|e| OpError::Task(e.to_string()))??;
            let user = users[i];
            if effective(head.pending.as_ref(), user, row).is_none() {
                continue; // never a member: no effect beyond the stored ids
            }
            let (session, stmt) =
                (self.session.clone(), self.stmts.get(Stmt::UpsertMention).clone());
            let values = (seq, seq, user.to_owned(), conv.to_owned());
            writes.spawn(async move { session.execute_unpaged(&stmt, values).await });
        }
        while let Some(joined) = writes.join_next().await {
            joined.map_err(|e| OpError::Task(e.to_string()))??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tern_proto::v1;

    use super::*;

    fn msg(members: &[&str], mentions: &[&str], all: bool) -> NewMessage {
        NewMessage {
            conversation_id: "dm:a:b".into(),
            members: members.iter().map(|s| (*s).to_owned()).collect(),
            sender_user_id: "a".into(),
            sender_device_id: "d".into(),
            client_msg_id: "c".into(),
            kind: v1::MessageKind::Normal,
            content_type: "text/plain".into(),
            body: Bytes::new(),
            recalled_seq: 0,
            server_time_ms: 1,
            mention_user_ids: mentions.iter().map(|s| (*s).to_owned()).collect(),
            mention_all: all,
        }
    }

    #[test]
    fn direct_mentions_ride_on_the_members_index_writes() {
        use IndexWrite::{Entry, Mentioned};
        let plain = msg(&["a", "b"], &[], false);
        assert_eq!(direct_index_writes(&plain), [Entry("a"), Entry("b")]);
        // A mentioned non-member gets no write (and so no row).
        let one = msg(&["a", "b"], &["b", "zed"], false);
        assert_eq!(direct_index_writes(&one), [Entry("a"), Mentioned("b")]);
        let all = msg(&["a", "b"], &[], true);
        assert_eq!(direct_index_writes(&all), [Mentioned("a"), Mentioned("b")]);
    }

    #[test]
    fn group_mentions_go_to_each_user_once() {
        let m = msg(&[], &["b", "c", "b"], true);
        assert_eq!(mentioned_users(&m), ["b", "c"]);
        assert!(mentioned_users(&msg(&[], &[], true)).is_empty());
    }

    #[test]
    fn an_entry_shows_the_latest_mention_up_to_its_end() {
        assert_eq!(mention_seq(0, 0, 9), 0);
        assert_eq!(mention_seq(3, 0, 9), 3);
        assert_eq!(mention_seq(3, 5, 9), 5);
        assert_eq!(mention_seq(7, 5, 9), 7);
        // A former member's entry ends at their removal (6): a later own mention is not
        // theirs and hides the earlier one; a mention of all before it still counts.
        assert_eq!(mention_seq(8, 5, 6), 5);
        assert_eq!(mention_seq(8, 0, 6), 0);
        assert_eq!(mention_seq(6, 7, 6), 6);
    }

    #[test]
    fn flags_bind_only_what_they_set() {
        let w = |muted, pinned| FlagsWrite {
            conversation_id: "c".into(),
            user_id: "u".into(),
            muted,
            pinned,
        };
        assert!(flag_values(&w(None, None)).is_none());
        let Some((m, p)) = flag_values(&w(Some(true), None)) else { panic!("a write") };
        assert!(matches!((m, p), (MaybeUnset::Set(true), MaybeUnset::Unset)));
        let Some((m, p)) = flag_values(&w(Some(false), Some(true))) else { panic!("a write") };
        assert!(matches!((m, p), (MaybeUnset::Set(false), MaybeUnset::Set(true))));
    }

    #[test]
    fn mutes_filter_the_asked_users_in_their_order() {
        let s = |v: &[&str]| v.iter().map(|u| (*u).to_owned()).collect::<Vec<_>>();
        let rows = vec![
            ("a".to_owned(), Some(true)),
            ("b".to_owned(), Some(false)),
            ("c".to_owned(), None),
            ("d".to_owned(), Some(true)),
        ];
        assert_eq!(
            muted_of(rows.clone(), &s(&["d", "b", "x", "a", "c", "d"])),
            s(&["d", "a", "d"])
        );
        assert!(muted_of(rows, &s(&["b", "c", "x"])).is_empty());
        assert!(muted_of(Vec::new(), &s(&["a"])).is_empty());
    }

    #[test]
    fn flag_stamps_strictly_increase_whatever_the_clock() {
        let last = AtomicI64::new(0);
        assert_eq!(next_stamp(&last, 1_000), 1_000);
        // Same microsecond, or a clock that stepped back: still later than the last one.
        assert_eq!(next_stamp(&last, 1_000), 1_001);
        assert_eq!(next_stamp(&last, 500), 1_002);
        assert_eq!(next_stamp(&last, 5_000), 5_000);
    }
}
