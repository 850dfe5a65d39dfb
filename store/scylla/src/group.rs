//! Group conversations on Scylla: where a group lives, and the reads and writes of it. The
//! mechanism (why a message is never sequenced after its sender's removal, what a crash between
//! a change's LWT and its row writes leaves, how a group claim is taken over) is documented in
//! `append.rs`, *Groups*; the decisions themselves are pure functions in `group/decide.rs`.
//!
//! | where | what |
//! |---|---|
//! | `conversation_meta` | the allocator row; also `group_version` (seq of the latest change), |
//! |  | `group_dissolved`, `group_record`, `group_pending` (the latest change until completed), |
//! |  | `change_fence` |
//! | `group_members` | one row per user ever a member: role, joined, visible_from, removed |
//! | `group_current` | the current members' rows (pages of `group_members(conv, after, n)`) |
//! | `user_conversations` | an entry per changed user at each change (a send writes none) |
//!
//! A send reads the allocator row and the sender's row (2 reads, both bounded to one row); a
//! change reads one row per changed user and writes three per changed user. Nothing per send
//! or per change touches every member.

mod decide;
mod read;
mod write;

pub(crate) use decide::{Pending, Snapshot, effective};

/// Group conversation ids start with this (`tern_proto::ids`).
pub(crate) const GROUP_PREFIX: &str = "g:";

/// Whether `conversation_id` names a group (its sends need a current member).
pub(crate) fn is_group(conversation_id: &str) -> bool {
    conversation_id.starts_with(GROUP_PREFIX)
}

#[cfg(test)]
mod tests;
