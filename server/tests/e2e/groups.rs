//! Groups through the SDK against `tern serve`'s embedded mode: the lifecycle and who may do
//! what, events in sequence with messages, who receives and who may read (a new member from
//! their join, a removed one up to their removal, a send racing a removal), and the
//! conversation list.

use crate::common;

use common::*;
use tern_proto::v1::{self, ErrorCode, MessageKind, group_event::Kind};
use tern_sdk::{Client, SdkError, Target};

fn code(e: SdkError) -> ErrorCode {
    match e {
        SdkError::Server { code, .. } => code,
        other => panic!("expected a server error, got {other}"),
    }
}

fn event_kind(m: &v1::Message) -> Kind {
    assert_eq!(m.kind, MessageKind::GroupEvent as i32, "not an event: {m:?}");
    let e = <v1::GroupEvent as prost::Message>::decode(m.body.as_ref()).unwrap();
    Kind::try_from(e.kind).unwrap()
}

async fn say(c: &Client, group: &str, s: &str) -> Result<v1::SendAck, SdkError> {
    c.send(Target::Conversation(group.into()), "text/plain", text(s)).await
}

/// Create (idempotent), events and messages in order to every member, and the permission
/// table: members may not administer, admins may not touch admins or the owner, only the
/// owner changes roles, transfers and dissolves; strangers are refused everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_and_permissions() {
    let srv = TestServer::start().await;
    let (alice, _ae) = srv.client("alice", "phone").await;
    let (bob, mut be) = srv.client("bob", "phone").await;
    let (carol, _ce) = srv.client("carol", "phone").await;
    let (dave, _de) = srv.client("dave", "phone").await;

    let info = alice.create_group("team", &["bob", "carol"], "req-1").await.unwrap();
    let g = info.conversation_id.clone();
    assert!(g.starts_with("g:"));
    assert_eq!((info.owner_user_id.as_str(), info.member_count, info.version), ("alice", 3, 1));
    assert_eq!(info.member_user_ids, ["alice", "bob", "carol"]);
    assert_eq!(info.your_role, v1::GroupRole::Owner as i32);
    let again = alice.create_group("team", &["bob", "carol"], "req-1").await.unwrap();
    assert_eq!(again.conversation_id, g, "a retried create returns the same group");
    let created = next_message(&mut be).await;
    assert_eq!((created.seq, event_kind(&created)), (1, Kind::Created));

    let ack = say(&alice, &g, "hello team").await.unwrap();
    assert_eq!(ack.seq, 2);
    let m = next_message(&mut be).await;
    assert_eq!((m.seq, m.sender_user_id.as_str(), &m.body[..]), (2, "alice", &b"hello team"[..]));

    // Strangers: nothing.
    assert_eq!(code(say(&dave, &g, "let me in").await.unwrap_err()), ErrorCode::NotAMember);
    assert_eq!(code(dave.get_group(&g).await.unwrap_err()), ErrorCode::NotAMember);
    assert_eq!(code(dave.sync_page(&g, 1, 10).await.unwrap_err()), ErrorCode::NotAMember);
    assert_eq!(code(dave.group_members(&g).await.unwrap_err()), ErrorCode::NotAMember);
    let e = dave.mark_read(&g, 1).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::NotAMember);
    assert_eq!(code(dave.get_receipts(&g).await.unwrap_err()), ErrorCode::NotAMember);
    assert_eq!(code(dave.add_members(&g, &["dave"]).await.unwrap_err()), ErrorCode::NotAMember);
    assert_eq!(code(dave.get_group("g:nope").await.unwrap_err()), ErrorCode::UnknownConversation);

    // Members do not administer.
    assert_eq!(code(bob.add_members(&g, &["dave"]).await.unwrap_err()), ErrorCode::Forbidden);
    assert_eq!(code(bob.remove_members(&g, &["carol"]).await.unwrap_err()), ErrorCode::Forbidden);
    let rename = v1::UpdateGroup {
        conversation_id: g.clone(),
        name: Some("x".into()),
        ..Default::default()
    };
    assert_eq!(code(bob.update_group(rename.clone()).await.unwrap_err()), ErrorCode::Forbidden);
    assert_eq!(code(bob.dissolve_group(&g).await.unwrap_err()), ErrorCode::Forbidden);

    // An admin adds and removes members, but not the owner, and changes no roles.
    let promoted = alice.set_member_role(&g, "bob", v1::GroupRole::Admin).await.unwrap();
    assert_eq!(promoted.version, 3);
    let role = next_message(&mut be).await;
    assert_eq!((role.seq, event_kind(&role)), (3, Kind::RoleChanged));
    let added = bob.add_members(&g, &["dave", "carol"]).await.unwrap();
    assert_eq!((added.member_count, added.your_role), (4, v1::GroupRole::Admin as i32));
    assert_eq!(code(bob.remove_members(&g, &["alice"]).await.unwrap_err()), ErrorCode::Forbidden);
    let r = bob.set_member_role(&g, "carol", v1::GroupRole::Admin).await.unwrap_err();
    assert_eq!(code(r), ErrorCode::Forbidden);
    let renamed = bob.update_group(rename).await.unwrap();
    assert_eq!(renamed.name, "x");
    let members = alice.group_members(&g).await.unwrap();
    let roles: Vec<_> = members.iter().map(|m| (m.user_id.as_str(), m.role)).collect();
    assert_eq!(
        roles,
        [
            ("alice", v1::GroupRole::Owner as i32),
            ("bob", v1::GroupRole::Admin as i32),
            ("carol", v1::GroupRole::Member as i32),
            ("dave", v1::GroupRole::Member as i32),
        ]
    );
    bob.remove_members(&g, &["carol"]).await.unwrap();
    assert_eq!(code(carol.get_group(&g).await.unwrap_err()), ErrorCode::NotAMember);
    dave.leave_group(&g).await.unwrap();

    // The owner leaves only last; ownership moves; the new owner dissolves.
    assert_eq!(code(alice.leave_group(&g).await.unwrap_err()), ErrorCode::Forbidden);
    let moved = alice.transfer_ownership(&g, "bob").await.unwrap();
    assert_eq!(
        (moved.owner_user_id.as_str(), moved.your_role),
        ("bob", v1::GroupRole::Admin as i32)
    );
    assert_eq!(code(alice.dissolve_group(&g).await.unwrap_err()), ErrorCode::Forbidden);
    bob.dissolve_group(&g).await.unwrap();
    assert_eq!(code(say(&alice, &g, "anyone?").await.unwrap_err()), ErrorCode::UnknownConversation);
    // The history stays readable up to the dissolution.
    let page = alice.sync_page(&g, 1, 100).await.unwrap();
    let last = page.messages.last().unwrap();
    assert_eq!(event_kind(last), Kind::Dissolved);
    drop(carol);
}

