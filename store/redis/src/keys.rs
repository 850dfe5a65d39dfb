//! Key names and bucket arithmetic: the one place that spells the key layout (the scripts
//! only append the documented suffixes to the bases built here).
//!
//! Ids are length-prefixed inside the hash tag (`{c:<byte len>:<id>}`), so no two different
//! ids (or an id and a suffix) can ever produce the same key, whatever characters ids contain:
//! conversation `a` and conversation `a:1` stay apart. Every key of one conversation shares
//! one hash tag (and so one Cluster slot), as does every key of one user.

/// Messages per bucket hash: a message's bucket is `seq / BUCKET_SIZE`.
pub const BUCKET_SIZE: u64 = 1024;

/// Builds keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (checked by the caller: no `{` or `}`).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// `P{c:<len>:<conversation_id>}`: base of every key of a conversation.
    pub fn conversation(&self, conversation_id: &str) -> String {
        format!("{}{{c:{}:{conversation_id}}}", self.prefix, conversation_id.len())
    }

    /// `P{u:<len>:<user_id>}`: base of every key of a user.
    pub fn user(&self, user_id: &str) -> String {
        format!("{}{{u:{}:{user_id}}}", self.prefix, user_id.len())
    }

    /// `Phistory`: hash {replid, batch, gap, changes}: the replication history the store
    /// writes to (see the crate doc, "Failover").
    pub fn history(&self) -> String {
        format!("{}history", self.prefix)
    }

    /// `Pnode`: string, the `batch` this node last wrote as primary; written to the AOF only,
    /// never replicated (so a replica never has its own primary's latest value).
    pub fn node(&self) -> String {
        format!("{}node", self.prefix)
    }

    /// `<conversation base>:meta`: hash {last_seq, last_time_ms, gap}.
    pub fn meta(&self, conversation_id: &str) -> String {
        format!("{}:meta", self.conversation(conversation_id))
    }

    /// `<conversation base>:m:<bucket>`: hash of the messages of one bucket.
    pub fn bucket(&self, conversation_id: &str, bucket: u64) -> String {
        format!("{}:m:{bucket}", self.conversation(conversation_id))
    }

    /// `<conversation base>:rcpt`: hash user_id -> "delivered:read".
    pub fn receipts(&self, conversation_id: &str) -> String {
        format!("{}:rcpt", self.conversation(conversation_id))
    }

    /// `<conversation base>:group`: hash {version, dissolved, record} of a group conversation.
    pub fn group(&self, conversation_id: &str) -> String {
        format!("{}:group", self.conversation(conversation_id))
    }

    /// `<conversation base>:members`: hash user_id -> "role:joined_seq:visible_from:removed_seq"
    /// (current and former members).
    pub fn group_members(&self, conversation_id: &str) -> String {
        format!("{}:members", self.conversation(conversation_id))
    }

    /// `<conversation base>:current`: sorted set, every score 0, members = the group's current
    /// member ids.
    pub fn group_current(&self, conversation_id: &str) -> String {
        format!("{}:current", self.conversation(conversation_id))
    }

    /// `<conversation base>:mentions`: hash [`mention_field`] (a user, or [`MENTION_ALL`]) ->
    /// the latest seq mentioning them.
    pub fn mentions(&self, conversation_id: &str) -> String {
        format!("{}:mentions", self.conversation(conversation_id))
    }

    /// `<user base>:d:<client_msg_id>`: string "seq:server_time_ms:conversation_id".
    pub fn dedupe(&self, sender_user_id: &str, client_msg_id: &str) -> String {
        format!("{}:d:{client_msg_id}", self.user(sender_user_id))
    }

    /// `<user base>:convs`: sorted set, every score 0, members = conversation ids.
    pub fn user_conversations(&self, user_id: &str) -> String {
        format!("{}:convs", self.user(user_id))
    }

    /// `<user base>:flags`: hash conversation_id -> the user's flag bits ([`FLAG_MUTED`] |
    /// [`FLAG_PINNED`], decimal; absent: none).
    pub fn user_flags(&self, user_id: &str) -> String {
        format!("{}:flags", self.user(user_id))
    }

    /// `P{h:<probe>}`: string written and read back by one process's health probe.
    pub fn health(&self, probe: &str) -> String {
        format!("{}{{h:{probe}}}", self.prefix)
    }

    /// `<user base>:last`: hash conversation_id -> "last_seq:last_time_ms".
    pub fn user_last(&self, user_id: &str) -> String {
        format!("{}:last", self.user(user_id))
    }
}

