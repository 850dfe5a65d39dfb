//! Token lifecycle through the real server: a session ends with Kick TOKEN_EXPIRED when its
//! token's exp passes, RefreshToken swaps the token without reconnecting (raw and through the
//! SDK, over every transport), the SDK's token provider replaces a dead token, EdDSA-only gateways, kid rotation,
//! `tern token --ed25519-key`, and the oldest-wins duplicate-login policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tern_gateway::auth::{Claims, Ed25519Signer};
use tern_proto::v1::{self, ErrorCode, KickReason, envelope::Body};
use tern_sdk::{ClientConfig, Event, MemoryPersistence, Target, TokenProvider};

use crate::common;
use common::*;

/// A token of the test key for `user`/`device` whose exp is `secs` from now.
fn short(srv: &TestServer, user: &str, device: &str, secs: i64) -> String {
    srv.key.mint_for(user, device, now_secs(), secs)
}

/// An SDK config over the server's transport whose token expires `secs` from now.
fn short_config(srv: &TestServer, user: &str, device: &str, secs: i64) -> ClientConfig {
    let mut cfg = srv.client_config(user, device);
    cfg.token = short(srv, user, device, secs);
    cfg
}

fn kick_reason(frames: &[v1::Envelope]) -> Option<i32> {
    frames.iter().find_map(|f| match &f.body {
        Some(Body::Kick(k)) => Some(k.reason),
        _ => None,
    })
}

