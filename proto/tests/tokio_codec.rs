//! Tests of the `tokio_util::codec` adapter (feature `tokio-codec`).
#![cfg(feature = "tokio-codec")]

mod common;

use bytes::BytesMut;
use tern_proto::tokio_codec::{CodecError, EnvelopeCodec};
use tern_proto::{FrameError, v1};
use tokio_util::codec::{Decoder, Encoder};

#[test]
fn encodes_and_decodes_a_stream_of_frames() {
    let envs = common::typical_envelopes();
    let mut codec = EnvelopeCodec::new(tern_proto::DEFAULT_MAX_FRAME_BYTES);
    let mut wire = BytesMut::new();
    for env in &envs {
        if let Err(e) = codec.encode(env, &mut wire) {
            panic!("encode failed: {e}");
        }
    }
    // Deliver the bytes in 7-byte pieces, as a socket might.
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for chunk in wire.chunks(7) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(env)) => got.push(env),
                Ok(None) => break,
                Err(e) => panic!("decode failed: {e}"),
            }
        }
    }
    assert_eq!(got, envs);
    // At end of stream with nothing buffered, decode_eof reports a clean end.
    assert!(matches!(codec.decode_eof(&mut buf), Ok(None)));
}

#[test]
fn truncated_stream_at_eof_is_an_error() {
    let mut codec = EnvelopeCodec::default();
    let mut buf = BytesMut::from(&[0u8, 0, 0, 10, 1, 2][..]);
    assert!(matches!(codec.decode(&mut buf), Ok(None)));
    // tokio-util turns leftover bytes at EOF into an io::Error.
    assert!(matches!(codec.decode_eof(&mut buf), Err(CodecError::Io(_))));
}

#[test]
fn limits_apply_in_both_directions() {
    let mut codec = EnvelopeCodec::new(8);
    let mut buf = BytesMut::from(&[0u8, 0, 0, 9][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::Frame(FrameError::TooLarge { len: 9, max: 8 }))
    ));

    let big = v1::Envelope {
        request_id: 1,
        body: Some(v1::envelope::Body::Ping(v1::Ping { client_time_ms: i64::MAX })),
    };
    let mut dst = BytesMut::new();
    assert!(matches!(
        codec.encode(&big, &mut dst),
        Err(CodecError::Frame(FrameError::Oversized { max: 8, .. }))
    ));
    assert!(dst.is_empty());

    let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 0xFF][..]);
    assert!(matches!(codec.decode(&mut buf), Err(CodecError::Frame(FrameError::Malformed(_)))));
}
