//! Cases for group conversations: a group change is committed with its event message (compare
//! and set on the group's version, deduplicated like an append), member rows follow joins,
//! roles and removals at the event's seq, and a message to a group is taken only from a
//! current member at the point it is sequenced.

use bytes::Bytes;
use prost::Message as _;
use tern_proto::v1;
use tern_store::{
    Committed, GroupMeta, GroupWrite, History, Member, MemberChange, NewMessage, Refusal, Role,
    Store, Write,
};

use crate::{message, unique};

/// A group event message from `actor` (the store does not read its body; this one is what
/// dispatch writes).
fn event(conv: &str, actor: &str, id: &str, kind: v1::group_event::Kind) -> NewMessage {
    let body =
        v1::GroupEvent { kind: kind as i32, actor_user_id: actor.into(), ..Default::default() };
    NewMessage {
        kind: v1::MessageKind::GroupEvent,
        content_type: String::new(),
        body: Bytes::from(body.encode_to_vec()),
        members: Vec::new(),
        ..message(conv, actor, id, "")
    }
}

fn meta(owner: &str, count: u32) -> GroupMeta {
    GroupMeta {
        name: "team".into(),
        owner_user_id: owner.into(),
        attributes: [("avatar".to_owned(), "https://example.com/a.png".to_owned())].into(),
        history: History::FromJoin,
        member_count: count,
        max_members: 10_000,
        created_ms: 1_700_000_000_000,
        dissolved: false,
    }
}

fn join(user: &str, role: Role) -> MemberChange {
    MemberChange::Join { user_id: user.into(), role, full_history: false }
}

fn remove(user: &str) -> MemberChange {
    MemberChange::Remove { user_id: user.into() }
}

fn change(
    event: NewMessage,
    expect_version: u64,
    meta: GroupMeta,
    members: Vec<MemberChange>,
) -> Write {
    Write::Group(GroupWrite { event, expect_version, meta, members })
}

/// Creates `conv` owned by `owner` with `others` as members; returns the creation's seq.
async fn create(store: &dyn Store, conv: &str, owner: &str, others: &[&str]) -> u64 {
    let mut members = vec![join(owner, Role::Owner)];
    members.extend(others.iter().map(|u| join(u, Role::Member)));
    let count = members.len() as u32;
    let id = unique("create");
    let w = change(
        event(conv, owner, &id, v1::group_event::Kind::Created),
        0,
        meta(owner, count),
        members,
    );
    let out = commit_one(store, w).await;
    match out {
        Committed::Appended(a) => {
            assert!(!a.duplicate);
            assert_eq!(a.group_version, a.seq, "a group write's version is its seq");
            a.seq
        }
        other => panic!("create refused: {other:?}"),
    }
}

