//! Group conversations in the store: the group's record, its member rows, and the one write
//! that changes them ([`GroupWrite`]).
//!
//! A group change is an ordinary message of the group's conversation (a
//! `MESSAGE_KIND_GROUP_EVENT`) committed together with the record and member rows it changes,
//! so every client sees membership changes in sequence with the messages, and the seq of a
//! group's latest change is its **version**. The store decides nothing about who may do what
//! (dispatch's group rules do, on a state read with its version); it only applies a change
//! if the group is still at the version the change was computed from (compare and set), and
//! refuses a message to a group from a user who is not a current member at the moment the
//! message is sequenced, so a send racing a removal is ordered before the removal or refused.

use std::collections::BTreeMap;

use crate::NewMessage;

/// A member's role. Ordered: an owner is also an admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Sends, reads, leaves.
    Member = 1,
    /// Also adds and removes members, edits the name and attributes.
    Admin = 2,
    /// Also promotes and demotes admins, transfers ownership, dissolves the group. One per
    /// group.
    Owner = 3,
}

impl Role {
    /// The role stored as `n` (`None` for an unknown value).
    pub fn from_u8(n: u8) -> Option<Role> {
        match n {
            1 => Some(Role::Member),
            2 => Some(Role::Admin),
            3 => Some(Role::Owner),
            _ => None,
        }
    }
}

/// What a new member may read of the history before their join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum History {
    /// From their join event on (the default, as most messengers do).
    #[default]
    FromJoin = 1,
    /// Everything since the group was created.
    Full = 2,
}

impl History {
    /// The setting stored as `n` (`None` for an unknown value).
    pub fn from_u8(n: u8) -> Option<History> {
        match n {
            1 => Some(History::FromJoin),
            2 => Some(History::Full),
            _ => None,
        }
    }
}

/// A group's record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMeta {
    /// Display name.
    pub name: String,
    /// The owner (also in the member rows with [`Role::Owner`]; empty once dissolved).
    pub owner_user_id: String,
    /// Small opaque map the app uses (avatar URL, description, ...).
    pub attributes: BTreeMap<String, String>,
    /// What new members may read.
    pub history: History,
    /// Current members.
    pub member_count: u32,
    /// The most members this group may have.
    pub max_members: u32,
    /// Creation time, Unix ms.
    pub created_ms: i64,
    /// True once dissolved: no member is left and nothing more can be sent or changed.
    pub dissolved: bool,
}

/// A group's record and the seq of its latest change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// The group's conversation id (`g:<id>`).
    pub conversation_id: String,
    /// The record.
    pub meta: GroupMeta,
    /// The seq of the group event that last changed the record or the members (the
    /// creation event's seq, 1, for a group never changed since).
    pub version: u64,
}

/// One user's row in a group: current, or former (kept so that a removed member can still
/// read up to their removal, and so that the fan-out of a message can tell who was a member
/// at its seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user.
    pub user_id: String,
    /// Their role (the last one, for a former member).
    pub role: Role,
    /// The seq of the event that made them a member (the latest such event).
    pub joined_seq: u64,
    /// The first seq they may read (1 with [`History::Full`], else `joined_seq`).
    pub visible_from: u64,
    /// The seq of the event that removed them (removal, leave or dissolution); 0 while a
    /// current member.
    pub removed_seq: u64,
}

impl Member {
    /// Whether they are a member now.
    pub fn is_current(&self) -> bool {
        self.removed_seq == 0
    }

    /// Whether the message at `seq` is theirs to receive and read: sequenced after their join
    /// (or, with full history, at any seq from `visible_from`) and not after their removal.
    /// The event that removes them is still theirs, so they learn of it.
    pub fn sees(&self, seq: u64) -> bool {
        seq >= self.visible_from && (self.removed_seq == 0 || seq <= self.removed_seq)
    }

    /// Whether a message at `seq` is pushed to them: sequenced while they were a member.
    pub fn receives(&self, seq: u64) -> bool {
        seq >= self.joined_seq && (self.removed_seq == 0 || seq <= self.removed_seq)
    }
}

/// A change of one member row, at the event's seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// Becomes a member (again, for a former one) with `role`, joining at the event's seq,
    /// reading from seq 1 when `full_history`, else from the event's seq.
    Join {
        /// The user.
        user_id: String,
        /// Their role.
        role: Role,
        /// Whether they may read the history before their join.
        full_history: bool,
    },
    /// A current member's new role.
    SetRole {
        /// The user.
        user_id: String,
        /// Their new role.
        role: Role,
    },
    /// Stops being a member at the event's seq (removed, left, or the group dissolved).
    Remove {
        /// The user.
        user_id: String,
    },
}

