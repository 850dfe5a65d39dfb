//! Group management: the group frames (create, add, remove, leave, update, roles, ownership,
//! dissolve, info, member pages).
//!
//! A change reads the group (record, version, the rows concerned), asks [`rules`] what it
//! writes, and commits that as one [`tern_store::GroupWrite`] through the commit pipeline,
//! compare-and-set on the version read: if another change got there first (any worker), it
//! reads again and recomputes. The event message is then pushed to the members after the
//! change and to those it removed. Messages to a group are fanned out from [`cache`].

pub mod cache;
pub mod rules;

use std::collections::HashMap;

use prost::Message as _;
use tern_proto::ids::ConversationRef;
use tern_proto::v1::{self, envelope::Body};
use tern_store::{GroupState, GroupWrite, History, Member, MemberChange, NewMessage, Role, Write};

use crate::dispatcher::{Dispatcher, Origin, unix_ms};
use crate::error::DispatchError;
use crate::push::fan_out;
use rules::{Decision, Op, Plan};

/// Attempts of one change against concurrent changes of the same group.
const ATTEMPTS: usize = 8;
/// Most members a GroupInfo lists.
pub const INFO_MEMBERS: u32 = 500;
/// Largest member page.
pub const MAX_MEMBER_PAGE: u32 = 1000;
/// Longest CreateGroup.client_request_id (it becomes a dedupe key with a prefix).
pub const MAX_REQUEST_ID: usize = 48;

/// Serves one group frame.
pub async fn handle(d: &Dispatcher, origin: &Origin, body: Body) -> Result<Body, DispatchError> {
    match body {
        Body::CreateGroup(req) => create(d, origin, req).await,
        Body::AddMembers(req) => {
            let state = change(d, origin, &req.conversation_id, Op::Add(req.user_ids)).await?;
            info(d, origin, state).await
        }
        Body::RemoveMembers(req) => {
            let state = change(d, origin, &req.conversation_id, Op::Remove(req.user_ids)).await?;
            info(d, origin, state).await
        }
        Body::LeaveGroup(req) => {
            change(d, origin, &req.conversation_id, Op::Leave).await?;
            Ok(Body::Ok(v1::Ok {}))
        }
        Body::DissolveGroup(req) => {
            change(d, origin, &req.conversation_id, Op::Dissolve).await?;
            Ok(Body::Ok(v1::Ok {}))
        }
        Body::UpdateGroup(req) => {
            let op = Op::Update {
                name: req.name,
                set: req.set_attributes.into_iter().collect(),
                remove: req.remove_attributes,
                history: history(req.history),
            };
            let state = change(d, origin, &req.conversation_id, op).await?;
            info(d, origin, state).await
        }
        Body::SetMemberRole(req) => {
            let role = match v1::GroupRole::try_from(req.role) {
                Ok(v1::GroupRole::Member) => Role::Member,
                Ok(v1::GroupRole::Admin) => Role::Admin,
                _ => return Err(DispatchError::Invalid("role must be MEMBER or ADMIN".into())),
            };
            let op = Op::SetRole { user_id: req.user_id, role };
            let state = change(d, origin, &req.conversation_id, op).await?;
            info(d, origin, state).await
        }
        Body::TransferOwnership(req) => {
            let op = Op::Transfer { to: req.new_owner_user_id };
            let state = change(d, origin, &req.conversation_id, op).await?;
            info(d, origin, state).await
        }
        Body::GetGroup(req) => {
            let state = readable(d, origin, &req.conversation_id).await?.0;
            info(d, origin, state).await
        }
        Body::ListGroupMembers(req) => members_page(d, origin, req).await,
        _ => Err(DispatchError::Invalid("not a group request".into())),
    }
}

fn history(h: i32) -> Option<History> {
    match v1::GroupHistory::try_from(h) {
        Ok(v1::GroupHistory::FromJoin) => Some(History::FromJoin),
        Ok(v1::GroupHistory::Full) => Some(History::Full),
        _ => None,
    }
}

fn role_of(r: Role) -> v1::GroupRole {
    match r {
        Role::Member => v1::GroupRole::Member,
        Role::Admin => v1::GroupRole::Admin,
        Role::Owner => v1::GroupRole::Owner,
    }
}

fn group_id(conv: &str) -> Result<(), DispatchError> {
    match ConversationRef::parse(conv) {
        Some(ConversationRef::Group(_)) => Ok(()),
        _ => Err(DispatchError::UnknownConversation),
    }
}

