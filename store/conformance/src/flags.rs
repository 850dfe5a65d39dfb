//! Cases for what a user's conversation list shows beyond seqs: mentions (stored in the
//! message, and each mentioned user's latest mention seq) and the user's own muted / pinned
//! flags ([`Write::Flags`]).

use tern_store::{Committed, ConversationEntry, FlagsWrite, Store, Write};

use crate::{message, unique};

async fn entry(store: &dyn Store, user: &str, conv: &str) -> ConversationEntry {
    let list = store.list_conversations(user, "", 100).await.expect("list_conversations");
    list.into_iter().find(|e| e.conversation_id == conv).expect("the conversation is listed")
}

fn flags(conv: &str, user: &str, muted: Option<bool>, pinned: Option<bool>) -> Write {
    Write::Flags(FlagsWrite {
        conversation_id: conv.to_owned(),
        user_id: user.to_owned(),
        muted,
        pinned,
    })
}

/// A message's mentions are stored with it and move the mentioned user's mention seq (and
/// every member's for a mention of all); others' stay.
pub async fn mentions_are_stored_and_listed(store: &dyn Store) {
    let (a, b) = (unique("u-ment-a"), unique("u-ment-b"));
    let conv = format!("dm:{a}:{b}");
    let members = vec![a.clone(), b.clone()];
    let mut first = message(&conv, &a, "m1", "hi @b");
    first.members.clone_from(&members);
    first.mention_user_ids = vec![b.clone()];
    let mut second = message(&conv, &a, "m2", "plain");
    second.members.clone_from(&members);
    let mut third = message(&conv, &b, "m3", "@all");
    third.members.clone_from(&members);
    store.commit(&[Write::Append(first), Write::Append(second)]).await.expect("commit");
    let e = entry(store, &b, &conv).await;
    assert_eq!((e.last_seq, e.mention_seq), (2, 1));
    assert_eq!(entry(store, &a, &conv).await.mention_seq, 0, "a is not mentioned");
    let stored = store.read_range(&conv, 1, 10).await.expect("read_range").messages;
    assert_eq!(stored[0].mention_user_ids, std::slice::from_ref(&b));
    assert!(!stored[0].mention_all && stored[1].mention_user_ids.is_empty());

    third.mention_all = true;
    store.commit(&[Write::Append(third)]).await.expect("commit");
    assert_eq!(entry(store, &a, &conv).await.mention_seq, 3, "all includes a");
    assert_eq!(entry(store, &b, &conv).await.mention_seq, 3);
    assert!(store.get_message(&conv, 3).await.expect("get").expect("stored").mention_all);
}

/// Flags are the user's own: set and cleared independently, durable, and not shared.
pub async fn flags_are_per_user_and_independent(store: &dyn Store) {
    let (a, b) = (unique("u-flag-a"), unique("u-flag-b"));
    let conv = format!("dm:{a}:{b}");
    let mut m = message(&conv, &a, "f1", "hi");
    m.members = vec![a.clone(), b.clone()];
    store.commit(&[Write::Append(m)]).await.expect("commit");
    let e = entry(store, &b, &conv).await;
    assert!(!e.muted && !e.pinned);
    let out = store.commit(&[flags(&conv, &b, Some(true), None)]).await.expect("commit");
    assert_eq!(out, [Committed::Flagged]);
    let e = entry(store, &b, &conv).await;
    assert!(e.muted && !e.pinned);
    store.commit(&[flags(&conv, &b, None, Some(true))]).await.expect("commit");
    let e = entry(store, &b, &conv).await;
    assert!(e.muted && e.pinned, "setting one flag keeps the other");
    store.commit(&[flags(&conv, &b, Some(false), None)]).await.expect("commit");
    let e = entry(store, &b, &conv).await;
    assert!(!e.muted && e.pinned);
    let other = entry(store, &a, &conv).await;
    assert!(!other.muted && !other.pinned, "flags are per user");
}
