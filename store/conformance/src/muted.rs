//! Cases for [`Store::muted_among`]: which of a message's recipients muted its conversation
//! (what the offline-push stage reads), from the flags [`Write::Flags`] stores.

use tern_store::{FlagsWrite, Store, Write};

use crate::{message, unique};

fn mute(conv: &str, user: &str, muted: bool) -> Write {
    Write::Flags(FlagsWrite {
        conversation_id: conv.to_owned(),
        user_id: user.to_owned(),
        muted: Some(muted),
        pinned: None,
    })
}

fn ids(users: &[&String]) -> Vec<String> {
    users.iter().map(|u| (*u).clone()).collect()
}

async fn muted(store: &dyn Store, conv: &str, users: &[String]) -> Vec<String> {
    store.muted_among(conv, users).await.expect("muted_among")
}

/// Nobody muted: nothing, also when a user has other flags (pinned) or no users are asked.
pub async fn muted_among_nobody_muted(store: &dyn Store) {
    let (a, b) = (unique("u-mute0-a"), unique("u-mute0-b"));
    let conv = format!("dm:{a}:{b}");
    let mut m = message(&conv, &a, "n1", "hi");
    m.members = vec![a.clone(), b.clone()];
    let pin = Write::Flags(FlagsWrite {
        conversation_id: conv.clone(),
        user_id: b.clone(),
        muted: None,
        pinned: Some(true),
    });
    store.commit(&[Write::Append(m), pin]).await.expect("commit");
    assert!(muted(store, &conv, &ids(&[&a, &b])).await.is_empty());
    assert!(muted(store, &conv, &[]).await.is_empty(), "no users asked");
}

/// A mute shows until it is undone; a mute and an unmute in one batch apply in batch order.
pub async fn muted_among_follows_mute_and_unmute(store: &dyn Store) {
    let (a, b) = (unique("u-mute1-a"), unique("u-mute1-b"));
    let conv = format!("dm:{a}:{b}");
    let mut m = message(&conv, &a, "n1", "hi");
    m.members = vec![a.clone(), b.clone()];
    store.commit(&[Write::Append(m)]).await.expect("commit");
    let both = ids(&[&a, &b]);
    store.commit(&[mute(&conv, &b, true)]).await.expect("commit");
    assert_eq!(muted(store, &conv, &both).await, std::slice::from_ref(&b));
    store.commit(&[mute(&conv, &b, false)]).await.expect("commit");
    assert!(muted(store, &conv, &both).await.is_empty(), "unmuted");
    store.commit(&[mute(&conv, &a, true), mute(&conv, &a, false)]).await.expect("commit");
    assert!(muted(store, &conv, &both).await.is_empty(), "the later write wins");
    store.commit(&[mute(&conv, &a, false), mute(&conv, &a, true)]).await.expect("commit");
    assert_eq!(muted(store, &conv, &both).await, std::slice::from_ref(&a));
}

/// Several muters come back in the caller's order (an id asked twice, twice).
pub async fn muted_among_keeps_the_callers_order(store: &dyn Store) {
    let users: Vec<String> = (0..5).map(|i| unique(&format!("u-mute2-{i}"))).collect();
    let conv = unique("g:mute2");
    let writes: Vec<Write> = [3, 1, 4].iter().map(|&i| mute(&conv, &users[i], true)).collect();
    store.commit(&writes).await.expect("commit");
    let asked = ids(&[&users[4], &users[0], &users[1], &users[2], &users[3]]);
    assert_eq!(muted(store, &conv, &asked).await, ids(&[&users[4], &users[1], &users[3]]));
    let asked = ids(&[&users[3], &users[1], &users[3]]);
    assert_eq!(muted(store, &conv, &asked).await, asked);
}

/// Unknown users answer nothing; a conversation never flagged answers nothing; a mute of one
/// conversation is not a mute of another (nor of one whose id extends it).
pub async fn muted_among_unknown_users_and_unflagged_conversations(store: &dyn Store) {
    let (a, b) = (unique("u-mute3-a"), unique("u-mute3-b"));
    let conv = unique("g:mute3");
    let longer = format!("{conv}:1");
    let never = unique("g:mute3-never");
    store.commit(&[mute(&conv, &a, true)]).await.expect("commit");
    let asked = vec![unique("u-mute3-nobody"), a.clone(), b.clone(), String::new()];
    assert_eq!(muted(store, &conv, &asked).await, std::slice::from_ref(&a));
    assert!(muted(store, &never, &asked).await.is_empty(), "never flagged");
    assert!(muted(store, &longer, &asked).await.is_empty(), "another conversation");
    assert!(muted(store, &conv, &[unique("u-mute3-x")]).await.is_empty());
}

/// 2,000 recipients in one call: every 7th muted, every 13th muted then unmuted.
pub async fn muted_among_answers_thousands_in_one_call(store: &dyn Store) {
    const N: usize = 2_000;
    let conv = unique("g:mute4");
    let users: Vec<String> = (0..N).map(|i| format!("{}-{i}", unique("u-mute4"))).collect();
    let mut writes = Vec::new();
    for (i, u) in users.iter().enumerate() {
        if i % 7 == 0 {
            writes.push(mute(&conv, u, true));
        }
        if i % 13 == 0 {
            writes.push(mute(&conv, u, true));
            writes.push(mute(&conv, u, false));
        }
    }
    for chunk in writes.chunks(200) {
        store.commit(chunk).await.expect("commit");
    }
    let expected: Vec<String> = users
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 7 == 0 && i % 13 != 0)
        .map(|(_, u)| u.clone())
        .collect();
    assert_eq!(muted(store, &conv, &users).await, expected);
}
