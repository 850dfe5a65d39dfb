//! Fuzz body of the `store_record` target (`fuzz/fuzz_targets/store_record.rs`): the embedded
//! store's log record decoder, also replayed on stable by `store/tests/fuzz_corpus.rs`.

use super::entry::{self, IndexOp};

/// Decodes `data` as a log record payload: never panics; an append that decodes re-encodes
/// to a record that decodes to the same operation.
pub fn store_record(data: &[u8]) {
    if let Ok(Some(op)) = entry::decode(1, data) {
        let mut again = Vec::new();
        match &op {
            IndexOp::Append(a) => again.extend_from_slice(a.payload()),
            IndexOp::Watermark(w) => {
                entry::encode_watermark(&w.conversation_id, &w.user_id, w.watermarks, &mut again)
            }
            IndexOp::Group(g) => entry::encode_group(g, &mut again),
            IndexOp::Flags(f) => entry::encode_flags(f, &mut again),
            IndexOp::Device(d) => super::device::encode_device(d, &mut again),
        }
        assert_eq!(entry::decode(1, &again).ok().flatten().as_ref(), Some(&op));
    }
}

/// Seed payloads for the corpus: an append, a watermark, a probe, a group change, flags, a
/// device record.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let message = tern_proto::v1::Message {
        conversation_id: "dm:alice:bob".into(),
        seq: 42,
        sender_user_id: "alice".into(),
        client_msg_id: "m-1".into(),
        server_time_ms: 1_700_000_000_000,
        body: bytes::Bytes::from_static(b"hello"),
        ..Default::default()
    };
    let append = entry::encode_append(&entry::MessageRef::of(&message), &["alice", "bob"])
        .payload()
        .to_vec();
    let mut mark = Vec::new();
    let w = crate::Watermarks { delivered: 42, read: 40 };
    entry::encode_watermark("dm:alice:bob", "bob", w, &mut mark);
    let mut probe = Vec::new();
    entry::encode_probe(1, &mut probe);
    let event = tern_proto::v1::Message {
        conversation_id: "g:team".into(),
        seq: 1,
        kind: tern_proto::v1::MessageKind::GroupEvent as i32,
        ..message
    };
    let group = entry::GroupOp {
        event: entry::encode_append(&entry::MessageRef::of(&event), &[] as &[&str]),
        meta: crate::GroupMeta { name: "team".into(), member_count: 2, ..Default::default() },
        members: vec![crate::Member {
            user_id: "bob".into(),
            role: crate::Role::Member,
            joined_seq: 1,
            visible_from: 1,
            removed_seq: 0,
        }],
    };
    let mut change = Vec::new();
    entry::encode_group(&group, &mut change);
    let mut flags = Vec::new();
    let w = crate::FlagsWrite {
        conversation_id: "g:team".into(),
        user_id: "bob".into(),
        muted: Some(true),
        pinned: None,
    };
    entry::encode_flags(&w, &mut flags);
    let mut device = Vec::new();
    let op = super::device::DeviceOp {
        user_id: "alice".into(),
        record: crate::DeviceRecord {
            device_id: "phone".into(),
            platform: crate::Platform::Ios,
            last_seen_ms: 1_700_000_000_000,
            push: Some(crate::PushRegistration {
                provider: crate::PushProvider::Apns,
                token: "a1b2".into(),
                app_id: "com.example".into(),
                sandbox: true,
                registered_ms: 1_700_000_000_001,
            }),
            revoked_before_ms: 0,
        },
    };
    super::device::encode_device(&op, &mut device);
    vec![
        ("seed-append", append),
        ("seed-watermark", mark),
        ("seed-probe", probe),
        ("seed-group", change),
        ("seed-flags", flags),
        ("seed-device", device),
    ]
}
