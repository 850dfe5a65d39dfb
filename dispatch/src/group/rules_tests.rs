//! The permission table and what each change writes.

use super::*;

fn group(members: &[(&str, Role)]) -> (GroupState, Vec<Member>) {
    let owner = members.iter().find(|m| m.1 == Role::Owner).map_or("", |m| m.0);
    let meta = GroupMeta {
        name: "team".into(),
        owner_user_id: owner.into(),
        member_count: members.len() as u32,
        max_members: 4,
        ..GroupMeta::default()
    };
    let rows = members
        .iter()
        .map(|(u, role)| Member {
            user_id: (*u).into(),
            role: *role,
            joined_seq: 1,
            visible_from: 1,
            removed_seq: 0,
        })
        .collect();
    (GroupState { conversation_id: "g:t".into(), meta, version: 7 }, rows)
}

fn run(actor: &str, op: Op, members: &[(&str, Role)]) -> Result<Decision, DispatchError> {
    let (state, rows) = group(members);
    plan(actor, op, Some(&state), |u| rows.iter().find(|m| m.user_id == u))
}

fn written(d: Result<Decision, DispatchError>) -> Plan {
    match d {
        Ok(Decision::Write(p)) => p,
        other => panic!("expected a write, got {other:?}"),
    }
}

const TEAM: &[(&str, Role)] =
    &[("olga", Role::Owner), ("adam", Role::Admin), ("mia", Role::Member), ("max", Role::Member)];

fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn create_makes_the_caller_owner_and_skips_repeats() {
    let op = Op::Create {
        name: "team".into(),
        members: users(&["bob", "bob", "olga", "cy"]),
        attributes: BTreeMap::new(),
        history: History::Full,
        max_members: 3,
        now_ms: 5,
    };
    let p = written(plan("olga", op, None, |_| None));
    assert_eq!(p.kind, Kind::Created);
    assert_eq!(p.users, users(&["olga", "bob", "cy"]));
    assert_eq!((p.meta.owner_user_id.as_str(), p.meta.member_count), ("olga", 3));
    assert_eq!(
        p.changes[0],
        MemberChange::Join { user_id: "olga".into(), role: Role::Owner, full_history: true }
    );
    let too_many = Op::Create {
        name: String::new(),
        members: users(&["a", "b", "c"]),
        attributes: BTreeMap::new(),
        history: History::FromJoin,
        max_members: 3,
        now_ms: 5,
    };
    assert!(matches!(plan("olga", too_many, None, |_| None), Err(DispatchError::GroupFull(3))));
    let bad = Op::Create {
        name: String::new(),
        members: users(&["not valid!"]),
        attributes: BTreeMap::new(),
        history: History::FromJoin,
        max_members: 3,
        now_ms: 5,
    };
    assert!(matches!(plan("olga", bad, None, |_| None), Err(DispatchError::Invalid(_))));
}

#[test]
fn admins_add_members_up_to_the_maximum_and_members_may_not() {
    let small = &TEAM[..2];
    let p = written(run("adam", Op::Add(users(&["mia", "adam", "mia"])), small));
    assert_eq!(
        (p.kind, p.users.clone(), p.meta.member_count),
        (Kind::MembersAdded, users(&["mia"]), 3)
    );
    assert_eq!(run("adam", Op::Add(users(&["adam"])), small).ok(), Some(Decision::Unchanged));
    assert!(matches!(run("mia", Op::Add(users(&["zoe"])), TEAM), Err(DispatchError::Forbidden(_))));
    assert!(matches!(
        run("olga", Op::Add(users(&["zoe"])), TEAM),
        Err(DispatchError::GroupFull(4))
    ));
    assert!(matches!(run("zoe", Op::Add(users(&["x"])), TEAM), Err(DispatchError::NotAMember)));
}

