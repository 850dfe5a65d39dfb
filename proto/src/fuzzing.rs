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
    Action, AuthError, Authenticator, CloseReason, Identity, ServerSession, ServerSessionConfig,
    Verified,
};
use crate::v1::{self, ErrorCode, envelope::Body};

mod link_handshake;
pub use link_handshake::link_handshake;

/// Maximum frame size the fuzz targets configure, small so that limits are hit often.
pub const FUZZ_MAX_FRAME_BYTES: usize = 512;
/// The wall clock when [`server_session`] starts, Unix milliseconds.
pub const FUZZ_SESSION_T0_UNIX_MS: i64 = 1_700_000_000_000;
/// The clock leeway [`FuzzAuth`] reports, milliseconds.
pub const FUZZ_LEEWAY_MS: i64 = 500;

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
/// silent, fatal errors close, the deadline is honoured, the token's expiry closes the session
/// at `exp + leeway` and never before, a RefreshToken moves it or changes nothing).
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
    // When the token in force ends (exp + leeway) on the session clock, as announced.
    let mut token_end: Option<Instant> = None;
    let mut input = data;

    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        let unix_ms = FUZZ_SESSION_T0_UNIX_MS + (now - start).as_millis() as i64;
        let expected_deadline = |now: Instant, end: Option<Instant>| {
            let idle = now + cfg.idle_timeout;
            Some(end.map_or(idle, |e| e.min(idle)))
        };
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
                            Seen { logged_in, closed, token_end },
                        );
                        match &action {
                            Action::LoggedIn { reply, .. } => {
                                if let Some(Body::LoginOk(ok)) = &reply.body {
                                    token_end = announced_end(start, ok.token_expires_at_ms);
                                }
                            }
                            Action::Reply(v1::Envelope {
                                body: Some(Body::TokenRefreshed(t)),
                                ..
                            }) => token_end = announced_end(start, t.expires_at_ms),
                            _ => {}
                        }
                        if (logged_in || matches!(action, Action::LoggedIn { .. }))
                            && !session.is_closed()
                        {
                            // Any frame from a logged-in client pushes the idle deadline; the
                            // token's end caps it.
                            let after = session.deadline(&cfg);
                            assert_eq!(after, expected_deadline(now, token_end));
                            if logged_in && token_end.is_none() {
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

/// The session end that an announced `exp` (Unix ms, 0 = none) implies on the fuzz clock.
fn announced_end(start: Instant, expires_at_ms: i64) -> Option<Instant> {
    if expires_at_ms == 0 {
        return None;
    }
    let v = Verified {
        identity: Identity { user_id: String::new(), device_id: String::new() },
        expires_at_ms: Some(expires_at_ms),
        leeway_ms: FUZZ_LEEWAY_MS,
        issued_at_ms: None,
    };
    v.session_end(start, FUZZ_SESSION_T0_UNIX_MS)
}

/// The fuzz authenticator: `ok:<user>:<device>` logs in and never expires;
/// `ok:<user>:<device>:<n>` expires `n` seconds after [`FUZZ_SESSION_T0_UNIX_MS`] (with
/// [`FUZZ_LEEWAY_MS`]) and is `Expired` once that passed; `expired` is expired; anything else is
/// a bad token.
#[derive(Debug, Clone, Copy, Default)]
pub struct FuzzAuth;

impl Authenticator for FuzzAuth {
    fn authenticate(&self, token: &str, now_unix_ms: i64) -> Result<Identity, AuthError> {
        self.verify(token, now_unix_ms).map(|v| v.identity)
    }

    fn verify(&self, token: &str, now_unix_ms: i64) -> Result<Verified, AuthError> {
        if token == "expired" {
            return Err(AuthError::Expired);
        }
        let Some((user, rest)) = token.strip_prefix("ok:").and_then(|t| t.split_once(':')) else {
            return Err(AuthError::BadToken("not ok:<user>:<device>".to_owned()));
        };
        let (device, exp) = match rest.rsplit_once(':') {
            Some((device, n)) => match n.parse::<u16>() {
                Ok(n) => (device, Some(FUZZ_SESSION_T0_UNIX_MS + i64::from(n) * 1000)),
                Err(_) => (rest, None),
            },
            None => (rest, None),
        };
        if exp.is_some_and(|e| e + FUZZ_LEEWAY_MS <= now_unix_ms) {
            return Err(AuthError::Expired);
        }
        Ok(Verified {
            identity: Identity { user_id: user.to_owned(), device_id: device.to_owned() },
            expires_at_ms: exp,
            leeway_ms: FUZZ_LEEWAY_MS,
            issued_at_ms: None,
        })
    }
}

/// What [`server_session`] knows of the session before a frame.
#[derive(Debug, Clone, Copy)]
struct Seen {
    logged_in: bool,
    closed: bool,
    /// When the token in force ends (as announced), if ever.
    token_end: Option<Instant>,
}

fn on_frame_checked(
    session: &mut ServerSession,
    now: Instant,
    unix_ms: i64,
    env: v1::Envelope,
    cfg: &ServerSessionConfig,
    seen: Seen,
) -> Action {
    let Seen { logged_in, closed, token_end } = seen;
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
                Some(Body::TokenRefreshed(_)) => {
                    assert!(matches!(body, Some(Body::RefreshToken(_))));
                }
                Some(Body::Error(e)) => assert!(!e.fatal, "fatal error without Close: {e:?}"),
                other => panic!("unexpected reply body {other:?}"),
            }
        }
        Action::LoggedIn { identity, reply, .. } => {
            assert!(!logged_in, "LoggedIn twice");
            assert_eq!(reply.request_id, request_id);
            let Some(Body::LoginOk(ok)) = &reply.body else {
                panic!("LoggedIn without LoginOk: {reply:?}");
            };
            assert_eq!(ok.user_id, identity.user_id);
            assert_eq!(ok.device_id, identity.device_id);
            assert_eq!(ok.max_frame_bytes as usize, cfg.max_frame_bytes);
            assert!(session.deadline(cfg) <= Some(now + cfg.idle_timeout));
        }
        Action::Forward(fwd) => {
            assert!(logged_in, "forwarded before login");
            assert_eq!(fwd, &env, "forward must pass the frame unchanged");
        }
        Action::Close { reply: Some(v1::Envelope { body: Some(Body::Kick(k)), .. }), .. } => {
            // A logged-in session closes on a frame with a Kick only when its token ran out.
            assert!(logged_in, "kick on a frame before login");
            assert_eq!(k.reason, v1::KickReason::TokenExpired as i32, "{k:?}");
            assert!(token_end.is_some_and(|end| now >= end), "token kick before its end");
        }
        Action::Close { reply, reason } => {
            // Once logged in, only the rate limit closes on a decoded frame with an Error.
            assert!(
                !logged_in || *reason == CloseReason::RateLimited,
                "a logged-in session closed on a decoded frame: {body:?}"
            );
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
                Some(Body::Kick(k)) => assert!(
                    [v1::KickReason::IdleTimeout as i32, v1::KickReason::TokenExpired as i32]
                        .contains(&k.reason),
                    "unexpected kick {k:?}"
                ),
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

/// Conversations [`client_session`] spreads its operations over.
pub const CLIENT_SESSION_CONVERSATIONS: [&str; 3] = ["dm:alice:bob", "g:team", "g:x"];

/// Decodes one seq operand of [`client_session`]: `b % 32` (a small range, so that gaps and
/// duplicates are common), except that `0xF0..=0xFF` map to `u64::MAX - (b & 0x0F)` (the top of
/// the range, where `+ 1` overflows).
pub fn client_session_seq(b: u8) -> u64 {
    if b >= 0xF0 { u64::MAX - u64::from(b & 0x0F) } else { u64::from(b % 32) }
}

/// Drives the client state machines of [`crate::session::client`] with operations read from
/// `data` and checks their invariants after every step.
///
/// [`InboundOrder`](crate::session::client::InboundOrder), per conversation: released messages
/// belong to it, have strictly increasing seqs that never repeat and are above the previous
/// cursor, and were fed as messages; a seq acknowledged as own before any message with it was
/// fed is never released; the cursor never goes back and only moves over seqs something was fed
/// for (except [`skip_gap`](crate::session::client::InboundOrder::skip_gap), which exists to skip
/// holes); a message next in line is released at once; the buffer holds at most the configured
/// maximum plus the own acks still ahead of the cursor (those are kept over the bound by
/// design); `needs_sync` is `None` or `cursor + 1`, is `Some` while anything is buffered, and
/// agrees with `gaps`. [`Outbox`](crate::session::client::Outbox),
/// [`Heartbeat`](crate::session::client::Heartbeat) and
/// [`Backoff`](crate::session::client::Backoff) are checked against simple models.
///
/// Input format: one config byte (`max_buffered = 1 + (b & 7)`, outbox capacity
/// `1 + (b >> 3 & 7)`), two heartbeat bytes (interval and silence timeout in seconds, 0 =
/// disabled), one backoff byte; then opcodes. Seq operands are single bytes decoded by
/// [`client_session_seq`]; `c = (op >> 3) % 3` picks the conversation.
/// - `op % 8 == 0`: a pushed message: seq.
/// - `op % 8 == 1`: an own `SendAck`: seq.
/// - `op % 8 == 2`: a sync page: a shape byte `s` (`s & 7` messages, `s >> 3 & 3` missing
///   ranges, `s & 0x20` has_more, `s & 0x40`: the first message names another conversation,
///   `s & 0x80`: messages leave `conversation_id` empty), then one seq per message, two per
///   range (first, last), then `last_seq` and `next_from_seq`.
/// - `op % 8 == 3`: `note_last_seq`: seq.
/// - `op % 8 == 4`: `skip_gap`.
/// - `op % 8 == 5`: outbox: one byte `b`, `b & 1` insert / remove of id `b >> 1 & 7`.
/// - `op % 8 == 6`: heartbeat: one byte `b`; time passes by `b >> 2` seconds, then `b & 3`:
///   0 sent, 1 received, 2 poll, 3 nothing more.
/// - `op % 8 == 7`: backoff: one byte `b`: `b == 0` resets, otherwise `next_delay` with a
///   random value derived from `b`.
pub fn client_session(data: &[u8]) {
    use crate::session::client::{Backoff, Heartbeat, InboundOrder, Outbox};

    let mut input = data;
    let mut next = || -> Option<u8> {
        let (&b, rest) = input.split_first()?;
        input = rest;
        Some(b)
    };
    let (Some(cfg), Some(hb_interval), Some(hb_silence), Some(backoff_cfg)) =
        (next(), next(), next(), next())
    else {
        return;
    };
    let max_buffered = 1 + usize::from(cfg & 7);
    let mut inbound = InboundOrder::new(max_buffered);
    let mut models: Vec<ConvModel> =
        CLIENT_SESSION_CONVERSATIONS.iter().map(|_| ConvModel::default()).collect();
    let mut outbox = OutboxModel::new(1 + usize::from(cfg >> 3 & 7));
    let t0 = Instant::now();
    let mut heartbeat = HeartbeatModel::new(t0, hb_interval, hb_silence);
    let mut backoff = BackoffModel::new(backoff_cfg);

    while let Some(op) = next() {
        let c = usize::from(op >> 3) % CLIENT_SESSION_CONVERSATIONS.len();
        let conv = CLIENT_SESSION_CONVERSATIONS[c];
        let model = &mut models[c];
        let cursor = inbound.cursor(conv);
        assert_eq!(cursor, model.cursor, "{conv}: cursor changed outside a call on it");
        let buffered = inbound.buffered(conv);
        match op % 8 {
            0 => {
                let Some(b) = next() else { return };
                let seq = client_session_seq(b);
                let msg = fuzz_message(conv, seq, u64::from(op));
                if seq > 0 {
                    model.fed_message(seq);
                }
                let out = inbound.on_message(msg);
                if seq > 0 && cursor.checked_add(1) == Some(seq) {
                    assert_eq!(out.first().map(|m| m.seq), Some(seq), "next in line held back");
                }
                model.check_step(&inbound, conv, &out, false, max_buffered);
            }
            1 => {
                let Some(b) = next() else { return };
                let seq = client_session_seq(b);
                if seq > 0 {
                    model.fed_own(seq);
                }
                let out = inbound.on_own_ack(conv, seq);
                model.check_step(&inbound, conv, &out, false, max_buffered);
            }
            2 => {
                let Some(shape) = next() else { return };
                let mut page = v1::SyncPage {
                    conversation_id: conv.to_owned(),
                    has_more: shape & 0x20 != 0,
                    ..Default::default()
                };
                for i in 0..(shape & 7) {
                    let Some(b) = next() else { return };
                    let seq = client_session_seq(b);
                    let mut m = fuzz_message(conv, seq, u64::from(shape));
                    if i == 0 && shape & 0x40 != 0 {
                        m.conversation_id = "g:elsewhere".to_owned();
                    } else if shape & 0x80 != 0 {
                        m.conversation_id.clear();
                    }
                    page.messages.push(m);
                }
                for _ in 0..(shape >> 3 & 3) {
                    let (Some(first), Some(last)) = (next(), next()) else { return };
                    page.missing.push(v1::SeqRange {
                        first: client_session_seq(first),
                        last: client_session_seq(last),
                    });
                }
                let (Some(last_seq), Some(next_from)) = (next(), next()) else { return };
                page.last_seq = client_session_seq(last_seq);
                page.next_from_seq = client_session_seq(next_from);
                for m in &page.messages {
                    if m.seq > 0 && (m.conversation_id.is_empty() || m.conversation_id == conv) {
                        model.fed_message(m.seq);
                    }
                }
                for r in &page.missing {
                    if r.first > 0 && r.last >= r.first {
                        model.covered.insert(r.first, r.last);
                    }
                }
                let out = inbound.on_sync_page(&page);
                model.check_step(&inbound, conv, &out, false, max_buffered);
            }
            3 => {
                let Some(b) = next() else { return };
                let seq = client_session_seq(b);
                inbound.note_last_seq(conv, seq);
                model.check_step(&inbound, conv, &[], false, max_buffered);
                if seq > cursor {
                    assert!(inbound.needs_sync(conv).is_some(), "{conv}: last_seq {seq} ignored");
                }
            }
            4 => {
                let out = inbound.skip_gap(conv);
                model.check_step(&inbound, conv, &out, true, max_buffered);
                if buffered > 0 {
                    assert!(inbound.cursor(conv) > cursor, "{conv}: skip_gap did not move");
                }
            }
            5 => {
                let Some(b) = next() else { return };
                outbox.apply(b);
            }
            6 => {
                let Some(b) = next() else { return };
                heartbeat.apply(b);
            }
            _ => {
                let Some(b) = next() else { return };
                backoff.apply(b);
            }
        }
        // needs_sync and gaps agree for every conversation.
        let mut gaps = inbound.gaps();
        gaps.sort();
        let mut expected: Vec<(String, u64)> = CLIENT_SESSION_CONVERSATIONS
            .iter()
            .filter_map(|c| inbound.needs_sync(c).map(|from| ((*c).to_owned(), from)))
            .collect();
        expected.sort();
        assert_eq!(gaps, expected, "gaps() disagrees with needs_sync()");
    }

    /// What the fuzzer knows about one conversation.
    #[derive(Default)]
    struct ConvModel {
        cursor: u64,
        last_released: Option<u64>,
        released: std::collections::HashSet<u64>,
        /// Seqs fed as messages (of this conversation).
        messages: std::collections::HashSet<u64>,
        /// Seqs acknowledged as own before any message with that seq was fed.
        own_first: std::collections::BTreeSet<u64>,
        /// Every seq acknowledged as own.
        own: std::collections::BTreeSet<u64>,
        /// Seqs something was fed for: messages, own acks, missing ranges.
        covered: RangeSet,
    }

    impl ConvModel {
        fn fed_message(&mut self, seq: u64) {
            self.messages.insert(seq);
            self.covered.insert(seq, seq);
        }

        fn fed_own(&mut self, seq: u64) {
            if !self.messages.contains(&seq) {
                self.own_first.insert(seq);
            }
            self.own.insert(seq);
            self.covered.insert(seq, seq);
        }

        fn check_step(
            &mut self,
            inbound: &InboundOrder,
            conv: &str,
            out: &[v1::Message],
            skipping: bool,
            max_buffered: usize,
        ) {
            let before = self.cursor;
            let cursor = inbound.cursor(conv);
            assert!(cursor >= before, "{conv}: cursor went back from {before} to {cursor}");
            for m in out {
                assert_eq!(m.conversation_id, conv, "released into the wrong conversation");
                assert!(m.seq > before, "{conv}: released seq {} at or below {before}", m.seq);
                assert!(m.seq <= cursor, "{conv}: released seq {} past the cursor", m.seq);
                if let Some(last) = self.last_released {
                    assert!(m.seq > last, "{conv}: released {} after {last}", m.seq);
                }
                assert!(self.released.insert(m.seq), "{conv}: seq {} released twice", m.seq);
                assert!(self.messages.contains(&m.seq), "{conv}: seq {} was never fed", m.seq);
                assert!(!self.own_first.contains(&m.seq), "{conv}: own seq {} released", m.seq);
                self.last_released = Some(m.seq);
            }
            if cursor > before {
                if skipping {
                    self.covered.insert(before + 1, cursor);
                } else {
                    assert!(
                        self.covered.contains(before + 1, cursor),
                        "{conv}: cursor moved from {before} to {cursor} over unseen seqs"
                    );
                }
            }
            self.cursor = cursor;
            let own_ahead = self.own.range(cursor.saturating_add(1)..).count();
            let buffered = inbound.buffered(conv);
            assert!(
                buffered <= max_buffered + own_ahead,
                "{conv}: {buffered} buffered (max {max_buffered}, {own_ahead} own acks ahead)"
            );
            let needs = inbound.needs_sync(conv);
            assert!(
                needs.is_none() || needs == cursor.checked_add(1),
                "{conv}: needs_sync {needs:?} with cursor {cursor}"
            );
            if buffered > 0 {
                assert!(needs.is_some(), "{conv}: {buffered} buffered but no sync asked for");
            }
        }
    }

    struct OutboxModel {
        outbox: Outbox<u8>,
        /// Pending ids in insertion order, with their item.
        pending: Vec<(String, u8)>,
    }

    impl OutboxModel {
        fn new(capacity: usize) -> Self {
            Self { outbox: Outbox::new(capacity), pending: Vec::new() }
        }

        fn apply(&mut self, b: u8) {
            let id = format!("m{}", b >> 1 & 7);
            let pos = self.pending.iter().position(|(p, _)| *p == id);
            if b & 1 == 0 {
                let got = self.outbox.insert(id.clone(), b);
                match pos {
                    Some(_) => assert_eq!(got, Ok(Some(b)), "duplicate insert must hand back"),
                    None if self.pending.len() >= self.outbox.capacity() => {
                        assert!(got.is_err(), "insert over capacity accepted");
                    }
                    None => {
                        assert_eq!(got, Ok(None));
                        self.pending.push((id, b));
                    }
                }
            } else {
                let got = self.outbox.remove(&id);
                assert_eq!(got, pos.map(|i| self.pending.remove(i).1), "remove of {id}");
            }
            assert_eq!(self.outbox.len(), self.pending.len());
            assert_eq!(self.outbox.is_empty(), self.pending.is_empty());
            let iter: Vec<(String, u8)> =
                self.outbox.iter().map(|(id, item)| (id.to_owned(), *item)).collect();
            assert_eq!(iter, self.pending, "outbox order or content differs");
            let ids: Vec<String> = self.pending.iter().map(|(id, _)| id.clone()).collect();
            assert_eq!(self.outbox.ids(), ids);
            for (id, item) in &self.pending {
                assert_eq!(self.outbox.get(id), Some(item));
                assert!(self.outbox.contains(id));
            }
        }
    }

    struct HeartbeatModel {
        hb: Heartbeat,
        now: Instant,
        interval: Option<Duration>,
        silence: Option<Duration>,
        last_tx: Instant,
        last_rx: Instant,
    }

    impl HeartbeatModel {
        fn new(t0: Instant, interval: u8, silence: u8) -> Self {
            let ok = v1::LoginOk {
                heartbeat_interval_ms: u32::from(interval) * 1000,
                idle_timeout_ms: u32::from(silence) * 1000,
                ..Default::default()
            };
            let interval = Duration::from_secs(u64::from(interval));
            let silence =
                if silence > 0 { Duration::from_secs(u64::from(silence)) } else { interval * 3 };
            Self {
                hb: Heartbeat::from_login_ok(t0, &ok),
                now: t0,
                interval: (!interval.is_zero()).then_some(interval),
                silence: (!silence.is_zero()).then_some(silence),
                last_tx: t0,
                last_rx: t0,
            }
        }

        fn apply(&mut self, b: u8) {
            use crate::session::client::HeartbeatAction;
            self.now += Duration::from_secs(u64::from(b >> 2));
            let now = self.now;
            match b & 3 {
                0 => {
                    self.hb.on_sent(now);
                    self.last_tx = now;
                }
                1 => {
                    self.hb.on_received(now);
                    self.last_rx = now;
                }
                2 => {
                    let ping = self.interval.map(|i| self.last_tx + i);
                    let silence = self.silence.map(|s| self.last_rx + s);
                    let expected = if silence.is_some_and(|d| now >= d) {
                        HeartbeatAction::Reconnect
                    } else if ping.is_some_and(|d| now >= d) {
                        HeartbeatAction::Ping
                    } else {
                        HeartbeatAction::None
                    };
                    assert_eq!(self.hb.poll(now), expected, "heartbeat poll");
                    if self.hb.next_deadline().is_some_and(|d| now < d) {
                        assert_eq!(expected, HeartbeatAction::None, "acted before its deadline");
                    }
                }
                _ => {}
            }
            let ping = self.interval.map(|i| self.last_tx + i);
            let silence = self.silence.map(|s| self.last_rx + s);
            assert_eq!(self.hb.ping_deadline(), ping);
            assert_eq!(self.hb.silence_deadline(), silence);
            let next = match (ping, silence) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            assert_eq!(self.hb.next_deadline(), next);
        }
    }

    struct BackoffModel {
        backoff: Backoff,
        min: Duration,
        max: Duration,
        last_ceiling: Duration,
        attempts: u32,
    }

    impl BackoffModel {
        fn new(b: u8) -> Self {
            // min 0..=150 ms, max 0..=60 s (raised to min when lower).
            let min = Duration::from_millis(u64::from(b & 0x0F) * 10);
            let max = Duration::from_secs(u64::from(b >> 4) * 4);
            let backoff = Backoff::new(min, max);
            let last_ceiling = backoff.ceiling();
            Self { backoff, min, max: max.max(min), last_ceiling, attempts: 0 }
        }

        fn apply(&mut self, b: u8) {
            if b == 0 {
                self.backoff.reset();
                self.attempts = 0;
                assert_eq!(self.backoff.ceiling(), self.min, "ceiling after reset");
            } else {
                let ceiling = self.backoff.ceiling();
                let random = u64::from(b).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let delay = self.backoff.next_delay(random);
                self.attempts = self.attempts.saturating_add(1);
                assert!(delay >= self.min && delay <= ceiling, "delay {delay:?} > {ceiling:?}");
                assert!(self.backoff.ceiling() >= ceiling, "ceiling shrank");
            }
            let ceiling = self.backoff.ceiling();
            assert!(ceiling >= self.min && ceiling <= self.max, "ceiling {ceiling:?} out of range");
            if self.attempts > 0 {
                assert!(ceiling >= self.last_ceiling, "ceiling shrank without reset");
            }
            self.last_ceiling = ceiling;
            assert_eq!(self.backoff.attempts(), self.attempts);
        }
    }
}

fn fuzz_message(conversation_id: &str, seq: u64, salt: u64) -> v1::Message {
    v1::Message {
        conversation_id: conversation_id.to_owned(),
        seq,
        sender_user_id: "bob".to_owned(),
        client_msg_id: format!("c{salt}-{seq}"),
        body: bytes::Bytes::from(seq.to_be_bytes().to_vec()),
        ..Default::default()
    }
}

/// A set of `u64`s kept as disjoint, non-adjacent inclusive ranges (start → end).
#[derive(Debug, Default)]
struct RangeSet(std::collections::BTreeMap<u64, u64>);

impl RangeSet {
    /// Adds `first..=last` (`first <= last`), merging with overlapping or adjacent ranges.
    fn insert(&mut self, first: u64, last: u64) {
        let (mut lo, mut hi) = (first, last);
        // A range starting at or before `lo` that reaches it (or ends right before it).
        if let Some((&s, &e)) = self.0.range(..=lo).next_back()
            && e.saturating_add(1) >= lo
        {
            lo = s;
            hi = hi.max(e);
        }
        // Ranges starting inside `lo..=hi + 1` merge in.
        let absorbed: Vec<(u64, u64)> =
            self.0.range(lo..=hi.saturating_add(1)).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in absorbed {
            self.0.remove(&s);
            hi = hi.max(e);
        }
        self.0.insert(lo, hi);
    }

    /// Whether every value of `first..=last` is in the set.
    fn contains(&self, first: u64, last: u64) -> bool {
        self.0.range(..=first).next_back().is_some_and(|(_, &e)| e >= last)
    }
}
