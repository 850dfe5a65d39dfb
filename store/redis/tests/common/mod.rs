//! Helpers the Redis store's integration tests share: a real `redis-server`, messages and
//! group changes to commit, and Redis's own command counts.
#![allow(dead_code)]

use bytes::Bytes;
use tern_proto::v1;
use tern_store::{GroupMeta, GroupWrite, History, MemberChange, NewMessage, Role, Write};
use tern_testkit::{RedisOptions, RedisServer, Reply};

/// A message of `kind` from `sender` (device `d`) with `cmid` as its id and body.
pub fn message(conv: &str, sender: &str, cmid: &str, kind: v1::MessageKind) -> NewMessage {
    NewMessage {
        mention_user_ids: Vec::new(),
        mention_all: false,
        conversation_id: conv.to_owned(),
        members: Vec::new(),
        sender_user_id: sender.to_owned(),
        sender_device_id: "d".to_owned(),
        client_msg_id: cmid.to_owned(),
        kind,
        content_type: String::new(),
        body: Bytes::from(cmid.to_owned()),
        recalled_seq: 0,
        server_time_ms: 1_700_000_000_000,
    }
}

/// A group record owned by `owner` with `count` members.
pub fn meta(owner: &str, count: u32) -> GroupMeta {
    GroupMeta {
        name: "team".into(),
        owner_user_id: owner.into(),
        attributes: Default::default(),
        history: History::FromJoin,
        member_count: count,
        max_members: 100_000,
        created_ms: 1_700_000_000_000,
        dissolved: false,
    }
}

/// A group change by `owner` at `expect` with these row changes.
pub fn change(conv: &str, owner: &str, cmid: &str, expect: u64, rows: Vec<MemberChange>) -> Write {
    Write::Group(GroupWrite {
        event: message(conv, owner, cmid, v1::MessageKind::GroupEvent),
        expect_version: expect,
        meta: meta(owner, rows.len() as u32),
        members: rows,
    })
}

/// `user` joins with `role`, from their join on.
pub fn join(user: &str, role: Role) -> MemberChange {
    MemberChange::Join { user_id: user.into(), role, full_history: false }
}

/// A group owned by `owner` with `others` as members.
pub fn create(conv: &str, owner: &str, others: &[String]) -> Write {
    let mut rows = vec![join(owner, Role::Owner)];
    rows.extend(others.iter().map(|u| join(u, Role::Member)));
    change(conv, owner, &format!("create-{conv}"), 0, rows)
}

/// A fresh `redis-server` on a free port.
pub async fn start() -> RedisServer {
    tokio::task::spawn_blocking(|| RedisServer::start_with(RedisOptions::default()))
        .await
        .unwrap()
        .unwrap()
}

/// `calls=` of one command in `INFO commandstats` (commands a script runs count too).
pub fn calls(server: &RedisServer, command: &str) -> u64 {
    let Reply::Bulk(Some(info)) = server.command(&[b"INFO", b"commandstats"]).unwrap() else {
        panic!("INFO commandstats")
    };
    let info = String::from_utf8(info).unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}
