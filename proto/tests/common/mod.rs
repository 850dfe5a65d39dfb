//! Shared test helpers: proptest strategies for envelopes and a set of typical frames.
#![allow(dead_code)] // each test binary uses a different subset

use proptest::collection::vec;
use proptest::prelude::*;
use tern_proto::v1::{self, envelope::Body};

fn s() -> impl Strategy<Value = String> {
    // Mostly ids-like strings, sometimes arbitrary Unicode.
    prop_oneof![3 => "[a-z0-9:_@.-]{0,24}", 1 => any::<String>()]
}

fn blob() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..256)
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    vec(s(), 0..6)
}

/// Any protobuf enum value, known or not (unknown values must survive a round trip too).
fn enum_val() -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0..6i32, 1 => any::<i32>()]
}

pub fn arb_message() -> impl Strategy<Value = v1::Message> {
    (
        (s(), any::<u64>(), s(), s(), s(), any::<i64>()),
        (enum_val(), s(), blob(), any::<u64>(), any::<bool>()),
    )
        .prop_map(
            |(
                (conversation_id, seq, sender_user_id, sender_device_id, client_msg_id, t),
                (kind, content_type, body, recalled_seq, recalled),
            )| v1::Message {
                mention_user_ids: Vec::new(),
                mention_all: false,
                conversation_id,
                seq,
                sender_user_id,
                sender_device_id,
                client_msg_id,
                server_time_ms: t,
                kind,
                content_type,
                body: body.into(),
                recalled_seq,
                recalled,
            },
        )
}

fn receipt_update() -> impl Strategy<Value = v1::ReceiptUpdate> {
    (s(), s(), any::<u64>(), any::<u64>()).prop_map(|(c, u, d, r)| v1::ReceiptUpdate {
        conversation_id: c,
        user_id: u,
        delivered_seq: d,
        read_seq: r,
    })
}

fn session_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (s(), any::<u32>(), s()).prop_map(|(token, protocol_version, client_version)| {
            Body::Login(v1::Login { token, protocol_version, client_version, ..Default::default() })
        }),
        (s(), s(), any::<u32>(), any::<u32>(), any::<u32>(), any::<i64>(), s(), any::<i64>())
            .prop_map(|(u, d, hb, idle, max, t, c, exp)| Body::LoginOk(v1::LoginOk {
                user_id: u,
                device_id: d,
                heartbeat_interval_ms: hb,
                idle_timeout_ms: idle,
                max_frame_bytes: max,
                server_time_ms: t,
                connection_id: c,
                token_expires_at_ms: exp,
            })),
        s().prop_map(|token| Body::RefreshToken(v1::RefreshToken { token })),
        any::<i64>().prop_map(|e| Body::TokenRefreshed(v1::TokenRefreshed { expires_at_ms: e })),
        any::<i64>().prop_map(|t| Body::Ping(v1::Ping { client_time_ms: t })),
        any::<i64>().prop_map(|t| Body::Pong(v1::Pong { server_time_ms: t })),
        (enum_val(), s()).prop_map(|(reason, message)| Body::Kick(v1::Kick { reason, message })),
        (enum_val(), s(), any::<bool>())
            .prop_map(|(code, message, fatal)| Body::Error(v1::Error { code, message, fatal })),
        Just(Body::Ok(v1::Ok {})),
    ]
}

