//! The SDK across connection loss (over TCP and QUIC): heartbeats keep an idle connection open, and after a server
//! restart the client reconnects by itself, resends what was not acknowledged (same
//! client_msg_id, so nothing doubles) and catches up on what it missed.

use crate::common;

use std::time::Duration;

use common::*;
use tern_sdk::{Event, Target};

const FAST_HEARTBEAT: [&str; 2] =
    ["gateway.heartbeat_interval=100ms", "gateway.idle_timeout=400ms"];

async fn heartbeats_keep_an_idle_client_connected(t: Transport) {
    let srv = TestServer::start_over(t, &FAST_HEARTBEAT).await;
    let (alice, mut events) = srv.client("alice", "phone").await;
    // Four idle timeouts' worth of silence from the app.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    while let Ok(ev) = events.try_recv() {
        assert!(!matches!(ev, Event::Disconnected { .. } | Event::Kicked { .. }), "{ev:?}");
    }
    alice.send(Target::Peer("bob".into()), "text/plain", text("still here")).await.unwrap();
    assert_eq!(srv.metric("tern_gateway_idle_timeouts_total").await, 0);
    assert_eq!(srv.metric("tern_gateway_connections_accepted_total").await, 1);
}

async fn client_reconnects_resends_and_catches_up_after_restart(t: Transport) {
    let srv = TestServer::start_over(t, &[]).await;
    let (alice, _ae) = srv.client("alice", "phone").await;
    let (bob, mut be) = srv.client("bob", "phone").await;
    let first = alice.send(Target::Peer("bob".into()), "text/plain", text("before")).await.unwrap();
    assert_eq!(next_message(&mut be).await.seq, first.seq);

    // The server goes away (SERVER_SHUTDOWN kick); alice keeps sending meanwhile.
    let srv = {
        let (addr, quic) = (srv.addr, srv.quic);
        let dir = srv.stop().await;
        let sends: Vec<_> = (0..20)
            .map(|i| {
                let a = alice.clone();
                tokio::spawn(async move {
                    a.send_with_id(
                        Target::Peer("bob".into()),
                        format!("down-{i}"),
                        "text/plain",
                        text("during"),
                    )
                    .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let srv = TestServer::start_full(dir, addr, quic, t, &[]).await;
        for s in sends {
            let ack = s.await.unwrap().expect("send made while the server was down must complete");
            assert!(ack.seq > first.seq);
        }
        srv
    };

    // Bob reconnected too and receives every message exactly once, in order.
    for expected in first.seq + 1..=first.seq + 20 {
        assert_eq!(next_message(&mut be).await.seq, expected);
    }
    let page = bob.sync_page("dm:alice:bob", 1, 100).await.unwrap();
    assert_eq!(page.last_seq, first.seq + 20, "no message stored twice");
    drop(srv);
}

crate::over_transports!(
    heartbeats_keep_an_idle_client_connected,
    client_reconnects_resends_and_catches_up_after_restart,
);
