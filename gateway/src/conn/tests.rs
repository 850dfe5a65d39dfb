//! Deterministic tests of [`Connection`] over the in-memory driver of [`super::testing`]:
//! virtual clock, in-memory sink, recording environment, the real timer wheel.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use tern_proto::FrameDecoder;
use tern_proto::v1::{Envelope, ErrorCode, KickReason, envelope::Body};

use super::testing::{Harness, login, ping, send};
use super::{Connection, LOGIN_PUBLISH_WAIT};
use crate::closing::CLOSE_LINGER;
use crate::config::{DuplicateLogin, GatewayConfig};

const MS: Duration = Duration::from_millis(1);

fn push_frame(len: usize) -> Bytes {
    Bytes::from(vec![0u8; len])
}

fn error_code(env: &Envelope) -> Option<i32> {
    match &env.body {
        Some(Body::Error(e)) => Some(e.code),
        _ => None,
    }
}

fn kick_reason(env: &Envelope) -> Option<i32> {
    match &env.body {
        Some(Body::Kick(k)) => Some(k.reason),
        _ => None,
    }
}

/// The wheel's rounding: timers fire on the first 100 ms tick at or after their deadline.
const TICK: Duration = Duration::from_millis(100);

#[test]
fn login_timeout_closes_with_an_error_and_lingers() {
    let mut h = Harness::new(GatewayConfig::default());
    let timeout = h.env.cfg.session.login_timeout;
    h.at(timeout - MS);
    assert!(h.frames().is_empty());
    h.at(timeout);
    let frames = h.frames();
    assert_eq!(error_code(&frames[0]), Some(ErrorCode::LoginTimeout as i32));
    assert!(h.shut, "written at once: half-closed");
    assert_eq!(h.env.metrics.login_timeouts.load(Relaxed), 1);
    assert_eq!(h.env.settled.get(), 1, "no longer a pending login");
    h.at(timeout + CLOSE_LINGER - MS);
    assert!(!h.dropped(), "lingers, draining input");
    h.at(timeout + CLOSE_LINGER + TICK);
    assert!(h.dropped());
}

#[test]
fn idle_timeout_kicks_a_silent_connection_and_frames_keep_it_alive() {
    let mut h = Harness::new(GatewayConfig::default());
    let idle = h.env.cfg.session.idle_timeout;
    h.login();
    h.at(Duration::from_secs(60));
    h.input(&ping(2));
    assert!(matches!(h.frames()[..], [Envelope { body: Some(Body::Pong(_)), .. }]));
    h.at(idle + Duration::from_secs(30));
    assert!(h.frames().is_empty(), "the ping at 60 s moved the idle deadline");
    h.at(Duration::from_secs(60) + idle - MS);
    assert!(h.frames().is_empty());
    h.at(Duration::from_secs(60) + idle + TICK);
    let frames = h.frames();
    assert_eq!(kick_reason(&frames[0]), Some(KickReason::IdleTimeout as i32));
    assert_eq!(h.env.metrics.idle_timeouts.load(Relaxed), 1);
    assert_eq!(h.env.unregistered.get(), 1);
    assert_eq!(h.wheel.len(), 1, "one timer per connection, even after the ping");
}

#[test]
fn login_ok_waits_for_presence_and_pipelined_frames_follow_it() {
    let mut h = Harness::new(GatewayConfig::default());
    h.env.reachable.set(false);
    let mut bytes = login(1).to_vec();
    bytes.extend_from_slice(&ping(2));
    h.input(&bytes);
    assert!(h.frames().is_empty(), "LoginOk waits for presence");
    assert_eq!(h.env.registered.get(), 1, "registered before LoginOk: pushes reach it");
    assert!(h.paused());
    h.at(Duration::from_millis(500));
    h.with(|c, now, io, env| c.on_reachable(now, io, env));
    let frames = h.frames();
    assert!(matches!(frames[0].body, Some(Body::LoginOk(_))));
    assert!(matches!(frames[1].body, Some(Body::Pong(_))), "the pipelined ping, after LoginOk");
    assert_eq!(frames.len(), 2);
    assert_eq!(h.resumed, 1);
    assert!(!h.paused());
    // The wait's own timer finds nothing to do and is not armed again.
    h.at(LOGIN_PUBLISH_WAIT + Duration::from_secs(20));
    assert_eq!(h.wheel.len(), 1, "one timer per connection");
    assert!(h.frames().is_empty());
}