/// A member added later reads from their join on; a removed member reads up to their removal
/// and is pushed nothing after it; a send racing the removal is either before it (and stays
/// readable) or refused; the conversation list shows the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visibility_follows_joins_and_removals() {
    let srv = TestServer::start().await;
    let (alice, _ae) = srv.client("alice", "phone").await;
    let (ann, mut ann_events) = srv.client("ann", "phone").await;
    let (bob, mut be) = srv.client("bob", "phone").await;
    let g = alice.create_group("team", &["ann", "bob"], "").await.unwrap().conversation_id;
    for i in 0..3 {
        say(&alice, &g, &format!("early {i}")).await.unwrap();
    }
    // Zoe joins at seq 5: she reads from there; seqs before are not hers (listed missing).
    let (zoe, _ze) = srv.client("zoe", "phone").await;
    alice.add_members(&g, &["zoe"]).await.unwrap();
    let page = zoe.sync_page(&g, 1, 100).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [5]);
    assert_eq!(page.missing, [v1::SeqRange { first: 1, last: 4 }]);

    // Ann sends while alice removes her: each of her acks is below the removal's seq, and
    // once refused she stays refused.
    let sender = {
        let (ann, g) = (ann.clone(), g.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100_000 {
                match say(&ann, &g, &format!("ann {i}")).await {
                    Ok(ack) => acked.push(ack.seq),
                    Err(e) => return (acked, Some(code(e))),
                }
            }
            (acked, None)
        })
    };
    // Remove her once she got a few messages in (an event, not a sleep: her acks).
    let mut seen = 0;
    while seen < 5 {
        let m = next_message(&mut be).await;
        if m.sender_user_id == "ann" {
            seen += 1;
        }
    }
    alice.remove_members(&g, &["ann"]).await.unwrap();
    let (acked, refused) = sender.await.unwrap();
    let removal = alice.get_group(&g).await.unwrap().version;
    assert!(acked.len() >= 5);
    assert!(acked.iter().all(|&s| s < removal), "acked {acked:?}, removal at {removal}");
    assert_eq!(refused, Some(ErrorCode::NotAMember), "ann kept sending after her removal");

    // After her removal: a message she must not get. Bob's copy arriving means the fan-out
    // loop passed ann (members are pushed in user id order), so her stream holds it by then
    // if it was pushed at all; a 1:1 fence behind it closes her stream's window.
    let after = say(&alice, &g, "after ann").await.unwrap();
    loop {
        if next_message(&mut be).await.seq == after.seq {
            break;
        }
    }
    alice.send(Target::Peer("ann".into()), "text/plain", text("fence")).await.unwrap();
    loop {
        let m = next_message(&mut ann_events).await;
        assert!(m.seq <= removal || m.conversation_id != g, "pushed after removal: {m:?}");
        if m.conversation_id != g {
            break;
        }
    }
    // What she reads ends at her removal event.
    let page = ann.sync_page(&g, 1, 500).await.unwrap();
    assert_eq!(page.messages.last().map(|m| m.seq), Some(removal));
    assert_eq!(event_kind(page.messages.last().unwrap()), Kind::MembersRemoved);
    assert!(acked.iter().all(|s| page.messages.iter().any(|m| m.seq == *s)));
    let page = ann.sync_page(&g, removal + 1, 10).await.unwrap();
    assert!(page.messages.is_empty() && page.missing.is_empty());

    // The list: a member's entry follows the group; ann's stops at her removal.
    let listed = |list: Vec<v1::ConversationSummary>| {
        list.into_iter().find(|c| c.conversation_id == g).map(|c| c.last_seq)
    };
    assert_eq!(listed(bob.list_conversations().await.unwrap()), Some(after.seq));
    assert_eq!(listed(ann.list_conversations().await.unwrap()), Some(removal));
}

