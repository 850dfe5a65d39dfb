//! The embedded store's log records: what one write of a group commit puts in the write-ahead
//! log, and the index operation it becomes.
//!
//! A record's payload is a protobuf `Record` (below): an append carries the stored
//! `v1::Message` exactly as the `messages` table will hold it (encoded once, on the commit
//! path) plus the members whose conversation index it moves; a watermark record carries the
//! absolute watermarks after its group, so applying records in lsn order is exact; a probe
//! record (health check) changes nothing.

use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tern_proto::v1;

use super::tables::EmbeddedError;
use crate::Watermarks;

/// A new message for the index.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AppendOp {
    pub conversation_id: String,
    pub seq: u64,
    pub server_time_ms: i64,
    pub sender_user_id: String,
    pub client_msg_id: String,
    /// For a recall event: the seq it recalls (else 0).
    pub recalled_seq: u64,
    pub members: Vec<String>,
    /// The protobuf-encoded `v1::Message`.
    pub encoded: Vec<u8>,
}

/// A member's watermarks after a group.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WatermarkOp {
    pub conversation_id: String,
    pub user_id: String,
    pub watermarks: Watermarks,
}

/// One change the index applies.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum IndexOp {
    Append(AppendOp),
    Watermark(WatermarkOp),
}

/// The payload of one log record (the decoder's view; [`encode_append`] and friends write
/// the same bytes without building it).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    /// A new message.
    #[prost(message, optional, tag = "1")]
    pub append: Option<AppendRecord>,
    /// A member's watermarks.
    #[prost(message, optional, tag = "2")]
    pub watermark: Option<WatermarkRecord>,
    /// A health probe's time (Unix ms); changes nothing.
    #[prost(int64, tag = "3")]
    pub probe_ms: i64,
}

/// [`Record::append`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct AppendRecord {
    /// The protobuf-encoded `v1::Message`.
    #[prost(bytes = "vec", tag = "1")]
    pub message: Vec<u8>,
    /// The conversation's members.
    #[prost(string, repeated, tag = "2")]
    pub members: Vec<String>,
}

/// [`Record::watermark`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatermarkRecord {
    /// The conversation.
    #[prost(string, tag = "1")]
    pub conversation_id: String,
    /// The member.
    #[prost(string, tag = "2")]
    pub user_id: String,
    /// Delivered up to.
    #[prost(uint64, tag = "3")]
    pub delivered: u64,
    /// Read up to.
    #[prost(uint64, tag = "4")]
    pub read: u64,
}

fn len_field(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

fn put_u64(tag: u32, value: u64, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(value, buf);
}

/// Writes an append record: `message` is the encoded `v1::Message`.
pub(crate) fn encode_append(message: &[u8], members: &[String], buf: &mut Vec<u8>) {
    let inner =
        len_field(1, message.len()) + members.iter().map(|m| len_field(2, m.len())).sum::<usize>();
    encode_key(1, WireType::LengthDelimited, buf);
    encode_varint(inner as u64, buf);
    put_bytes(1, message, buf);
    for m in members {
        put_bytes(2, m.as_bytes(), buf);
    }
}

/// Writes a watermark record.
pub(crate) fn encode_watermark(conv: &str, user: &str, w: Watermarks, buf: &mut Vec<u8>) {
    let inner = len_field(1, conv.len())
        + len_field(2, user.len())
        + key_len(3)
        + encoded_len_varint(w.delivered)
        + key_len(4)
        + encoded_len_varint(w.read);
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(inner as u64, buf);
    put_bytes(1, conv.as_bytes(), buf);
    put_bytes(2, user.as_bytes(), buf);
    put_u64(3, w.delivered, buf);
    put_u64(4, w.read, buf);
}

/// Writes a probe record.
pub(crate) fn encode_probe(now_ms: i64, buf: &mut Vec<u8>) {
    put_u64(3, now_ms as u64, buf);
}

/// Decodes record `lsn` into the index operation it stands for (`None`: a probe).
pub(crate) fn decode(lsn: u64, payload: &[u8]) -> Result<Option<IndexOp>, EmbeddedError> {
    let bad = |reason: String| EmbeddedError::Record { lsn, reason };
    let record = Record::decode(payload).map_err(|e| bad(e.to_string()))?;
    match (record.append, record.watermark) {
        (Some(a), None) => {
            let m = v1::Message::decode(a.message.as_slice()).map_err(|e| bad(e.to_string()))?;
            if m.seq == 0 || m.conversation_id.is_empty() {
                return Err(bad("append without conversation or seq".into()));
            }
            let recalled_seq =
                if m.kind == v1::MessageKind::Recall as i32 { m.recalled_seq } else { 0 };
            Ok(Some(IndexOp::Append(AppendOp {
                conversation_id: m.conversation_id,
                seq: m.seq,
                server_time_ms: m.server_time_ms,
                sender_user_id: m.sender_user_id,
                client_msg_id: m.client_msg_id,
                recalled_seq,
                members: a.members,
                encoded: a.message,
            })))
        }
        (None, Some(w)) => Ok(Some(IndexOp::Watermark(WatermarkOp {
            conversation_id: w.conversation_id,
            user_id: w.user_id,
            watermarks: Watermarks { delivered: w.delivered, read: w.read },
        }))),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(bad("both an append and a watermark".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let message = v1::Message {
            conversation_id: "dm:a:b".into(),
            seq: 7,
            sender_user_id: "a".into(),
            client_msg_id: "m1".into(),
            server_time_ms: 1234,
            kind: v1::MessageKind::Recall as i32,
            recalled_seq: 3,
            ..Default::default()
        }
        .encode_to_vec();
        let members = vec!["a".to_owned(), "b".to_owned()];
        let mut buf = Vec::new();
        encode_append(&message, &members, &mut buf);
        let Some(IndexOp::Append(a)) = decode(1, &buf).expect("append") else {
            panic!("not an append")
        };
        assert_eq!((a.conversation_id.as_str(), a.seq, a.recalled_seq), ("dm:a:b", 7, 3));
        assert_eq!((a.sender_user_id.as_str(), a.client_msg_id.as_str()), ("a", "m1"));
        assert_eq!((a.members, a.encoded), (members, message));

        buf.clear();
        let w = Watermarks { delivered: u64::MAX, read: 0 };
        encode_watermark("c", "u", w, &mut buf);
        let expected =
            WatermarkOp { conversation_id: "c".into(), user_id: "u".into(), watermarks: w };
        assert_eq!(decode(2, &buf).expect("watermark"), Some(IndexOp::Watermark(expected)));

        buf.clear();
        encode_probe(99, &mut buf);
        assert_eq!(decode(3, &buf).expect("probe"), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[0x0a, 0xff][..], &[0x0a, 0x02, 0x0a, 0x05], &[0xff; 9]] {
            assert!(decode(1, bytes).is_err(), "{bytes:?}");
        }
    }
}