#[test]
fn presence_that_never_answers_releases_login_ok_at_the_wait_limit() {
    let mut h = Harness::new(GatewayConfig::default());
    h.env.reachable.set(false);
    h.at(Duration::from_millis(300));
    h.input(&login(1));
    h.at(Duration::from_millis(300) + LOGIN_PUBLISH_WAIT - MS);
    assert!(h.frames().is_empty());
    assert_eq!(h.deadline(), Some(h.t0 + Duration::from_millis(300) + LOGIN_PUBLISH_WAIT));
    h.at(Duration::from_millis(300) + LOGIN_PUBLISH_WAIT + TICK);
    assert!(matches!(h.frames()[..], [Envelope { body: Some(Body::LoginOk(_)), .. }]));
    assert!(!h.paused());
    // The late answer changes nothing.
    h.with(|c, now, io, env| c.on_reachable(now, io, env));
    assert!(h.frames().is_empty());
    h.at(Duration::from_secs(20));
    assert_eq!(h.wheel.len(), 1, "one timer per connection");
}

#[test]
fn inflight_cap_pauses_reading_and_an_answer_resumes_it() {
    let cfg = GatewayConfig { max_inflight_requests: 2, ..GatewayConfig::default() };
    let mut h = Harness::new(cfg);
    h.login();
    let mut bytes = Vec::new();
    for id in 2..5 {
        bytes.extend_from_slice(&send(id));
    }
    h.input(&bytes);
    assert_eq!(*h.env.submitted.borrow(), vec![2, 3]);
    assert!(h.paused(), "two in flight: the third waits");
    let resumed = h.resumed;
    h.with(|c, _, _, env| c.on_answer(env));
    assert_eq!(h.resumed, resumed + 1);
    assert_eq!(*h.env.submitted.borrow(), vec![2, 3, 4], "the kept request went on");
    assert!(h.paused());
    h.with(|c, _, _, env| c.on_answer(env));
    h.with(|c, _, _, env| c.on_answer(env));
    assert!(!h.paused());
    assert_eq!(h.c().partial.capacity(), 0, "nothing kept once it was processed");
}

#[test]
fn slow_consumer_is_kicked_at_the_byte_cap_and_gets_its_kick_before_closing() {
    let cfg = GatewayConfig { max_outbound_bytes: 100, ..GatewayConfig::default() };
    let mut h = Harness::new(cfg);
    h.login();
    h.sink.room = 10;
    h.push(push_frame(40));
    h.push(push_frame(40));
    assert_eq!(h.env.metrics.outbound_queued_bytes.load(Relaxed), 70);
    h.push(push_frame(40));
    assert_eq!(h.env.metrics.slow_consumer_kicks.load(Relaxed), 1);
    assert_eq!(h.env.unregistered.get(), 1, "out of the registry at once");
    // Later pushes are dropped; the partly written frame and the Kick wait.
    h.push(push_frame(40));
    h.sink.room = usize::MAX;
    h.with(|c, now, io, env| c.on_writable(now, io, env));
    let mut wire = h.sink.bytes.split_off(h.seen);
    let rest = wire.split_off(40);
    assert!(wire.iter().all(|&b| b == 0), "the first frame whole on the wire");
    let mut kick = FrameDecoder::new(1 << 20).decode_slice(&rest).unwrap().unwrap();
    assert_eq!(kick.1, rest.len(), "nothing but the Kick after it");
    assert_eq!(kick_reason(&std::mem::take(&mut kick.0)), Some(KickReason::SlowConsumer as i32));
    assert!(h.shut);
    assert_eq!(h.env.metrics.outbound_queued_bytes.load(Relaxed), 0);
    let written_at = h.now;
    h.at(written_at - h.t0 + CLOSE_LINGER + TICK);
    assert!(h.dropped());
}

#[test]
fn a_batch_past_the_frame_cap_is_replaced_by_the_kick() {
    let cfg = GatewayConfig { max_outbound_frames: 2, ..GatewayConfig::default() };
    let mut h = Harness::new(cfg);
    h.login();
    h.sink.room = 0;
    let mut frames = vec![push_frame(5), push_frame(5), push_frame(5), push_frame(5)];
    h.with(|c, now, io, env| c.push_batch(now, &mut frames, io, env));
    assert!(frames.is_empty());
    assert_eq!(h.env.metrics.slow_consumer_kicks.load(Relaxed), 1);
    assert!(!h.shut, "the Kick is not written yet");
    // A reader that never reads is dropped at the close timeout.
    let timeout = h.env.cfg.close_timeout;
    h.at(timeout - MS);
    assert!(!h.dropped());
    h.at(timeout + TICK);
    assert!(h.dropped());
    assert_eq!(h.env.metrics.outbound_queued_bytes.load(Relaxed), 0, "released");
}