fn messaging_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (s(), s(), s(), s(), blob()).prop_map(|(c, p, m, ct, body)| Body::Send(v1::Send {
            mention_user_ids: Vec::new(),
            mention_all: false,
            conversation_id: c,
            peer_user_id: p,
            client_msg_id: m,
            content_type: ct,
            body: body.into(),
        })),
        (s(), any::<u64>(), any::<i64>(), s(), any::<bool>()).prop_map(|(c, seq, t, m, dup)| {
            Body::SendAck(v1::SendAck {
                conversation_id: c,
                seq,
                server_time_ms: t,
                client_msg_id: m,
                duplicate: dup,
            })
        }),
        proptest::option::of(arb_message())
            .prop_map(|message| Body::Deliver(v1::Deliver { message })),
        (s(), any::<u64>(), s()).prop_map(|(c, seq, m)| Body::Recall(v1::Recall {
            conversation_id: c,
            seq,
            client_msg_id: m,
        })),
        (s(), enum_val(), any::<u64>()).prop_map(|(c, kind, seq)| Body::Receipt(v1::Receipt {
            conversation_id: c,
            kind,
            seq,
        })),
        receipt_update().prop_map(Body::ReceiptUpdate),
        s().prop_map(|c| Body::GetReceipts(v1::GetReceipts { conversation_id: c })),
        (s(), vec(receipt_update(), 0..4))
            .prop_map(|(c, members)| Body::Receipts(v1::Receipts { conversation_id: c, members })),
        (s(), any::<u64>(), any::<u32>()).prop_map(|(c, from_seq, limit)| {
            Body::SyncRequest(v1::SyncRequest { conversation_id: c, from_seq, limit })
        }),
        (
            s(),
            vec(arb_message(), 0..4),
            vec((any::<u64>(), any::<u64>()), 0..4),
            any::<u64>(),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(|(c, messages, missing, next, has_more, last)| {
                Body::SyncPage(v1::SyncPage {
                    conversation_id: c,
                    messages,
                    missing: missing
                        .into_iter()
                        .map(|(first, last)| v1::SeqRange { first, last })
                        .collect(),
                    next_from_seq: next,
                    has_more,
                    last_seq: last,
                })
            }),
        (s(), proptest::option::of(any::<bool>()), proptest::option::of(any::<bool>())).prop_map(
            |(c, muted, pinned)| {
                Body::UpdateConversation(v1::UpdateConversation {
                    conversation_id: c,
                    muted,
                    pinned,
                })
            }
        ),
        (s(), any::<u32>()).prop_map(|(after, limit)| {
            Body::ListConversations(v1::ListConversations { after_conversation_id: after, limit })
        }),
        (
            vec((s(), enum_val(), any::<u64>(), any::<i64>(), any::<u64>(), any::<u64>()), 0..4),
            any::<bool>()
        )
            .prop_map(|(rows, has_more)| {
                Body::ConversationList(v1::ConversationList {
                    conversations: rows
                        .into_iter()
                        .map(|(c, kind, last_seq, t, d, r)| v1::ConversationSummary {
                            unread_count: 0,
                            mentioned: false,
                            muted: false,
                            pinned: false,
                            conversation_id: c,
                            kind,
                            last_seq,
                            last_time_ms: t,
                            delivered_seq: d,
                            read_seq: r,
                        })
                        .collect(),
                    has_more,
                })
            }),
    ]
}

fn attributes() -> impl Strategy<Value = std::collections::HashMap<String, String>> {
    proptest::collection::hash_map(s(), s(), 0..3)
}

