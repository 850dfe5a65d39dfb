//! Sans-IO tests of [`BotSession`] and the churn schedule.

use super::*;
use tern_proto::v1::{Deliver, LoginOk, Message, Pong, SyncHint};
use tern_proto::{encode_frame, encode_to_bytes};

/// A wall clock reading (Unix nanoseconds) for tests that do not look at it.
const WALL: u64 = 1_700_000_000_000_000_000;

fn frame(body: Body) -> Vec<u8> {
    let env = Envelope { request_id: 1, body: Some(body) };
    encode_to_bytes(&env, DEFAULT_MAX_FRAME_BYTES).map(|b| b.to_vec()).unwrap_or_default()
}

fn started(now: Instant, reconnect: Option<Instant>) -> (BotSession, Vec<u8>) {
    let mut out = Vec::new();
    let s = BotSession::start(
        "tok".into(),
        now,
        Duration::from_secs(10),
        Duration::from_secs(30),
        reconnect,
        &mut out,
    );
    (s.unwrap_or_else(|e| panic!("start: {e}")), out)
}

#[test]
fn login_then_ping_every_heartbeat_and_count_pongs() {
    let t0 = Instant::now();
    let (mut s, out) = started(t0, None);
    let login = FrameDecoder::default().decode_slice(&out);
    assert!(matches!(login, Ok(Some((Envelope { body: Some(Body::Login(_)), .. }, _)))));
    assert_eq!(s.deadline(), t0 + Duration::from_secs(10));

    let mut events = Vec::new();
    let ok = frame(Body::LoginOk(LoginOk::default()));
    let t1 = t0 + Duration::from_millis(7);
    assert_eq!(s.feed(&ok, t1, WALL, |e| events.push(e)), Ok(()));
    assert_eq!(events, vec![Event::LoggedIn { latency: Duration::from_millis(7) }]);
    assert_eq!(s.deadline(), t1 + Duration::from_secs(30));

    let mut out = Vec::new();
    assert_eq!(s.on_deadline(t1 + Duration::from_secs(1), &mut out), Ok(Tick::Idle));
    assert!(out.is_empty());
    let t2 = t1 + Duration::from_secs(30);
    assert_eq!(s.on_deadline(t2, &mut out), Ok(Tick::SendPing));
    let ping = FrameDecoder::default().decode_slice(&out);
    assert!(matches!(ping, Ok(Some((Envelope { request_id: 2, body: Some(Body::Ping(_)) }, _)))));
    assert_eq!(s.deadline(), t2 + Duration::from_secs(30));

    // Two pongs, the second split across reads.
    let mut pongs = frame(Body::Pong(Pong::default()));
    pongs.extend(frame(Body::Pong(Pong::default())));
    let split = pongs.len() - 2;
    events.clear();
    assert_eq!(s.feed(&pongs[..split], t2, WALL, |e| events.push(e)), Ok(()));
    assert_eq!(events, vec![Event::Pong]);
    assert_eq!(s.feed(&pongs[split..], t2, WALL, |e| events.push(e)), Ok(()));
    assert_eq!(events, vec![Event::Pong, Event::Pong]);
    assert!(s.pending.capacity() == 0 || s.pending.is_empty());
}

#[test]
fn login_timeout_rejection_kick_and_garbage_fail_with_their_kind() {
    let t0 = Instant::now();
    let (mut s, _) = started(t0, None);
    let mut out = Vec::new();
    let late = s.on_deadline(t0 + Duration::from_secs(10), &mut out);
    assert_eq!(late.map_err(|e| e.kind()), Err(FailKind::LoginTimeout));

    let (mut s, _) = started(t0, None);
    let err = frame(Body::Error(tern_proto::v1::Error::default()));
    assert_eq!(s.feed(&err, t0, WALL, |_| {}).map_err(|e| e.kind()), Err(FailKind::LoginRejected));

    let (mut s, _) = started(t0, None);
    let kick = frame(Body::Kick(tern_proto::v1::Kick { reason: 1, message: String::new() }));
    assert_eq!(s.feed(&kick, t0, WALL, |_| {}), Err(SessionError::Kicked(1)));

    let (mut s, _) = started(t0, None);
    let garbage = [0xff, 0xff, 0xff, 0xff, 0];
    assert_eq!(s.feed(&garbage, t0, WALL, |_| {}).map_err(|e| e.kind()), Err(FailKind::Protocol));
    let mut buf = Vec::new();
    assert!(encode_frame(&Envelope::default(), 16, &mut buf).is_ok());
}