#[test]
fn duplicate_login_kick_writes_the_kick_and_leaves_the_registry() {
    let mut h = Harness::new(GatewayConfig::default());
    h.login();
    h.with(|c, now, io, env| c.on_kick(now, KickReason::DuplicateLogin, io, env));
    let frames = h.frames();
    assert_eq!(kick_reason(&frames[0]), Some(KickReason::DuplicateLogin as i32));
    assert_eq!(h.env.unregistered.get(), 1);
    assert!(h.shut);
    h.push(push_frame(3));
    h.input(&ping(9));
    assert!(h.frames().is_empty(), "nothing after the Kick; input is drained and dropped");
    h.with(|c, now, io, env| c.on_kick(now, KickReason::ServerShutdown, io, env));
    assert!(h.frames().is_empty(), "one Kick only");
    h.at(CLOSE_LINGER + TICK);
    assert!(h.dropped());
    assert_eq!(h.env.unregistered.get(), 1, "left once");
}

#[test]
fn oldest_wins_refuses_a_second_login_of_the_device() {
    let cfg = GatewayConfig { duplicate_login: DuplicateLogin::OldestWins, ..Default::default() };
    let mut h = Harness::new(cfg);
    h.env.device_taken.set(true);
    h.input(&login(1));
    let frames = h.frames();
    assert_eq!(error_code(&frames[0]), Some(ErrorCode::AlreadyLoggedIn as i32));
    assert_eq!(frames[0].request_id, 1);
    assert_eq!(h.env.metrics.duplicate_login_refusals.load(Relaxed), 1);
    assert_eq!(h.env.metrics.logins_ok.load(Relaxed), 0);
    assert_eq!((h.env.registered.get(), h.env.unregistered.get()), (0, 0));
    assert_eq!(h.env.settled.get(), 1);
    assert!(h.shut);
}

#[test]
fn shutdown_kick_then_linger_and_eof_while_it_waits() {
    let mut h = Harness::new(GatewayConfig::default());
    h.login();
    h.sink.room = 5;
    h.with(|c, now, io, env| c.on_kick(now, KickReason::ServerShutdown, io, env));
    assert!(!h.shut);
    h.with(|c, _, _, _| c.on_eof());
    assert!(!h.dropped(), "the peer may still read the Kick");
    h.at(Duration::from_secs(3));
    h.sink.room = usize::MAX;
    h.with(|c, now, io, env| c.on_writable(now, io, env));
    assert_eq!(kick_reason(&h.frames()[0]), Some(KickReason::ServerShutdown as i32));
    assert!(h.shut);
    h.at(Duration::from_secs(3) + CLOSE_LINGER - MS);
    assert!(!h.dropped());
    h.at(Duration::from_secs(3) + CLOSE_LINGER + TICK);
    assert!(h.dropped());
}

#[test]
fn a_broken_sink_or_eof_drops_the_connection() {
    let mut h = Harness::new(GatewayConfig::default());
    h.login();
    h.sink.broken = true;
    h.push(push_frame(3));
    assert!(h.dropped());
    assert_eq!(h.env.unregistered.get(), 1);
    let mut h = Harness::new(GatewayConfig::default());
    h.with(|c, _, _, _| c.on_eof());
    assert!(h.dropped());
    assert_eq!(h.env.settled.get(), 1, "a pending login is released");
}

#[test]
fn an_idle_connection_holds_no_buffer_and_the_record_stays_small() {
    let mut h = Harness::new(GatewayConfig::default());
    h.login();
    let bytes = ping(2);
    h.input(&bytes[..3]);
    assert_eq!(h.c().partial.len(), 3, "a split frame is kept");
    h.input(&bytes[3..]);
    assert_eq!(h.frames().len(), 1);
    assert_eq!(h.c().partial.capacity(), 0);
    assert!(h.c().out.is_none());
    let size = std::mem::size_of::<Connection>();
    eprintln!("Connection: {size} B");
    assert!(size <= 184, "Connection grew to {size} B");
}

#[test]
fn early_data_runs_login_and_reads_and_holds_writes_until_the_handshake() {
    let mut h = Harness::new(GatewayConfig::default());
    h.c().set_early();
    let sync = super::testing::frame(3, Body::SyncRequest(Default::default()));
    let mut bytes = Vec::new();
    for f in [login(1), ping(2), sync, send(4), ping(5)] {
        bytes.extend_from_slice(&f);
    }
    h.input(&bytes);
    let frames = h.frames();
    assert!(matches!(frames[0].body, Some(Body::LoginOk(_))), "{frames:?}");
    assert!(matches!(frames[1].body, Some(Body::Pong(_))), "{frames:?}");
    assert_eq!(*h.env.submitted.borrow(), vec![3], "the read ran; the send waits");
    assert!(h.paused(), "reading stops at the held frame");
    h.with(|c, now, io, env| {
        c.on_established();
        c.resume(now, &FrameDecoder::new(65536), io, env);
    });
    assert_eq!(*h.env.submitted.borrow(), vec![3, 4], "after the handshake, in order");
    assert!(matches!(h.frames()[..], [Envelope { body: Some(Body::Pong(_)), request_id: 5 }]));
    assert!(!h.paused());
    assert_eq!(h.c().partial.capacity(), 0, "nothing kept");
}
