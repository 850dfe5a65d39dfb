//! Unit tests of the group decisions (pure functions, no node needed): what a send and a change
//! decide from the rows read, what a reader sees while a change is pending, what a completion
//! writes, and how an unknown LWT outcome is settled.

use tern_store::{GroupMeta, GroupWrite, History, Member, MemberChange, NewMessage, Refusal, Role};

use super::decide::*;
use super::is_group;

fn member(user: &str, role: Role, joined: u64, removed: u64) -> Member {
    Member {
        user_id: user.into(),
        role,
        joined_seq: joined,
        visible_from: joined,
        removed_seq: removed,
    }
}

fn head(last_seq: u64, version: u64) -> Snapshot {
    Snapshot {
        exists: true,
        last_seq,
        last_time_ms: 77,
        last_owner: Some("o".into()),
        version,
        version_cql: Some(version as i64),
        fence: Some(0),
        dissolved: false,
        record: Some(GroupMeta::default()),
        pending: None,
        mention_all_seq: 0,
    }
}

fn pending_with(seq: u64, rows: Vec<Member>) -> Pending {
    Pending {
        seq,
        server_time_ms: 500,
        allocated_at_ms: 400,
        owner: "writer-1".into(),
        sender_user_id: "alice".into(),
        client_msg_id: "ev".into(),
        request_digest: 1,
        event: vec![9],
        rows,
    }
}

fn change(expect: u64, members: Vec<MemberChange>) -> GroupWrite {
    GroupWrite {
        event: NewMessage {
            mention_user_ids: Vec::new(),
            mention_all: false,
            conversation_id: "g:team".into(),
            members: vec![],
            sender_user_id: "alice".into(),
            sender_device_id: "phone".into(),
            client_msg_id: "ev".into(),
            kind: tern_proto::v1::MessageKind::GroupEvent,
            content_type: String::new(),
            body: bytes::Bytes::new(),
            recalled_seq: 0,
            server_time_ms: 500,
        },
        expect_version: expect,
        meta: GroupMeta { history: History::FromJoin, ..GroupMeta::default() },
        members,
    }
}

fn join(user: &str, full_history: bool) -> MemberChange {
    MemberChange::Join { user_id: user.into(), role: Role::Member, full_history }
}

fn remove(user: &str) -> MemberChange {
    MemberChange::Remove { user_id: user.into() }
}

#[test]
fn group_ids_are_recognized() {
    assert!(is_group("g:abc"));
    assert!(!is_group("dm:a:b") && !is_group("") && !is_group("G:abc"));
}

#[test]
fn sends_need_a_live_group_and_a_current_sender() {
    let s = head(5, 3);
    let bob = member("bob", Role::Member, 1, 0);
    assert_eq!(may_send(&s, Some(&bob)), Ok(3), "sequenced at the version it was checked at");
    let gone = member("bob", Role::Member, 1, 3);
    assert_eq!(may_send(&s, Some(&gone)), Err(Refusal::NotAMember));
    assert_eq!(may_send(&s, None), Err(Refusal::NotAMember));
    assert_eq!(may_send(&Snapshot::default(), Some(&bob)), Err(Refusal::NoSuchGroup));
    let dissolved = Snapshot { dissolved: true, ..head(5, 5) };
    assert_eq!(may_send(&dissolved, Some(&bob)), Err(Refusal::NoSuchGroup));
    // A fence row (no group yet) refuses like no row.
    let fence = Snapshot { exists: true, fence: Some(1), ..Snapshot::default() };
    assert_eq!(may_send(&fence, Some(&bob)), Err(Refusal::NoSuchGroup));
}

#[test]
fn the_pending_change_is_the_truth_for_the_rows_it_names() {
    // Bob's removal at 7 is committed, its row write not landed: the table still says current.
    let stale = member("bob", Role::Member, 1, 0);
    let p = pending_with(7, vec![member("bob", Role::Member, 1, 7)]);
    let s = Snapshot { pending: Some(p.clone()), ..head(7, 7) };
    let row = effective(s.pending.as_ref(), "bob", Some(stale.clone()));
    assert_eq!(row.as_ref().map(|m| m.removed_seq), Some(7));
    assert_eq!(may_send(&s, row.as_ref()), Err(Refusal::NotAMember), "no send after the removal");
    // Users it does not name: the table row (every earlier change is complete).
    let carol = member("carol", Role::Admin, 2, 0);
    assert_eq!(effective(Some(&p), "carol", Some(carol.clone())), Some(carol));
    assert_eq!(effective(None, "bob", Some(stale.clone())), Some(stale));
    // A join not yet written: the pending row, though the table has none.
    let p = pending_with(8, vec![member("dave", Role::Member, 8, 0)]);
    assert_eq!(effective(Some(&p), "dave", None).map(|m| m.joined_seq), Some(8));
}

