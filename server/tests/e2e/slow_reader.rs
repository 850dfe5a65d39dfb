//! Bounded everything: a client that stops reading while messages are pushed to it is kicked
//! when its outbound queue reaches the cap, and it really receives that Kick (the last frame
//! before EOF) once it reads again; the sender is unaffected, and the slow client recovers
//! everything by sync. Deterministic: the test waits for the kick metric and for frames, never
//! for time.

use crate::common;

use common::*;
use tern_proto::v1::{self, KickReason, envelope::Body};
use tern_sdk::Target;
use tokio::net::TcpSocket;

/// Sends stop at this many if no kick came (a failure guard: ~40 MiB pushed to a reader whose
/// cap is 64 KiB).
const MAX_SENDS: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_gets_its_kick_and_recovers_by_sync() {
    let srv = TestServer::start_with(&[
        "gateway.max_frame_bytes=16384",
        "gateway.max_outbound_bytes=65536",
        "gateway.max_outbound_frames=1000",
        // Alice floods on purpose; this test is about the reader, not her rate.
        "gateway.max_frames_per_sec=0",
        // The Kick waits for bob to read again, however long the machine takes to get there.
        "gateway.close_timeout=10m",
        // Carol's login timeout is the test's clock (see below); logins here take milliseconds.
        "gateway.login_timeout=2s",
    ])
    .await;
    // Bob logs in with a tiny receive buffer, reads his LoginOk, and then stops reading.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(srv.addr).await.unwrap();
    let mut bob = Raw::from_stream(stream);
    bob.send(
        1,
        Body::Login(v1::Login {
            token: srv.token("bob", "phone"),
            protocol_version: 1,
            ..Default::default()
        }),
    )
    .await;
    assert!(matches!(bob.recv().await.and_then(|f| f.body), Some(Body::LoginOk(_))));

    // Alice sends 2 KiB messages to bob until the gateway kicks him (every send is acknowledged
    // regardless of bob).
    let (alice, _ae) = srv.client("alice", "phone").await;
    let body = bytes::Bytes::from(vec![b'x'; 2048]);
    let mut sent = 0u64;
    let mut pending = std::collections::VecDeque::new();
    loop {
        let (c, b) = (alice.clone(), body.clone());
        pending.push_back(tokio::spawn(async move {
            c.send(Target::Peer("bob".into()), "application/octet-stream", b).await.unwrap()
        }));
        sent += 1;
        if pending.len() >= 128 {
            pending.pop_front().unwrap().await.unwrap();
        }
        if sent.is_multiple_of(64)
            && srv.metric("tern_gateway_slow_consumer_kicks_total").await >= 1
        {
            break;
        }
        assert!(sent < MAX_SENDS, "no SLOW_CONSUMER kick after {sent} messages");
    }
    for p in pending {
        p.await.unwrap();
    }
    assert_eq!(srv.metric("tern_gateway_slow_consumer_kicks_total").await, 1);

    // Bob reads only after an event that comes well after the kick: carol connects now and
    // never logs in, so her LOGIN_TIMEOUT arrives 2 s later. (Before the kick was kept until
    // written, a 500 ms linger dropped bob's socket with the kick still queued.)
    let mut carol = Raw::connect(srv.addr).await;
    let timeout = carol.drain_to_eof().await;
    assert_eq!(
        timeout.iter().filter_map(error_code).collect::<Vec<_>>(),
        vec![(v1::ErrorCode::LoginTimeout, true)]
    );

    // Bob reads again: whatever was buffered, then the SLOW_CONSUMER kick, then EOF.
    let frames = bob.drain_to_eof().await;
    match frames.last().and_then(|f| f.body.as_ref()) {
        Some(Body::Kick(k)) => assert_eq!(k.reason, KickReason::SlowConsumer as i32),
        other => {
            let what: String = format!("{other:?}").chars().take(120).collect();
            panic!("expected a final SLOW_CONSUMER kick after {} frames, got {what}", frames.len())
        }
    }
    let delivered =
        frames.iter().filter(|f| matches!(f.body, Some(Body::Deliver(_)))).count() as u64;
    assert!(delivered < sent, "the cap must have cut the push stream short");

    // Bob comes back and gets everything, in order, once.
    let (_bob, mut events) = srv.client("bob", "phone").await;
    for expected in 1..=sent {
        assert_eq!(next_message(&mut events).await.seq, expected);
    }
}
