//! Who may do what in a group, and what each change writes: a pure function from the group as
//! read (record, version, the rows of the users concerned) and a request to the
//! [`Plan`] the store commits with compare and set. No I/O: unit-tested below.
//!
//! | request | who | notes |
//! |---|---|---|
//! | create | anyone | the caller becomes owner |
//! | add members | owner, admins | users already members are skipped; not past `max_members` |
//! | remove members | owner, admins | an admin removes plain members only; nobody removes the owner |
//! | leave | any member | the owner only as the last member (the group is then dissolved) |
//! | update name, attributes, history | owner, admins | |
//! | set role (member/admin) | owner | not of the owner |
//! | transfer ownership | owner | to a current member; the old owner becomes an admin |
//! | dissolve | owner | every member is removed |

use std::collections::BTreeMap;

use tern_proto::ids::is_valid_id;
use tern_proto::v1::group_event::Kind;
use tern_store::{GroupMeta, GroupState, History, Member, MemberChange, Role};

use crate::error::DispatchError;

/// Most attributes a group has.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute key, in bytes.
pub const MAX_ATTRIBUTE_KEY: usize = 64;
/// Longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE: usize = 1024;
/// Longest group name, in bytes.
pub const MAX_NAME: usize = 256;

/// A change a member asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create the group with the caller as owner.
    Create {
        /// Its name.
        name: String,
        /// The other members.
        members: Vec<String>,
        /// Its attributes.
        attributes: BTreeMap<String, String>,
        /// What later members may read.
        history: History,
        /// Its maximum size.
        max_members: u32,
        /// Creation time, Unix ms.
        now_ms: i64,
    },
    /// Add these users.
    Add(Vec<String>),
    /// Remove these users.
    Remove(Vec<String>),
    /// The caller leaves.
    Leave,
    /// Change the name, attributes or history setting.
    Update {
        /// The new name.
        name: Option<String>,
        /// Attributes to set.
        set: BTreeMap<String, String>,
        /// Attribute keys to remove.
        remove: Vec<String>,
        /// The new history setting.
        history: Option<History>,
    },
    /// Give a member another role (member or admin).
    SetRole {
        /// The member.
        user_id: String,
        /// The role.
        role: Role,
    },
    /// Hand the group to another member.
    Transfer {
        /// The new owner.
        to: String,
    },
    /// End the group.
    Dissolve,
}

impl Op {
    /// The users whose rows the rules need (besides the caller's); for dissolve, every member
    /// (the caller passes them all).
    pub fn users(&self) -> Vec<&str> {
        match self {
            Op::Create { members, .. } | Op::Add(members) | Op::Remove(members) => {
                members.iter().map(String::as_str).collect()
            }
            Op::SetRole { user_id, .. } => vec![user_id.as_str()],
            Op::Transfer { to } => vec![to.as_str()],
            Op::Leave | Op::Update { .. } | Op::Dissolve => Vec::new(),
        }
    }
}

/// What a change writes: its event and the group after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The event's kind.
    pub kind: Kind,
    /// The users the event names.
    pub users: Vec<String>,
    /// For a role change: the role.
    pub role: Option<Role>,
    /// The record after the change.
    pub meta: GroupMeta,
    /// The row changes.
    pub changes: Vec<MemberChange>,
}

/// `plan`'s answer: a change to write, or nothing to do (adding only members already there).
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write this.
    Write(Plan),
    /// The group already is as asked.
    Unchanged,
}