#[test]
fn changes_compare_and_set_on_the_version() {
    let s = head(4, 2);
    // Computed from another version (or a create of an existing group): the current one.
    let w = change(1, vec![join("dave", false)]);
    assert_eq!(plan_rows(&s, &w, &[None], 5), Err(Refusal::VersionConflict { version: 2 }));
    let create = change(0, vec![join("alice", false)]);
    assert_eq!(plan_rows(&s, &create, &[None], 5), Err(Refusal::VersionConflict { version: 2 }));
    // No group: a change expecting a version learns 0; a create goes through.
    let none = Snapshot::default();
    assert_eq!(plan_rows(&none, &w, &[None], 1), Err(Refusal::VersionConflict { version: 0 }));
    let rows = plan_rows(&none, &create, &[None], 1).unwrap();
    assert_eq!(rows, vec![member("alice", Role::Member, 1, 0)]);
    // Dissolved: at its version the answer is "no such group", at another a conflict.
    let gone = Snapshot { dissolved: true, ..head(6, 6) };
    assert_eq!(plan_rows(&gone, &change(6, vec![]), &[], 7), Err(Refusal::NoSuchGroup));
    assert_eq!(
        plan_rows(&gone, &change(5, vec![]), &[], 7),
        Err(Refusal::VersionConflict { version: 6 })
    );
}

#[test]
fn row_changes_must_fit_the_rows() {
    let s = head(4, 2);
    let bob = member("bob", Role::Member, 1, 0);
    let former = member("carol", Role::Admin, 1, 3);
    let stale = Err(Refusal::VersionConflict { version: 2 });
    // Join only for a user who is not a current member (never one, or a former one).
    assert_eq!(plan_rows(&s, &change(2, vec![join("bob", false)]), &[Some(bob.clone())], 5), stale);
    let rejoin = plan_rows(&s, &change(2, vec![join("carol", false)]), &[Some(former.clone())], 5);
    assert_eq!(rejoin, Ok(vec![member("carol", Role::Member, 5, 0)]), "rejoined at the event");
    // SetRole and Remove only for a current one.
    let promote = MemberChange::SetRole { user_id: "bob".into(), role: Role::Admin };
    let out = plan_rows(&s, &change(2, vec![promote.clone()]), &[Some(bob.clone())], 5);
    assert_eq!(out, Ok(vec![Member { role: Role::Admin, ..bob.clone() }]), "not a join");
    assert_eq!(plan_rows(&s, &change(2, vec![promote]), &[Some(former.clone())], 5), stale);
    assert_eq!(plan_rows(&s, &change(2, vec![remove("carol")]), &[Some(former)], 5), stale);
    assert_eq!(plan_rows(&s, &change(2, vec![remove("x")]), &[None], 5), stale);
    let out = plan_rows(&s, &change(2, vec![remove("bob")]), &[Some(bob.clone())], 5);
    assert_eq!(out, Ok(vec![member("bob", Role::Member, 1, 5)]));
    // One misfit refuses the whole change; rows read must match the changes.
    let mixed = change(2, vec![join("dave", false), remove("x")]);
    assert_eq!(plan_rows(&s, &mixed, &[None, None], 5), stale);
    assert_eq!(plan_rows(&s, &mixed, &[None], 5), stale);
}

#[test]
fn history_decides_where_a_new_member_reads_from() {
    let s = head(9, 9);
    let rows =
        plan_rows(&s, &change(9, vec![join("a", true), join("b", false)]), &[None, None], 10);
    let rows = rows.unwrap();
    assert_eq!((rows[0].joined_seq, rows[0].visible_from), (10, 1));
    assert_eq!((rows[1].joined_seq, rows[1].visible_from), (10, 10));
}

#[test]
fn the_pending_record_carries_everything_a_completer_needs() {
    let w = change(2, vec![join("dave", false)]);
    let rows = vec![member("dave", Role::Member, 5, 0)];
    let stamp = Stamp { allocated_at_ms: 123, owner: "tok", request_digest: -9, event: vec![1, 2] };
    let p = pending(&w, 5, rows.clone(), stamp);
    assert_eq!((p.seq, p.server_time_ms, p.allocated_at_ms), (5, 500, 123));
    assert_eq!(
        (p.owner.as_str(), p.request_digest, p.event.as_slice()),
        ("tok", -9, &[1u8, 2][..])
    );
    assert_eq!((p.sender_user_id.as_str(), p.client_msg_id.as_str()), ("alice", "ev"));
    assert_eq!(p.rows, rows);
}

