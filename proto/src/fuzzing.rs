//! Fuzz target bodies, shared by cargo-fuzz (`fuzz/`) and the stable corpus replay test.
//!
//! Each function takes arbitrary bytes, drives one peer-reachable entry point of this crate and
//! panics only when an invariant breaks (that panic is the finding). They have no fuzzing
//! dependencies, so the same bodies replay the committed corpus in the normal test run.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use prost::Message as _;

use crate::codec::{FrameDecoder, LEN_PREFIX_BYTES, encode_frame};
use crate::error::FrameError;
use crate::session::server::{
    Action, AuthError, Authenticator, Identity, ServerSession, ServerSessionConfig,
};
use crate::v1::{self, ErrorCode, envelope::Body};

/// Maximum frame size the fuzz targets configure, small so that limits are hit often.
pub const FUZZ_MAX_FRAME_BYTES: usize = 512;

/// Feeds `data[1..]` to a [`FrameDecoder`] in chunks whose sizes derive from `data[0]`, and
/// checks that chunked decoding yields exactly what whole-buffer decoding
/// ([`FrameDecoder::decode_slice`]) yields, that the buffer never grows without bound, and that
/// every decoded envelope survives an encode/decode round trip.
pub fn frame_decoder(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let max = FUZZ_MAX_FRAME_BYTES;

    // Reference: decode the whole stream from a slice.
    let mut expected: Vec<Result<v1::Envelope, ()>> = Vec::new();
    let mut rest = stream;
    let reference = FrameDecoder::new(max);
    loop {
        match reference.decode_slice(rest) {
            Ok(Some((env, used))) => {
                assert!(used >= LEN_PREFIX_BYTES && used <= rest.len(), "bad used count {used}");
                rest = &rest[used..];
                expected.push(Ok(env));
            }
            Ok(None) => break,
            Err(_) => {
                expected.push(Err(()));
                break;
            }
        }
    }

    // Under test: the same stream in chunks of 1..=16 bytes, sizes driven by `seed`.
    let mut decoder = FrameDecoder::new(max);
    let mut buf = BytesMut::new();
    let mut got: Vec<Result<v1::Envelope, ()>> = Vec::new();
    let mut state = u32::from(seed) | 1;
    let mut pos = 0;
    'feed: while pos < stream.len() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let chunk = 1 + (state >> 16) as usize % 16;
        let end = (pos + chunk).min(stream.len());
        buf.extend_from_slice(&stream[pos..end]);
        pos = end;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(env)) => got.push(Ok(env)),
                Ok(None) => break,
                Err(e) => {
                    assert!(
                        matches!(e, FrameError::TooLarge { .. } | FrameError::Malformed(_)),
                        "decode returned an encode-side error: {e}"
                    );
                    got.push(Err(()));
                    break 'feed;
                }
            }
            // No frame larger than the maximum may ever be buffered for.
            assert!(
                buf.capacity() <= 8 * (LEN_PREFIX_BYTES + max) + 64,
                "buffer grew to {} bytes",
                buf.capacity()
            );
        }
    }
    assert_eq!(got, expected, "chunked decoding differs from whole-buffer decoding");

    for env in got.into_iter().flatten() {
        assert_envelope_round_trips(&env);
    }
}

/// Decodes `data` as each protobuf message a peer can make this crate's users parse
/// ([`v1::Envelope`] from the wire, [`v1::Message`] inside Deliver/SyncPage, [`v1::GroupEvent`]
/// inside a group-event message body) and checks re-encode/decode consistency of what decodes.
pub fn envelope(data: &[u8]) {
    if let Ok(env) = v1::Envelope::decode(data) {
        assert_envelope_round_trips(&env);
        if let Some(Body::Deliver(v1::Deliver { message: Some(msg) })) = &env.body {
            check_message_body(msg);
        }
    }
    if let Ok(msg) = v1::Message::decode(data) {
        assert_round_trips(&msg);
        check_message_body(&msg);
    }
    if let Ok(ev) = v1::GroupEvent::decode(data) {
        assert_round_trips(&ev);
    }
}

