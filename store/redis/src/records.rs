//! The string and protobuf records [`RedisStore`](crate::RedisStore) keeps in Redis fields:
//! message headers, dedupe records, receipt watermarks and index entries.

use bytes::Bytes;
use prost::Message as _;
use tern_proto::v1;
use tern_store::{Appended, NewMessage, Watermarks};

/// The stored header: the message without conversation id, seq, body and recalled flag (those
/// come from the key, the field name and the body / recalled fields when read).
pub(crate) fn encode_header(m: &NewMessage) -> Vec<u8> {
    header(m).encode_to_vec()
}

/// The stored header of a group change's event message (never a recall).
pub(crate) fn encode_event_header(m: &NewMessage) -> Vec<u8> {
    v1::Message { recalled_seq: 0, ..header(m) }.encode_to_vec()
}

fn header(m: &NewMessage) -> v1::Message {
    v1::Message {
        conversation_id: String::new(),
        seq: 0,
        sender_user_id: m.sender_user_id.clone(),
        sender_device_id: m.sender_device_id.clone(),
        client_msg_id: m.client_msg_id.clone(),
        server_time_ms: m.server_time_ms,
        kind: m.kind as i32,
        content_type: m.content_type.clone(),
        body: Bytes::new(),
        recalled_seq: m.recalled_seq,
        recalled: false,
        mention_user_ids: m.mention_user_ids.clone(),
        mention_all: m.mention_all,
    }
}

/// `seq:time:conversation_id` (the conversation id may itself contain ':').
pub(crate) fn parse_dedupe_record(record: &str) -> Option<Appended> {
    let mut parts = record.splitn(3, ':');
    let seq = parts.next()?.parse().ok()?;
    let server_time_ms = parts.next()?.parse().ok()?;
    let conversation_id = parts.next()?.to_owned();
    Some(Appended { conversation_id, seq, server_time_ms, duplicate: true, group_version: 0 })
}

/// `delivered:read`.
pub(crate) fn parse_watermarks(record: &str) -> Option<Watermarks> {
    let (delivered, read) = record.split_once(':')?;
    Some(Watermarks { delivered: delivered.parse().ok()?, read: read.parse().ok()? })
}

/// `last_seq:last_time_ms`.
pub(crate) fn parse_last(record: &str) -> Option<(u64, i64)> {
    let (seq, time) = record.split_once(':')?;
    Some((seq.parse().ok()?, time.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_reject_garbage() {
        assert_eq!(
            parse_dedupe_record("7:-5:dm:a:b"),
            Some(Appended {
                conversation_id: "dm:a:b".into(),
                seq: 7,
                server_time_ms: -5,
                duplicate: true,
                group_version: 0,
            })
        );
        assert_eq!(parse_dedupe_record("x:1:c"), None);
        assert_eq!(parse_dedupe_record("1:2"), None);
        assert_eq!(parse_watermarks("9:7"), Some(Watermarks { delivered: 9, read: 7 }));
        assert_eq!(
            parse_watermarks("18446744073709551615:0"),
            Some(Watermarks { delivered: u64::MAX, read: 0 })
        );
        assert_eq!(parse_watermarks("9"), None);
        assert_eq!(parse_last("3:1700"), Some((3, 1700)));
        assert_eq!(parse_last("3:"), None);
    }

    #[test]
    fn header_leaves_out_what_the_key_and_fields_carry() {
        let m = NewMessage {
            mention_user_ids: Vec::new(),
            mention_all: false,
            conversation_id: "dm:a:b".into(),
            members: vec!["a".into()],
            sender_user_id: "a".into(),
            sender_device_id: "d".into(),
            client_msg_id: "c".into(),
            kind: v1::MessageKind::Recall,
            content_type: "t".into(),
            body: Bytes::from_static(b"secret"),
            recalled_seq: 4,
            server_time_ms: 9,
        };
        let header = v1::Message::decode(&encode_header(&m)[..]).unwrap();
        assert_eq!(header.conversation_id, "");
        assert_eq!(header.seq, 0);
        assert!(header.body.is_empty());
        assert_eq!(header.recalled_seq, 4);
        assert_eq!(header.kind, v1::MessageKind::Recall as i32);
        assert_eq!((header.sender_user_id.as_str(), header.server_time_ms), ("a", 9));
    }
}