/// What `actor` asking for `op` writes, given the group (`None` for a create) and `row`, which
/// returns the *current* row of a user (the actor's and those of [`Op::users`]).
pub fn plan<'a>(
    actor: &str,
    op: Op,
    group: Option<&GroupState>,
    row: impl Fn(&str) -> Option<&'a Member>,
) -> Result<Decision, DispatchError> {
    let (state, me) = match (&op, group) {
        (Op::Create { .. }, _) => return create(actor, op),
        (_, None) => return Err(DispatchError::UnknownConversation),
        (_, Some(g)) if g.meta.dissolved => return Err(DispatchError::UnknownConversation),
        (_, Some(g)) => (g, row(actor).ok_or(DispatchError::NotAMember)?),
    };
    let mut meta = state.meta.clone();
    let need = |role: Role, what: &str| {
        if me.role >= role {
            Ok(())
        } else {
            Err(DispatchError::Forbidden(format!("only the owner{} may {what}", admins(role))))
        }
    };
    let write = |kind, users, role, meta, changes| {
        Ok(Decision::Write(Plan { kind, users, role, meta, changes }))
    };
    match op {
        Op::Create { .. } => Err(DispatchError::UnknownConversation),
        Op::Add(users) => {
            need(Role::Admin, "add members")?;
            let users = valid_distinct(users)?;
            let new: Vec<String> = users.into_iter().filter(|u| row(u).is_none()).collect();
            if new.is_empty() {
                return Ok(Decision::Unchanged);
            }
            let count = meta.member_count as usize + new.len();
            if count > meta.max_members as usize {
                return Err(DispatchError::GroupFull(meta.max_members));
            }
            meta.member_count = count as u32;
            let full_history = meta.history == History::Full;
            let changes = new
                .iter()
                .map(|u| MemberChange::Join {
                    user_id: u.clone(),
                    role: Role::Member,
                    full_history,
                })
                .collect();
            write(Kind::MembersAdded, new, None, meta, changes)
        }
        Op::Remove(users) => {
            need(Role::Admin, "remove members")?;
            let mut gone = Vec::new();
            for u in valid_distinct(users)? {
                let Some(target) = row(&u) else { continue };
                if u == actor {
                    return Err(DispatchError::Invalid("use LeaveGroup to leave".into()));
                }
                if target.role == Role::Owner
                    || (target.role == Role::Admin && me.role != Role::Owner)
                {
                    return Err(DispatchError::Forbidden(format!("{u} may not be removed by you")));
                }
                gone.push(u);
            }
            if gone.is_empty() {
                return Ok(Decision::Unchanged);
            }
            meta.member_count = meta.member_count.saturating_sub(gone.len() as u32);
            let changes =
                gone.iter().map(|u| MemberChange::Remove { user_id: u.clone() }).collect();
            write(Kind::MembersRemoved, gone, None, meta, changes)
        }
        Op::Leave => {
            if me.role == Role::Owner {
                if meta.member_count > 1 {
                    return Err(DispatchError::Forbidden(
                        "the owner leaves only as the last member: transfer ownership first".into(),
                    ));
                }
                return Ok(dissolved(meta, vec![actor.to_owned()]));
            }
            meta.member_count = meta.member_count.saturating_sub(1);
            let changes = vec![MemberChange::Remove { user_id: actor.to_owned() }];
            write(Kind::MemberLeft, vec![actor.to_owned()], None, meta, changes)
        }
        Op::Update { name, set, remove, history } => {
            need(Role::Admin, "change the group")?;
            if let Some(name) = name {
                meta.name = valid_name(name)?;
            }
            for key in remove {
                meta.attributes.remove(&key);
            }
            meta.attributes.extend(set);
            valid_attributes(&meta.attributes)?;
            if let Some(h) = history {
                meta.history = h;
            }
            if meta == state.meta {
                return Ok(Decision::Unchanged);
            }
            write(Kind::Updated, Vec::new(), None, meta, Vec::new())
        }
        Op::SetRole { user_id, role } => {
            need(Role::Owner, "change roles")?;
            if role == Role::Owner {
                return Err(DispatchError::Invalid("use TransferOwnership".into()));
            }
            let target = row(&user_id).ok_or_else(|| not_member(&user_id))?;
            if target.role == Role::Owner {
                return Err(DispatchError::Invalid("the owner's role changes by transfer".into()));
            }
            if target.role == role {
                return Ok(Decision::Unchanged);
            }
            let changes = vec![MemberChange::SetRole { user_id: user_id.clone(), role }];
            write(Kind::RoleChanged, vec![user_id], Some(role), meta, changes)
        }
        Op::Transfer { to } => {
            need(Role::Owner, "transfer ownership")?;
            if to == actor {
                return Ok(Decision::Unchanged);
            }
            row(&to).ok_or_else(|| not_member(&to))?;
            meta.owner_user_id = to.clone();
            let changes = vec![
                MemberChange::SetRole { user_id: to.clone(), role: Role::Owner },
                MemberChange::SetRole { user_id: actor.to_owned(), role: Role::Admin },
            ];
            write(Kind::OwnerChanged, vec![to], None, meta, changes)
        }
        Op::Dissolve => {
            need(Role::Owner, "dissolve the group")?;
            Err(DispatchError::Invalid("dissolve needs the member list: use dissolve()".into()))
        }
    }
}

