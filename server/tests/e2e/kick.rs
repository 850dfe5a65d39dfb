//! A second login of the same (user, device) kicks the older connection with a Kick frame; the
//! SDK reports it (over every transport) and does not fight back by reconnecting; a login over
//! one transport kicks the device's connection over another.

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

async fn sdk_reports_kick_and_stays_down(t: Transport) {
    let srv = TestServer::start_over(t, &[]).await;
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

/// The device's connections are one, whatever carries them: a TCP login kicks the device's
/// QUIC connection and a QUIC login kicks its TCP one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_over_one_transport_kicks_the_device_on_another() {
    let srv = TestServer::start_over(Transport::Quic, &[]).await;
    let tcp = |srv: &TestServer| {
        let mut cfg = srv.client_config("alice", "phone");
        cfg.addr = Transport::Tcp.sdk_addr(srv.addr);
        cfg.trust = tern_sdk::Trust::default();
        cfg
    };
    let (quic, mut qe) = srv.client("alice", "phone").await;
    let (over_tcp, mut te) = connect_with(tcp(&srv)).await;
    let kicked = |e: &Event| match e {
        Event::Kicked { reason } => Some(*reason),
        _ => None,
    };
    assert_eq!(wait_event(&mut qe, kicked).await, KickReason::DuplicateLogin);
    let ack = over_tcp.send(Target::Peer("bob".into()), "text/plain", text("tcp")).await.unwrap();
    assert_eq!(ack.seq, 1);

    let (again, _ae) = srv.client("alice", "phone").await;
    assert_eq!(wait_event(&mut te, kicked).await, KickReason::DuplicateLogin);
    let ack = again.send(Target::Peer("bob".into()), "text/plain", text("quic")).await.unwrap();
    assert_eq!(ack.seq, 2);
    assert_eq!(srv.metric("tern_gateway_duplicate_login_kicks_total").await, 2);
    drop((quic, over_tcp));
}

crate::over_transports!(sdk_reports_kick_and_stays_down,);
