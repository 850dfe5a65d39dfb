//! Frame codec benchmarks: encode and decode of typical frames, time per op and bytes/s.
//!
//! Run: `cargo bench -p tern-proto --bench codec`.

use bytes::{Bytes, BytesMut};
use divan::counter::BytesCount;
use divan::{Bencher, black_box};
use tern_proto::v1::{self, envelope::Body};
use tern_proto::{FrameDecoder, encode_frame};

/// The default limit: the 100-message SyncPage (about 19 KiB) fits under it.
const MAX: usize = tern_proto::DEFAULT_MAX_FRAME_BYTES;

fn main() {
    divan::main();
}

fn message(seq: u64) -> v1::Message {
    v1::Message {
        conversation_id: "dm:alice:bob".into(),
        seq,
        sender_user_id: "alice".into(),
        sender_device_id: "phone-1".into(),
        client_msg_id: format!("550e8400-e29b-41d4-a716-{seq:012}"),
        server_time_ms: 1_700_000_000_000 + seq as i64,
        kind: v1::MessageKind::Normal as i32,
        content_type: "text/plain".into(),
        body: Bytes::from(vec![b'x'; 100]),
        ..Default::default()
    }
}

#[derive(Debug, Clone, Copy)]
enum Frame {
    Ping,
    Send100B,
    Deliver100B,
    SyncPage100,
}

impl Frame {
    const ALL: [Frame; 4] = [Frame::Ping, Frame::Send100B, Frame::Deliver100B, Frame::SyncPage100];

    fn envelope(self) -> v1::Envelope {
        let body = match self {
            Frame::Ping => Body::Ping(v1::Ping { client_time_ms: 1_700_000_000_000 }),
            Frame::Send100B => Body::Send(v1::Send {
                conversation_id: "dm:alice:bob".into(),
                client_msg_id: "550e8400-e29b-41d4-a716-446655440000".into(),
                content_type: "text/plain".into(),
                body: Bytes::from(vec![b'x'; 100]),
                ..Default::default()
            }),
            Frame::Deliver100B => Body::Deliver(v1::Deliver { message: Some(message(42)) }),
            Frame::SyncPage100 => Body::SyncPage(v1::SyncPage {
                conversation_id: "dm:alice:bob".into(),
                messages: (1..=100).map(message).collect(),
                missing: Vec::new(),
                next_from_seq: 101,
                has_more: true,
                last_seq: 1000,
            }),
        };
        v1::Envelope { request_id: 7, body: Some(body) }
    }

    fn bytes(self) -> Bytes {
        match tern_proto::encode_to_bytes(&self.envelope(), MAX) {
            Ok(b) => b,
            Err(e) => panic!("bench frame does not encode: {e}"),
        }
    }
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Encode one envelope into a reused buffer (the gateway's write path).
#[divan::bench(args = Frame::ALL)]
fn encode(bencher: Bencher, frame: Frame) {
    let env = frame.envelope();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    bencher.counter(BytesCount::new(frame.bytes().len())).bench_local(|| {
        buf.clear();
        let res = encode_frame(black_box(&env), MAX, &mut buf);
        black_box(&buf);
        res
    });
}

/// Decode one frame from a buffer holding exactly it (the gateway's read path).
#[divan::bench(args = Frame::ALL)]
fn decode(bencher: Bencher, frame: Frame) {
    let bytes = frame.bytes();
    let mut decoder = FrameDecoder::new(MAX);
    bencher
        .counter(BytesCount::new(bytes.len()))
        .with_inputs(|| BytesMut::from(&bytes[..]))
        .bench_local_refs(|buf| decoder.decode(buf));
}

/// Decode a frame with `decode_slice` (no `BytesMut`, e.g. from a per-thread scratch buffer).
#[divan::bench(args = Frame::ALL)]
fn decode_slice(bencher: Bencher, frame: Frame) {
    let bytes = frame.bytes();
    let decoder = FrameDecoder::new(MAX);
    bencher
        .counter(BytesCount::new(bytes.len()))
        .bench_local(|| decoder.decode_slice(black_box(&bytes[..])));
}