#[test]
fn removal_follows_rank() {
    let p = written(run("adam", Op::Remove(users(&["mia", "nobody"])), TEAM));
    assert_eq!((p.users.clone(), p.meta.member_count), (users(&["mia"]), 3));
    assert_eq!(p.changes, vec![MemberChange::Remove { user_id: "mia".into() }]);
    assert!(matches!(
        run("adam", Op::Remove(users(&["olga"])), TEAM),
        Err(DispatchError::Forbidden(_))
    ));
    let (state, mut rows) = group(TEAM);
    rows.push(Member { user_id: "ada".into(), role: Role::Admin, ..rows[0].clone() });
    let r = plan("adam", Op::Remove(users(&["ada"])), Some(&state), |u| {
        rows.iter().find(|m| m.user_id == u)
    });
    assert!(matches!(r, Err(DispatchError::Forbidden(_))), "an admin removes no admin");
    assert!(written(run("olga", Op::Remove(users(&["adam"])), TEAM)).users == users(&["adam"]));
    assert!(matches!(
        run("mia", Op::Remove(users(&["max"])), TEAM),
        Err(DispatchError::Forbidden(_))
    ));
    assert!(matches!(
        run("adam", Op::Remove(users(&["adam"])), TEAM),
        Err(DispatchError::Invalid(_))
    ));
}

#[test]
fn the_owner_leaves_last_and_that_dissolves() {
    let p = written(run("mia", Op::Leave, TEAM));
    assert_eq!((p.kind, p.meta.member_count), (Kind::MemberLeft, 3));
    assert!(matches!(run("olga", Op::Leave, TEAM), Err(DispatchError::Forbidden(_))));
    let p = written(run("olga", Op::Leave, &TEAM[..1]));
    assert_eq!(p.kind, Kind::Dissolved);
    assert!(p.meta.dissolved);
}

#[test]
fn roles_and_ownership_are_the_owners() {
    let p = written(run("olga", Op::SetRole { user_id: "mia".into(), role: Role::Admin }, TEAM));
    assert_eq!((p.kind, p.role), (Kind::RoleChanged, Some(Role::Admin)));
    assert!(matches!(
        run("adam", Op::SetRole { user_id: "mia".into(), role: Role::Admin }, TEAM),
        Err(DispatchError::Forbidden(_))
    ));
    assert!(matches!(
        run("olga", Op::SetRole { user_id: "mia".into(), role: Role::Owner }, TEAM),
        Err(DispatchError::Invalid(_))
    ));
    let p = written(run("olga", Op::Transfer { to: "mia".into() }, TEAM));
    assert_eq!(p.meta.owner_user_id, "mia");
    assert_eq!(
        p.changes,
        vec![
            MemberChange::SetRole { user_id: "mia".into(), role: Role::Owner },
            MemberChange::SetRole { user_id: "olga".into(), role: Role::Admin },
        ]
    );
    assert!(matches!(
        run("olga", Op::Transfer { to: "zoe".into() }, TEAM),
        Err(DispatchError::Invalid(_))
    ));
    let (state, rows) = group(TEAM);
    let dissolve_by =
        |u: &str| dissolve(&state, rows.iter().find(|m| m.user_id == u), users(&["olga", "adam"]));
    assert!(matches!(dissolve_by("adam"), Err(DispatchError::Forbidden(_))));
    assert!(matches!(written(dissolve_by("olga")).kind, Kind::Dissolved));
}

#[test]
fn updates_are_for_admins_and_bounded() {
    let set: BTreeMap<String, String> = [("avatar".to_owned(), "a.png".to_owned())].into();
    let op =
        Op::Update { name: Some("new".into()), set: set.clone(), remove: vec![], history: None };
    let p = written(run("adam", op.clone(), TEAM));
    assert_eq!((p.meta.name.as_str(), p.meta.attributes.clone()), ("new", set));
    assert!(matches!(run("mia", op, TEAM), Err(DispatchError::Forbidden(_))));
    let same = Op::Update {
        name: Some("team".into()),
        set: BTreeMap::new(),
        remove: vec![],
        history: None,
    };
    assert_eq!(run("adam", same, TEAM).ok(), Some(Decision::Unchanged));
    let big: BTreeMap<String, String> = (0..40).map(|i| (format!("k{i}"), String::new())).collect();
    let op = Op::Update { name: None, set: big, remove: vec![], history: None };
    assert!(matches!(run("adam", op, TEAM), Err(DispatchError::Invalid(_))));
}

#[test]
fn a_dissolved_or_missing_group_is_unknown() {
    let (mut state, rows) = group(TEAM);
    state.meta.dissolved = true;
    let r = plan("olga", Op::Leave, Some(&state), |u| rows.iter().find(|m| m.user_id == u));
    assert!(matches!(r, Err(DispatchError::UnknownConversation)));
    assert!(matches!(
        plan("olga", Op::Leave, None, |_| None),
        Err(DispatchError::UnknownConversation)
    ));
}