/// The group and the caller's row, if the caller is a current member.
async fn readable(
    d: &Dispatcher,
    origin: &Origin,
    conv: &str,
) -> Result<(GroupState, Member), DispatchError> {
    group_id(conv)?;
    let state = d.store.get_group(conv).await?.ok_or(DispatchError::UnknownConversation)?;
    let me = d.store.group_member(conv, &origin.user_id).await?;
    match me {
        Some(m) if m.is_current() => Ok((state, m)),
        _ => Err(DispatchError::NotAMember),
    }
}

async fn create(
    d: &Dispatcher,
    origin: &Origin,
    req: v1::CreateGroup,
) -> Result<Body, DispatchError> {
    if req.client_request_id.len() > MAX_REQUEST_ID {
        return Err(DispatchError::Invalid(format!(
            "client_request_id longer than {MAX_REQUEST_ID} bytes"
        )));
    }
    let request_id = match req.client_request_id.is_empty() {
        true => random_hex(12)?,
        false => req.client_request_id.clone(),
    };
    let op = Op::Create {
        name: req.name,
        members: req.member_user_ids,
        attributes: req.attributes.into_iter().collect(),
        history: history(req.history).unwrap_or_default(),
        max_members: d.cfg.max_group_members,
        now_ms: unix_ms(),
    };
    let Decision::Write(plan) = rules::plan(&origin.user_id, op, None, |_| None)? else {
        return Err(DispatchError::Invalid("nothing to create".into()));
    };
    for _ in 0..ATTEMPTS {
        let conv = format!("g:{}", random_hex(16)?);
        let event = event(origin, &conv, format!("create-group:{request_id}"), &plan);
        let write = GroupWrite {
            event,
            expect_version: 0,
            meta: plan.meta.clone(),
            members: plan.changes.clone(),
        };
        match commit(d, origin, write).await {
            Ok((out, stored)) if out.duplicate => {
                // A retried create: the group the first one made.
                if !out.conversation_id.starts_with("g:") {
                    return Err(DispatchError::ClientMsgIdReused("not a group creation"));
                }
                let state = d
                    .store
                    .get_group(&out.conversation_id)
                    .await?
                    .ok_or(DispatchError::UnknownConversation)?;
                drop(stored);
                return info(d, origin, state).await;
            }
            Ok((out, stored)) => {
                let state = GroupState { conversation_id: conv, meta: plan.meta, version: out.seq };
                fan_out(&*d.pusher, &plan.users, deliver(stored), Some(&origin.conn_ref()));
                return info(d, origin, state).await;
            }
            // The random id was taken: another one.
            Err(DispatchError::GroupChanged) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(DispatchError::Unavailable("could not pick a free group id"))
}

/// Applies `op` by the caller to group `conv`: read, plan, compare and set, retried while
/// other changes win. Returns the group after it.
async fn change(
    d: &Dispatcher,
    origin: &Origin,
    conv: &str,
    op: Op,
) -> Result<GroupState, DispatchError> {
    group_id(conv)?;
    let actor = origin.user_id.as_str();
    for _ in 0..ATTEMPTS {
        let state = d.store.get_group(conv).await?.ok_or(DispatchError::UnknownConversation)?;
        let mut rows: HashMap<String, Member> = HashMap::new();
        for user in std::iter::once(actor).chain(op.users()) {
            if rows.contains_key(user) {
                continue;
            }
            if let Some(m) = d.store.group_member(conv, user).await?.filter(Member::is_current) {
                rows.insert(user.to_owned(), m);
            }
        }
        let decision = match &op {
            Op::Dissolve => {
                let all = d.groups.load(conv).await?;
                let ids = all.members.iter().map(|m| m.user_id.clone()).collect();
                rules::dissolve(&state, rows.get(actor), ids)?
            }
            op => rules::plan(actor, op.clone(), Some(&state), |u| rows.get(u))?,
        };
        let Decision::Write(plan) = decision else { return Ok(state) };
        let event = event(origin, conv, format!("group-event:{}", random_hex(12)?), &plan);
        let write = GroupWrite {
            event,
            expect_version: state.version,
            meta: plan.meta.clone(),
            members: plan.changes.clone(),
        };
        match commit(d, origin, write).await {
            Ok((out, stored)) => {
                d.groups.invalidate(conv);
                // The event goes to the members after the change and to those it removed.
                let now = d.groups.load(conv).await?;
                let mut to: Vec<String> = now.members.iter().map(|m| m.user_id.clone()).collect();
                to.extend(plan.changes.iter().filter_map(|c| match c {
                    MemberChange::Remove { user_id } => Some(user_id.clone()),
                    _ => None,
                }));
                fan_out(&*d.pusher, &to, deliver(stored), Some(&origin.conn_ref()));
                return Ok(GroupState {
                    conversation_id: conv.to_owned(),
                    meta: plan.meta,
                    version: out.seq,
                });
            }
            Err(DispatchError::GroupChanged) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(DispatchError::Unavailable("the group changed too often meanwhile: retry"))
}

/// Commits one group change; its outcome and the event as stored.
async fn commit(
    d: &Dispatcher,
    origin: &Origin,
    write: GroupWrite,
) -> Result<(tern_store::Appended, v1::Message), DispatchError> {
    let event = write.event.clone();
    let pending = d.pipeline.submit_write(Write::Group(write), Some(origin.conn_ref()));
    let out = crate::pipeline::outcome(pending).await?;
    let stored = crate::pipeline::stored(event, &out);
    Ok((out, stored))
}

fn deliver(message: v1::Message) -> Body {
    Body::Deliver(v1::Deliver { message: Some(message) })
}

/// The event message of `plan` by the caller.
fn event(origin: &Origin, conv: &str, client_msg_id: String, plan: &Plan) -> NewMessage {
    let body = v1::GroupEvent {
        kind: plan.kind as i32,
        actor_user_id: origin.user_id.clone(),
        user_ids: plan.users.clone(),
        role: plan.role.map_or(0, |r| role_of(r) as i32),
        name: match plan.kind {
            v1::group_event::Kind::Created | v1::group_event::Kind::Updated => {
                plan.meta.name.clone()
            }
            _ => String::new(),
        },
    };
    NewMessage {
        mention_user_ids: Vec::new(),
        mention_all: false,
        conversation_id: conv.to_owned(),
        members: Vec::new(),
        sender_user_id: origin.user_id.clone(),
        sender_device_id: origin.device_id.clone(),
        client_msg_id,
        kind: v1::MessageKind::GroupEvent,
        content_type: String::new(),
        body: body.encode_to_vec().into(),
        recalled_seq: 0,
        server_time_ms: unix_ms(),
    }
}

/// The GroupInfo of `state` for the caller (the first [`INFO_MEMBERS`] members).
async fn info(d: &Dispatcher, origin: &Origin, state: GroupState) -> Result<Body, DispatchError> {
    let conv = state.conversation_id.as_str();
    let page = d.store.group_members(conv, "", INFO_MEMBERS).await?;
    let your_role = match d.store.group_member(conv, &origin.user_id).await? {
        Some(m) if m.is_current() => role_of(m.role) as i32,
        _ => 0,
    };
    let meta = state.meta;
    Ok(Body::GroupInfo(v1::GroupInfo {
        conversation_id: state.conversation_id.clone(),
        name: meta.name,
        owner_user_id: meta.owner_user_id,
        members_truncated: meta.member_count as usize > page.len(),
        member_user_ids: page.into_iter().map(|m| m.user_id).collect(),
        version: state.version,
        attributes: meta.attributes.into_iter().collect(),
        history: match meta.history {
            History::FromJoin => v1::GroupHistory::FromJoin,
            History::Full => v1::GroupHistory::Full,
        } as i32,
        member_count: meta.member_count,
        max_members: meta.max_members,
        your_role,
    }))
}

async fn members_page(
    d: &Dispatcher,
    origin: &Origin,
    req: v1::ListGroupMembers,
) -> Result<Body, DispatchError> {
    readable(d, origin, &req.conversation_id).await?;
    let limit = match req.limit {
        0 => MAX_MEMBER_PAGE,
        n => n.min(MAX_MEMBER_PAGE),
    };
    let page = d.store.group_members(&req.conversation_id, &req.after_user_id, limit).await?;
    let next = match page.last() {
        Some(last) if page.len() == limit as usize => last.user_id.clone(),
        _ => String::new(),
    };
    Ok(Body::GroupMembers(v1::GroupMembers {
        conversation_id: req.conversation_id,
        members: page
            .into_iter()
            .map(|m| v1::GroupMember {
                role: role_of(m.role) as i32,
                user_id: m.user_id,
                joined_seq: m.joined_seq,
            })
            .collect(),
        next_after_user_id: next,
    }))
}

/// `bytes` random bytes as lowercase hex.
fn random_hex(bytes: usize) -> Result<String, DispatchError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|_| DispatchError::Unavailable("no randomness"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
