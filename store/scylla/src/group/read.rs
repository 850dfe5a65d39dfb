//! The group reads: a group's head, member rows (the pending change laid over the table, so a
//! reader never sees rows older than the version), pages of current members, a group's entry
//! in a user's conversation list, and a pending event for `read_range` / `get_message`.
//!
//! Order matters: each read takes the head first and the table rows after it. A pending change
//! is cleared only once its rows are written, so either the head still shows it (and its rows
//! are laid over the table) or the table rows read afterwards already hold them.

use tern_store::{GroupState, GroupWrite, Member, MemberChange};
use tokio::task::JoinSet;

use super::decide::{effective, list_entry, page, page_query_limit};
use super::{Snapshot, is_group};
use crate::error::OpError;
use crate::row::group::{CurrentRow, GroupRow, MemberRow, current_of, member_of, snapshot_of};
use crate::row::{MessageRow, RowError};
use crate::statements::Stmt;
use crate::store::Inner;

impl Inner {
    /// A group conversation's head (`serial`: linearizably, at the serial consistency).
    pub(crate) async fn group_snapshot(
        &self,
        conv: &str,
        serial: bool,
    ) -> Result<Snapshot, OpError> {
        let stmt = if serial { Stmt::SelectGroupSerial } else { Stmt::SelectGroup };
        let row = self.select_one::<GroupRow>(stmt, (conv,)).await?;
        Ok(snapshot_of(row)?)
    }

    /// `user`'s `group_members` row as stored.
    pub(crate) async fn member_row(
        &self,
        conv: &str,
        user: &str,
    ) -> Result<Option<Member>, OpError> {
        let row = self.select_one::<MemberRow>(Stmt::SelectMember, (conv, user)).await?;
        Ok(row.map(member_of).transpose()?)
    }

    /// The stored rows of the users `w` changes, in its order (read concurrently).
    pub(crate) async fn rows_of(
        &self,
        conv: &str,
        w: &GroupWrite,
    ) -> Result<Vec<Option<Member>>, OpError> {
        let mut set = JoinSet::new();
        for (i, change) in w.members.iter().enumerate() {
            let (session, stmt) =
                (self.session.clone(), self.stmts.get(Stmt::SelectMember).clone());
            let (conv, user) = (conv.to_owned(), MemberChange::user_id(change).to_owned());
            set.spawn(async move {
                let rows =
                    session.execute_unpaged(&stmt, (conv, user)).await?.into_rows_result()?;
                let row = rows.maybe_first_row::<MemberRow>()?;
                Ok::<_, OpError>((i, row.map(member_of).transpose()?))
            });
        }
        let mut out = vec![None; w.members.len()];
        while let Some(joined) = set.join_next().await {
            let (i, row) = joined.map_err(|e| OpError::Task(e.to_string()))??;
            out[i] = row;
        }
        Ok(out)
    }

    /// A group's record and version (`None`: no such group; a dissolved one is returned).
    pub(crate) async fn get_group(&self, conv: &str) -> Result<Option<GroupState>, OpError> {
        let s = self.group_snapshot(conv, false).await?;
        if s.version == 0 {
            return Ok(None);
        }
        let meta = s.record.ok_or_else(|| RowError::Group {
            what: "group_record",
            reason: format!("missing at version {}", s.version),
        })?;
        Ok(Some(GroupState { conversation_id: conv.to_owned(), meta, version: s.version }))
    }

    /// `user`'s row in the group at its current version, current or former.
    pub(crate) async fn group_member(
        &self,
        conv: &str,
        user: &str,
    ) -> Result<Option<Member>, OpError> {
        let s = self.group_snapshot(conv, false).await?;
        let row = self.member_row(conv, user).await?;
        Ok(effective(s.pending.as_ref(), user, row))
    }

    /// The group's current members with id > `after`, in id order, at most `limit`: one
    /// bounded read of `group_current` (`user_id > ? LIMIT ?`) with the pending change laid over.
    pub(crate) async fn group_members(
        &self,
        conv: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Member>, OpError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let s = self.group_snapshot(conv, false).await?;
        let queried = page_query_limit(s.pending.as_ref(), limit);
        let cql_limit = i32::try_from(queried).unwrap_or(i32::MAX);
        let rows: Vec<CurrentRow> =
            self.select_all(Stmt::ListCurrent, (conv, after, cql_limit)).await?;
        let table = rows.into_iter().map(current_of).collect::<Result<Vec<_>, _>>()?;
        Ok(page(table, queried, s.pending.as_ref(), after, limit))
    }

    /// What `user`'s conversation list shows for group `conv`, whose index entry says `entry`
    /// (last_seq, last_time_ms), and the group's latest mention of all (0 for a conversation
    /// that is not a group: its mentions of all are in the entry's own mention seq).
    pub(crate) async fn group_list_entry(
        &self,
        conv: &str,
        user: &str,
        entry: (u64, i64),
    ) -> Result<((u64, i64), u64), OpError> {
        if !is_group(conv) {
            return Ok((entry, 0));
        }
        let s = self.group_snapshot(conv, false).await?;
        let row = self.member_row(conv, user).await?;
        let row = effective(s.pending.as_ref(), user, row);
        Ok((list_entry(entry, &s, row.as_ref()), s.mention_all_seq))
    }

    /// The event at `seq` of a group whose pending change it is: completed, and returned as
    /// its message row (`None` when `seq` is not the pending change's).
    pub(crate) async fn complete_event(
        &self,
        conv: &str,
        seq: u64,
    ) -> Result<Option<MessageRow>, OpError> {
        let s = self.group_snapshot(conv, false).await?;
        let Some(p) = s.pending.filter(|p| p.seq == seq) else { return Ok(None) };
        self.complete(conv, &p).await?;
        Ok(Some(MessageRow {
            seq: seq as i64,
            message: Some(p.event),
            recalled: None,
            allocated_at_ms: Some(p.allocated_at_ms),
        }))
    }
}
