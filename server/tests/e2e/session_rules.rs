//! Session rules of PROTOCOL.md §3, §5 and §14 over a real socket: frames pipelined behind the
//! Login, request id 0, the client_version limit, and the rate limiter's fatal close under a
//! flood that lasts (time advancing, tokens being earned meanwhile).

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use common::*;
use tern_proto::encode_to_bytes;
use tern_proto::v1::{self, Envelope, ErrorCode, envelope::Body};
use tokio::io::AsyncWriteExt;

fn frame(request_id: u64, body: Body) -> Vec<u8> {
    encode_to_bytes(&Envelope { request_id, body: Some(body) }, usize::MAX).unwrap().to_vec()
}

fn login(token: String) -> Body {
    Body::Login(v1::Login {
        token,
        protocol_version: 1,
        client_version: "test".into(),
        ..Default::default()
    })
}

fn ping() -> Body {
    Body::Ping(v1::Ping::default())
}

fn send_to_bob(id: &str) -> Body {
    Body::Send(v1::Send {
        peer_user_id: "bob".into(),
        client_msg_id: id.into(),
        content_type: "text/plain".into(),
        body: text("pipelined"),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_behind_the_login_are_answered_after_login_ok_in_order() {
    let srv = TestServer::start().await;
    // One TCP write: Login, Ping, Send, Ping.
    let mut bytes = frame(1, login(srv.token("alice", "phone")));
    bytes.extend(frame(2, ping()));
    bytes.extend(frame(3, send_to_bob("m1")));
    bytes.extend(frame(4, ping()));
    let mut raw = Raw::connect(srv.addr).await;
    raw.send_bytes(&bytes).await;
    let first = raw.recv().await.expect("LoginOk");
    assert!(matches!(first.body, Some(Body::LoginOk(_))), "LoginOk comes first: {first:?}");
    assert_eq!(first.request_id, 1);
    let mut answers = Vec::new();
    for _ in 0..3 {
        let a = raw.recv_answer().await;
        let kind = match &a.body {
            Some(Body::Pong(_)) => "pong",
            Some(Body::SendAck(ack)) => {
                assert_eq!((ack.seq, ack.duplicate), (1, false));
                "ack"
            }
            other => panic!("unexpected answer {other:?}"),
        };
        answers.push((a.request_id, kind));
    }
    // The pings were processed in order, the Send was processed (and answered when durable).
    let pongs: Vec<_> = answers.iter().filter(|a| a.1 == "pong").map(|a| a.0).collect();
    assert_eq!(pongs, vec![2, 4]);
    assert!(answers.contains(&(3, "ack")), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_behind_a_failed_login_are_discarded() {
    let srv = TestServer::start().await;
    let mut bytes = frame(1, login("not-a-token".into()));
    bytes.extend(frame(2, send_to_bob("m1")));
    bytes.extend(frame(3, ping()));
    let mut raw = Raw::connect(srv.addr).await;
    raw.send_bytes(&bytes).await;
    let frames = raw.drain_to_eof().await;
    let codes: Vec<_> = frames.iter().map(|f| (f.request_id, error_code(f))).collect();
    assert_eq!(codes, vec![(1, Some((ErrorCode::BadToken, true)))], "{frames:?}");
    // The Send behind it was not processed.
    let (alice, _ae) = srv.client("alice", "phone").await;
    assert_eq!(alice.sync_page("dm:alice:bob", 1, 10).await.unwrap().last_seq, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_zero_and_long_client_versions_are_refused() {
    let srv = TestServer::start().await;
    // Logged in: a request with id 0 is refused (not processed, not fatal).
    let (mut raw, _) = Raw::login(srv.addr, &srv.token("alice", "phone")).await;
    raw.send(0, send_to_bob("zero")).await;
    let answer = raw.recv_answer().await;
    assert_eq!(
        (answer.request_id, error_code(&answer)),
        (0, Some((ErrorCode::InvalidRequest, false)))
    );
    raw.send(7, ping()).await;
    assert!(matches!(
        raw.recv_answer().await,
        Envelope { request_id: 7, body: Some(Body::Pong(_)) }
    ));
    // A Login with id 0 is fatal.
    let mut raw = Raw::connect(srv.addr).await;
    raw.send(0, login(srv.token("bob", "phone"))).await;
    let frames = raw.drain_to_eof().await;
    let got: Vec<_> = frames.iter().map(|f| (f.request_id, error_code(f))).collect();
    assert_eq!(got, vec![(0, Some((ErrorCode::InvalidRequest, true)))]);
    // client_version: 64 bytes pass, 65 are fatal.
    for (len, ok) in [(64, true), (65, false)] {
        let mut raw = Raw::connect(srv.addr).await;
        let body = Body::Login(v1::Login {
            token: srv.token("carol", "phone"),
            protocol_version: 1,
            client_version: "v".repeat(len),
            ..Default::default()
        });
        raw.send(1, body).await;
        let first = raw.recv().await.expect("an answer");
        if ok {
            assert!(matches!(first.body, Some(Body::LoginOk(_))), "{first:?}");
        } else {
            assert_eq!(error_code(&first), Some((ErrorCode::InvalidRequest, true)), "{first:?}");
            assert!(raw.recv().await.is_none(), "closed after the error");
        }
    }
    // Nothing was stored by the refused Send.
    let (alice, _ae) = srv.client("alice", "laptop").await;
    assert_eq!(alice.sync_page("dm:alice:bob", 1, 10).await.unwrap().last_seq, 0);
}

/// Frames the flood sends at most before the test gives up (the server never closed).
const FLOOD_MAX: u64 = 300_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_flood_over_the_rate_is_closed() {
    // The default rate (1000 frames/s, burst 2000). The flood runs as fast as the connection
    // takes it (keeping at most 2000 frames unanswered so that the test itself never becomes a
    // slow consumer): many times the rate, for as long as it takes, with tokens arriving all
    // along.
    let srv = TestServer::start_with(&["gateway.max_frames_per_sec=1000"]).await;
    let (raw, _) = Raw::login(srv.addr, &srv.token("alice", "phone")).await;
    let answered = Arc::new(AtomicU64::new(0));
    let more = Arc::new(tokio::sync::Notify::new());
    let (mut reader, mut writer) = raw.into_split();
    let writer = {
        let (answered, more) = (answered.clone(), more.clone());
        tokio::spawn(async move {
            let batch: Vec<u8> = (0..100).flat_map(|_| frame(1, ping())).collect();
            let mut sent = 0u64;
            while sent < FLOOD_MAX {
                while sent >= answered.load(SeqCst) + 2000 {
                    let wait = more.notified();
                    if sent < answered.load(SeqCst) + 2000 {
                        break;
                    }
                    wait.await;
                }
                if writer.write_all(&batch).await.is_err() {
                    return; // closed by the server
                }
                sent += 100;
            }
        })
    };
    let (mut pongs, mut refused, mut last) = (0u64, 0u64, None);
    while let Some(env) = reader.recv().await {
        match error_code(&env) {
            Some((ErrorCode::RateLimited, false)) => refused += 1,
            Some(e) => {
                last = Some(e);
            }
            None => {
                assert!(matches!(env.body, Some(Body::Pong(_))), "{env:?}");
                pongs += 1;
            }
        }
        answered.fetch_add(1, SeqCst);
        more.notify_one();
        assert!(
            pongs + refused < FLOOD_MAX,
            "{FLOOD_MAX} frames answered ({pongs} pongs, {refused} refused) and never closed"
        );
    }
    writer.abort();
    assert_eq!(last, Some((ErrorCode::RateLimited, true)), "{pongs} pongs, {refused} refused");
    assert!(refused >= 2000, "a full burst of non-fatal refusals first: {refused}");
    assert!(pongs >= 2000, "the burst was answered: {pongs}");
    assert_eq!(srv.metric("tern_gateway_rate_limit_closes_total").await, 1);
}