/// Drives a [`ServerSession`] with frames and clock ticks read from `data` and checks its
/// invariants (replies answer the request they belong to, a closed session stays closed and
/// silent, fatal errors close, the deadline is honoured).
///
/// Input format, repeated: one opcode byte, then its operands.
/// - `op % 4 == 0`: a frame: 1-byte length `n`, then `n` bytes of protobuf `Envelope`
///   (bytes that do not decode are fed as a decode error).
/// - `op % 4 == 1`: time passes by `op / 4` seconds, then `on_tick`.
/// - `op % 4 == 2`: time jumps to the session's deadline (if any), then `on_tick`.
/// - `op % 4 == 3`: a frame-too-large decode error.
pub fn server_session(data: &[u8]) {
    let cfg = ServerSessionConfig {
        max_frame_bytes: FUZZ_MAX_FRAME_BYTES,
        ..ServerSessionConfig::default()
    };
    let start = Instant::now();
    let mut now = start;
    let mut session = ServerSession::new(now, 7, &cfg);
    let mut logged_in = false;
    let mut closed = false;
    let mut input = data;

    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        let unix_ms = 1_700_000_000_000 + (now - start).as_millis() as i64;
        let action = match op % 4 {
            0 => {
                let Some((&n, rest)) = input.split_first() else {
                    return;
                };
                let n = usize::from(n).min(rest.len());
                let (frame, rest) = rest.split_at(n);
                input = rest;
                match v1::Envelope::decode(frame) {
                    Ok(env) => {
                        let before_deadline = session.deadline(&cfg);
                        let action = on_frame_checked(
                            &mut session,
                            now,
                            unix_ms,
                            env,
                            &cfg,
                            logged_in,
                            closed,
                        );
                        if logged_in && !closed {
                            // Any frame from a logged-in client pushes the idle deadline.
                            let after = session.deadline(&cfg);
                            if !session.is_closed() {
                                assert_eq!(after, Some(now + cfg.idle_timeout));
                                assert!(after >= before_deadline);
                            }
                        }
                        action
                    }
                    Err(e) => {
                        let action = session.on_decode_error(&FrameError::Malformed(e));
                        assert_close_with_error(&action, ErrorCode::MalformedFrame, 0);
                        action
                    }
                }
            }
            1 => {
                now += Duration::from_secs(u64::from(op / 4));
                tick_checked(&mut session, now, &cfg, closed)
            }
            2 => {
                if let Some(deadline) = session.deadline(&cfg) {
                    now = now.max(deadline);
                    let action = tick_checked(&mut session, now, &cfg, closed);
                    assert!(matches!(action, Action::Close { .. }), "tick at deadline: {action:?}");
                    action
                } else {
                    Action::None
                }
            }
            _ => {
                let err =
                    FrameError::TooLarge { len: u64::from(u32::MAX), max: cfg.max_frame_bytes };
                let action = session.on_decode_error(&err);
                assert_close_with_error(&action, ErrorCode::FrameTooLarge, 0);
                action
            }
        };
        match &action {
            Action::LoggedIn { .. } => {
                assert!(!logged_in && !closed, "second LoggedIn");
                logged_in = true;
            }
            Action::Close { .. } => closed = true,
            _ => {}
        }
        assert_eq!(session.is_closed(), closed, "is_closed disagrees with the actions returned");
        assert_eq!(session.identity().is_some(), logged_in && !closed);
        if closed {
            assert_eq!(session.deadline(&cfg), None, "a closed session has no deadline");
        }
    }
}

/// The fuzz authenticator: `ok:<user>:<device>` logs in, `expired` is expired, anything else is
/// a bad token.
#[derive(Debug, Clone, Copy, Default)]
pub struct FuzzAuth;

impl Authenticator for FuzzAuth {
    fn authenticate(&self, token: &str, _now_unix_ms: i64) -> Result<Identity, AuthError> {
        if token == "expired" {
            return Err(AuthError::Expired);
        }
        let Some((user, device)) = token.strip_prefix("ok:").and_then(|t| t.split_once(':')) else {
            return Err(AuthError::BadToken("not ok:<user>:<device>".to_owned()));
        };
        Ok(Identity { user_id: user.to_owned(), device_id: device.to_owned() })
    }
}

