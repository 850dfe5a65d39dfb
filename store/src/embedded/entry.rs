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
pub(crate) use crate::group::{GroupMetaRecord, MemberRecord};
use crate::{FlagsWrite, GroupMeta, Member, Watermarks};

/// A new message for the index: the log record's payload as written, with where the index's
/// fields sit in it (one allocation per message, shared by the log copy and the index).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AppendOp {
    pub seq: u64,
    pub server_time_ms: i64,
    /// For a recall event: the seq it recalls (else 0).
    pub recalled_seq: u64,
    /// Whether the message mentions anyone (the index then records the mentions).
    pub mentions: bool,
    /// The record payload ([`encode_append`]).
    payload: Vec<u8>,
    message: Span,
    conversation_id: Span,
    sender_user_id: Span,
    client_msg_id: Span,
    /// Where the members' fields begin (they run to the end).
    members: usize,
}

/// A byte range of [`AppendOp::payload`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Span {
    start: usize,
    end: usize,
}

impl AppendOp {
    /// The log record's payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The protobuf-encoded `v1::Message`, as the `messages` table holds it.
    pub fn encoded(&self) -> &[u8] {
        self.bytes(self.message)
    }

    pub fn conversation_id(&self) -> &str {
        self.str(self.conversation_id)
    }

    pub fn sender_user_id(&self) -> &str {
        self.str(self.sender_user_id)
    }

    pub fn client_msg_id(&self) -> &str {
        self.str(self.client_msg_id)
    }

    /// The members, in record order.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        let mut rest = self.payload.get(self.members..).unwrap_or_default();
        std::iter::from_fn(move || {
            // Written by `encode_append` from `&str`s: each is key 2, a varint length, bytes.
            let (&key, tail) = rest.split_first()?;
            if key != MEMBER_KEY {
                return None;
            }
            let mut tail = tail;
            let len = prost::encoding::decode_varint(&mut tail).ok()?;
            let len = usize::try_from(len).ok()?;
            let (member, after) = (tail.get(..len)?, tail.get(len..)?);
            rest = after;
            std::str::from_utf8(member).ok()
        })
    }

    fn bytes(&self, span: Span) -> &[u8] {
        self.payload.get(span.start..span.end).unwrap_or_default()
    }

    /// Spans of strings are copied from `&str`s by [`encode_append`]: always UTF-8.
    fn str(&self, span: Span) -> &str {
        std::str::from_utf8(self.bytes(span)).unwrap_or_default()
    }
}

/// The fields of a message to store, borrowed from the request (or a decoded record).
pub(crate) struct MessageRef<'a> {
    pub conversation_id: &'a str,
    pub seq: u64,
    pub sender_user_id: &'a str,
    pub sender_device_id: &'a str,
    pub client_msg_id: &'a str,
    pub server_time_ms: i64,
    pub kind: i32,
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub recalled_seq: u64,
    pub recalled: bool,
    pub mention_user_ids: &'a [String],
    pub mention_all: bool,
}

impl<'a> MessageRef<'a> {
    /// The message `m` becomes at `seq` (not recalled).
    pub fn new(m: &'a crate::NewMessage, seq: u64) -> Self {
        MessageRef {
            conversation_id: &m.conversation_id,
            seq,
            sender_user_id: &m.sender_user_id,
            sender_device_id: &m.sender_device_id,
            client_msg_id: &m.client_msg_id,
            server_time_ms: m.server_time_ms,
            kind: m.kind as i32,
            content_type: &m.content_type,
            body: &m.body,
            recalled_seq: m.recalled_seq,
            recalled: false,
            mention_user_ids: &m.mention_user_ids,
            mention_all: m.mention_all,
        }
    }

    /// Every field of `m`.
    pub fn of(m: &'a v1::Message) -> Self {
        MessageRef {
            conversation_id: &m.conversation_id,
            seq: m.seq,
            sender_user_id: &m.sender_user_id,
            sender_device_id: &m.sender_device_id,
            client_msg_id: &m.client_msg_id,
            server_time_ms: m.server_time_ms,
            kind: m.kind,
            content_type: &m.content_type,
            body: m.body.as_ref(),
            recalled_seq: m.recalled_seq,
            recalled: m.recalled,
            mention_user_ids: &m.mention_user_ids,
            mention_all: m.mention_all,
        }
    }
}

