//! A second login of the same (user, device) kicks the older connection with a Kick frame; the
//! SDK reports it and does not fight back by reconnecting.

use crate::common;

use common::*;
use tern_proto::v1::{KickReason, envelope::Body};
use tern_sdk::{Event, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_device_login_kicks_older_connection() {
    let srv = TestServer::start().await;
    let token = srv.token("alice", "phone");
    let (mut old, _) = Raw::login(srv.addr, &token).await;
    let (mut new, _) = Raw::login(srv.addr, &token).await;

    let frames = old.drain_to_eof().await;
    let kick = frames.iter().find_map(|f| match &f.body {
        Some(Body::Kick(k)) => Some(k.reason),
        _ => None,
    });
    assert_eq!(kick, Some(KickReason::DuplicateLogin as i32));

    // The new connection works; another device of the same user is unaffected.
    let (_laptop, _le) = srv.client("alice", "laptop").await;
    new.send(7, Body::Ping(Default::default())).await;
    assert!(matches!(new.recv_answer().await.body, Some(Body::Pong(_))));
    assert_eq!(srv.metric("tern_gateway_duplicate_login_kicks_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_reports_kick_and_stays_down() {
    let srv = TestServer::start().await;
    let (first, mut fe) = srv.client("alice", "phone").await;
    let (second, _se) = srv.client("alice", "phone").await;
    let reason = wait_event(&mut fe, |e| match e {
        Event::Kicked { reason } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, KickReason::DuplicateLogin);
    // The kicked client did not log in again and kick the newer one back.
    let ack =
        second.send(Target::Peer("bob".into()), "text/plain", text("still here")).await.unwrap();
    assert_eq!(ack.seq, 1);
    assert_eq!(srv.metric("tern_gateway_duplicate_login_kicks_total").await, 1);
    drop(first);
}
