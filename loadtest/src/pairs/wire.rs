//! What `pairs` puts on the wire: the user ids and conversation of a pair, the stamped message
//! body the receiver times, and the frames (Login, Send, Receipt, Ping) encoded into the
//! connection's reused output buffer.

use std::fmt::Write as _;

use bytes::Bytes;
use tern_proto::v1::envelope::Body;
use tern_proto::v1::{CreateGroup, Envelope, Login, Ping, Receipt, ReceiptKind, Send};
use tern_proto::{DEFAULT_MAX_FRAME_BYTES, FrameError, PROTOCOL_VERSION, encode_frame};

/// What a pairs body starts with.
pub const BODY_MAGIC: &[u8; 4] = b"TPB1";

/// Smallest body: magic, run nonce (4), pair (4), message number (8), send time (8).
pub const MIN_BODY_BYTES: usize = 28;

/// Content type of the messages.
const CONTENT_TYPE: &str = "application/octet-stream";

/// The device id of every connection.
pub const DEVICE: &str = "d";

/// The sender of pair `i`.
pub fn sender_user(prefix: &str, i: usize) -> String {
    format!("{prefix}s{i}")
}

/// The receiver of pair `i`.
pub fn receiver_user(prefix: &str, i: usize) -> String {
    format!("{prefix}r{i}")
}

/// Member `j` of group `g` (`--group-size`).
pub fn member_user(prefix: &str, g: usize, j: usize) -> String {
    format!("{prefix}g{g}m{j}")
}

/// Appends a CreateGroup of `members` (the caller is the owner) with an idempotency id.
pub fn create_group(
    name: String,
    members: Vec<String>,
    client_request_id: String,
    request_id: u64,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let env = Envelope {
        request_id,
        body: Some(Body::CreateGroup(CreateGroup {
            name,
            member_user_ids: members,
            client_request_id,
            ..Default::default()
        })),
    };
    encode_frame(&env, DEFAULT_MAX_FRAME_BYTES, out)
}

/// What a received body says about its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The run that sent it (random per run).
    pub nonce: u32,
    /// The pair it was sent on.
    pub pair: u32,
    /// Its number among its pair's messages, from 0.
    pub k: u64,
    /// When it was sent, nanoseconds since the run's epoch (one process, one monotonic clock).
    pub sent_ns: u64,
}

/// Writes the body of `stamp` into `body` (cleared first), padded to `len` bytes (at least
/// [`MIN_BODY_BYTES`]).
pub fn write_body(stamp: &Stamp, len: usize, body: &mut Vec<u8>) {
    body.clear();
    body.extend_from_slice(BODY_MAGIC);
    body.extend_from_slice(&stamp.nonce.to_le_bytes());
    body.extend_from_slice(&stamp.pair.to_le_bytes());
    body.extend_from_slice(&stamp.k.to_le_bytes());
    body.extend_from_slice(&stamp.sent_ns.to_le_bytes());
    body.resize(len.max(MIN_BODY_BYTES), b'.');
}

/// The stamp of a pairs body, or `None` for any other body.
pub fn parse_body(body: &[u8]) -> Option<Stamp> {
    let rest = body.strip_prefix(BODY_MAGIC)?;
    let u32_at = |i: usize| Some(u32::from_le_bytes(rest.get(i..i + 4)?.try_into().ok()?));
    let u64_at = |i: usize| Some(u64::from_le_bytes(rest.get(i..i + 8)?.try_into().ok()?));
    Some(Stamp { nonce: u32_at(0)?, pair: u32_at(4)?, k: u64_at(8)?, sent_ns: u64_at(16)? })
}

/// Appends the Login frame (request id 1).
pub fn login(token: String, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let env = Envelope {
        request_id: 1,
        body: Some(Body::Login(Login {
            token,
            protocol_version: PROTOCOL_VERSION,
            client_version: "tern-loadtest-pairs".into(),
            ..Default::default()
        })),
    };
    encode_frame(&env, DEFAULT_MAX_FRAME_BYTES, out)
}

/// The request id of a receiver's or member's RegisterPush (above any other it uses).
pub const PUSH_REQUEST_ID: u64 = u64::MAX - 1;

/// Appends a RegisterPush of a webhook token (`lt-<n>`): the server's notifier would post to
/// its configured webhook for this device.
pub fn register_push(n: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let env = Envelope {
        request_id: PUSH_REQUEST_ID,
        body: Some(Body::RegisterPush(tern_proto::v1::RegisterPush {
            provider: tern_proto::v1::PushProvider::Webhook as i32,
            token: format!("lt-{n}"),
            app_id: String::new(),
            sandbox: false,
        })),
    };
    encode_frame(&env, DEFAULT_MAX_FRAME_BYTES, out)
}

