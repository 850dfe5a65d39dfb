//! Group conversations on Redis: how a group's record and member rows are stored, and the
//! reads of them ([`Store::get_group`](tern_store::Store::get_group), `group_member`,
//! `group_members`). Group changes and the membership check of a send are written by the
//! commit script ([`crate::scripts`]), in the same call as the batch's other writes.
//!
//! | key | content |
//! |---|---|
//! | `C:group` | hash: `version` (the seq of the latest change), `dissolved` (`1`/`0`, for the script), `record` ([`GroupMetaRecord`], protobuf) |
//! | `C:members` | hash: user id → `role:joined_seq:visible_from:removed_seq`, current and former members |
//! | `C:current` | sorted set, every score 0: the current members' ids (paged with ZRANGEBYLEX) |
//!
//! A send to a group reads one `C:group` field pair and one `C:members` field; a change reads
//! and writes one row per changed member. Nothing per message or per change touches every
//! member: a group of 100 000 costs the same per send as a group of 3.

use prost::Message as _;
use tern_store::group::GroupMetaRecord;
use tern_store::{GroupMeta, GroupState, Member, Role};

use crate::error::RedisStoreError;
use crate::scripts;
use crate::store::RedisStore;

/// Group conversation ids start with this (`tern_proto::ids`).
pub(crate) const GROUP_PREFIX: &str = "g:";

/// Whether `conversation_id` names a group (its sends need a current member).
pub(crate) fn is_group(conversation_id: &str) -> bool {
    conversation_id.starts_with(GROUP_PREFIX)
}

/// `meta` as the bytes of `C:group record` (the version is a field of its own).
pub(crate) fn encode_group_record(meta: &GroupMeta) -> Vec<u8> {
    GroupMetaRecord::of(meta, 0).encode_to_vec()
}

/// The bytes of `C:group record` as a [`GroupMeta`] (`Err`: what is wrong with them).
pub(crate) fn decode_group_record(bytes: &[u8]) -> Result<GroupMeta, String> {
    GroupMetaRecord::decode(bytes).map_err(|e| e.to_string())?.to_meta()
}

/// A `C:members` row, `role:joined_seq:visible_from:removed_seq`, as a [`Member`].
pub(crate) fn parse_member(user_id: &str, row: &str) -> Option<Member> {
    let mut parts = row.split(':');
    let role = Role::from_u8(parts.next()?.parse().ok()?)?;
    let joined_seq = parts.next()?.parse().ok()?;
    let visible_from = parts.next()?.parse().ok()?;
    let removed_seq = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Member { user_id: user_id.to_owned(), role, joined_seq, visible_from, removed_seq })
}

impl RedisStore {
    fn corrupt_member(&self, conversation_id: &str, user_id: &str, row: &str) -> RedisStoreError {
        RedisStoreError::Corrupt {
            key: format!("{} field {user_id}", self.keys.group_members(conversation_id)),
            what: format!("member row {row:?}"),
        }
    }

    /// A group's record and version (`None`: no such group).
    pub(crate) async fn group_state(
        &self,
        conversation_id: &str,
    ) -> Result<Option<GroupState>, RedisStoreError> {
        let key = self.keys.group(conversation_id);
        let (version, record): (Option<String>, Option<Vec<u8>>) = self
            .run(|mut conn| async move {
                Ok(redis::cmd("HMGET")
                    .arg(&key)
                    .arg("version")
                    .arg("record")
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        let corrupt =
            |what: String| RedisStoreError::Corrupt { key: self.keys.group(conversation_id), what };
        match (version, record) {
            (None, None) => Ok(None),
            (Some(version), Some(record)) => Ok(Some(GroupState {
                conversation_id: conversation_id.to_owned(),
                meta: decode_group_record(&record).map_err(|e| corrupt(format!("record: {e}")))?,
                version: version.parse().map_err(|_| corrupt(format!("version {version:?}")))?,
            })),
            (version, record) => Err(corrupt(format!(
                "version {version:?} with {} record",
                if record.is_some() { "a" } else { "no" }
            ))),
        }
    }

    /// One user's row in a group (`None`: never a member).
    pub(crate) async fn member_row(
        &self,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<Option<Member>, RedisStoreError> {
        let key = self.keys.group_members(conversation_id);
        let row: Option<String> = self
            .run(|mut conn| async move {
                Ok(redis::cmd("HGET").arg(&key).arg(user_id).query_async(&mut conn).await?)
            })
            .await?;
        match row {
            None => Ok(None),
            Some(row) => parse_member(user_id, &row)
                .map(Some)
                .ok_or_else(|| self.corrupt_member(conversation_id, user_id, &row)),
        }
    }

    /// A group's current members with id > `after`, in id order, at most `limit`: one call of
    /// [`scripts::GROUP_MEMBERS_LUA`] (ZRANGEBYLEX of `C:current`, then HMGET of their rows),
    /// so the page is one consistent view.
    pub(crate) async fn current_members(
        &self,
        conversation_id: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Member>, RedisStoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (current, rows) =
            (self.keys.group_current(conversation_id), self.keys.group_members(conversation_id));
        let reply: Vec<String> = self
            .run(|mut conn| async move {
                let mut invocation = scripts::GROUP_MEMBERS.prepare_invoke();
                invocation.key(&current).key(&rows).arg(after).arg(limit);
                Ok(invocation.invoke_async(&mut conn).await?)
            })
            .await?;
        if !reply.len().is_multiple_of(2) {
            return Err(RedisStoreError::Corrupt {
                key: self.keys.group_current(conversation_id),
                what: format!("group members script answered {} fields", reply.len()),
            });
        }
        reply
            .chunks_exact(2)
            .map(|pair| match parse_member(&pair[0], &pair[1]) {
                Some(m) if m.is_current() => Ok(m),
                _ => Err(self.corrupt_member(conversation_id, &pair[0], &pair[1])),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_rows_parse_and_reject_garbage() {
        let m = parse_member("bob", "2:3:1:0").unwrap();
        assert_eq!((m.role, m.joined_seq, m.visible_from, m.removed_seq), (Role::Admin, 3, 1, 0));
        assert_eq!(parse_member("bob", "1:3:3:9").unwrap().removed_seq, 9);
        for bad in ["", "1:2:3", "1:2:3:4:5", "7:1:1:0", "1:x:1:0", "1:1:1:-1"] {
            assert_eq!(parse_member("bob", bad), None, "{bad:?}");
        }
    }

    #[test]
    fn records_round_trip() {
        let meta = GroupMeta {
            name: "team".into(),
            owner_user_id: "alice".into(),
            attributes: [("avatar".to_owned(), "a.png".to_owned())].into(),
            history: tern_store::History::Full,
            member_count: 3,
            max_members: 100,
            created_ms: -7,
            dissolved: true,
        };
        assert_eq!(decode_group_record(&encode_group_record(&meta)), Ok(meta));
        let unknown = GroupMetaRecord { history: 9, ..GroupMetaRecord::default() }.encode_to_vec();
        assert!(decode_group_record(&unknown).is_err());
        assert!(is_group("g:x") && !is_group("dm:a:b"));
    }
}