/// The first byte of a member field of an append record (tag 2, length-delimited).
const MEMBER_KEY: u8 = 0x12;

/// A member's watermarks after a group.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WatermarkOp {
    pub conversation_id: String,
    pub user_id: String,
    pub watermarks: Watermarks,
}

/// A group change for the index: its event message and the rows after it (absolute values,
/// so applying records in lsn order is exact).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupOp {
    pub event: AppendOp,
    pub meta: GroupMeta,
    pub members: Vec<Member>,
}

/// One change the index applies.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum IndexOp {
    Append(AppendOp),
    Watermark(WatermarkOp),
    Group(GroupOp),
    Flags(FlagsWrite),
    Device(super::device::DeviceOp),
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
    /// A group change.
    #[prost(message, optional, tag = "4")]
    pub group: Option<GroupRecord>,
    /// A user's conversation flags.
    #[prost(message, optional, tag = "5")]
    pub flags: Option<FlagsRecord>,
    /// A device's record (`super::device`).
    #[prost(message, optional, tag = "6")]
    pub device: Option<super::device::DeviceLogRecord>,
}

/// [`Record::flags`]: the flags a write sets (unset ones unchanged).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FlagsRecord {
    #[prost(string, tag = "1")]
    pub conversation_id: String,
    #[prost(string, tag = "2")]
    pub user_id: String,
    #[prost(bool, optional, tag = "3")]
    pub muted: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    pub pinned: Option<bool>,
}

/// Writes a flags record.
pub(crate) fn encode_flags(w: &FlagsWrite, buf: &mut Vec<u8>) {
    let record = Record {
        flags: Some(FlagsRecord {
            conversation_id: w.conversation_id.clone(),
            user_id: w.user_id.clone(),
            muted: w.muted,
            pinned: w.pinned,
        }),
        ..Default::default()
    };
    buf.extend_from_slice(&record.encode_to_vec());
}

/// [`Record::group`]: the event message, the record after it and the changed member rows.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupRecord {
    /// The event, as an append (no members: group index rows follow the member rows).
    #[prost(message, optional, tag = "1")]
    pub event: Option<AppendRecord>,
    /// The group's record after the change.
    #[prost(message, optional, tag = "2")]
    pub meta: Option<GroupMetaRecord>,
    /// The changed member rows, after the change.
    #[prost(message, repeated, tag = "3")]
    pub members: Vec<MemberRecord>,
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

/// As [`put_bytes`], returning where the bytes went.
fn put_span(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) -> Span {
    put_bytes(tag, bytes, buf);
    Span { start: buf.len() - bytes.len(), end: buf.len() }
}

fn put_u64(tag: u32, value: u64, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(value, buf);
}

fn u64_field(tag: u32, value: u64) -> usize {
    if value == 0 { 0 } else { key_len(tag) + encoded_len_varint(value) }
}

fn str_field(tag: u32, s: &[u8]) -> usize {
    if s.is_empty() { 0 } else { len_field(tag, s.len()) }
}

/// The bytes prost's `v1::Message::encode` writes for `m` (proto3: default values omitted;
/// int64 and enum values as sign-extended varints; fields in tag order).
fn message_len(m: &MessageRef<'_>) -> usize {
    str_field(1, m.conversation_id.as_bytes())
        + u64_field(2, m.seq)
        + str_field(3, m.sender_user_id.as_bytes())
        + str_field(4, m.sender_device_id.as_bytes())
        + str_field(5, m.client_msg_id.as_bytes())
        + u64_field(6, m.server_time_ms as u64)
        + u64_field(7, i64::from(m.kind) as u64)
        + str_field(8, m.content_type.as_bytes())
        + str_field(9, m.body)
        + u64_field(10, m.recalled_seq)
        + u64_field(11, u64::from(m.recalled))
        + m.mention_user_ids.iter().map(|u| len_field(12, u.len())).sum::<usize>()
        + u64_field(13, u64::from(m.mention_all))
}