/// The dissolution of a group by `me` (who must be its owner), removing `members` (every
/// current member).
pub fn dissolve(
    group: &GroupState,
    me: Option<&Member>,
    members: Vec<String>,
) -> Result<Decision, DispatchError> {
    if group.meta.dissolved {
        return Err(DispatchError::UnknownConversation);
    }
    match me {
        None => Err(DispatchError::NotAMember),
        Some(m) if m.role != Role::Owner => {
            Err(DispatchError::Forbidden("only the owner may dissolve the group".into()))
        }
        Some(_) => Ok(dissolved(group.meta.clone(), members)),
    }
}

fn dissolved(mut meta: GroupMeta, members: Vec<String>) -> Decision {
    meta.dissolved = true;
    meta.member_count = 0;
    meta.owner_user_id.clear();
    let changes = members.iter().map(|u| MemberChange::Remove { user_id: u.clone() }).collect();
    Decision::Write(Plan { kind: Kind::Dissolved, users: members, role: None, meta, changes })
}

fn create(actor: &str, op: Op) -> Result<Decision, DispatchError> {
    let Op::Create { name, members, attributes, history, max_members, now_ms } = op else {
        return Err(DispatchError::Invalid("not a create".into()));
    };
    let mut users = valid_distinct(members)?;
    users.retain(|u| u != actor);
    if users.len() + 1 > max_members as usize {
        return Err(DispatchError::GroupFull(max_members));
    }
    valid_attributes(&attributes)?;
    let meta = GroupMeta {
        name: valid_name(name)?,
        owner_user_id: actor.to_owned(),
        attributes,
        history,
        member_count: users.len() as u32 + 1,
        max_members,
        created_ms: now_ms,
        dissolved: false,
    };
    let full_history = history == History::Full;
    let mut changes =
        vec![MemberChange::Join { user_id: actor.to_owned(), role: Role::Owner, full_history }];
    changes.extend(users.iter().map(|u| MemberChange::Join {
        user_id: u.clone(),
        role: Role::Member,
        full_history,
    }));
    let mut named = vec![actor.to_owned()];
    named.extend(users);
    Ok(Decision::Write(Plan { kind: Kind::Created, users: named, role: None, meta, changes }))
}

fn admins(role: Role) -> &'static str {
    if role == Role::Admin { " or an admin" } else { "" }
}

fn not_member(user: &str) -> DispatchError {
    DispatchError::Invalid(format!("{user} is not a member"))
}

/// `users` without repeats, each a valid user id.
fn valid_distinct(users: Vec<String>) -> Result<Vec<String>, DispatchError> {
    let mut out: Vec<String> = Vec::with_capacity(users.len());
    for u in users {
        if !is_valid_id(&u) {
            return Err(DispatchError::Invalid(format!("invalid user id {u:?}")));
        }
        if !out.contains(&u) {
            out.push(u);
        }
    }
    Ok(out)
}

fn valid_name(name: String) -> Result<String, DispatchError> {
    if name.len() > MAX_NAME {
        return Err(DispatchError::Invalid(format!("name longer than {MAX_NAME} bytes")));
    }
    Ok(name)
}

fn valid_attributes(a: &BTreeMap<String, String>) -> Result<(), DispatchError> {
    if a.len() > MAX_ATTRIBUTES {
        return Err(DispatchError::Invalid(format!("more than {MAX_ATTRIBUTES} attributes")));
    }
    for (k, v) in a {
        if k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY || v.len() > MAX_ATTRIBUTE_VALUE {
            return Err(DispatchError::Invalid(format!(
                "attribute {k:?}: keys are 1 to {MAX_ATTRIBUTE_KEY} bytes, values at most \
                 {MAX_ATTRIBUTE_VALUE}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
