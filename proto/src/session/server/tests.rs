//! Unit tests of the server session: login, limits, timeouts, frames, on a virtual clock.

use super::*;

const T0_UNIX_MS: i64 = 1_700_000_000_000;

/// Tokens: `ok:<user>:<device>`, `expired`; anything else is a bad token.
struct TestAuth;

impl Authenticator for TestAuth {
    fn authenticate(&self, token: &str, _now_unix_ms: i64) -> Result<Identity, AuthError> {
        if token == "expired" {
            return Err(AuthError::Expired);
        }
        match token.strip_prefix("ok:").and_then(|t| t.split_once(':')) {
            Some((user, device)) => {
                Ok(Identity { user_id: user.to_owned(), device_id: device.to_owned() })
            }
            None => Err(AuthError::BadToken("unknown token".to_owned())),
        }
    }
}

/// A session and a virtual clock: `base` plus elapsed durations.
struct Harness {
    cfg: ServerSessionConfig,
    base: Instant,
    elapsed: Duration,
    session: ServerSession,
}

impl Harness {
    fn new() -> Self {
        let cfg = ServerSessionConfig::default();
        let base = Instant::now();
        let session = ServerSession::new(base, 0xabc, &cfg);
        Self { cfg, base, elapsed: Duration::ZERO, session }
    }

    fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    fn advance(&mut self, d: Duration) {
        self.elapsed += d;
    }

    fn frame(&mut self, request_id: u64, body: Option<Body>) -> Action {
        let now = self.now();
        let unix = T0_UNIX_MS + self.elapsed.as_millis() as i64;
        let env = v1::Envelope { request_id, body };
        self.session.on_frame(now, unix, env, &self.cfg, &TestAuth)
    }

    fn tick(&mut self) -> Action {
        let now = self.now();
        self.session.on_tick(now, &self.cfg)
    }

    fn login(&mut self, request_id: u64, token: &str, protocol_version: u32) -> Action {
        let login = v1::Login {
            token: token.to_owned(),
            protocol_version,
            client_version: "test/1".to_owned(),
            ..Default::default()
        };
        self.frame(request_id, Some(Body::Login(login)))
    }

    fn logged_in() -> Self {
        let mut h = Self::new();
        let action = h.login(1, "ok:alice:phone", 1);
        assert!(matches!(action, Action::LoggedIn { .. }), "{action:?}");
        h
    }
}

fn ping() -> Option<Body> {
    Some(Body::Ping(v1::Ping { client_time_ms: 5 }))
}

/// Asserts `action` is an Error reply (or Close with an Error when `fatal`), returning it.
fn expect_error(action: Action, request_id: u64, code: ErrorCode, fatal: bool) -> v1::Error {
    let reply = match (action, fatal) {
        (Action::Reply(reply), false) => reply,
        (Action::Close { reply: Some(reply), .. }, true) => reply,
        (other, _) => panic!("expected {code:?} (fatal {fatal}), got {other:?}"),
    };
    assert_eq!(reply.request_id, request_id);
    match reply.body {
        Some(Body::Error(e)) => {
            assert_eq!(e.code, code as i32, "{e:?}");
            assert_eq!(e.fatal, fatal, "{e:?}");
            e
        }
        other => panic!("expected an Error body, got {other:?}"),
    }
}

#[test]
fn any_frame_before_login_closes_with_not_logged_in() {
    let bodies = [
        ping(),
        None,
        Some(Body::Send(v1::Send::default())),
        Some(Body::SyncRequest(v1::SyncRequest::default())),
        Some(Body::LoginOk(v1::LoginOk::default())),
    ];
    for body in bodies {
        let mut h = Harness::new();
        let action = h.frame(3, body.clone());
        assert!(
            matches!(action, Action::Close { reason: CloseReason::NotLoggedIn, .. }),
            "{body:?}: {action:?}"
        );
        expect_error(action, 3, ErrorCode::NotLoggedIn, true);
        assert!(h.session.is_closed());
        assert_eq!(h.session.deadline(&h.cfg), None);
        // A closed session ignores whatever follows, including a valid Login.
        assert_eq!(h.login(4, "ok:alice:phone", 1), Action::None);
        assert_eq!(h.session.identity(), None);
    }
}