#[test]
fn completion_writes_the_event_then_three_rows_per_changed_user() {
    let joined = member("dave", Role::Member, 2049, 0);
    let removed = member("bob", Role::Admin, 1, 2049);
    let p = pending_with(2049, vec![joined.clone(), removed.clone()]);
    let writes = completion(&p, 1024);
    assert_eq!(
        writes,
        vec![
            RowWrite::Event { bucket: 2 },
            RowWrite::Member(&joined),
            RowWrite::Current(&joined),
            RowWrite::Index("dave"),
            RowWrite::Member(&removed),
            RowWrite::NotCurrent("bob"),
            RowWrite::Index("bob"),
        ]
    );
    // A change without rows (a rename) writes only its event.
    assert_eq!(completion(&pending_with(3, vec![]), 1024), vec![RowWrite::Event { bucket: 0 }]);
}

fn ids(rows: &[Member]) -> Vec<&str> {
    rows.iter().map(|m| m.user_id.as_str()).collect()
}

#[test]
fn pages_lay_the_pending_change_over_the_table() {
    let t = |u: &str| member(u, Role::Member, 1, 0);
    // Nothing pending: the table page as read.
    assert_eq!(ids(&page(vec![t("a"), t("b")], 2, None, "", 2)), ["a", "b"]);
    // A pending removal drops its row; the extra row asked for fills the page.
    let p = pending_with(5, vec![member("b", Role::Member, 1, 5)]);
    assert_eq!(page_query_limit(Some(&p), 2), 3);
    assert_eq!(page_query_limit(None, 2), 2);
    assert_eq!(ids(&page(vec![t("a"), t("b"), t("c")], 3, Some(&p), "", 2)), ["a", "c"]);
    // A pending join shows in id order...
    let p = pending_with(5, vec![member("bb", Role::Member, 5, 0)]);
    assert_eq!(ids(&page(vec![t("a"), t("c")], 2, Some(&p), "", 5)), ["a", "bb", "c"]);
    // ...but not past the end of a full answer (it belongs on a later page)...
    let p = pending_with(5, vec![member("z", Role::Member, 5, 0)]);
    assert_eq!(ids(&page(vec![t("a"), t("c")], 2, Some(&p), "", 2)), ["a", "c"]);
    // ...nor at or before `after`; at the end of a short answer it is the last row.
    assert_eq!(ids(&page(vec![t("c")], 2, Some(&p), "b", 2)), ["c", "z"]);
    let p = pending_with(5, vec![member("a", Role::Member, 5, 0)]);
    assert_eq!(ids(&page(vec![t("c")], 2, Some(&p), "b", 2)), ["c"]);
    // A role change replaces the table's row.
    let p = pending_with(5, vec![member("a", Role::Owner, 1, 0)]);
    let got = page(vec![t("a")], 2, Some(&p), "", 2);
    assert_eq!(got[0].role, Role::Owner);
    assert_eq!(page(vec![t("a")], 1, None, "", 0), vec![]);
}

#[test]
fn lists_show_the_group_for_members_and_the_removal_for_former_ones() {
    let s = head(12, 8);
    let current = member("bob", Role::Member, 3, 0);
    assert_eq!(list_entry((3, 10), &s, Some(&current)), (12, 77), "the group's latest seq");
    // A former member: their entry (written at the removal).
    let former = member("bob", Role::Member, 3, 8);
    assert_eq!(list_entry((8, 60), &s, Some(&former)), (8, 60));
    // The removal committed, its index write pending: the removal's seq and time.
    let p = pending_with(8, vec![former.clone()]);
    let s2 = Snapshot { pending: Some(p), ..head(8, 8) };
    assert_eq!(list_entry((3, 10), &s2, Some(&former)), (8, 500));
    // No row (a DM-like entry, or an unknown user): the entry as stored.
    assert_eq!(list_entry((4, 1), &s, None), (4, 1));
}

#[test]
fn unknown_outcomes_settle_on_the_serial_reads() {
    let p = pending_with(9, vec![]);
    let mine = Snapshot { pending: Some(p.clone()), ..head(9, 9) };
    assert_eq!(settled(&mine, "writer-1", Some((true, 0))), Settled::Applied(p.clone()));
    // Ours even if the claim was taken over meanwhile: the change is committed.
    assert_eq!(settled(&mine, "writer-1", Some((false, 0))), Settled::Applied(p));
    let other = head(9, 9);
    assert_eq!(settled(&other, "writer-1", Some((true, 9))), Settled::Completed { seq: 9 });
    assert_eq!(settled(&other, "writer-1", Some((true, 0))), Settled::NotApplied);
    assert_eq!(settled(&other, "writer-1", Some((false, 0))), Settled::Lost);
    assert_eq!(settled(&other, "writer-1", Some((false, 4))), Settled::Lost);
    assert_eq!(settled(&other, "writer-1", None), Settled::Lost);
}
