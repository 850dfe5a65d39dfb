//! Who may use a conversation. A 1:1 conversation's members follow from its id; a group's are
//! rows in the store: a message to a group is checked by the store when it is sequenced
//! ([`for_write`]), reads check the caller's row ([`readable`]).

use tern_proto::ids::{ConversationRef, direct_conversation_id};

use crate::error::DispatchError;

/// Members of a conversation the caller belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// The conversation id.
    pub conversation_id: String,
    /// Its member users (one entry for notes to self).
    pub users: Vec<String>,
}

/// Checks that `user` may use `conversation_id` and returns its members.
pub fn resolve(conversation_id: &str, user: &str) -> Result<Members, DispatchError> {
    match ConversationRef::parse(conversation_id) {
        Some(ConversationRef::Direct(a, b)) => {
            if a != user && b != user {
                return Err(DispatchError::NotAMember);
            }
            let mut users = vec![a.to_owned()];
            if a != b {
                users.push(b.to_owned());
            }
            Ok(Members { conversation_id: conversation_id.to_owned(), users })
        }
        Some(ConversationRef::Group(_)) | None => Err(DispatchError::UnknownConversation),
    }
}

/// A conversation `user` writes to (a message, a recall): a 1:1 one with its members as
/// [`resolve`]; a group with no members listed, since the store refuses a non-member at
/// commit (and the fan-out reads the members).
pub fn for_write(conversation_id: &str, user: &str) -> Result<Members, DispatchError> {
    match ConversationRef::parse(conversation_id) {
        Some(ConversationRef::Group(_)) => {
            Ok(Members { conversation_id: conversation_id.to_owned(), users: Vec::new() })
        }
        _ => resolve(conversation_id, user),
    }
}

/// What the caller may read of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A 1:1 conversation of theirs.
    Direct(Members),
    /// A group they are or were a member of, with their row (what they see:
    /// [`tern_store::Member::sees`]).
    Group(tern_store::Member),
}

/// Checks that `user` may read `conversation_id` (a former group member may, up to their
/// removal).
pub async fn readable(
    store: &dyn tern_store::Store,
    conversation_id: &str,
    user: &str,
) -> Result<Access, DispatchError> {
    match ConversationRef::parse(conversation_id) {
        Some(ConversationRef::Group(_)) => match store.group_member(conversation_id, user).await? {
            Some(row) => Ok(Access::Group(row)),
            None if store.get_group(conversation_id).await?.is_none() => {
                Err(DispatchError::UnknownConversation)
            }
            None => Err(DispatchError::NotAMember),
        },
        _ => resolve(conversation_id, user).map(Access::Direct),
    }
}

/// Whether `conversation_id` names a group.
pub fn is_group(conversation_id: &str) -> bool {
    matches!(ConversationRef::parse(conversation_id), Some(ConversationRef::Group(_)))
}

/// The 1:1 conversation between `user` and `peer`, with its members.
pub fn direct(user: &str, peer: &str) -> Result<Members, DispatchError> {
    let id = direct_conversation_id(user, peer)
        .ok_or_else(|| DispatchError::Invalid("peer_user_id is not a valid user id".into()))?;
    resolve(&id, user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_members_and_outsiders() {
        let m = direct("bob", "alice").unwrap();
        assert_eq!(m.conversation_id, "dm:alice:bob");
        assert_eq!(m.users, vec!["alice", "bob"]);
        assert!(matches!(resolve("dm:alice:bob", "carol"), Err(DispatchError::NotAMember)));
        assert!(matches!(resolve("dm:bob:alice", "bob"), Err(DispatchError::UnknownConversation)));
        assert!(matches!(resolve("g:team", "bob"), Err(DispatchError::UnknownConversation)));
        assert_eq!(resolve("dm:me:me", "me").unwrap().users, vec!["me"]);
        assert!(matches!(direct("bob", "no spaces"), Err(DispatchError::Invalid(_))));
    }
}
