//! Identifier rules shared by server and clients: user and device ids, and conversation ids.
//!
//! A 1:1 conversation's id follows from its two users: `dm:<a>:<b>` with `a < b` (byte order).
//! A group conversation's id is `g:<id>`, chosen by the server.

/// Longest user or device id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 64;

/// Whether `id` is a valid user or device id: 1 to 128 bytes of ASCII letters, digits and
/// `_ . @ -`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

/// Whether `id` is a valid `client_msg_id`: 1 to 64 bytes, any UTF-8.
pub fn is_valid_client_msg_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_CLIENT_MSG_ID_BYTES
}

/// The id of the 1:1 conversation between `a` and `b` (the same for both argument orders).
/// `None` when either id is invalid. A user may talk to itself (`a == b`: notes to self).
pub fn direct_conversation_id(a: &str, b: &str) -> Option<String> {
    if !is_valid_id(a) || !is_valid_id(b) {
        return None;
    }
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    Some(format!("dm:{lo}:{hi}"))
}

/// What a conversation id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationRef<'a> {
    /// A 1:1 conversation between two users (equal for notes to self).
    Direct(&'a str, &'a str),
    /// A group conversation with this group id.
    Group(&'a str),
}

impl<'a> ConversationRef<'a> {
    /// Parses a conversation id; `None` when it is malformed (including a 1:1 id whose users are
    /// not in canonical order, so that every conversation has exactly one id).
    pub fn parse(id: &'a str) -> Option<Self> {
        if let Some(rest) = id.strip_prefix("dm:") {
            let (a, b) = rest.split_once(':')?;
            (is_valid_id(a) && is_valid_id(b) && a <= b).then_some(ConversationRef::Direct(a, b))
        } else if let Some(g) = id.strip_prefix("g:") {
            is_valid_id(g).then_some(ConversationRef::Group(g))
        } else {
            None
        }
    }

    /// For a 1:1 conversation, whether `user` is one of its two members.
    pub fn is_direct_member(&self, user: &str) -> bool {
        matches!(self, ConversationRef::Direct(a, b) if *a == user || *b == user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_id_is_symmetric_and_parses_back() {
        let id = direct_conversation_id("bob", "alice").unwrap();
        assert_eq!(id, "dm:alice:bob");
        assert_eq!(direct_conversation_id("alice", "bob").unwrap(), id);
        assert_eq!(ConversationRef::parse(&id), Some(ConversationRef::Direct("alice", "bob")));
        assert!(ConversationRef::parse(&id).unwrap().is_direct_member("bob"));
        assert!(!ConversationRef::parse(&id).unwrap().is_direct_member("carol"));
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in ["", "dm:", "dm:bob:alice", "dm:a", "dm:a:b:c", "x:1", "g:", "g:a b", "dm:a:"] {
            assert_eq!(ConversationRef::parse(bad), None, "{bad:?}");
        }
        assert_eq!(direct_conversation_id("a:b", "c"), None);
        assert!(!is_valid_id(&"x".repeat(MAX_ID_BYTES + 1)));
        assert!(is_valid_client_msg_id("550e8400-e29b-41d4-a716-446655440000"));
        assert!(!is_valid_client_msg_id(""));
    }
}
