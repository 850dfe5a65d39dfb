//! Row <-> type mapping: CQL `bigint` <-> u64 seqs, `messages` rows <-> [`v1::Message`];
//! the group rows and blobs in [`group`].

pub mod group;

use prost::Message as _;
use scylla::DeserializeRow;
use tern_proto::v1;
use tern_store::NewMessage;
use thiserror::Error;

use crate::bucket::MAX_SEQ;

/// A stored value that does not fit its Rust type, or a row that contradicts its key.
#[derive(Debug, Error, PartialEq)]
pub enum RowError {
    /// A seq or watermark column holds a negative number.
    #[error("{column} holds negative value {value}")]
    Negative {
        /// The column.
        column: &'static str,
        /// Its value.
        value: i64,
    },
    /// The message blob is not a protobuf `tern.v1.Message`.
    #[error("message {conversation_id}/{seq}: {reason}")]
    Decode {
        /// Conversation of the row.
        conversation_id: String,
        /// Seq of the row.
        seq: u64,
        /// The decoder's complaint.
        reason: String,
    },
    /// A group row or blob (record, pending change, member row) cannot be read.
    #[error("group {what}: {reason}")]
    Group {
        /// Which column or blob.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The blob names another conversation or seq than the row's key.
    #[error("message {conversation_id}/{seq}: blob says {blob_conversation_id}/{blob_seq}")]
    KeyMismatch {
        /// Conversation of the row.
        conversation_id: String,
        /// Seq of the row.
        seq: u64,
        /// Conversation in the blob.
        blob_conversation_id: String,
        /// Seq in the blob.
        blob_seq: u64,
    },
}

/// A u64 seq as CQL bigint. `None` above [`MAX_SEQ`].
pub fn seq_to_cql(seq: u64) -> Option<i64> {
    (seq <= MAX_SEQ).then_some(seq as i64)
}

/// A CQL bigint seq/watermark column (null = 0) as u64.
pub fn seq_from_cql(column: &'static str, value: Option<i64>) -> Result<u64, RowError> {
    let v = value.unwrap_or(0);
    u64::try_from(v).map_err(|_| RowError::Negative { column, value: v })
}

/// A row of `SELECT seq, message, recalled FROM messages ...`.
#[derive(Debug, Clone, PartialEq, DeserializeRow)]
pub struct MessageRow {
    /// Clustering column.
    pub seq: i64,
    /// Protobuf-encoded message; null only for a row that was never fully written.
    pub message: Option<Vec<u8>>,
    /// Set by a recall of this message.
    pub recalled: Option<bool>,
    /// The writer's wall clock when the seq was allocated.
    pub allocated_at_ms: Option<i64>,
}

/// The stored form of `m` at `seq` (what the row's blob holds).
pub fn stored_message(m: &NewMessage, seq: u64, server_time_ms: i64) -> v1::Message {
    v1::Message {
        mention_user_ids: m.mention_user_ids.clone(),
        mention_all: m.mention_all,
        conversation_id: m.conversation_id.clone(),
        seq,
        sender_user_id: m.sender_user_id.clone(),
        sender_device_id: m.sender_device_id.clone(),
        client_msg_id: m.client_msg_id.clone(),
        server_time_ms,
        kind: m.kind as i32,
        content_type: m.content_type.clone(),
        body: m.body.clone(),
        recalled_seq: m.recalled_seq,
        recalled: false,
    }
}

/// The blob of a message.
pub fn encode(message: &v1::Message) -> Vec<u8> {
    message.encode_to_vec()
}

/// The blob of `target` after its recall: flag set, body cleared.
pub fn recalled_blob(mut target: v1::Message) -> Vec<u8> {
    target.recalled = true;
    target.body.clear();
    target.encode_to_vec()
}

/// The message of a `messages` row of `conversation_id`. `Ok(None)` for a row without a blob
/// (never fully written: reads as absent). The `recalled` column wins over the blob: a
/// recalled message comes back flagged, with an empty body.
pub fn decode_row(conversation_id: &str, row: MessageRow) -> Result<Option<v1::Message>, RowError> {
    let seq = seq_from_cql("messages.seq", Some(row.seq))?;
    let Some(blob) = row.message else {
        return Ok(None);
    };
    let mut m = v1::Message::decode(blob.as_slice()).map_err(|e| RowError::Decode {
        conversation_id: conversation_id.to_owned(),
        seq,
        reason: e.to_string(),
    })?;
    if m.conversation_id != conversation_id || m.seq != seq {
        return Err(RowError::KeyMismatch {
            conversation_id: conversation_id.to_owned(),
            seq,
            blob_conversation_id: m.conversation_id,
            blob_seq: m.seq,
        });
    }
    if row.recalled == Some(true) {
        m.recalled = true;
        m.body.clear();
    }
    Ok(Some(m))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn new_message() -> NewMessage {
        NewMessage {
            mention_user_ids: Vec::new(),
            mention_all: false,
            conversation_id: "dm:alice:bob".to_owned(),
            members: vec!["alice".to_owned(), "bob".to_owned()],
            sender_user_id: "alice".to_owned(),
            sender_device_id: "phone".to_owned(),
            client_msg_id: "c-1".to_owned(),
            kind: v1::MessageKind::GroupEvent,
            content_type: "text/plain".to_owned(),
            body: Bytes::from_static(&[0, 1, 2, 255]),
            recalled_seq: 0,
            server_time_ms: 99,
        }
    }

    fn row(seq: i64, message: Option<Vec<u8>>, recalled: Option<bool>) -> MessageRow {
        MessageRow { seq, message, recalled, allocated_at_ms: Some(1) }
    }

    #[test]
    fn blob_round_trips_every_field() {
        let m = stored_message(&new_message(), 42, 1_234);
        assert_eq!(m.seq, 42);
        assert_eq!(m.server_time_ms, 1_234);
        assert_eq!(m.kind, v1::MessageKind::GroupEvent as i32);
        assert!(!m.recalled);
        let back = decode_row("dm:alice:bob", row(42, Some(encode(&m)), None)).unwrap();
        assert_eq!(back, Some(m.clone()));
        // Mentions are stored in the blob.
        let mentioning = NewMessage {
            mention_user_ids: vec!["bob".into(), "carol".into()],
            mention_all: true,
            ..new_message()
        };
        let m2 = stored_message(&mentioning, 43, 1_235);
        assert_eq!(
            (m2.mention_user_ids.as_slice(), m2.mention_all),
            (&["bob".to_owned(), "carol".to_owned()][..], true)
        );
        let back = decode_row("dm:alice:bob", row(43, Some(encode(&m2)), None)).unwrap();
        assert_eq!(back, Some(m2));
        let back = decode_row("dm:alice:bob", row(42, Some(encode(&m)), Some(false))).unwrap();
        assert_eq!(back, Some(m));
    }

    #[test]
    fn recalled_column_flags_and_clears_body() {
        let m = stored_message(&new_message(), 7, 1);
        // The column alone (blob still has the body) is enough.
        let got = decode_row("dm:alice:bob", row(7, Some(encode(&m)), Some(true))).unwrap();
        let got = got.unwrap();
        assert!(got.recalled);
        assert!(got.body.is_empty());
        assert_eq!(got.client_msg_id, "c-1");
        // The rewritten blob carries the flag too.
        let blob = recalled_blob(m.clone());
        let got = decode_row("dm:alice:bob", row(7, Some(blob), Some(true))).unwrap().unwrap();
        assert_eq!(got, v1::Message { recalled: true, body: Default::default(), ..m });
    }

    #[test]
    fn rows_without_blob_read_as_absent() {
        assert_eq!(decode_row("c", row(3, None, Some(true))), Ok(None));
    }

    #[test]
    fn bad_rows_are_errors() {
        let m = stored_message(&new_message(), 5, 1);
        assert!(matches!(
            decode_row("dm:alice:bob", row(6, Some(encode(&m)), None)),
            Err(RowError::KeyMismatch { blob_seq: 5, seq: 6, .. })
        ));
        assert!(matches!(
            decode_row("other", row(5, Some(encode(&m)), None)),
            Err(RowError::KeyMismatch { .. })
        ));
        assert!(matches!(
            decode_row("c", row(5, Some(vec![0xff, 0xff, 0xff]), None)),
            Err(RowError::Decode { seq: 5, .. })
        ));
        assert!(matches!(
            decode_row("c", row(-1, Some(encode(&m)), None)),
            Err(RowError::Negative { value: -1, .. })
        ));
    }

    #[test]
    fn seq_conversions() {
        assert_eq!(seq_to_cql(0), Some(0));
        assert_eq!(seq_to_cql(MAX_SEQ), Some(i64::MAX));
        assert_eq!(seq_to_cql(MAX_SEQ + 1), None);
        assert_eq!(seq_to_cql(u64::MAX), None);
        assert_eq!(seq_from_cql("x", None), Ok(0));
        assert_eq!(seq_from_cql("x", Some(i64::MAX)), Ok(MAX_SEQ));
        assert_eq!(seq_from_cql("x", Some(-5)), Err(RowError::Negative { column: "x", value: -5 }));
    }
}
