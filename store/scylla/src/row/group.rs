//! Group rows <-> types: the group columns of `conversation_meta` (head, record, pending
//! change), `group_members` and `group_current` rows, and the protobuf blobs stored in them.

use prost::Message as _;
use scylla::DeserializeRow;
use tern_store::group::{GroupMetaRecord, MemberRecord};
use tern_store::{GroupMeta, Member, Role};

use super::{RowError, seq_from_cql};
use crate::group::{Pending, Snapshot};

/// `conversation_meta.group_pending`: a committed change's completion record ([`Pending`]).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PendingRecord {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(int64, tag = "2")]
    pub server_time_ms: i64,
    #[prost(int64, tag = "3")]
    pub allocated_at_ms: i64,
    #[prost(string, tag = "4")]
    pub owner: String,
    #[prost(string, tag = "5")]
    pub sender_user_id: String,
    #[prost(string, tag = "6")]
    pub client_msg_id: String,
    #[prost(int64, tag = "7")]
    pub request_digest: i64,
    #[prost(bytes = "vec", tag = "8")]
    pub event: Vec<u8>,
    #[prost(message, repeated, tag = "9")]
    pub rows: Vec<MemberRecord>,
}

fn bad(what: &'static str, reason: impl ToString) -> RowError {
    RowError::Group { what, reason: reason.to_string() }
}

/// A role as CQL `int`.
pub fn role_to_cql(role: Role) -> i32 {
    role as i32
}

/// A CQL `int` role (`Err` for null or an unknown value).
pub fn role_from_cql(value: Option<i32>) -> Result<Role, RowError> {
    value
        .and_then(|v| u8::try_from(v).ok())
        .and_then(Role::from_u8)
        .ok_or_else(|| bad("role", format!("unknown role {value:?}")))
}

/// `meta` as the bytes of `group_record` (the version is a column of its own).
pub fn encode_record(meta: &GroupMeta) -> Vec<u8> {
    GroupMetaRecord::of(meta, 0).encode_to_vec()
}

/// The bytes of `group_record` as a [`GroupMeta`].
pub fn decode_record(bytes: &[u8]) -> Result<GroupMeta, RowError> {
    let r = GroupMetaRecord::decode(bytes).map_err(|e| bad("group_record", e))?;
    r.to_meta().map_err(|e| bad("group_record", e))
}

/// `p` as the bytes of `group_pending`.
pub(crate) fn encode_pending(p: &Pending) -> Vec<u8> {
    PendingRecord {
        seq: p.seq,
        server_time_ms: p.server_time_ms,
        allocated_at_ms: p.allocated_at_ms,
        owner: p.owner.clone(),
        sender_user_id: p.sender_user_id.clone(),
        client_msg_id: p.client_msg_id.clone(),
        request_digest: p.request_digest,
        event: p.event.clone(),
        rows: p.rows.iter().map(MemberRecord::of).collect(),
    }
    .encode_to_vec()
}

/// The bytes of `group_pending` as a [`Pending`].
pub(crate) fn decode_pending(bytes: &[u8]) -> Result<Pending, RowError> {
    let r = PendingRecord::decode(bytes).map_err(|e| bad("group_pending", e))?;
    if r.seq == 0 || r.seq > crate::bucket::MAX_SEQ {
        return Err(bad("group_pending", format!("seq {}", r.seq)));
    }
    let rows = r
        .rows
        .iter()
        .map(|m| m.to_member().map_err(|e| bad("group_pending", e)))
        .collect::<Result<_, RowError>>()?;
    Ok(Pending {
        seq: r.seq,
        server_time_ms: r.server_time_ms,
        allocated_at_ms: r.allocated_at_ms,
        owner: r.owner,
        sender_user_id: r.sender_user_id,
        client_msg_id: r.client_msg_id,
        request_digest: r.request_digest,
        event: r.event,
        rows,
    })
}

/// A row of `SelectGroup` / `SelectGroupSerial`.
#[derive(Debug, Clone, Default, PartialEq, DeserializeRow)]
pub struct GroupRow {
    /// Latest allocated seq.
    pub last_seq: Option<i64>,
    /// Its acceptance time.
    pub last_time_ms: Option<i64>,
    /// Its allocating writer.
    pub last_owner: Option<String>,
    /// The seq of the group's latest change.
    pub group_version: Option<i64>,
    /// The latest change dissolved the group.
    pub group_dissolved: Option<bool>,
    /// [`GroupMetaRecord`] bytes.
    pub group_record: Option<Vec<u8>>,
    /// [`PendingRecord`] bytes, while the latest change is not known complete.
    pub group_pending: Option<Vec<u8>>,
    /// The change fence.
    pub change_fence: Option<i64>,
    /// The latest seq of a group message mentioning all.
    pub mention_all_seq: Option<i64>,
}