async fn commit_one(store: &dyn Store, w: Write) -> Committed {
    let mut out = store.commit(&[w]).await.expect("commit");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

async fn row(store: &dyn Store, conv: &str, user: &str) -> Member {
    store.group_member(conv, user).await.expect("group_member").expect("a member row")
}

async fn current_members(store: &dyn Store, conv: &str) -> Vec<String> {
    let members = store.group_members(conv, "", 1000).await.expect("group_members");
    members.into_iter().map(|m| m.user_id).collect()
}

/// A created group reads back: its record at version 1, its member rows in user id order
/// (joined at seq 1), its event as message 1; paging over members works.
pub async fn group_create_reads_back(store: &dyn Store) {
    let conv = format!("g:{}", unique("create"));
    let (owner, b, c) = (unique("u-owner"), unique("u-b"), unique("u-c"));
    let (owner, b, c) = (owner.as_str(), b.as_str(), c.as_str());
    assert_eq!(store.get_group(&conv).await.expect("get_group"), None);
    let seq = create(store, &conv, owner, &[c, b]).await;
    assert_eq!(seq, 1);
    let state = store.get_group(&conv).await.expect("get_group").expect("the group");
    assert_eq!(state.version, 1);
    assert_eq!(state.meta, meta(owner, 3));
    assert_eq!(current_members(store, &conv).await, [b, c, owner]);
    let page = store.group_members(&conv, b, 1).await.expect("group_members");
    assert_eq!(page.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(), [c]);
    let o = row(store, &conv, owner).await;
    assert_eq!((o.role, o.joined_seq, o.visible_from, o.removed_seq), (Role::Owner, 1, 1, 0));
    assert_eq!(row(store, &conv, c).await.role, Role::Member);
    assert_eq!(store.group_member(&conv, "u-stranger").await.expect("group_member"), None);
    let stored = store.read_range(&conv, 1, 10).await.expect("read_range");
    assert_eq!(stored.last_seq, 1);
    assert_eq!(stored.messages[0].kind, v1::MessageKind::GroupEvent as i32);
    assert_eq!(stored.messages[0].sender_user_id, owner);
}

/// A resent create is a duplicate of the original; a second create of the same id, or a
/// change computed from an old version, is refused with the current version and writes
/// nothing; a change at the current version moves it.
pub async fn group_changes_compare_and_set(store: &dyn Store) {
    let conv = format!("g:{}", unique("cas"));
    let owner = &unique("u-owner");
    let first = change(
        event(&conv, owner, "create-1", v1::group_event::Kind::Created),
        0,
        meta(owner, 1),
        vec![join(owner, Role::Owner)],
    );
    let Committed::Appended(a) = commit_one(store, first.clone()).await else { panic!("create") };
    let Committed::Appended(again) = commit_one(store, first).await else { panic!("resend") };
    assert!(again.duplicate);
    assert_eq!((again.seq, again.conversation_id.as_str()), (a.seq, conv.as_str()));
    let other = change(
        event(&conv, owner, "create-2", v1::group_event::Kind::Created),
        0,
        meta(owner, 1),
        vec![],
    );
    assert_eq!(
        commit_one(store, other).await,
        Committed::Refused(Refusal::VersionConflict { version: 1 })
    );

    let add = |id: &str, expect: u64| {
        change(
            event(&conv, owner, id, v1::group_event::Kind::MembersAdded),
            expect,
            meta(owner, 2),
            vec![join("u-new", Role::Member)],
        )
    };
    let Committed::Appended(added) = commit_one(store, add("add-1", 1)).await else {
        panic!("add")
    };
    assert_eq!((added.seq, added.group_version), (2, 2));
    // Computed from version 1 again: refused, the row and the record unchanged.
    assert_eq!(
        commit_one(store, add("add-2", 1)).await,
        Committed::Refused(Refusal::VersionConflict { version: 2 })
    );
    assert_eq!(store.get_group(&conv).await.expect("get").expect("group").version, 2);
    assert_eq!(
        store.last_seq(&conv).await.expect("last_seq"),
        2,
        "a refused change stores no event"
    );
    // A row change that does not fit the row (a role for a non-member) is refused the same way.
    let bad = change(
        event(&conv, owner, "role-1", v1::group_event::Kind::MembersAdded),
        2,
        meta(owner, 2),
        vec![MemberChange::SetRole { user_id: "u-stranger".into(), role: Role::Admin }],
    );
    assert_eq!(
        commit_one(store, bad).await,
        Committed::Refused(Refusal::VersionConflict { version: 2 })
    );
    // Unknown groups: a change expecting a version is refused with version 0.
    let ghost = format!("g:{}", unique("ghost"));
    let w = change(
        event(&ghost, owner, "g-1", v1::group_event::Kind::MembersAdded),
        4,
        meta(owner, 1),
        vec![],
    );
    assert_eq!(
        commit_one(store, w).await,
        Committed::Refused(Refusal::VersionConflict { version: 0 })
    );
}

/// Only a current member's message is taken, with the group's version at that point; within
/// one batch a send before a removal is taken and one after it refused; unknown groups refuse.
pub async fn group_sends_need_current_membership(store: &dyn Store) {
    let conv = format!("g:{}", unique("send"));
    let (owner, bob) = (unique("u-owner"), unique("u-bob"));
    let (owner, bob) = (owner.as_str(), bob.as_str());
    create(store, &conv, owner, &[bob]).await;
    let sent = |who: &str, id: &str| {
        Write::Append(NewMessage { members: Vec::new(), ..message(&conv, who, id, "hi") })
    };
    let batch = vec![
        sent(bob, "b-1"),
        sent("u-stranger", "s-1"),
        change(
            event(&conv, owner, "rm-bob", v1::group_event::Kind::MembersRemoved),
            1,
            meta(owner, 1),
            vec![remove(bob)],
        ),
        sent(bob, "b-2"),
        sent(owner, "o-1"),
    ];
    let out = store.commit(&batch).await.expect("commit");
    let Committed::Appended(b1) = &out[0] else { panic!("bob's first send: {:?}", out[0]) };
    assert_eq!((b1.seq, b1.group_version), (2, 1));
    assert_eq!(out[1], Committed::Refused(Refusal::NotAMember));
    let Committed::Appended(removal) = &out[2] else { panic!("removal: {:?}", out[2]) };
    assert_eq!(removal.seq, 3);
    assert_eq!(out[3], Committed::Refused(Refusal::NotAMember), "a send after the removal");
    let Committed::Appended(o1) = &out[4] else { panic!("owner's send: {:?}", out[4]) };
    assert_eq!((o1.seq, o1.group_version), (4, 3));
    // Bob's first message is stored; his second is not; his row ends at the removal.
    let stored = store.read_range(&conv, 1, 10).await.expect("read_range");
    let senders: Vec<_> = stored.messages.iter().map(|m| m.sender_user_id.as_str()).collect();
    assert_eq!(senders, [owner, bob, owner, owner]);
    let b = row(store, &conv, bob).await;
    assert_eq!((b.joined_seq, b.removed_seq), (1, 3));
    assert!(b.sees(3) && !b.sees(4) && !b.is_current());
    assert_eq!(current_members(store, &conv).await, [owner]);
    // A resend of his accepted message is still answered by dedupe.
    let again = store.commit(&[sent(bob, "b-1")]).await.expect("commit");
    assert!(matches!(&again[0], Committed::Appended(a) if a.duplicate && a.seq == 2));
    let ghost = format!("g:{}", unique("ghost"));
    let w = Write::Append(message(&ghost, owner, "x", "hi"));
    assert_eq!(
        store.commit(&[w]).await.expect("commit")[0],
        Committed::Refused(Refusal::NoSuchGroup)
    );
}

/// Rows follow the events: a former member rejoins at the new event, full history reads from
/// seq 1, roles change, and a dissolved group takes neither messages nor changes.
pub async fn group_rows_follow_joins_roles_and_dissolution(store: &dyn Store) {
    let conv = format!("g:{}", unique("rows"));
    let (owner, bob, carol) = (unique("u-owner"), unique("u-bob"), unique("u-carol"));
    let (owner, bob, carol) = (owner.as_str(), bob.as_str(), carol.as_str());
    create(store, &conv, owner, &[bob]).await;
    let kind = v1::group_event::Kind::MembersAdded;
    let step = |id: &str, v: u64, count: u32, rows: Vec<MemberChange>| {
        change(event(&conv, owner, id, kind), v, meta(owner, count), rows)
    };
    assert!(matches!(
        commit_one(store, step("rm", 1, 1, vec![remove(bob)])).await,
        Committed::Appended(_)
    ));
    let full = MemberChange::Join { user_id: carol.into(), role: Role::Member, full_history: true };
    let rows = vec![join(bob, Role::Member), full];
    assert!(matches!(commit_one(store, step("add", 2, 3, rows)).await, Committed::Appended(_)));
    let b = row(store, &conv, bob).await;
    assert_eq!((b.joined_seq, b.visible_from, b.removed_seq), (3, 3, 0), "rejoined at seq 3");
    assert!(!b.sees(2) && b.sees(3));
    let c = row(store, &conv, carol).await;
    assert_eq!((c.joined_seq, c.visible_from), (3, 1));
    assert!(c.sees(1) && !c.receives(2) && c.receives(3));
    let promote = vec![MemberChange::SetRole { user_id: bob.into(), role: Role::Admin }];
    assert!(matches!(
        commit_one(store, step("promote", 3, 3, promote)).await,
        Committed::Appended(_)
    ));
    assert_eq!(row(store, &conv, bob).await.role, Role::Admin);
    assert_eq!(row(store, &conv, bob).await.joined_seq, 3, "a role change is not a join");

    let dissolved = GroupMeta {
        dissolved: true,
        member_count: 0,
        owner_user_id: String::new(),
        ..meta(owner, 0)
    };
    let all = vec![remove(owner), remove(bob), remove(carol)];
    let w = change(event(&conv, owner, "dissolve", kind), 4, dissolved.clone(), all);
    assert!(matches!(commit_one(store, w).await, Committed::Appended(a) if a.seq == 5));
    let state = store.get_group(&conv).await.expect("get").expect("a dissolved group reads");
    assert_eq!((state.version, state.meta), (5, dissolved.clone()));
    assert!(current_members(store, &conv).await.is_empty());
    let w = Write::Append(message(&conv, owner, "late", "hi"));
    assert_eq!(
        store.commit(&[w]).await.expect("commit")[0],
        Committed::Refused(Refusal::NoSuchGroup)
    );
    let w = change(
        event(&conv, owner, "revive", kind),
        5,
        meta(owner, 1),
        vec![join(owner, Role::Owner)],
    );
    assert_eq!(commit_one(store, w).await, Committed::Refused(Refusal::NoSuchGroup));
}

/// A member's conversation list shows the group with its latest seq (read diffusion: no
/// per-member write per message); a former member's entry stays at their removal.
pub async fn group_conversations_are_listed(store: &dyn Store) {
    let conv = format!("g:{}", unique("list"));
    let (owner, bob) = (unique("u-owner"), unique("u-bob"));
    create(store, &conv, &owner, &[&bob]).await;
    let sent = |id: &str| {
        Write::Append(NewMessage { members: Vec::new(), ..message(&conv, &owner, id, "hi") })
    };
    store.commit(&[sent("m1"), sent("m2")]).await.expect("commit");
    let listed = |user: String| async move {
        let list = store.list_conversations(&user, "", 100).await.expect("list");
        list.into_iter().map(|e| (e.conversation_id, e.last_seq)).collect::<Vec<_>>()
    };
    assert_eq!(listed(bob.clone()).await, [(conv.clone(), 3)]);
    let kind = v1::group_event::Kind::MembersRemoved;
    let w = change(event(&conv, &owner, "rm", kind), 1, meta(&owner, 1), vec![remove(&bob)]);
    assert!(matches!(commit_one(store, w).await, Committed::Appended(a) if a.seq == 4));
    store.commit(&[sent("m3")]).await.expect("commit");
    assert_eq!(listed(bob).await, [(conv.clone(), 4)], "ends at the removal");
    assert_eq!(listed(owner).await, [(conv, 5)]);
}

/// Mentions in a group: by id they move the mentioned member's mention seq, a mention of all
/// every member's; a former member's entry ends at their removal, so a mention after it is
/// not theirs (and hides their earlier own one), while a mention of all before it still is.
pub async fn group_mentions_are_listed(store: &dyn Store) {
    let conv = format!("g:{}", unique("ment"));
    let (owner, bob, carol) = (unique("u-owner"), unique("u-bob"), unique("u-carol"));
    create(store, &conv, &owner, &[&bob, &carol]).await;
    let sent = |id: &str, mentions: &[&String], all: bool| {
        Write::Append(NewMessage {
            members: Vec::new(),
            mention_user_ids: mentions.iter().map(|u| (*u).clone()).collect(),
            mention_all: all,
            ..message(&conv, &owner, id, "hi")
        })
    };
    let mention_seq = |user: String| {
        let conv = conv.clone();
        async move {
            let list = store.list_conversations(&user, "", 100).await.expect("list");
            let e = list.into_iter().find(|e| e.conversation_id == conv).expect("listed");
            (e.last_seq, e.mention_seq)
        }
    };
    store.commit(&[sent("m1", &[&bob], false)]).await.expect("commit");
    assert_eq!(mention_seq(bob.clone()).await, (2, 2));
    assert_eq!(mention_seq(carol.clone()).await, (2, 0), "carol is not mentioned");
    assert_eq!(mention_seq(owner.clone()).await, (2, 0));
    let stored = store.get_message(&conv, 2).await.expect("get").expect("stored");
    assert_eq!(stored.mention_user_ids, std::slice::from_ref(&bob));
    store.commit(&[sent("m2", &[], true), sent("m3", &[], false)]).await.expect("commit");
    assert_eq!(mention_seq(bob.clone()).await, (4, 3), "all includes bob");
    assert_eq!(mention_seq(carol.clone()).await, (4, 3));
    assert_eq!(mention_seq(owner.clone()).await, (4, 3));
    assert!(store.get_message(&conv, 3).await.expect("get").expect("stored").mention_all);
    let kind = v1::group_event::Kind::MembersRemoved;
    let w = change(event(&conv, &owner, "rm", kind), 1, meta(&owner, 2), vec![remove(&bob)]);
    assert!(matches!(commit_one(store, w).await, Committed::Appended(a) if a.seq == 5));
    store.commit(&[sent("m4", &[&bob, &carol], false)]).await.expect("commit");
    assert_eq!(mention_seq(bob).await, (5, 3), "a mention after the removal is not bob's");
    assert_eq!(mention_seq(carol).await, (6, 6));
    assert_eq!(mention_seq(owner).await, (6, 3));
}