fn group_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (s(), strings(), s(), attributes(), enum_val()).prop_map(
            |(name, members, id, attributes, history)| {
                Body::CreateGroup(v1::CreateGroup {
                    name,
                    member_user_ids: members,
                    client_request_id: id,
                    attributes,
                    history,
                })
            }
        ),
        (s(), strings()).prop_map(|(c, u)| Body::AddMembers(v1::AddMembers {
            conversation_id: c,
            user_ids: u
        })),
        (s(), strings()).prop_map(|(c, u)| {
            Body::RemoveMembers(v1::RemoveMembers { conversation_id: c, user_ids: u })
        }),
        s().prop_map(|c| Body::LeaveGroup(v1::LeaveGroup { conversation_id: c })),
        s().prop_map(|c| Body::GetGroup(v1::GetGroup { conversation_id: c })),
        (s(), s(), s(), strings(), any::<u64>(), attributes(), any::<u32>(), any::<bool>())
            .prop_map(|(c, name, owner, members, version, attributes, count, truncated)| {
                Body::GroupInfo(v1::GroupInfo {
                    conversation_id: c,
                    name,
                    owner_user_id: owner,
                    member_user_ids: members,
                    version,
                    attributes,
                    history: 1,
                    member_count: count,
                    max_members: count,
                    members_truncated: truncated,
                    your_role: 2,
                })
            }),
        (s(), proptest::option::of(s()), attributes(), strings(), enum_val()).prop_map(
            |(c, name, set, remove, history)| {
                Body::UpdateGroup(v1::UpdateGroup {
                    conversation_id: c,
                    name,
                    set_attributes: set,
                    remove_attributes: remove,
                    history,
                })
            }
        ),
        (s(), s(), enum_val()).prop_map(|(c, u, role)| {
            Body::SetMemberRole(v1::SetMemberRole { conversation_id: c, user_id: u, role })
        }),
        (s(), s()).prop_map(|(c, u)| {
            Body::TransferOwnership(v1::TransferOwnership {
                conversation_id: c,
                new_owner_user_id: u,
            })
        }),
        s().prop_map(|c| Body::DissolveGroup(v1::DissolveGroup { conversation_id: c })),
        (s(), s(), any::<u32>()).prop_map(|(c, after, limit)| {
            Body::ListGroupMembers(v1::ListGroupMembers {
                conversation_id: c,
                after_user_id: after,
                limit,
            })
        }),
        (s(), vec((s(), enum_val(), any::<u64>()), 0..4), s()).prop_map(|(c, rows, next)| {
            Body::GroupMembers(v1::GroupMembers {
                conversation_id: c,
                members: rows
                    .into_iter()
                    .map(|(user_id, role, joined_seq)| v1::GroupMember {
                        user_id,
                        role,
                        joined_seq,
                    })
                    .collect(),
                next_after_user_id: next,
            })
        }),
    ]
}

/// Any body kind (all 32 of them) with arbitrary field values.
pub fn arb_body() -> impl Strategy<Value = Body> {
    prop_oneof![session_body(), messaging_body(), group_body()]
}

/// An envelope with any request id and any body, or none.
pub fn arb_envelope() -> impl Strategy<Value = v1::Envelope> {
    (any::<u64>(), proptest::option::weighted(0.95, arb_body()))
        .prop_map(|(request_id, body)| v1::Envelope { request_id, body })
}

fn message(seq: u64, body_len: usize) -> v1::Message {
    v1::Message {
        conversation_id: "dm:alice:bob".into(),
        seq,
        sender_user_id: "alice".into(),
        sender_device_id: "phone".into(),
        client_msg_id: format!("550e8400-e29b-41d4-a716-{seq:012}"),
        server_time_ms: 1_700_000_000_000 + seq as i64,
        kind: v1::MessageKind::Normal as i32,
        content_type: "text/plain".into(),
        body: vec![b'x'; body_len].into(),
        ..Default::default()
    }
}

/// A few realistic frames: Login, Ping, Send (100-byte body), Deliver, SyncPage of 100.
pub fn typical_envelopes() -> Vec<v1::Envelope> {
    vec![
        v1::Envelope {
            request_id: 1,
            body: Some(Body::Login(v1::Login {
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln".into(),
                protocol_version: 1,
                client_version: "tern-kotlin/1.0".into(),
                ..Default::default()
            })),
        },
        v1::Envelope {
            request_id: u64::MAX,
            body: Some(Body::Ping(v1::Ping { client_time_ms: 1_700_000_000_000 })),
        },
        v1::Envelope {
            request_id: 42,
            body: Some(Body::Send(v1::Send {
                conversation_id: "dm:alice:bob".into(),
                client_msg_id: "550e8400-e29b-41d4-a716-446655440000".into(),
                content_type: "text/plain".into(),
                body: vec![b'x'; 100].into(),
                ..Default::default()
            })),
        },
        v1::Envelope {
            request_id: 0,
            body: Some(Body::Deliver(v1::Deliver { message: Some(message(7, 100)) })),
        },
        v1::Envelope {
            request_id: 9,
            body: Some(Body::SyncPage(v1::SyncPage {
                conversation_id: "dm:alice:bob".into(),
                messages: (1..=100).map(|seq| message(seq, 100)).collect(),
                missing: vec![v1::SeqRange { first: 101, last: 102 }],
                next_from_seq: 103,
                has_more: true,
                last_seq: 500,
            })),
        },
    ]
}