/// The head of a group conversation from its row (`None`: no row).
pub(crate) fn snapshot_of(row: Option<GroupRow>) -> Result<Snapshot, RowError> {
    let Some(r) = row else { return Ok(Snapshot::default()) };
    let version = seq_from_cql("conversation_meta.group_version", r.group_version)?;
    let record = match (&r.group_record, version) {
        (Some(bytes), _) => Some(decode_record(bytes)?),
        (None, 0) => None,
        (None, v) => return Err(bad("group_record", format!("missing at version {v}"))),
    };
    let pending = r.group_pending.as_deref().map(decode_pending).transpose()?;
    if let Some(p) = &pending
        && p.seq != version
    {
        return Err(bad("group_pending", format!("seq {} at version {version}", p.seq)));
    }
    Ok(Snapshot {
        exists: true,
        last_seq: seq_from_cql("conversation_meta.last_seq", r.last_seq)?,
        last_time_ms: r.last_time_ms.unwrap_or(0),
        last_owner: r.last_owner,
        version,
        version_cql: r.group_version,
        fence: r.change_fence,
        dissolved: r.group_dissolved == Some(true),
        record,
        pending,
        mention_all_seq: seq_from_cql("conversation_meta.mention_all_seq", r.mention_all_seq)?,
    })
}

/// A row of `SelectMember` (`group_members`).
#[derive(Debug, Clone, PartialEq, DeserializeRow)]
pub struct MemberRow {
    /// Clustering column.
    pub user_id: String,
    /// 1 member, 2 admin, 3 owner.
    pub role: Option<i32>,
    /// The seq of the event that made them a member.
    pub joined_seq: Option<i64>,
    /// First seq they may read.
    pub visible_from: Option<i64>,
    /// The seq of the event that removed them (0: current).
    pub removed_seq: Option<i64>,
}

/// A `group_members` row as a [`Member`].
pub fn member_of(r: MemberRow) -> Result<Member, RowError> {
    Ok(Member {
        role: role_from_cql(r.role)?,
        joined_seq: seq_from_cql("group_members.joined_seq", r.joined_seq)?,
        visible_from: seq_from_cql("group_members.visible_from", r.visible_from)?,
        removed_seq: seq_from_cql("group_members.removed_seq", r.removed_seq)?,
        user_id: r.user_id,
    })
}

/// A row of `ListCurrent` (`group_current`).
#[derive(Debug, Clone, PartialEq, DeserializeRow)]
pub struct CurrentRow {
    /// Clustering column.
    pub user_id: String,
    /// 1 member, 2 admin, 3 owner.
    pub role: Option<i32>,
    /// The seq of the event that made them a member.
    pub joined_seq: Option<i64>,
    /// First seq they may read.
    pub visible_from: Option<i64>,
}

/// A `group_current` row as a (current) [`Member`].
pub fn current_of(r: CurrentRow) -> Result<Member, RowError> {
    member_of(MemberRow {
        user_id: r.user_id,
        role: r.role,
        joined_seq: r.joined_seq,
        visible_from: r.visible_from,
        removed_seq: Some(0),
    })
}

