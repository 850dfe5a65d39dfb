//! Bounded everything: a client that stops reading while messages are pushed to it is closed
//! when its outbound queue reaches the cap; the sender is unaffected, and the slow client
//! recovers everything by sync.

use crate::common;

use common::*;
use tern_proto::v1::{self, KickReason, envelope::Body};
use tern_sdk::Target;
use tokio::net::TcpSocket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_closed_at_cap_and_recovers_by_sync() {
    let srv = TestServer::start_with(&[
        "gateway.max_frame_bytes=16384",
        "gateway.max_outbound_bytes=65536",
        "gateway.max_outbound_frames=1000",
        // Alice floods on purpose; this test is about the reader, not her rate.
        "gateway.max_frames_per_sec=0",
    ])
    .await;
    // Bob logs in with a tiny receive buffer and then never reads.
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

    // Alice sends 8 MiB to bob; every send is acknowledged regardless of bob.
    let (alice, _ae) = srv.client("alice", "phone").await;
    let body = bytes::Bytes::from(vec![b'x'; 2048]);
    const N: u64 = 4096;
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..N {
        let (c, b) = (alice.clone(), body.clone());
        pending.push_back(tokio::spawn(async move {
            c.send(Target::Peer("bob".into()), "application/octet-stream", b).await.unwrap()
        }));
        if pending.len() >= 128 {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    let kicks = srv.metric("tern_gateway_slow_consumer_kicks_total").await;
    assert_eq!(kicks, 1, "{}", srv.http_get("/metrics").await);

    // Bob's connection ends with a SLOW_CONSUMER kick after whatever it had buffered.
    let frames = bob.drain_to_eof().await;
    match frames.last().and_then(|f| f.body.as_ref()) {
        Some(Body::Kick(k)) => assert_eq!(k.reason, KickReason::SlowConsumer as i32),
        other => panic!("expected a final SLOW_CONSUMER kick, got {other:?}"),
    }
    let delivered =
        frames.iter().filter(|f| matches!(f.body, Some(Body::Deliver(_)))).count() as u64;
    assert!(delivered < N, "the cap must have cut the push stream short");

    // Bob comes back and gets everything, in order, once.
    let (_bob, mut events) = srv.client("bob", "phone").await;
    for expected in 1..=N {
        assert_eq!(next_message(&mut events).await.seq, expected);
    }
}