#[test]
fn churn_asks_for_reconnect_after_login() {
    let t0 = Instant::now();
    let at = t0 + Duration::from_secs(5);
    let (mut s, _) = started(t0, Some(at));
    assert_eq!(s.feed(&frame(Body::LoginOk(LoginOk::default())), t0, WALL, |_| {}), Ok(()));
    assert_eq!(s.deadline(), at);
    assert_eq!(s.on_deadline(at, &mut Vec::new()), Ok(Tick::Reconnect));
}

#[test]
fn churn_slots_spread_over_the_period() {
    let epoch = Instant::now();
    let ch = Churn { epoch, period: Duration::from_secs(10), step: Duration::from_secs(1) };
    assert_eq!(ch.next_after(3, epoch), epoch + Duration::from_secs(3));
    assert_eq!(ch.next_after(13, epoch), epoch + Duration::from_secs(3));
    let later = ch.next_after(3, epoch + Duration::from_secs(4));
    assert!(later > epoch + Duration::from_millis(12_999));
    assert!(later < epoch + Duration::from_millis(13_001));
}

fn deliver(body: &[u8]) -> Vec<u8> {
    let message = Message {
        conversation_id: "dm:a:b".into(),
        seq: 1,
        body: bytes::Bytes::copy_from_slice(body),
        ..Message::default()
    };
    frame(Body::Deliver(Deliver { message: Some(message) }))
}

#[test]
fn deliveries_are_counted_and_probes_timed_against_the_wall_clock() {
    let t0 = Instant::now();
    let (mut s, _) = started(t0, None);
    assert_eq!(s.feed(&frame(Body::LoginOk(LoginOk::default())), t0, WALL, |_| {}), Ok(()));

    let sent = WALL - 2_500_000; // 2.5 ms before receipt
    let mut bytes = deliver(format!("probe:{sent}").as_bytes());
    bytes.extend(deliver(b"hello"));
    bytes.extend(deliver(format!("probe:{}", WALL + 1).as_bytes()));
    bytes.extend(frame(Body::Deliver(Deliver { message: None })));
    bytes.extend(deliver(b"probe:12x"));
    let mut events = Vec::new();
    // Split mid-frame: the tail waits for the next read.
    let split = bytes.len() - 3;
    assert_eq!(s.feed(&bytes[..split], t0, WALL, |e| events.push(e)), Ok(()));
    assert_eq!(events.len(), 4);
    assert_eq!(s.feed(&bytes[split..], t0, WALL, |e| events.push(e)), Ok(()));
    assert_eq!(
        events,
        vec![
            Event::Delivered(Delivery::Probe { latency: Duration::from_micros(2500), sent }),
            Event::Delivered(Delivery::Other),
            Event::Delivered(Delivery::ProbeFromFuture),
            Event::Delivered(Delivery::Other),
            Event::Delivered(Delivery::Other),
        ]
    );
    assert!(s.is_logged_in());
}

#[test]
fn unknown_pushes_and_non_fatal_errors_keep_the_session() {
    let t0 = Instant::now();
    let (mut s, _) = started(t0, None);
    assert_eq!(s.feed(&frame(Body::LoginOk(LoginOk::default())), t0, WALL, |_| {}), Ok(()));
    let mut bytes = frame(Body::SyncHint(SyncHint { reason: "gap".into() }));
    bytes.extend(frame(Body::Error(tern_proto::v1::Error {
        fatal: false,
        ..tern_proto::v1::Error::default()
    })));
    bytes.extend(frame(Body::LoginOk(LoginOk::default())));
    bytes.extend(
        encode_to_bytes(&Envelope::default(), DEFAULT_MAX_FRAME_BYTES)
            .map_or_else(|_| Vec::new(), |b| b.to_vec()),
    );
    let mut events = Vec::new();
    assert_eq!(s.feed(&bytes, t0, WALL, |e| events.push(e)), Ok(()));
    assert!(events.is_empty(), "{events:?}");
    assert!(s.is_logged_in());
    // A Deliver before LoginOk is not counted and does not fail the login.
    let (mut s, _) = started(t0, None);
    assert_eq!(s.feed(&deliver(b"probe:1"), t0, WALL, |e| events.push(e)), Ok(()));
    assert!(events.is_empty());
}
