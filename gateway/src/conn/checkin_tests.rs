//! Deterministic tests of the device check-in between the token check and LoginOk
//! ([`super::checkin`]) over the in-memory driver: virtual clock, recording environment.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tern_proto::session::server::error;
use tern_proto::v1::{self, Envelope, ErrorCode, envelope::Body};

use super::checkin::{CHECK_IN_WAIT, Verdict, verdict};
use super::testing::{Harness, checked_in, frame, login, ping};
use crate::config::GatewayConfig;

const TICK: Duration = Duration::from_millis(100);

fn error_of(env: &Envelope) -> Option<(i32, bool)> {
    match &env.body {
        Some(Body::Error(e)) => Some((e.code, e.fatal)),
        _ => None,
    }
}

#[test]
fn login_ok_waits_for_the_check_in_and_registers_only_after_it() {
    let mut h = Harness::new(GatewayConfig::default());
    *h.env.check_in_answer.borrow_mut() = None;
    let mut bytes = login(1).to_vec();
    bytes.extend_from_slice(&ping(2));
    h.input(&bytes);
    assert!(h.frames().is_empty(), "LoginOk waits for the check-in");
    assert_eq!(h.env.registered.get(), 0, "not registered before the check-in");
    assert!(h.paused());
    let asked = h.env.check_ins.borrow().clone();
    assert!(matches!(
        asked[..],
        [Envelope { request_id: 1, body: Some(Body::DeviceCheckIn(v1::DeviceCheckIn { .. })) }]
    ));
    h.at(Duration::from_millis(700));
    h.with(|c, now, io, env| c.on_checked_in(now, &checked_in(0), io, env));
    let frames = h.frames();
    assert!(matches!(frames[0].body, Some(Body::LoginOk(_))));
    assert!(matches!(frames[1].body, Some(Body::Pong(_))), "the pipelined ping follows");
    assert_eq!(h.env.registered.get(), 1);
    assert!(!h.paused());
    // The check-in's own timer finds nothing to do and is not armed again.
    h.at(CHECK_IN_WAIT + Duration::from_secs(20));
    assert_eq!(h.wheel.len(), 1, "one timer per connection");
    assert!(h.frames().is_empty());
}

#[test]
fn a_logged_out_device_is_refused_and_never_registered() {
    let mut h = Harness::new(GatewayConfig::default());
    let refusal = error(1, ErrorCode::BadToken, "this device was logged out", false);
    *h.env.check_in_answer.borrow_mut() = Some(refusal);
    let mut bytes = login(1).to_vec();
    bytes.extend_from_slice(&ping(2));
    h.input(&bytes);
    let frames = h.frames();
    assert_eq!(frames.len(), 1, "nothing behind the Login is processed");
    assert_eq!(error_of(&frames[0]), Some((ErrorCode::BadToken as i32, true)));
    assert_eq!(frames[0].request_id, 1);
    assert_eq!(h.env.registered.get(), 0);
    assert_eq!(h.env.metrics.logged_out_refusals.load(Relaxed), 1);
    assert_eq!(h.env.metrics.logins_failed.load(Relaxed), 1);
    assert_eq!(h.env.settled.get(), 1, "no longer a pending login");
}

#[test]
fn a_check_in_without_answer_fails_closed_at_the_wait_limit() {
    let mut h = Harness::new(GatewayConfig::default());
    *h.env.check_in_answer.borrow_mut() = None;
    h.input(&login(1));
    h.at(CHECK_IN_WAIT - TICK);
    assert!(h.frames().is_empty());
    h.at(CHECK_IN_WAIT + TICK);
    let frames = h.frames();
    assert_eq!(error_of(&frames[0]), Some((ErrorCode::Unavailable as i32, true)));
    assert_eq!(h.env.registered.get(), 0);
    // A late answer changes nothing.
    h.with(|c, now, io, env| c.on_checked_in(now, &checked_in(0), io, env));
    assert!(h.frames().is_empty());
    assert_eq!(h.env.registered.get(), 0);
}

#[test]
fn answers_map_to_verdicts() {
    assert_eq!(verdict(&checked_in(42)), Verdict::Accept(42));
    let old_worker = error(1, ErrorCode::UnknownFrame, "not a request dispatch serves", false);
    assert_eq!(verdict(&old_worker), Verdict::Accept(0), "an upstream without device records");
    let down = error(1, ErrorCode::Unavailable, "store down", false);
    assert!(matches!(verdict(&down), Verdict::Refuse(ErrorCode::Unavailable, _)));
    let pong = Envelope { request_id: 1, body: Some(Body::Pong(v1::Pong { server_time_ms: 0 })) };
    assert!(matches!(verdict(&pong), Verdict::Refuse(ErrorCode::Unavailable, _)));
}

#[test]
fn a_refresh_is_checked_against_the_fence_of_the_check_in() {
    // The test authenticator's tokens carry no `iat`: with a fence every refresh is refused,
    // without one it is accepted.
    for (fence, refused) in [(0, false), (5_000, true)] {
        let mut h = Harness::new(GatewayConfig::default());
        *h.env.check_in_answer.borrow_mut() = Some(checked_in(fence));
        h.login();
        let refresh = v1::RefreshToken { token: "u/d".into() };
        h.input(&frame(2, Body::RefreshToken(refresh)));
        let frames = h.frames();
        if refused {
            assert_eq!(error_of(&frames[0]), Some((ErrorCode::BadToken as i32, false)));
        } else {
            assert!(matches!(frames[0].body, Some(Body::TokenRefreshed(_))), "{frames:?}");
        }
    }
}