/// The `<conv>:mentions` field of a mention of every member (no user field is `*`: they all
/// start with `u`).
pub const MENTION_ALL: &str = "*";

/// The `<conv>:mentions` field of a mention of `user_id`: `u<user_id>`.
pub fn mention_field(user_id: &str) -> String {
    format!("u{user_id}")
}

/// `<user>:flags` bit: muted.
pub const FLAG_MUTED: u8 = 1;

/// `<user>:flags` bit: pinned.
pub const FLAG_PINNED: u8 = 2;

/// The bucket holding `seq`.
pub fn bucket_of(seq: u64) -> u64 {
    seq / BUCKET_SIZE
}

/// Field names of message `seq` inside its bucket hash: (header, body, recalled flag).
pub fn message_fields(seq: u64) -> [String; 3] {
    [seq.to_string(), format!("b{seq}"), format!("r{seq}")]
}

/// Splits the inclusive seq range `first..=last` into (bucket, first, last) pieces, one per
/// bucket, in order.
pub fn bucket_spans(first: u64, last: u64) -> Vec<(u64, u64, u64)> {
    let mut spans = Vec::new();
    let mut from = first;
    while from <= last {
        let bucket = bucket_of(from);
        let bucket_last = bucket.saturating_mul(BUCKET_SIZE).saturating_add(BUCKET_SIZE - 1);
        let to = bucket_last.min(last);
        spans.push((bucket, from, to));
        match to.checked_add(1) {
            Some(next) => from = next,
            None => break,
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn layout_is_as_documented() {
        let k = Keys::new("tern:");
        assert_eq!(k.meta("dm:a:b"), "tern:{c:6:dm:a:b}:meta");
        assert_eq!(k.bucket("dm:a:b", 3), "tern:{c:6:dm:a:b}:m:3");
        assert_eq!(k.receipts("g1"), "tern:{c:2:g1}:rcpt");
        assert_eq!(k.group("g:t"), "tern:{c:3:g:t}:group");
        assert_eq!(k.group_members("g:t"), "tern:{c:3:g:t}:members");
        assert_eq!(k.group_current("g:t"), "tern:{c:3:g:t}:current");
        assert_eq!(k.dedupe("alice", "m-1"), "tern:{u:5:alice}:d:m-1");
        assert_eq!(k.user_conversations("alice"), "tern:{u:5:alice}:convs");
        assert_eq!(k.user_last("alice"), "tern:{u:5:alice}:last");
        assert_eq!(k.user_flags("alice"), "tern:{u:5:alice}:flags");
        assert_eq!(k.mentions("dm:a:b"), "tern:{c:6:dm:a:b}:mentions");
        assert_eq!((mention_field("bob"), mention_field("")), ("ubob".to_owned(), "u".to_owned()));
        assert_ne!(mention_field("*"), MENTION_ALL);
        assert_eq!((k.history().as_str(), k.node().as_str()), ("tern:history", "tern:node"));
        assert_eq!(message_fields(42), ["42".to_owned(), "b42".to_owned(), "r42".to_owned()]);
    }

    #[test]
    fn different_ids_never_share_a_key() {
        let k = Keys::new("t:");
        let ids = ["a", "a:1", "a}:d:x", "a}", "", "u:1:a", "{c:1:a}", "é", "a:meta"];
        let mut seen = HashSet::new();
        for a in ids {
            let keys = [
                k.meta(a),
                k.bucket(a, 0),
                k.bucket(a, 1),
                k.receipts(a),
                k.group(a),
                k.group_members(a),
                k.group_current(a),
                k.user_conversations(a),
                k.user_last(a),
                k.user_flags(a),
                k.mentions(a),
            ];
            for key in keys.into_iter().chain(ids.iter().map(|b| k.dedupe(a, b))) {
                // Each (kind, id[, id]) builds its key once here; a repeat is a collision.
                assert!(seen.insert(key.clone()), "collision on {key:?}");
            }
        }
    }

    #[test]
    fn buckets_split_ranges_at_multiples_of_the_bucket_size() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1023), 0);
        assert_eq!(bucket_of(1024), 1);
        assert_eq!(bucket_spans(5, 4), vec![]);
        assert_eq!(bucket_spans(1, 10), vec![(0, 1, 10)]);
        assert_eq!(
            bucket_spans(1000, 2050),
            vec![(0, 1000, 1023), (1, 1024, 2047), (2, 2048, 2050)]
        );
        assert_eq!(bucket_spans(u64::MAX, u64::MAX), vec![(u64::MAX / 1024, u64::MAX, u64::MAX)]);
    }
}