impl MemberChange {
    /// The user whose row changes.
    pub fn user_id(&self) -> &str {
        match self {
            MemberChange::Join { user_id, .. }
            | MemberChange::SetRole { user_id, .. }
            | MemberChange::Remove { user_id } => user_id,
        }
    }
}

/// One group change inside a group commit ([`crate::Write::Group`]): the event message, the
/// record after it, and the member rows it changes, applied together or not at all.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupWrite {
    /// The `MESSAGE_KIND_GROUP_EVENT` message appended to the group's conversation (its
    /// `conversation_id` names the group; `members` is unused: a group's conversation index
    /// entries follow its member rows). Deduplicated as any append: resending a create with
    /// the same (sender, client_msg_id) returns the original outcome and writes nothing.
    pub event: NewMessage,
    /// The version the change was computed from; 0 creates the group (refused if it exists).
    pub expect_version: u64,
    /// The record after the change.
    pub meta: GroupMeta,
    /// The member rows it changes, in order (a user at most once).
    pub members: Vec<MemberChange>,
}

/// A group's record as the backends store it (protobuf), with the version where a backend
/// keeps it in the record (the embedded store; 0 and so absent elsewhere).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupMetaRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub owner_user_id: String,
    #[prost(btree_map = "string, string", tag = "3")]
    pub attributes: BTreeMap<String, String>,
    #[prost(uint32, tag = "4")]
    pub history: u32,
    #[prost(uint32, tag = "5")]
    pub member_count: u32,
    #[prost(uint32, tag = "6")]
    pub max_members: u32,
    #[prost(int64, tag = "7")]
    pub created_ms: i64,
    #[prost(bool, tag = "8")]
    pub dissolved: bool,
    /// The seq of the change that wrote this record (0: kept elsewhere).
    #[prost(uint64, tag = "9")]
    pub version: u64,
}

impl GroupMetaRecord {
    /// The stored form of `meta` at `version`.
    pub fn of(meta: &GroupMeta, version: u64) -> Self {
        Self {
            name: meta.name.clone(),
            owner_user_id: meta.owner_user_id.clone(),
            attributes: meta.attributes.clone(),
            history: meta.history as u32,
            member_count: meta.member_count,
            max_members: meta.max_members,
            created_ms: meta.created_ms,
            dissolved: meta.dissolved,
            version,
        }
    }

    /// The record as the store's type (an unknown history setting is refused).
    pub fn to_meta(&self) -> Result<GroupMeta, String> {
        let history = u8::try_from(self.history).ok().and_then(History::from_u8);
        Ok(GroupMeta {
            name: self.name.clone(),
            owner_user_id: self.owner_user_id.clone(),
            attributes: self.attributes.clone(),
            history: history.ok_or_else(|| format!("unknown history setting {}", self.history))?,
            member_count: self.member_count,
            max_members: self.max_members,
            created_ms: self.created_ms,
            dissolved: self.dissolved,
        })
    }
}

/// One member row as the backends store it inside a record (protobuf).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberRecord {
    #[prost(string, tag = "1")]
    pub user_id: String,
    #[prost(uint32, tag = "2")]
    pub role: u32,
    #[prost(uint64, tag = "3")]
    pub joined_seq: u64,
    #[prost(uint64, tag = "4")]
    pub visible_from: u64,
    #[prost(uint64, tag = "5")]
    pub removed_seq: u64,
}

impl MemberRecord {
    /// The stored form of `m`.
    pub fn of(m: &Member) -> Self {
        Self {
            user_id: m.user_id.clone(),
            role: m.role as u32,
            joined_seq: m.joined_seq,
            visible_from: m.visible_from,
            removed_seq: m.removed_seq,
        }
    }

    /// The row as the store's type (an unknown role is refused).
    pub fn to_member(&self) -> Result<Member, String> {
        let role = u8::try_from(self.role).ok().and_then(Role::from_u8);
        Ok(Member {
            user_id: self.user_id.clone(),
            role: role.ok_or_else(|| format!("unknown role {}", self.role))?,
            joined_seq: self.joined_seq,
            visible_from: self.visible_from,
            removed_seq: self.removed_seq,
        })
    }
}
