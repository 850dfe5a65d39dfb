//! Bad input over a real socket: each case gets a clear typed error, the connection is handled
//! (closed when the stream cannot continue, kept otherwise), and other users are unaffected.

use crate::common;

use common::*;
use tern_proto::v1::{self, ErrorCode, KickReason, envelope::Body};
use tern_sdk::Target;

fn login(token: String) -> Body {
    Body::Login(v1::Login {
        token,
        protocol_version: 1,
        client_version: "test".into(),
        ..Default::default()
    })
}

/// Asserts the connection answers with a fatal error of `code` and then closes.
async fn expect_fatal(raw: &mut Raw, code: ErrorCode) {
    let frames = raw.drain_to_eof().await;
    let got: Vec<_> = frames.iter().filter_map(error_code).collect();
    assert_eq!(got, vec![(code, true)], "frames: {frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_closes_with_error() {
    let srv = TestServer::start().await;
    // Before login.
    let mut raw = Raw::connect(srv.addr).await;
    raw.send_bytes(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]).await;
    expect_fatal(&mut raw, ErrorCode::MalformedFrame).await;
    // After login.
    let (mut raw, _) = Raw::login(srv.addr, &srv.token("alice", "phone")).await;
    raw.send_bytes(&[0, 0, 0, 3, 0x0a, 0x80, 0x80]).await;
    expect_fatal(&mut raw, ErrorCode::MalformedFrame).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_length_prefix_is_refused_without_harm() {
    let srv = TestServer::start().await;
    let (bystander, mut be) = srv.client("bob", "phone").await;
    let (mut raw, _) = Raw::login(srv.addr, &srv.token("alice", "phone")).await;
    // A 4 GiB frame announced, followed by a little junk: refused on the prefix alone.
    raw.send_bytes(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await;
    expect_fatal(&mut raw, ErrorCode::FrameTooLarge).await;
    // Just over the configured maximum (64 KiB) is refused as well.
    let mut raw = Raw::connect(srv.addr).await;
    raw.send_bytes(&(64 * 1024 + 1u32).to_be_bytes()).await;
    expect_fatal(&mut raw, ErrorCode::FrameTooLarge).await;
    // Others are unaffected.
    let (alice, _ae) = srv.client("alice", "laptop").await;
    let ack = alice.send(Target::Peer("bob".into()), "text/plain", text("fine")).await.unwrap();
    assert_eq!(next_message(&mut be).await.seq, ack.seq);
    drop(bystander);
    assert_eq!(srv.metric("tern_gateway_bad_frames_total").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_login_are_refused() {
    let srv = TestServer::start().await;
    for body in [
        Body::Ping(v1::Ping::default()),
        Body::Send(v1::Send {
            peer_user_id: "bob".into(),
            client_msg_id: "x".into(),
            ..Default::default()
        }),
        Body::SyncRequest(v1::SyncRequest {
            conversation_id: "dm:alice:bob".into(),
            ..Default::default()
        }),
    ] {
        let mut raw = Raw::connect(srv.addr).await;
        raw.send(1, body).await;
        expect_fatal(&mut raw, ErrorCode::NotLoggedIn).await;
    }
    // The empty frame (length 0: an Envelope with request_id 0 and no body) as well.
    let mut raw = Raw::connect(srv.addr).await;
    raw.send_bytes(&[0, 0, 0, 0]).await;
    expect_fatal(&mut raw, ErrorCode::NotLoggedIn).await;
    // Nothing was stored.
    let (alice, _ae) = srv.client("alice", "phone").await;
    assert_eq!(alice.sync_page("dm:alice:bob", 1, 10).await.unwrap().last_seq, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tampered_and_expired_tokens_are_refused() {
    let srv = TestServer::start().await;
    let other_key = tern_gateway::TokenKey::from_secret(&[1u8; 32]).unwrap();
    let wrong = other_key.mint_for("alice", "phone", now_secs(), 3600);
    let good = srv.token("alice", "phone");
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    parts[1] = srv.token("mallory", "phone").split('.').nth(1).unwrap().to_string();
    let tampered = parts.join(".");
    let expired = srv.key.mint_for("alice", "phone", now_secs() - 7200, 3600);

    for (token, code) in [
        (wrong.clone(), ErrorCode::BadToken),
        (tampered, ErrorCode::BadToken),
        ("not-a-token".to_string(), ErrorCode::BadToken),
        (expired.clone(), ErrorCode::TokenExpired),
    ] {
        let mut raw = Raw::connect(srv.addr).await;
        raw.send(1, login(token)).await;
        expect_fatal(&mut raw, code).await;
    }
    // The SDK surfaces the refusal as an error instead of retrying forever.
    let cfg = tern_sdk::ClientConfig::new(srv.addr.to_string(), expired);
    let r =
        tern_sdk::Client::connect(cfg, std::sync::Arc::new(tern_sdk::MemoryPersistence::default()))
            .await;
    assert!(r.is_err(), "login with an expired token must fail");
    assert_eq!(srv.metric("tern_gateway_login_failures_total").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_version_is_refused() {
    let srv = TestServer::start().await;
    let mut raw = Raw::connect(srv.addr).await;
    raw.send(
        1,
        Body::Login(v1::Login {
            token: srv.token("a", "b"),
            protocol_version: 99,
            ..Default::default()
        }),
    )
    .await;
    expect_fatal(&mut raw, ErrorCode::UnsupportedProtocolVersion).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_fail_keep_the_connection() {
    let srv = TestServer::start().await;
    let (mut raw, _) = Raw::login(srv.addr, &srv.token("alice", "phone")).await;
    let send = |conversation_id: &str, peer: &str, id: &str| {
        Body::Send(v1::Send {
            mention_user_ids: Vec::new(),
            mention_all: false,
            conversation_id: conversation_id.into(),
            peer_user_id: peer.into(),
            client_msg_id: id.into(),
            content_type: "text/plain".into(),
            body: text("x"),
        })
    };
    let cases: Vec<(Body, ErrorCode)> = vec![
        (send("dm:bob:carol", "", "a"), ErrorCode::NotAMember),
        (send("nonsense", "", "b"), ErrorCode::UnknownConversation),
        (send("g:nosuchgroup", "", "c"), ErrorCode::UnknownConversation),
        (send("", "", "d"), ErrorCode::InvalidRequest),
        (send("dm:alice:bob", "bob", "e"), ErrorCode::InvalidRequest),
        (send("dm:alice:bob", "", ""), ErrorCode::InvalidRequest),
        (send("", "not valid!", "f"), ErrorCode::InvalidRequest),
        (
            Body::SyncRequest(v1::SyncRequest {
                conversation_id: "dm:bob:carol".into(),
                ..Default::default()
            }),
            ErrorCode::NotAMember,
        ),
        (
            Body::Recall(v1::Recall {
                conversation_id: "dm:bob:carol".into(),
                seq: 1,
                client_msg_id: "r".into(),
            }),
            ErrorCode::NotAMember,
        ),
        (
            Body::GetGroup(v1::GetGroup { conversation_id: "g:nope".into() }),
            ErrorCode::UnknownConversation,
        ),
        (
            Body::AddMembers(v1::AddMembers {
                conversation_id: "dm:alice:bob".into(),
                user_ids: vec!["carol".into()],
            }),
            ErrorCode::UnknownConversation,
        ),
        (
            Body::CreateGroup(v1::CreateGroup {
                member_user_ids: vec!["not a valid id".into()],
                ..Default::default()
            }),
            ErrorCode::InvalidRequest,
        ),
        (
            Body::Login(v1::Login { token: srv.token("alice", "phone"), ..Default::default() }),
            ErrorCode::AlreadyLoggedIn,
        ),
        (Body::SendAck(v1::SendAck::default()), ErrorCode::InvalidRequest),
    ];
    for (i, (body, code)) in cases.into_iter().enumerate() {
        let id = 100 + i as u64;
        raw.send(id, body).await;
        let answer = raw.recv_answer().await;
        assert_eq!(answer.request_id, id);
        assert_eq!(error_code(&answer), Some((code, false)), "case {i}");
    }
    // An envelope with a body this server does not know (field 90): UNKNOWN_FRAME, not fatal.
    // Envelope { request_id: 5 (field 1 varint), field 90 length-delimited "hi" }.
    let payload = [0x08, 0x05, 0xd2, 0x05, 0x02, b'h', b'i'];
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    raw.send_bytes(&frame).await;
    let answer = raw.recv_answer().await;
    assert_eq!(
        (answer.request_id, error_code(&answer)),
        (5, Some((ErrorCode::UnknownFrame, false)))
    );

    // Still logged in and working; nothing was stored by the refused sends.
    raw.send(9, send("", "bob", "ok-1")).await;
    match raw.recv_answer().await.body {
        Some(Body::SendAck(ack)) => assert_eq!(ack.seq, 1),
        other => panic!("expected an ack, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_timeout_and_idle_timeout_close_connections() {
    let srv = TestServer::start_with(&[
        "gateway.login_timeout=200ms",
        "gateway.heartbeat_interval=100ms",
        "gateway.idle_timeout=400ms",
    ])
    .await;
    let mut silent = Raw::connect(srv.addr).await;
    expect_fatal(&mut silent, ErrorCode::LoginTimeout).await;

    let (mut idle, ok) = Raw::login(srv.addr, &srv.token("alice", "phone")).await;
    assert_eq!((ok.heartbeat_interval_ms, ok.idle_timeout_ms), (100, 400));
    let frames = idle.drain_to_eof().await;
    let kick = frames.iter().find_map(|f| match &f.body {
        Some(Body::Kick(k)) => Some(k.reason),
        _ => None,
    });
    assert_eq!(kick, Some(KickReason::IdleTimeout as i32));
    // A connection that heartbeats stays open past the idle timeout.
    let (mut alive, _) = Raw::login(srv.addr, &srv.token("bob", "phone")).await;
    for i in 0..8 {
        alive.send(i + 1, Body::Ping(v1::Ping::default())).await;
        assert!(matches!(alive.recv_answer().await.body, Some(Body::Pong(_))));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(srv.metric("tern_gateway_idle_timeouts_total").await, 1);
    assert_eq!(srv.metric("tern_gateway_login_timeouts_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_frame_rate_is_slowed_then_closed() {
    let srv = TestServer::start_with(&["gateway.max_frames_per_sec=10"]).await;
    let (mut raw, _) = Raw::login(srv.addr, &srv.token("alice", "phone")).await;
    // 100 pings at once: the burst (20) is answered, the rest is refused with RATE_LIMITED
    // (not processed), and past another full burst of refusals the connection is closed.
    let mut bytes = Vec::new();
    for i in 1..=100u64 {
        let env = v1::Envelope { request_id: i, body: Some(Body::Ping(v1::Ping::default())) };
        bytes.extend_from_slice(&tern_proto::encode_to_bytes(&env, usize::MAX).unwrap());
    }
    raw.send_bytes(&bytes).await;
    let frames = raw.drain_to_eof().await;
    let pongs = frames.iter().filter(|f| matches!(f.body, Some(Body::Pong(_)))).count();
    let refused: Vec<_> = frames.iter().filter_map(error_code).collect();
    assert_eq!(pongs, 20, "the burst is twice the rate");
    assert!(refused.iter().filter(|e| **e == (ErrorCode::RateLimited, false)).count() >= 20);
    assert_eq!(refused.last(), Some(&(ErrorCode::RateLimited, true)), "closed after the flood");
    assert_eq!(srv.metric("tern_gateway_rate_limit_closes_total").await, 1);
    // Other users are unaffected; a well-behaved client under the same limit is fine.
    let (mut calm, _) = Raw::login(srv.addr, &srv.token("bob", "phone")).await;
    for i in 1..=5 {
        calm.send(i, Body::Ping(v1::Ping::default())).await;
        assert!(matches!(calm.recv_answer().await.body, Some(Body::Pong(_))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_logins_are_capped() {
    let srv = TestServer::start_with(&["gateway.max_pending_logins=2"]).await;
    // Two silent connections fill the pending-login slots.
    let _a = Raw::connect(srv.addr).await;
    let _b = Raw::connect(srv.addr).await;
    // Wait until the server accepted both.
    while srv.metric("tern_gateway_logins_pending").await < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // A third is closed at accept without an answer.
    let mut c = Raw::connect(srv.addr).await;
    assert!(c.drain_to_eof().await.is_empty());
    assert_eq!(srv.metric("tern_gateway_pending_login_rejections_total").await, 1);
    // Once one of them leaves, a login goes through again.
    drop(_a);
    while srv.metric("tern_gateway_logins_pending").await >= 2 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (_ok, login) = Raw::login(srv.addr, &srv.token("alice", "phone")).await;
    assert_eq!(login.user_id, "alice");
    assert_eq!(srv.metric("tern_gateway_logins_pending").await, 1, "only _b is still pending");
}