#[test]
fn login_ok_carries_identity_and_limits() {
    let mut h = Harness::new();
    h.advance(Duration::from_millis(1500));
    let action = h.login(77, "ok:alice:phone", 1);
    let Action::LoggedIn { identity, reply, .. } = action else {
        panic!("expected LoggedIn, got {action:?}");
    };
    let alice = Identity { user_id: "alice".into(), device_id: "phone".into() };
    assert_eq!(identity, alice);
    assert_eq!(reply.request_id, 77);
    let Some(Body::LoginOk(ok)) = reply.body else {
        panic!("expected LoginOk, got {reply:?}");
    };
    assert_eq!(
        ok,
        v1::LoginOk {
            user_id: "alice".into(),
            device_id: "phone".into(),
            heartbeat_interval_ms: 30_000,
            idle_timeout_ms: 90_000,
            max_frame_bytes: 65_536,
            server_time_ms: T0_UNIX_MS + 1500,
            connection_id: "abc".into(),
            token_expires_at_ms: 0,
        }
    );
    assert_eq!(h.session.identity(), Some(&alice));
    assert!(!h.session.is_closed());
    assert_eq!(h.session.deadline(&h.cfg), Some(h.now() + h.cfg.idle_timeout));
}

#[test]
fn protocol_version_zero_means_one() {
    let mut h = Harness::new();
    assert!(matches!(h.login(1, "ok:a:b", 0), Action::LoggedIn { .. }));
}

#[test]
fn refused_tokens_close_the_connection() {
    for (token, code) in [
        ("garbage", ErrorCode::BadToken),
        ("", ErrorCode::BadToken),
        ("expired", ErrorCode::TokenExpired),
    ] {
        let mut h = Harness::new();
        let action = h.login(5, token, 1);
        assert!(
            matches!(action, Action::Close { reason: CloseReason::AuthFailed, .. }),
            "{action:?}"
        );
        expect_error(action, 5, code, true);
        assert!(h.session.is_closed());
        assert_eq!(h.session.identity(), None);
    }
}

#[test]
fn unsupported_protocol_version_closes_before_checking_the_token() {
    let mut h = Harness::new();
    let action = h.login(2, "ok:alice:phone", crate::PROTOCOL_VERSION + 1);
    assert!(
        matches!(action, Action::Close { reason: CloseReason::UnsupportedVersion, .. }),
        "{action:?}"
    );
    expect_error(action, 2, ErrorCode::UnsupportedProtocolVersion, true);
    assert!(h.session.is_closed());
}

#[test]
fn login_timeout_fires_at_the_deadline_not_before() {
    let mut h = Harness::new();
    assert_eq!(h.session.deadline(&h.cfg), Some(h.base + Duration::from_secs(10)));
    h.advance(Duration::from_secs(10) - Duration::from_millis(1));
    assert_eq!(h.tick(), Action::None);
    assert!(!h.session.is_closed());
    h.advance(Duration::from_millis(1));
    let action = h.tick();
    assert!(
        matches!(action, Action::Close { reason: CloseReason::LoginTimeout, .. }),
        "{action:?}"
    );
    expect_error(action, 0, ErrorCode::LoginTimeout, true);
    assert!(h.session.is_closed());
    assert_eq!(h.tick(), Action::None, "a closed session does not close twice");
}

#[test]
fn idle_timeout_kicks_after_silence() {
    let mut h = Harness::logged_in();
    h.advance(Duration::from_secs(90) - Duration::from_millis(1));
    assert_eq!(h.tick(), Action::None);
    h.advance(Duration::from_millis(1));
    let action = h.tick();
    let Action::Close { reply: Some(reply), reason: CloseReason::IdleTimeout } = action else {
        panic!("expected an idle-timeout Close, got {action:?}");
    };
    assert_eq!(reply, kick(KickReason::IdleTimeout, "nothing received within the idle timeout"));
    assert!(h.session.is_closed());
    assert_eq!(h.session.identity(), None);
}