fn refresh(token: &str) -> Body {
    Body::RefreshToken(v1::RefreshToken { token: token.into() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_kicked_when_its_token_expires() {
    // A login timeout beyond the test's wait: the kick must come from the token's own deadline
    // (armed when the login moved the deadline earlier), not from an older timer entry.
    let srv = TestServer::start_with(&["auth.leeway_secs=0", "gateway.login_timeout=5m"]).await;
    let exp_secs = now_secs() + 2;
    let token = srv.key.mint(&Claims::new("alice", "phone", exp_secs - 2, 2));
    let (mut raw, ok) = Raw::login(srv.addr, &token).await;
    assert_eq!(ok.token_expires_at_ms, exp_secs * 1000);
    // Nothing is sent: the idle timeout (90 s) is far; only the token's expiry closes it.
    let frames = raw.drain_to_eof().await;
    assert_eq!(kick_reason(&frames), Some(KickReason::TokenExpired as i32), "{frames:?}");
    assert_eq!(srv.metric("tern_gateway_token_expiry_kicks_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_keeps_a_raw_session_past_the_old_expiry() {
    let srv = TestServer::start_with(&["auth.leeway_secs=0"]).await;
    let (mut raw, _) = Raw::login(srv.addr, &short(&srv, "alice", "phone", 2)).await;
    // Refused refreshes answer a non-fatal error and change nothing.
    for (id, bad) in [
        (2, short(&srv, "bob", "phone", 3600)),
        (3, short(&srv, "alice", "laptop", 3600)),
        (4, "garbage".to_owned()),
        (5, srv.key.mint_for("alice", "phone", now_secs() - 7200, 3600)),
    ] {
        raw.send(id, refresh(&bad)).await;
        let answer = raw.recv_answer().await;
        let code = if id == 5 { ErrorCode::TokenExpired } else { ErrorCode::BadToken };
        assert_eq!(error_code(&answer), Some((code, false)), "{answer:?}");
    }
    let long = short(&srv, "alice", "phone", 3600);
    raw.send(6, refresh(&long)).await;
    match raw.recv_answer().await.body {
        Some(Body::TokenRefreshed(t)) => assert!(t.expires_at_ms > (now_secs() + 3000) * 1000),
        other => panic!("expected TokenRefreshed, got {other:?}"),
    }
    // A witness whose token ends a second after the old one: once it is kicked, the old
    // deadline has passed; the refreshed session still answers.
    let (mut witness, _) = Raw::login(srv.addr, &short(&srv, "alice", "tablet", 3)).await;
    let frames = witness.drain_to_eof().await;
    assert_eq!(kick_reason(&frames), Some(KickReason::TokenExpired as i32));
    raw.send(7, Body::Ping(v1::Ping::default())).await;
    assert!(matches!(raw.recv_answer().await.body, Some(Body::Pong(_))));
    assert_eq!(srv.metric("tern_gateway_token_refreshes_total").await, 1);
    assert_eq!(srv.metric("tern_gateway_token_refresh_failures_total").await, 4);
    assert_eq!(srv.metric("tern_gateway_token_expiry_kicks_total").await, 1);
}

async fn sdk_refresh_token_swaps_the_token_without_reconnecting(t: Transport) {
    let srv = TestServer::start_over(t, &["auth.leeway_secs=0"]).await;
    let (client, mut events) = connect_with(short_config(&srv, "alice", "phone", 2)).await;
    assert!(matches!(events.recv().await, Some(Event::Connected { .. })));
    let first_exp = client.token_expires_at_ms().unwrap();
    let err = client.refresh_token(short(&srv, "bob", "phone", 3600)).await.unwrap_err();
    assert!(matches!(err, tern_sdk::SdkError::Server { code: ErrorCode::BadToken, .. }), "{err}");
    assert_eq!(client.token_expires_at_ms(), Some(first_exp), "a refused token changes nothing");
    let exp = client.refresh_token(short(&srv, "alice", "phone", 3600)).await.unwrap();
    assert!(exp > first_exp);
    assert_eq!(client.token_expires_at_ms(), Some(exp));
    // Past the old expiry (a witness with a later one was kicked), the client still works on
    // the same connection: no Kicked, no Disconnected, no second Connected.
    let (mut witness, _) = Raw::login(srv.addr, &short(&srv, "alice", "tablet", 3)).await;
    assert_eq!(kick_reason(&witness.drain_to_eof().await), Some(KickReason::TokenExpired as i32));
    let ack = client.send(Target::Peer("bob".into()), "text/plain", text("hi")).await.unwrap();
    assert_eq!(ack.seq, 1);
    assert!(events.try_recv().is_err(), "no event: the connection never dropped");
    assert_eq!(srv.metric("tern_gateway_logins_total").await, 2, "alice/phone + the witness");
}

async fn sdk_takes_a_fresh_token_from_its_provider_after_token_expired(t: Transport) {
    let srv = TestServer::start_over(t, &["auth.leeway_secs=0"]).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let fresh = short(&srv, "alice", "phone", 3600);
    let provider = {
        let calls = calls.clone();
        TokenProvider::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let token = fresh.clone();
            async move { Ok(token) }
        })
    };
    let mut cfg = short_config(&srv, "alice", "phone", 2);
    cfg.token_provider = Some(provider);
    cfg.reconnect_min = std::time::Duration::from_millis(10);
    let (client, mut events) =
        tern_sdk::Client::connect(cfg, Arc::new(MemoryPersistence::new())).await.unwrap();
    let kicked = wait_event(&mut events, |e| match e {
        Event::Kicked { reason } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(kicked, KickReason::TokenExpired);
    wait_event(&mut events, |e| matches!(e, Event::Connected { .. }).then_some(())).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(client.token_expires_at_ms().unwrap() > (now_secs() + 3000) * 1000);
    let ack = client.send(Target::Peer("bob".into()), "text/plain", text("back")).await.unwrap();
    assert_eq!(ack.seq, 1);
    // The fresh token came before the reconnect: no login was tried with the dead one.
    assert_eq!(srv.metric("tern_gateway_login_failures_total").await, 0);
}

async fn sdk_without_provider_stops_after_token_expired(t: Transport) {
    let srv = TestServer::start_over(t, &["auth.leeway_secs=0"]).await;
    let (client, mut events) = connect_with(short_config(&srv, "alice", "phone", 2)).await;
    let kicked = wait_event(&mut events, |e| match e {
        Event::Kicked { reason } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(kicked, KickReason::TokenExpired);
    // The channel closes: the client does not log in again with the dead token.
    while let Some(e) = tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
        assert!(!matches!(e, Event::Connected { .. }), "reconnected with a dead token");
    }
    assert!(client.list_conversations().await.is_err());
    assert_eq!(srv.metric("tern_gateway_logins_total").await, 1);
    assert_eq!(srv.metric("tern_gateway_login_failures_total").await, 0, "no retry, dead token");
}

crate::over_transports!(
    sdk_refresh_token_swaps_the_token_without_reconnecting,
    sdk_takes_a_fresh_token_from_its_provider_after_token_expired,
    sdk_without_provider_stops_after_token_expired,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oldest_wins_refuses_a_second_login_of_the_device() {
    let srv = TestServer::start_with(&["auth.duplicate_login=oldest_wins"]).await;
    let token = srv.token("alice", "phone");
    let (mut old, _) = Raw::login(srv.addr, &token).await;
    let mut new = Raw::connect(srv.addr).await;
    new.send(
        9,
        Body::Login(v1::Login { token: token.clone(), protocol_version: 1, ..Default::default() }),
    )
    .await;
    let frames = new.drain_to_eof().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].request_id, 9);
    assert_eq!(error_code(&frames[0]), Some((ErrorCode::AlreadyLoggedIn, true)));
    // The victim keeps its connection; another device is unaffected.
    old.send(2, Body::Ping(v1::Ping::default())).await;
    assert!(matches!(old.recv_answer().await.body, Some(Body::Pong(_))));
    let (_laptop, _) = Raw::login(srv.addr, &srv.token("alice", "laptop")).await;
    assert_eq!(srv.metric("tern_gateway_duplicate_login_refusals_total").await, 1);
    assert_eq!(srv.metric("tern_gateway_duplicate_login_kicks_total").await, 0);
}

/// An embedded server configured by TOML text (for settings `--set` cannot express).
async fn start_from_toml(toml: &str) -> (std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tern.toml");
    std::fs::write(&path, toml).unwrap();
    let sets = [format!("server.data_dir={}", dir.path().display()), "server.http_listen=".into()];
    let cfg = tern::config::Config::load(Some(&path), Vec::new(), &sets).unwrap();
    let listener = tern_gateway::listen("127.0.0.1:0".parse().unwrap(), 128, 1, false).unwrap();
    let addr = listener.local_addr();
    tokio::spawn(
        async move { tern::embedded::run(&cfg, listener, None, std::future::pending()).await },
    );
    (addr, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_only_gateway_and_kid_rotation() {
    let old = Ed25519Signer::from_seed(&[1; 32]).with_kid(Some("ed-old".into()));
    let new = Ed25519Signer::from_seed(&[2; 32]).with_kid(Some("ed-new".into()));
    let toml = format!(
        "[[auth.keys]]\nid = \"ed-old\"\nalg = \"EdDSA\"\nkey = \"{}\"\n\
         [[auth.keys]]\nid = \"ed-new\"\nalg = \"EdDSA\"\nkey = \"{}\"\n",
        old.public_base64(),
        new.public_base64()
    );
    let (addr, dir) = start_from_toml(&toml).await;
    assert!(!dir.path().join("jwt.key").exists(), "no HS256 key is generated");
    let now = now_secs();
    // Both keys of the rotation verify; a kid-less token uses the first (default) key.
    let (_a, ok) = Raw::login(addr, &old.mint_for("alice", "phone", now, 600)).await;
    assert_eq!(ok.user_id, "alice");
    let (_b, _) = Raw::login(addr, &new.mint_for("bob", "phone", now, 600)).await;
    let (_c, _) = Raw::login(addr, &old.clone().with_kid(None).mint_for("c", "d", now, 60)).await;
    // HS256 (any key) and a kid-less token of the second key are refused.
    let hs = tern_gateway::TokenKey::from_secret(&[9; 32]).unwrap();
    for bad in [hs.mint_for("eve", "x", now, 60), new.with_kid(None).mint_for("eve", "x", now, 60)]
    {
        let mut raw = Raw::connect(addr).await;
        raw.send(1, Body::Login(v1::Login { token: bad, ..Default::default() })).await;
        let frames = raw.drain_to_eof().await;
        assert_eq!(error_code(&frames[0]), Some((ErrorCode::BadToken, true)), "{frames:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_token_mints_eddsa_tokens_from_a_pem_key() {
    // RFC 8410's example key, as `openssl genpkey -algorithm ed25519` writes it.
    let pem = "-----BEGIN PRIVATE KEY-----\n\
               MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
               -----END PRIVATE KEY-----\n";
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("ed25519.pem");
    std::fs::write(&key_path, pem).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["token", "--user", "alice", "--device", "phone", "--kid", "ed-1"])
        .arg("--ed25519-key")
        .arg(&key_path)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let signer = Ed25519Signer::from_text(pem).unwrap().with_kid(Some("ed-1".into()));
    let v = tern_gateway::Verifier::new(vec![signer.verify_key()], Default::default()).unwrap();
    let claims = v.verify_claims(token.trim(), now_secs() * 1000).unwrap();
    assert_eq!((claims.sub.as_str(), claims.did.as_str()), ("alice", "phone"));
    assert!(!dir.path().join("jwt.key").exists(), "minting EdDSA creates no HS256 key");
}