/// Writes the append record of `m` and `members` (the message encoded as prost would, once)
/// and returns it as the index's [`AppendOp`].
pub(crate) fn encode_append<S: AsRef<str>>(m: &MessageRef<'_>, members: &[S]) -> AppendOp {
    let message = message_len(m);
    let inner = len_field(1, message)
        + members.iter().map(|s| len_field(2, s.as_ref().len())).sum::<usize>();
    let mut buf = Vec::with_capacity(len_field(1, inner));
    encode_key(1, WireType::LengthDelimited, &mut buf);
    encode_varint(inner as u64, &mut buf);
    encode_key(1, WireType::LengthDelimited, &mut buf);
    encode_varint(message as u64, &mut buf);
    let start = buf.len();
    let string = |tag: u32, s: &str, buf: &mut Vec<u8>| {
        if s.is_empty() {
            Span { start: buf.len(), end: buf.len() }
        } else {
            put_span(tag, s.as_bytes(), buf)
        }
    };
    let varint = |tag: u32, v: u64, buf: &mut Vec<u8>| {
        if v != 0 {
            put_u64(tag, v, buf);
        }
    };
    let conversation_id = string(1, m.conversation_id, &mut buf);
    varint(2, m.seq, &mut buf);
    let sender_user_id = string(3, m.sender_user_id, &mut buf);
    string(4, m.sender_device_id, &mut buf);
    let client_msg_id = string(5, m.client_msg_id, &mut buf);
    varint(6, m.server_time_ms as u64, &mut buf);
    varint(7, i64::from(m.kind) as u64, &mut buf);
    string(8, m.content_type, &mut buf);
    if !m.body.is_empty() {
        put_bytes(9, m.body, &mut buf);
    }
    varint(10, m.recalled_seq, &mut buf);
    varint(11, u64::from(m.recalled), &mut buf);
    for u in m.mention_user_ids {
        put_bytes(12, u.as_bytes(), &mut buf);
    }
    varint(13, u64::from(m.mention_all), &mut buf);
    let span = Span { start, end: buf.len() };
    debug_assert_eq!(span.end - span.start, message);
    let members_at = buf.len();
    for s in members {
        put_bytes(2, s.as_ref().as_bytes(), &mut buf);
    }
    let recall = m.kind == v1::MessageKind::Recall as i32;
    AppendOp {
        seq: m.seq,
        server_time_ms: m.server_time_ms,
        recalled_seq: if recall { m.recalled_seq } else { 0 },
        mentions: !m.mention_user_ids.is_empty() || m.mention_all,
        payload: buf,
        message: span,
        conversation_id,
        sender_user_id,
        client_msg_id,
        members: members_at,
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

/// Writes a group change's record: the event (already encoded as an append) and the rows.
pub(crate) fn encode_group(op: &GroupOp, buf: &mut Vec<u8>) {
    let record = Record {
        group: Some(GroupRecord {
            event: Some(AppendRecord { message: op.event.encoded().to_vec(), members: Vec::new() }),
            meta: Some(GroupMetaRecord::of(&op.meta, op.event.seq)),
            members: op.members.iter().map(MemberRecord::of).collect(),
        }),
        ..Default::default()
    };
    // Group changes are rare: prost's own encoder (one copy) is fine here.
    buf.extend_from_slice(&record.encode_to_vec());
}

/// Writes a probe record.
pub(crate) fn encode_probe(now_ms: i64, buf: &mut Vec<u8>) {
    put_u64(3, now_ms as u64, buf);
}

/// Decodes record `lsn` into the index operation it stands for (`None`: a probe).
pub(crate) fn decode(lsn: u64, payload: &[u8]) -> Result<Option<IndexOp>, EmbeddedError> {
    let bad = |reason: String| EmbeddedError::Record { lsn, reason };
    let record = Record::decode(payload).map_err(|e| bad(e.to_string()))?;
    let decode_message = |bytes: &[u8]| {
        let m = v1::Message::decode(bytes).map_err(|e| bad(e.to_string()))?;
        if m.seq == 0 || m.conversation_id.is_empty() {
            return Err(bad("append without conversation or seq".into()));
        }
        Ok(m)
    };
    let kinds = [
        record.append.is_some(),
        record.watermark.is_some(),
        record.group.is_some(),
        record.flags.is_some(),
        record.device.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return Err(bad("more than one kind of change".into()));
    }
    if let Some(a) = record.append {
        let m = decode_message(&a.message)?;
        // Re-encoded canonically: the same message for every reader of the index.
        return Ok(Some(IndexOp::Append(encode_append(&MessageRef::of(&m), &a.members))));
    }
    if let Some(w) = record.watermark {
        return Ok(Some(IndexOp::Watermark(WatermarkOp {
            conversation_id: w.conversation_id,
            user_id: w.user_id,
            watermarks: Watermarks { delivered: w.delivered, read: w.read },
        })));
    }
    if let Some(g) = record.group {
        let event = g.event.ok_or_else(|| bad("group change without its event".into()))?;
        let m = decode_message(&event.message)?;
        let meta = g.meta.ok_or_else(|| bad("group change without its record".into()))?;
        let members = g.members.iter().map(MemberRecord::to_member);
        return Ok(Some(IndexOp::Group(GroupOp {
            event: encode_append(&MessageRef::of(&m), &[] as &[&str]),
            meta: meta.to_meta().map_err(bad)?,
            members: members.collect::<Result<_, _>>().map_err(bad)?,
        })));
    }
    if let Some(f) = record.flags {
        return Ok(Some(IndexOp::Flags(FlagsWrite {
            conversation_id: f.conversation_id,
            user_id: f.user_id,
            muted: f.muted,
            pinned: f.pinned,
        })));
    }
    if let Some(d) = record.device {
        return super::device::decode_device(d).map(|op| Some(IndexOp::Device(op))).map_err(bad);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written encoder writes what prost writes, for every field at and off its
    /// default, and the prost-built record decodes to the same op.
    #[test]
    fn append_encoding_matches_prost() {
        let full = v1::Message {
            mention_user_ids: vec!["b".into(), "ü".repeat(70)],
            mention_all: true,
            conversation_id: "dm:a:b".into(),
            seq: u64::MAX,
            sender_user_id: "a".into(),
            sender_device_id: "d".into(),
            client_msg_id: "m1".into(),
            server_time_ms: -5,
            kind: v1::MessageKind::Recall as i32,
            content_type: "text/plain".into(),
            body: bytes::Bytes::from(vec![0xab; 200]),
            recalled_seq: 3,
            recalled: true,
        };
        let sparse =
            v1::Message { conversation_id: "c".into(), seq: 1, kind: -2, ..Default::default() };
        let members = [vec![], vec!["a".to_owned(), "é".repeat(100)]];
        for (m, members) in [(&full, &members[1]), (&sparse, &members[0]), (&sparse, &members[1])] {
            let op = encode_append(&MessageRef::of(m), members);
            let record = Record {
                append: Some(AppendRecord { message: m.encode_to_vec(), members: members.clone() }),
                ..Default::default()
            };
            assert_eq!(op.payload(), record.encode_to_vec().as_slice());
            assert_eq!(op.encoded(), m.encode_to_vec().as_slice());
            assert_eq!(op.conversation_id(), m.conversation_id);
            assert_eq!(op.sender_user_id(), m.sender_user_id);
            assert_eq!(op.client_msg_id(), m.client_msg_id);
            assert_eq!(op.members().collect::<Vec<_>>(), *members);
            assert_eq!(decode(1, op.payload()).expect("append"), Some(IndexOp::Append(op)));
        }
    }

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
        };
        let members = vec!["a".to_owned(), "b".to_owned()];
        let buf = encode_append(&MessageRef::of(&message), &members).payload().to_vec();
        let Some(IndexOp::Append(a)) = decode(1, &buf).expect("append") else {
            panic!("not an append")
        };
        assert_eq!((a.conversation_id(), a.seq, a.recalled_seq), ("dm:a:b", 7, 3));
        assert_eq!((a.sender_user_id(), a.client_msg_id()), ("a", "m1"));
        assert_eq!(a.members().collect::<Vec<_>>(), members);
        assert_eq!(a.encoded(), message.encode_to_vec().as_slice());

        let mut buf = Vec::new();
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