#[test]
fn any_frame_pushes_the_idle_deadline() {
    let mut h = Harness::logged_in();
    let frames = [
        ping(),
        None,
        Some(Body::Send(v1::Send::default())),
        Some(Body::Pong(v1::Pong::default())),
        Some(Body::Login(v1::Login::default())),
    ];
    for body in frames {
        // 89 s of silence: still open; then a frame moves the deadline 90 s past it.
        h.advance(Duration::from_secs(89));
        assert_eq!(h.tick(), Action::None);
        let _ = h.frame(9, body);
        assert_eq!(h.session.deadline(&h.cfg), Some(h.now() + Duration::from_secs(90)));
    }
    // 5 x 89 s since login, far past one idle timeout, and still open.
    assert!(!h.session.is_closed());
    h.advance(Duration::from_secs(90));
    assert!(matches!(h.tick(), Action::Close { reason: CloseReason::IdleTimeout, .. }));
}

#[test]
fn ping_is_answered_with_pong_and_the_same_request_id() {
    let mut h = Harness::logged_in();
    h.advance(Duration::from_secs(2));
    let action = h.frame(0xfeed, ping());
    assert_eq!(
        action,
        Action::Reply(v1::Envelope {
            request_id: 0xfeed,
            body: Some(Body::Pong(v1::Pong { server_time_ms: T0_UNIX_MS + 2000 })),
        })
    );
}

#[test]
fn second_login_is_refused_but_not_fatal() {
    let mut h = Harness::logged_in();
    let action = h.login(8, "ok:mallory:laptop", 1);
    expect_error(action, 8, ErrorCode::AlreadyLoggedIn, false);
    assert!(!h.session.is_closed());
    let alice = Identity { user_id: "alice".into(), device_id: "phone".into() };
    assert_eq!(h.session.identity(), Some(&alice), "identity must not change");
}

#[test]
fn request_id_zero_is_refused_once_logged_in() {
    let mut h = Harness::logged_in();
    for body in
        [ping(), Some(Body::Send(v1::Send::default())), Some(Body::Login(v1::Login::default()))]
    {
        let e = expect_error(h.frame(0, body), 0, ErrorCode::InvalidRequest, false);
        assert!(e.message.contains("request_id 0"), "{e:?}");
    }
    // An empty frame (N = 0) decodes to request_id 0 and no body: UNKNOWN_FRAME as before.
    expect_error(h.frame(0, None), 0, ErrorCode::UnknownFrame, false);
    assert!(!h.session.is_closed());
    assert!(matches!(h.frame(1, ping()), Action::Reply(v1::Envelope { request_id: 1, .. })));
}

#[test]
fn login_with_request_id_zero_is_fatal() {
    let mut h = Harness::new();
    let action = h.login(0, "ok:alice:phone", 1);
    assert!(matches!(action, Action::Close { reason: CloseReason::AuthFailed, .. }), "{action:?}");
    expect_error(action, 0, ErrorCode::InvalidRequest, true);
    assert!(h.session.is_closed());
}

#[test]
fn client_version_is_limited_to_64_bytes() {
    let login = |v: usize| v1::Login {
        token: "ok:alice:phone".into(),
        protocol_version: 1,
        client_version: "v".repeat(v),
        ..Default::default()
    };
    let mut h = Harness::new();
    let action = h.frame(3, Some(Body::Login(login(MAX_CLIENT_VERSION_BYTES))));
    assert!(matches!(action, Action::LoggedIn { .. }), "{action:?}");
    let mut h = Harness::new();
    let action = h.frame(3, Some(Body::Login(login(MAX_CLIENT_VERSION_BYTES + 1))));
    assert!(matches!(action, Action::Close { reason: CloseReason::AuthFailed, .. }), "{action:?}");
    let e = expect_error(action, 3, ErrorCode::InvalidRequest, true);
    assert!(e.message.contains("client_version"), "{e:?}");
}

#[test]
fn empty_body_is_unknown_frame_not_fatal() {
    let mut h = Harness::logged_in();
    expect_error(h.frame(4, None), 4, ErrorCode::UnknownFrame, false);
    assert!(!h.session.is_closed());
}