/// The CQL values of a member row: (role, joined_seq, visible_from, removed_seq). `None` when
/// a seq does not fit a bigint.
pub fn member_values(m: &Member) -> Option<(i32, i64, i64, i64)> {
    Some((
        role_to_cql(m.role),
        super::seq_to_cql(m.joined_seq)?,
        super::seq_to_cql(m.visible_from)?,
        super::seq_to_cql(m.removed_seq)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> GroupMeta {
        GroupMeta {
            name: "team".into(),
            owner_user_id: "alice".into(),
            attributes: [("avatar".to_owned(), "a.png".to_owned())].into(),
            history: tern_store::History::Full,
            member_count: 3,
            max_members: 100,
            created_ms: -7,
            dissolved: true,
        }
    }

    fn member(user: &str, role: Role, joined: u64, visible: u64, removed: u64) -> Member {
        Member {
            user_id: user.into(),
            role,
            joined_seq: joined,
            visible_from: visible,
            removed_seq: removed,
        }
    }

    fn pending() -> Pending {
        Pending {
            seq: 9,
            server_time_ms: 1_234,
            allocated_at_ms: 1_200,
            owner: "owner-token".into(),
            sender_user_id: "alice".into(),
            client_msg_id: "group-event:1".into(),
            request_digest: -42,
            event: vec![1, 2, 3],
            rows: vec![member("bob", Role::Admin, 9, 1, 0), member("carol", Role::Member, 3, 3, 9)],
        }
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        assert_eq!(decode_record(&encode_record(&meta())), Ok(meta()));
        let unknown = GroupMetaRecord { history: 9, ..GroupMetaRecord::default() }.encode_to_vec();
        assert!(matches!(decode_record(&unknown), Err(RowError::Group { .. })));
        assert!(decode_record(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn pending_changes_round_trip_and_reject_garbage() {
        assert_eq!(decode_pending(&encode_pending(&pending())), Ok(pending()));
        let zero = PendingRecord { seq: 0, ..PendingRecord::default() }.encode_to_vec();
        assert!(decode_pending(&zero).is_err(), "a pending change always has a seq");
        let bad_role = PendingRecord {
            seq: 1,
            rows: vec![MemberRecord { user_id: "x".into(), role: 7, ..MemberRecord::default() }],
            ..PendingRecord::default()
        };
        assert!(decode_pending(&bad_role.encode_to_vec()).is_err());
        assert!(decode_pending(&[0xff]).is_err());
    }

    #[test]
    fn roles_map_both_ways() {
        for role in [Role::Member, Role::Admin, Role::Owner] {
            assert_eq!(role_from_cql(Some(role_to_cql(role))), Ok(role));
        }
        for bad in [None, Some(0), Some(4), Some(-1), Some(259)] {
            assert!(role_from_cql(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn member_rows_map_both_ways() {
        let m = member("bob", Role::Owner, 3, 1, 8);
        let (role, joined, visible, removed) = member_values(&m).unwrap();
        let row = MemberRow {
            user_id: "bob".into(),
            role: Some(role),
            joined_seq: Some(joined),
            visible_from: Some(visible),
            removed_seq: Some(removed),
        };
        assert_eq!(member_of(row.clone()), Ok(m));
        // A row without removed_seq is current; a negative seq is an error.
        let current = member_of(MemberRow { removed_seq: None, ..row.clone() }).unwrap();
        assert!(current.is_current());
        assert!(member_of(MemberRow { joined_seq: Some(-1), ..row }).is_err());
        let cur = CurrentRow {
            user_id: "carol".into(),
            role: Some(1),
            joined_seq: Some(4),
            visible_from: Some(4),
        };
        assert_eq!(current_of(cur), Ok(member("carol", Role::Member, 4, 4, 0)));
        assert_eq!(member_values(&member("x", Role::Member, u64::MAX, 1, 0)), None);
    }

    #[test]
    fn heads_map_from_rows() {
        assert_eq!(snapshot_of(None), Ok(Snapshot::default()));
        let row = GroupRow {
            last_seq: Some(12),
            last_time_ms: Some(5),
            last_owner: Some("o".into()),
            group_version: Some(9),
            group_dissolved: Some(false),
            group_record: Some(encode_record(&meta())),
            group_pending: Some(encode_pending(&pending())),
            change_fence: Some(2),
            mention_all_seq: Some(8),
        };
        let s = snapshot_of(Some(row.clone())).unwrap();
        assert!(s.exists);
        assert_eq!(s.mention_all_seq, 8);
        assert_eq!((s.last_seq, s.last_time_ms, s.version, s.version_cql), (12, 5, 9, Some(9)));
        assert_eq!((s.fence, s.dissolved), (Some(2), false));
        assert_eq!(s.record, Some(meta()));
        assert_eq!(s.pending, Some(pending()));
        // A fence row (no group yet): version 0, no record, nulls kept for the conditions.
        let fence = GroupRow {
            last_seq: Some(0),
            group_version: Some(0),
            change_fence: Some(1),
            ..GroupRow::default()
        };
        let s = snapshot_of(Some(fence)).unwrap();
        assert!(s.exists && s.version == 0 && s.record.is_none() && s.pending.is_none());
        let legacy = snapshot_of(Some(GroupRow { last_seq: Some(3), ..GroupRow::default() }));
        let legacy = legacy.unwrap();
        assert_eq!((legacy.version, legacy.version_cql, legacy.fence), (0, None, None));
        // Inconsistent heads are errors, not guesses.
        let no_record = GroupRow { group_record: None, ..row.clone() };
        assert!(snapshot_of(Some(no_record)).is_err());
        let other_seq = GroupRow { group_version: Some(10), ..row.clone() };
        assert!(snapshot_of(Some(other_seq)).is_err(), "pending seq must be the version");
        let bad_mention = GroupRow { mention_all_seq: Some(-2), ..row.clone() };
        assert!(snapshot_of(Some(bad_mention)).is_err());
        let negative = GroupRow { group_version: Some(-1), ..row };
        assert!(snapshot_of(Some(negative)).is_err());
    }
}
