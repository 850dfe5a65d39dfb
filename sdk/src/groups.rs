//! Group requests (and a conversation's own flags) on [`Client`]: thin typed wrappers over [`Client::request`] (PROTOCOL.md,
//! "Groups"). Group messages themselves are sent, received, synced and acknowledged like 1:1
//! ones (`Target::Conversation` with the group's id).

use std::collections::HashMap;

use tern_proto::v1::{self, envelope::Body};

use crate::client::{Client, unexpected};
use crate::error::SdkError;

impl Client {
    /// Creates a group with this user as owner and `members` as members. `client_request_id`
    /// makes a retried create return the same group (empty: no idempotency).
    pub async fn create_group(
        &self,
        name: &str,
        members: &[&str],
        client_request_id: &str,
    ) -> Result<v1::GroupInfo, SdkError> {
        self.create_group_with(v1::CreateGroup {
            name: name.to_owned(),
            member_user_ids: members.iter().map(|s| (*s).to_owned()).collect(),
            client_request_id: client_request_id.to_owned(),
            attributes: HashMap::new(),
            history: 0,
        })
        .await
    }

    /// Creates a group from a full request (attributes, history setting).
    pub async fn create_group_with(&self, req: v1::CreateGroup) -> Result<v1::GroupInfo, SdkError> {
        self.group_info(Body::CreateGroup(req)).await
    }

    /// Adds members (owner and admins).
    pub async fn add_members(
        &self,
        group: &str,
        users: &[&str],
    ) -> Result<v1::GroupInfo, SdkError> {
        let user_ids = users.iter().map(|s| (*s).to_owned()).collect();
        self.group_info(Body::AddMembers(v1::AddMembers {
            conversation_id: group.into(),
            user_ids,
        }))
        .await
    }

    /// Removes members (owner and admins; admins remove plain members only).
    pub async fn remove_members(
        &self,
        group: &str,
        users: &[&str],
    ) -> Result<v1::GroupInfo, SdkError> {
        let user_ids = users.iter().map(|s| (*s).to_owned()).collect();
        let req = v1::RemoveMembers { conversation_id: group.into(), user_ids };
        self.group_info(Body::RemoveMembers(req)).await
    }

    /// Leaves a group.
    pub async fn leave_group(&self, group: &str) -> Result<(), SdkError> {
        self.ok(Body::LeaveGroup(v1::LeaveGroup { conversation_id: group.into() })).await
    }

    /// Dissolves a group (owner only).
    pub async fn dissolve_group(&self, group: &str) -> Result<(), SdkError> {
        self.ok(Body::DissolveGroup(v1::DissolveGroup { conversation_id: group.into() })).await
    }

    /// The group's record (members only).
    pub async fn get_group(&self, group: &str) -> Result<v1::GroupInfo, SdkError> {
        self.group_info(Body::GetGroup(v1::GetGroup { conversation_id: group.into() })).await
    }

    /// Changes the name, attributes or history setting (owner and admins).
    pub async fn update_group(&self, req: v1::UpdateGroup) -> Result<v1::GroupInfo, SdkError> {
        self.group_info(Body::UpdateGroup(req)).await
    }

    /// Makes a member an admin or a plain member (owner only).
    pub async fn set_member_role(
        &self,
        group: &str,
        user: &str,
        role: v1::GroupRole,
    ) -> Result<v1::GroupInfo, SdkError> {
        let req = v1::SetMemberRole {
            conversation_id: group.into(),
            user_id: user.into(),
            role: role as i32,
        };
        self.group_info(Body::SetMemberRole(req)).await
    }

    /// Hands the group to another member (owner only).
    pub async fn transfer_ownership(
        &self,
        group: &str,
        to: &str,
    ) -> Result<v1::GroupInfo, SdkError> {
        let req =
            v1::TransferOwnership { conversation_id: group.into(), new_owner_user_id: to.into() };
        self.group_info(Body::TransferOwnership(req)).await
    }

    /// Every current member (all pages), in user id order.
    pub async fn group_members(&self, group: &str) -> Result<Vec<v1::GroupMember>, SdkError> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let req = v1::ListGroupMembers {
                conversation_id: group.into(),
                after_user_id: after.clone(),
                limit: 0,
            };
            let page = match self.request(Body::ListGroupMembers(req)).await?.body {
                Some(Body::GroupMembers(p)) => p,
                other => return Err(unexpected("GroupMembers", other)),
            };
            all.extend(page.members);
            if page.next_after_user_id.is_empty() || page.next_after_user_id <= after {
                return Ok(all);
            }
            after = page.next_after_user_id;
        }
    }

    /// Sets this user's muted / pinned flags of a conversation (`None`: unchanged).
    pub async fn update_conversation(
        &self,
        conversation_id: &str,
        muted: Option<bool>,
        pinned: Option<bool>,
    ) -> Result<(), SdkError> {
        let req = v1::UpdateConversation { conversation_id: conversation_id.into(), muted, pinned };
        self.ok(Body::UpdateConversation(req)).await
    }

    async fn group_info(&self, body: Body) -> Result<v1::GroupInfo, SdkError> {
        match self.request(body).await?.body {
            Some(Body::GroupInfo(g)) => Ok(g),
            other => Err(unexpected("GroupInfo", other)),
        }
    }

    async fn ok(&self, body: Body) -> Result<(), SdkError> {
        match self.request(body).await?.body {
            Some(Body::Ok(_)) => Ok(()),
            other => Err(unexpected("Ok", other)),
        }
    }
}