#[test]
fn server_only_frames_from_a_client_are_invalid_requests() {
    let server_only = [
        Body::LoginOk(v1::LoginOk::default()),
        Body::Pong(v1::Pong::default()),
        Body::Kick(v1::Kick::default()),
        Body::Error(v1::Error::default()),
        Body::Ok(v1::Ok {}),
        Body::SendAck(v1::SendAck::default()),
        Body::Deliver(v1::Deliver::default()),
        Body::ReceiptUpdate(v1::ReceiptUpdate::default()),
        Body::Receipts(v1::Receipts::default()),
        Body::SyncPage(v1::SyncPage::default()),
        Body::ConversationList(v1::ConversationList::default()),
        Body::GroupInfo(v1::GroupInfo::default()),
    ];
    let mut h = Harness::logged_in();
    for body in server_only {
        let what = format!("{body:?}");
        let action = h.frame(6, Some(body));
        expect_error(action, 6, ErrorCode::InvalidRequest, false);
        assert!(!h.session.is_closed(), "{what}");
    }
}

#[test]
fn client_requests_are_forwarded_unchanged() {
    let requests = [
        Body::Send(v1::Send {
            conversation_id: "dm:alice:bob".into(),
            client_msg_id: "m1".into(),
            body: b"hi".to_vec().into(),
            ..Default::default()
        }),
        Body::Recall(v1::Recall::default()),
        Body::Receipt(v1::Receipt::default()),
        Body::GetReceipts(v1::GetReceipts::default()),
        Body::SyncRequest(v1::SyncRequest { from_seq: 3, ..Default::default() }),
        Body::ListConversations(v1::ListConversations::default()),
        Body::UpdateConversation(v1::UpdateConversation::default()),
        Body::CreateGroup(v1::CreateGroup::default()),
        Body::AddMembers(v1::AddMembers::default()),
        Body::RemoveMembers(v1::RemoveMembers::default()),
        Body::LeaveGroup(v1::LeaveGroup::default()),
        Body::GetGroup(v1::GetGroup::default()),
        Body::UpdateGroup(v1::UpdateGroup::default()),
        Body::SetMemberRole(v1::SetMemberRole::default()),
        Body::TransferOwnership(v1::TransferOwnership::default()),
        Body::DissolveGroup(v1::DissolveGroup::default()),
        Body::ListGroupMembers(v1::ListGroupMembers::default()),
    ];
    let mut h = Harness::logged_in();
    for (i, body) in requests.into_iter().enumerate() {
        let request_id = 100 + i as u64;
        let expected = v1::Envelope { request_id, body: Some(body.clone()) };
        assert_eq!(h.frame(request_id, Some(body)), Action::Forward(expected));
    }
}

#[test]
fn decode_errors_close_with_the_matching_code() {
    let too_large = FrameError::TooLarge { len: u64::from(u32::MAX), max: 65_536 };
    let Err(decode_error) = <v1::Envelope as prost::Message>::decode(&[0x80u8][..]) else {
        panic!("a truncated varint must not decode");
    };
    let malformed = FrameError::Malformed(decode_error);
    for (err, code) in
        [(too_large, ErrorCode::FrameTooLarge), (malformed, ErrorCode::MalformedFrame)]
    {
        for logged_in in [false, true] {
            let mut h = if logged_in { Harness::logged_in() } else { Harness::new() };
            let action = h.session.on_decode_error(&err);
            assert!(
                matches!(action, Action::Close { reason: CloseReason::BadFrame, .. }),
                "{action:?}"
            );
            expect_error(action, 0, code, true);
            assert!(h.session.is_closed());
            assert_eq!(h.frame(1, ping()), Action::None);
        }
    }
}

#[test]
fn close_now_silences_the_session() {
    let mut h = Harness::logged_in();
    h.session.close_now();
    assert!(h.session.is_closed());
    assert_eq!(h.session.deadline(&h.cfg), None);
    assert_eq!(h.frame(1, ping()), Action::None);
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.tick(), Action::None);
}

#[test]
fn session_fuzz_body_accepts_a_scripted_conversation() {
    // Login frame (op 0, len, bytes), a ping, a tick of 5 s, then a jump to the deadline.
    let login = v1::Envelope {
        request_id: 1,
        body: Some(Body::Login(v1::Login { token: "ok:a:b".into(), ..Default::default() })),
    };
    let ping = v1::Envelope { request_id: 2, body: ping() };
    let mut data = Vec::new();
    for env in [login, ping] {
        let bytes = prost::Message::encode_to_vec(&env);
        data.push(0);
        data.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
        data.extend_from_slice(&bytes);
    }
    data.extend_from_slice(&[1 + 4 * 5, 2, 0, 0]);
    crate::fuzzing::server_session(&data);
}
