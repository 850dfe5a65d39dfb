//! Property and boundary tests of the frame codec: round trips, arbitrary chunking, limits.

mod common;

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use tern_proto::v1::{self, envelope::Body};
use tern_proto::{DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameError, LEN_PREFIX_BYTES};
use tern_proto::{encode_frame, encode_to_bytes};

use common::arb_envelope;

fn frame(env: &v1::Envelope) -> Vec<u8> {
    match encode_to_bytes(env, DEFAULT_MAX_FRAME_BYTES) {
        Ok(b) => b.to_vec(),
        Err(e) => panic!("encode failed: {e}"),
    }
}

/// Decodes every complete frame in `buf`, panicking on a decode error.
fn drain(dec: &mut FrameDecoder, buf: &mut BytesMut, out: &mut Vec<v1::Envelope>) {
    loop {
        match dec.decode(buf) {
            Ok(Some(env)) => out.push(env),
            Ok(None) => return,
            Err(e) => panic!("unexpected decode error: {e}"),
        }
    }
}

proptest! {
    #[test]
    fn envelope_round_trips(env in arb_envelope()) {
        let bytes = frame(&env);
        let payload_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        prop_assert_eq!(payload_len + LEN_PREFIX_BYTES, bytes.len());

        let mut buf = BytesMut::from(&bytes[..]);
        let got = FrameDecoder::default().decode(&mut buf);
        prop_assert!(matches!(&got, Ok(Some(e)) if *e == env), "{:?}", got);
        prop_assert!(buf.is_empty());

        let got = FrameDecoder::default().decode_slice(&bytes);
        prop_assert!(matches!(&got, Ok(Some((e, used))) if *e == env && *used == bytes.len()));
    }

    #[test]
    fn chunked_stream_decodes_in_order(
        envs in proptest::collection::vec(arb_envelope(), 1..8),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
    ) {
        let stream: Vec<u8> = envs.iter().flat_map(frame).collect();
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        cuts.dedup();

        let mut dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut start = 0;
        for cut in cuts {
            buf.extend_from_slice(&stream[start..cut]);
            start = cut;
            drain(&mut dec, &mut buf, &mut got);
        }
        prop_assert_eq!(got, envs);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_frame_completes_only_at_its_last_byte(env in arb_envelope()) {
        assert_completes_only_at_last_byte(&env);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stop_at_first_error(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut dec = FrameDecoder::new(256);
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = dec.decode(&mut buf) {}
    }
}

/// Feeds `env`'s frame split at every offset: nothing decodes before the last byte, exactly one
/// envelope (equal to `env`) decodes once it arrives, and byte-by-byte feeding agrees.
fn assert_completes_only_at_last_byte(env: &v1::Envelope) {
    let bytes = frame(env);
    for split in 0..=bytes.len() {
        let mut dec = FrameDecoder::default();
        let mut buf = BytesMut::from(&bytes[..split]);
        let first = dec.decode(&mut buf);
        if split < bytes.len() {
            assert!(
                matches!(first, Ok(None)),
                "decoded early at {split}/{}: {first:?}",
                bytes.len()
            );
            assert_eq!(buf.len(), split, "an incomplete frame must not be consumed");
            buf.extend_from_slice(&bytes[split..]);
            let second = dec.decode(&mut buf);
            assert!(matches!(&second, Ok(Some(e)) if e == env), "at {split}: {second:?}");
        } else {
            assert!(matches!(&first, Ok(Some(e)) if e == env), "whole frame: {first:?}");
        }
        assert!(buf.is_empty());
        assert!(matches!(dec.decode(&mut buf), Ok(None)), "decoded twice at {split}");
    }

    let mut dec = FrameDecoder::default();
    let mut buf = BytesMut::new();
    for (i, byte) in bytes.iter().enumerate() {
        buf.put_u8(*byte);
        let got = dec.decode(&mut buf);
        if i + 1 < bytes.len() {
            assert!(matches!(got, Ok(None)), "byte-by-byte decoded early at {i}: {got:?}");
        } else {
            assert!(matches!(&got, Ok(Some(e)) if e == env), "byte-by-byte: {got:?}");
        }
    }
}

#[test]
fn typical_frames_complete_only_at_their_last_byte() {
    for env in common::typical_envelopes() {
        assert_completes_only_at_last_byte(&env);
    }
}

#[test]
fn empty_envelope_is_a_four_byte_frame() {
    let env = v1::Envelope::default();
    assert_eq!(frame(&env), vec![0, 0, 0, 0]);
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert_eq!(FrameDecoder::default().decode(&mut buf).ok().flatten(), Some(env));
}

fn assert_too_large_without_allocating(prefix: [u8; 4], max: usize, expected_len: u64) {
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&prefix);
    buf.extend_from_slice(b"some bytes that follow");
    let capacity_before = buf.capacity();
    let len_before = buf.len();
    let mut dec = FrameDecoder::new(max);
    match dec.decode(&mut buf) {
        Err(FrameError::TooLarge { len, max: m }) => {
            assert_eq!(len, expected_len);
            assert_eq!(m, max);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(buf.capacity() <= capacity_before, "decoder reserved {} bytes", buf.capacity());
    assert_eq!(buf.len(), len_before, "nothing may be consumed on error");

    assert!(matches!(dec.decode_payload(&mut buf), Err(FrameError::TooLarge { .. })));
    assert!(buf.capacity() <= capacity_before);
    assert!(matches!(dec.decode_slice(&buf), Err(FrameError::TooLarge { .. })));
    assert!(matches!(dec.peek_len(&buf), Err(FrameError::TooLarge { .. })));
}

#[test]
fn oversized_length_prefix_is_refused_before_allocating() {
    assert_too_large_without_allocating([0xFF; 4], DEFAULT_MAX_FRAME_BYTES, 0xFFFF_FFFF);
    let just_over = (DEFAULT_MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
    assert_too_large_without_allocating(just_over, DEFAULT_MAX_FRAME_BYTES, 65_537);
    assert_too_large_without_allocating([0, 0, 0, 17], 16, 17);
}

#[test]
fn length_at_the_maximum_is_accepted_and_waits_for_its_bytes() {
    let max = 1000;
    let mut dec = FrameDecoder::new(max);
    let mut buf = BytesMut::new();
    buf.put_u32(max as u32);
    assert_eq!(dec.peek_len(&buf).ok().flatten(), Some(max));
    assert!(matches!(dec.decode(&mut buf), Ok(None)));
    // The decoder reserves room for the announced frame, bounded by the maximum.
    assert!(buf.capacity() >= LEN_PREFIX_BYTES + max);
    assert!(buf.capacity() <= 2 * (LEN_PREFIX_BYTES + max));
}

#[test]
fn fewer_than_four_bytes_is_incomplete_not_an_error() {
    let dec = FrameDecoder::new(0);
    for n in 0..LEN_PREFIX_BYTES {
        let bytes = vec![0xFF; n];
        assert!(matches!(dec.peek_len(&bytes), Ok(None)));
        assert!(matches!(dec.decode_slice(&bytes), Ok(None)));
    }
}

fn decode_payload(payload: &[u8]) -> Result<Option<v1::Envelope>, FrameError> {
    let mut buf = BytesMut::new();
    buf.put_u32(payload.len() as u32);
    buf.extend_from_slice(payload);
    FrameDecoder::default().decode(&mut buf)
}

#[test]
fn garbage_payload_is_malformed() {
    let cases: &[(&str, &[u8])] = &[
        ("invalid varint", &[0xFF; 11]),
        ("truncated field key", &[0x80]),
        ("truncated length-delimited login", &[0x52, 0x05, 0x0A]),
        ("login with the wrong wire type", &[0x50, 0x01]),
        ("request_id as length-delimited", &[0x0A, 0x01, 0x00]),
        ("invalid utf-8 in Login.token", &[0x52, 0x03, 0x0A, 0x01, 0xFF]),
        ("field number 0", &[0x00, 0x00]),
        ("end-group without start", &[0x0C]),
    ];
    for (what, payload) in cases {
        match decode_payload(payload) {
            Err(e @ FrameError::Malformed(_)) => {
                assert_eq!(e.code(), v1::ErrorCode::MalformedFrame, "{what}")
            }
            other => panic!("{what}: expected Malformed, got {other:?}"),
        }
    }
}

#[test]
fn unknown_fields_and_bodies_are_skipped() {
    // Field 99 (varint 5), then request_id 7: decodes, the unknown field is dropped.
    let got = decode_payload(&[0x98, 0x06, 0x05, 0x08, 0x07]);
    assert!(matches!(got, Ok(Some(v1::Envelope { request_id: 7, body: None }))), "{got:?}");
    // A body field number from the future (60, length-delimited, empty): body stays None.
    let got = decode_payload(&[0xE2, 0x03, 0x00]);
    assert!(matches!(got, Ok(Some(v1::Envelope { request_id: 0, body: None }))), "{got:?}");
}

fn send_with_body(len: usize) -> v1::Envelope {
    v1::Envelope {
        request_id: 1,
        body: Some(Body::Send(v1::Send {
            conversation_id: "dm:alice:bob".into(),
            client_msg_id: "m1".into(),
            body: vec![0xAB; len].into(),
            ..Default::default()
        })),
    }
}

#[test]
fn encode_refuses_frames_over_the_maximum_and_writes_nothing() {
    let max = 200;
    // Find the body size at which the envelope is exactly `max` bytes.
    let Some(at_max) = (0..max).find(|n| prost::Message::encoded_len(&send_with_body(*n)) == max)
    else {
        panic!("no body size gives exactly {max} bytes");
    };

    let mut dst = BytesMut::new();
    assert!(encode_frame(&send_with_body(at_max), max, &mut dst).is_ok());
    assert_eq!(dst.len(), LEN_PREFIX_BYTES + max);

    let mut dst = BytesMut::from(&b"xyz"[..]);
    match encode_frame(&send_with_body(at_max + 1), max, &mut dst) {
        Err(e @ FrameError::Oversized { len, max: m }) => {
            assert_eq!((len, m), (max + 1, max));
            assert_eq!(e.code(), v1::ErrorCode::FrameTooLarge);
        }
        other => panic!("expected Oversized, got {other:?}"),
    }
    assert_eq!(&dst[..], b"xyz", "a refused frame must write nothing");
    assert!(matches!(
        encode_to_bytes(&send_with_body(DEFAULT_MAX_FRAME_BYTES), DEFAULT_MAX_FRAME_BYTES),
        Err(FrameError::Oversized { .. })
    ));
}

#[test]
fn decoder_and_encoder_agree_on_the_limit() {
    // A frame the encoder accepts at `max` is accepted by a decoder with the same `max`.
    let max = 300;
    for n in 250..300 {
        let env = send_with_body(n);
        let mut dst = BytesMut::new();
        let encoded = encode_frame(&env, max, &mut dst);
        let decoded = FrameDecoder::new(max).decode(&mut dst);
        match encoded {
            Ok(()) => assert!(matches!(decoded, Ok(Some(e)) if e == env), "body {n}"),
            Err(_) => assert!(dst.is_empty()),
        }
    }
}