/// Appends a Ping frame.
pub fn ping(request_id: u64, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let env = Envelope { request_id, body: Some(Body::Ping(Ping { client_time_ms: 0 })) };
    encode_frame(&env, DEFAULT_MAX_FRAME_BYTES, out)
}

/// Appends a receipt of `kind` up to `seq`.
pub fn receipt(
    conversation_id: &str,
    kind: ReceiptKind,
    seq: u64,
    request_id: u64,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let env = Envelope {
        request_id,
        body: Some(Body::Receipt(Receipt {
            conversation_id: conversation_id.to_owned(),
            kind: kind as i32,
            seq,
        })),
    };
    encode_frame(&env, DEFAULT_MAX_FRAME_BYTES, out)
}

/// Encodes one sender's Sends, reusing the envelope (conversation id, content type and the
/// client message id's buffer) and the body scratch between messages.
#[derive(Debug)]
pub struct SendEncoder {
    env: Envelope,
    body: Vec<u8>,
    body_len: usize,
    nonce: u32,
}

impl SendEncoder {
    /// An encoder for the sends of one pair to `conversation_id`.
    pub fn new(conversation_id: String, body_len: usize, nonce: u32) -> Self {
        let send = Send {
            mention_user_ids: Vec::new(),
            mention_all: false,
            conversation_id,
            peer_user_id: String::new(),
            client_msg_id: String::with_capacity(32),
            content_type: CONTENT_TYPE.into(),
            body: Bytes::new(),
        };
        let env = Envelope { request_id: 0, body: Some(Body::Send(send)) };
        Self { env, body: Vec::with_capacity(body_len.max(MIN_BODY_BYTES)), body_len, nonce }
    }

    /// Sends go to `conversation_id` from now on (a group's id is known once it is created).
    pub fn set_conversation(&mut self, conversation_id: &str) {
        if let Some(Body::Send(send)) = &mut self.env.body {
            send.conversation_id.clear();
            send.conversation_id.push_str(conversation_id);
        }
    }

    /// Appends the Send of message `stamp.k` with `request_id`; its client message id is
    /// `{nonce}-{k}`, unique per sender user across runs.
    pub fn encode(
        &mut self,
        stamp: &Stamp,
        request_id: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        write_body(stamp, self.body_len, &mut self.body);
        self.env.request_id = request_id;
        if let Some(Body::Send(send)) = &mut self.env.body {
            send.client_msg_id.clear();
            let _ = write!(send.client_msg_id, "{:08x}-{}", self.nonce, stamp.k);
            send.body = Bytes::copy_from_slice(&self.body);
        }
        encode_frame(&self.env, DEFAULT_MAX_FRAME_BYTES, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::FrameDecoder;

    #[test]
    fn bodies_round_trip_at_their_length_and_others_are_not_stamps() {
        let stamp = Stamp { nonce: 7, pair: 3, k: 1 << 40, sent_ns: 123_456_789 };
        let mut body = Vec::new();
        write_body(&stamp, 64, &mut body);
        assert_eq!(body.len(), 64);
        assert_eq!(parse_body(&body), Some(stamp));
        write_body(&stamp, 5, &mut body);
        assert_eq!(body.len(), MIN_BODY_BYTES);
        assert_eq!(parse_body(&body), Some(stamp));
        assert_eq!(parse_body(&body[..MIN_BODY_BYTES - 1]), None);
        assert_eq!(parse_body(b"probe:1"), None);
    }

    #[test]
    fn sends_carry_the_stamp_a_unique_client_id_and_the_request_id() {
        let mut enc = SendEncoder::new("dm:ppr0:pps0".into(), 64, 0xab);
        let mut out = Vec::new();
        for k in 0..2 {
            let stamp = Stamp { nonce: 0xab, pair: 0, k, sent_ns: 10 + k };
            assert!(enc.encode(&stamp, 100 + k, &mut out).is_ok());
        }
        let dec = FrameDecoder::default();
        let mut at = 0;
        for k in 0..2u64 {
            let Ok(Some((env, n))) = dec.decode_slice(&out[at..]) else { panic!("no frame") };
            at += n;
            assert_eq!(env.request_id, 100 + k);
            let Some(Body::Send(send)) = env.body else { panic!("not a send") };
            assert_eq!(send.conversation_id, "dm:ppr0:pps0");
            assert_eq!(send.client_msg_id, format!("000000ab-{k}"));
            assert_eq!(send.body.len(), 64);
            assert_eq!(parse_body(&send.body).map(|s| (s.k, s.sent_ns)), Some((k, 10 + k)));
        }
        assert_eq!(at, out.len());
        assert_eq!(sender_user("pp", 4), "pps4");
        assert_eq!(receiver_user("pp", 4), "ppr4");
        assert_eq!(member_user("pp", 4, 7), "ppg4m7");
    }
}