/// The conversation list a returning app renders: unread counts, a mention flag that clears
/// once read past, the user's own muted and pinned flags; @all only from admins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_shows_unread_mentions_and_flags() {
    let srv = TestServer::start().await;
    let (alice, _ae) = srv.client("alice", "phone").await;
    let (bob, _be) = srv.client("bob", "phone").await;
    let g = alice.create_group("team", &["bob"], "").await.unwrap().conversation_id;
    let to_g = || Target::Conversation(g.clone());
    say(&alice, &g, "one").await.unwrap();
    let mention = alice.send_mentioning(to_g(), "text/plain", text("@bob look"), &["bob"], false);
    let mention = mention.await.unwrap();
    say(&alice, &g, "three").await.unwrap();
    let dm = alice.send(Target::Peer("bob".into()), "text/plain", text("psst")).await.unwrap();
    let summary = |list: Vec<v1::ConversationSummary>, id: &str| {
        list.into_iter().find(|c| c.conversation_id == id).unwrap()
    };
    let s = summary(bob.list_conversations().await.unwrap(), &g);
    assert_eq!((s.last_seq, s.read_seq, s.unread_count), (4, 0, 4));
    assert!(s.mentioned && !s.muted && !s.pinned);
    let stored = bob.sync_page(&g, mention.seq, 1).await.unwrap().messages.remove(0);
    assert_eq!(stored.mention_user_ids, ["bob"]);
    assert!(!summary(alice.list_conversations().await.unwrap(), &g).mentioned);

    bob.mark_read(&g, mention.seq).await.unwrap();
    let s = summary(bob.list_conversations().await.unwrap(), &g);
    assert_eq!((s.unread_count, s.mentioned), (1, false), "read past the mention");
    bob.update_conversation(&g, Some(true), None).await.unwrap();
    bob.update_conversation(&dm.conversation_id, None, Some(true)).await.unwrap();
    let list = bob.list_conversations().await.unwrap();
    let (sg, sd) = (summary(list.clone(), &g), summary(list, &dm.conversation_id));
    assert!(sg.muted && !sg.pinned && sd.pinned && !sd.muted);
    assert!(!summary(alice.list_conversations().await.unwrap(), &g).muted, "flags are bob's");

    // @all: from an admin only.
    let all = bob.send_mentioning(to_g(), "text/plain", text("@all"), &[], true).await;
    assert_eq!(code(all.unwrap_err()), ErrorCode::Forbidden);
    alice.send_mentioning(to_g(), "text/plain", text("@all hi"), &[], true).await.unwrap();
    assert!(summary(bob.list_conversations().await.unwrap(), &g).mentioned);
    let e = bob.update_conversation("g:nope", Some(true), None).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::UnknownConversation);
}