fn on_frame_checked(
    session: &mut ServerSession,
    now: Instant,
    unix_ms: i64,
    env: v1::Envelope,
    cfg: &ServerSessionConfig,
    logged_in: bool,
    closed: bool,
) -> Action {
    let request_id = env.request_id;
    let body = env.body.clone();
    let action = session.on_frame(now, unix_ms, env.clone(), cfg, &FuzzAuth);
    if closed {
        assert_eq!(action, Action::None, "a closed session must ignore frames");
        return action;
    }
    match &action {
        Action::None => panic!("an open session answered nothing to {body:?}"),
        Action::Reply(reply) => {
            assert!(logged_in, "plain reply before login: {reply:?}");
            assert_eq!(reply.request_id, request_id, "reply must carry the request's id");
            match &reply.body {
                Some(Body::Pong(_)) => assert!(matches!(body, Some(Body::Ping(_)))),
                Some(Body::Error(e)) => assert!(!e.fatal, "fatal error without Close: {e:?}"),
                other => panic!("unexpected reply body {other:?}"),
            }
        }
        Action::LoggedIn { identity, reply } => {
            assert!(!logged_in, "LoggedIn twice");
            assert_eq!(reply.request_id, request_id);
            let Some(Body::LoginOk(ok)) = &reply.body else {
                panic!("LoggedIn without LoginOk: {reply:?}");
            };
            assert_eq!(ok.user_id, identity.user_id);
            assert_eq!(ok.device_id, identity.device_id);
            assert_eq!(ok.max_frame_bytes as usize, cfg.max_frame_bytes);
            assert_eq!(session.deadline(cfg), Some(now + cfg.idle_timeout));
        }
        Action::Forward(fwd) => {
            assert!(logged_in, "forwarded before login");
            assert_eq!(fwd, &env, "forward must pass the frame unchanged");
        }
        Action::Close { reply, .. } => {
            assert!(!logged_in, "a logged-in session closed on a decoded frame: {body:?}");
            let Some(reply) = reply else { panic!("Close without a reply frame") };
            assert_eq!(reply.request_id, request_id);
            let Some(Body::Error(e)) = &reply.body else {
                panic!("Close on a frame without an Error: {reply:?}");
            };
            assert!(e.fatal, "closing error must be fatal: {e:?}");
        }
    }
    action
}

fn tick_checked(
    session: &mut ServerSession,
    now: Instant,
    cfg: &ServerSessionConfig,
    closed: bool,
) -> Action {
    let deadline = session.deadline(cfg);
    let action = session.on_tick(now, cfg);
    match (&action, deadline) {
        (Action::None, Some(d)) => assert!(now < d, "deadline {d:?} passed without Close"),
        (Action::None, None) => assert!(closed),
        (Action::Close { reply: Some(reply), .. }, Some(d)) => {
            assert!(now >= d, "closed before the deadline");
            assert_eq!(reply.request_id, 0, "timeouts are pushes");
            match &reply.body {
                Some(Body::Error(e)) => {
                    assert_eq!(e.code, ErrorCode::LoginTimeout as i32);
                    assert!(e.fatal);
                }
                Some(Body::Kick(k)) => assert_eq!(k.reason, v1::KickReason::IdleTimeout as i32),
                other => panic!("unexpected timeout frame {other:?}"),
            }
        }
        other => panic!("unexpected tick result {other:?}"),
    }
    action
}

fn assert_close_with_error(action: &Action, code: ErrorCode, request_id: u64) {
    // A decode error on an already closed session still reports Close (the driver is closing
    // anyway); what matters is that it closes with the right code.
    let Action::Close { reply: Some(reply), .. } = action else {
        panic!("decode error must close: {action:?}");
    };
    assert_eq!(reply.request_id, request_id);
    let Some(Body::Error(e)) = &reply.body else {
        panic!("decode error must answer an Error: {reply:?}");
    };
    assert_eq!(e.code, code as i32);
    assert!(e.fatal);
}

fn check_message_body(msg: &v1::Message) {
    if msg.kind == v1::MessageKind::GroupEvent as i32
        && let Ok(ev) = v1::GroupEvent::decode(&msg.body[..])
    {
        assert_round_trips(&ev);
    }
}

/// Encodes `env` (without a size limit: canonical re-encoding may be longer than the input, e.g.
/// a negative enum written as a 5-byte varint re-encodes as 10 bytes), decodes it back, and
/// checks equality and that encoding is deterministic.
fn assert_envelope_round_trips(env: &v1::Envelope) {
    let mut framed = BytesMut::new();
    if let Err(e) = encode_frame(env, usize::MAX, &mut framed) {
        // Only possible past 4 GiB, which no decoded input can reach.
        panic!("encode of a decoded envelope failed: {e}");
    }
    let mut decoder = FrameDecoder::new(usize::MAX);
    match decoder.decode(&mut framed) {
        Ok(Some(back)) => assert_eq!(&back, env, "frame round trip changed the envelope"),
        other => panic!("re-encoded frame did not decode: {other:?}"),
    }
    assert!(framed.is_empty(), "re-encoded frame left {} bytes", framed.len());
    assert_round_trips(env);
}

fn assert_round_trips<M: prost::Message + Default + PartialEq + std::fmt::Debug>(msg: &M) {
    let bytes = msg.encode_to_vec();
    assert_eq!(bytes.len(), msg.encoded_len(), "encoded_len disagrees with encode");
    match M::decode(bytes.as_slice()) {
        Ok(back) => {
            assert_eq!(&back, msg, "protobuf round trip changed the message: {msg:?}");
            assert_eq!(back.encode_to_vec(), bytes, "encoding is not deterministic");
        }
        Err(e) => panic!("re-encoded message did not decode: {e}"),
    }
}