/// In a small group a receipt is pushed to every member and GetReceipts lists everyone's;
/// above `dispatch.receipt_push_max_members` only the user's own devices hear of it and
/// GetReceipts lists only the caller's. A group with full history shows a new member
/// everything from seq 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_by_group_size_and_full_history() {
    let srv = TestServer::start_with(&["dispatch.receipt_push_max_members=2"]).await;
    let (alice, mut ae) = srv.client("alice", "phone").await;
    let (bob, _be) = srv.client("bob", "phone").await;
    let (carol, _ce) = srv.client("carol", "phone").await;
    let small = alice.create_group("pair", &["bob"], "").await.unwrap().conversation_id;
    let ack = say(&alice, &small, "read me").await.unwrap();
    bob.mark_read(&small, ack.seq).await.unwrap();
    let pushed = wait_event(&mut ae, |e| match e {
        tern_sdk::Event::Receipt(r) if r.conversation_id == small => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!((pushed.user_id.as_str(), pushed.read_seq), ("bob", ack.seq));
    let all = alice.get_receipts(&small).await.unwrap();
    assert!(all.members.iter().any(|m| m.user_id == "bob" && m.read_seq == ack.seq));

    let req = v1::CreateGroup {
        name: "big".into(),
        member_user_ids: vec!["bob".into(), "carol".into()],
        history: v1::GroupHistory::Full as i32,
        ..Default::default()
    };
    let big = alice.create_group_with(req).await.unwrap().conversation_id;
    let ack = say(&alice, &big, "many readers").await.unwrap();
    bob.mark_read(&big, ack.seq).await.unwrap();
    carol.mark_delivered(&big, ack.seq).await.unwrap();
    let mine = carol.get_receipts(&big).await.unwrap();
    assert_eq!(mine.members.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(), ["carol"]);
    let own = bob.get_receipts(&big).await.unwrap();
    assert_eq!(own.members.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(), ["bob"]);

    let (dave, _de) = srv.client("dave", "phone").await;
    alice.add_members(&big, &["dave"]).await.unwrap();
    let page = dave.sync_page(&big, 1, 100).await.unwrap();
    assert_eq!(page.messages.first().map(|m| m.seq), Some(1), "full history from seq 1");
    assert!(page.missing.is_empty());
}
