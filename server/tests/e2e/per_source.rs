//! Per-source caps over real sockets from several 127.0.0.x source addresses: one source at
//! its pending-login or connection cap is refused at accept while other sources still get in.

use crate::common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use tokio::net::TcpSocket;

/// A raw connection from the source address `127.0.0.<last>`.
async fn connect_from(srv: &TestServer, last: u8) -> Raw {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(IpAddr::from([127, 0, 0, last]), 0)).unwrap();
    Raw::from_stream(sock.connect(srv.addr).await.unwrap())
}

/// Waits until a metric reaches `value` (the server accepts asynchronously).
async fn wait_metric(srv: &TestServer, name: &str, value: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while srv.metric(name).await != value {
        assert!(tokio::time::Instant::now() < deadline, "{name} never reached {value}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_at_its_pending_login_cap_does_not_block_another() {
    let srv = TestServer::start_with(&["gateway.max_pending_logins_per_source=2"]).await;
    // 127.0.0.2 fills its two pending-login slots with silent connections.
    let _a1 = connect_from(&srv, 2).await;
    let _a2 = connect_from(&srv, 2).await;
    wait_metric(&srv, "tern_gateway_logins_pending", 2).await;
    // A third from 127.0.0.2 is closed at accept without a frame.
    let mut a3 = connect_from(&srv, 2).await;
    assert!(a3.drain_to_eof().await.is_empty());
    assert_eq!(srv.metric("tern_gateway_source_pending_login_rejections_total").await, 1);
    // 127.0.0.3 is unaffected: two silent connections and a login.
    let _b1 = connect_from(&srv, 3).await;
    let _b2 = connect_from(&srv, 3).await;
    wait_metric(&srv, "tern_gateway_logins_pending", 4).await;
    let mut b3 = connect_from(&srv, 3).await;
    assert!(b3.drain_to_eof().await.is_empty(), "127.0.0.3 is at its cap too now");
    let mut c = connect_from(&srv, 4).await;
    c.send(1, login_body(&srv.token("carol", "phone"))).await;
    assert!(matches!(c.recv().await.and_then(|f| f.body), Some(v1::envelope::Body::LoginOk(_))));
    assert_eq!(srv.metric("tern_gateway_source_pending_login_rejections_total").await, 2);
    assert_eq!(srv.metric("tern_gateway_sources").await, 3);
    // A pending connection that logs in frees its slot for its source.
    let mut a4 = connect_from(&srv, 2).await;
    assert!(a4.drain_to_eof().await.is_empty());
    drop(_a1);
    wait_metric(&srv, "tern_gateway_logins_pending", 3).await;
    let mut a5 = connect_from(&srv, 2).await;
    a5.send(1, login_body(&srv.token("alice", "phone"))).await;
    assert!(matches!(a5.recv().await.and_then(|f| f.body), Some(v1::envelope::Body::LoginOk(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_at_its_connection_cap_does_not_block_another() {
    let srv = TestServer::start_with(&["gateway.max_connections_per_source=2"]).await;
    let (_a1, _) = Raw::login_from(srv.addr, 5, &srv.token("a1", "d")).await;
    let (_a2, _) = Raw::login_from(srv.addr, 5, &srv.token("a2", "d")).await;
    // Logged in, not pending: the connection cap still holds.
    let mut a3 = connect_from(&srv, 5).await;
    assert!(a3.drain_to_eof().await.is_empty());
    assert_eq!(srv.metric("tern_gateway_source_connection_rejections_total").await, 1);
    let (_b1, ok) = Raw::login_from(srv.addr, 6, &srv.token("b1", "d")).await;
    assert_eq!(ok.user_id, "b1");
    assert_eq!(srv.metric("tern_gateway_connections_open").await, 3);
}

use tern_proto::v1;

fn login_body(token: &str) -> v1::envelope::Body {
    v1::envelope::Body::Login(v1::Login {
        token: token.into(),
        protocol_version: 1,
        client_version: "test".into(),
        ..Default::default()
    })
}

impl Raw {
    /// Logs in from the source address `127.0.0.<last>`.
    async fn login_from(addr: SocketAddr, last: u8, token: &str) -> (Raw, v1::LoginOk) {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(IpAddr::from([127, 0, 0, last]), 0)).unwrap();
        let mut raw = Raw::from_stream(sock.connect(addr).await.unwrap());
        raw.send(1, login_body(token)).await;
        match raw.recv().await.and_then(|f| f.body) {
            Some(v1::envelope::Body::LoginOk(ok)) => (raw, ok),
            other => panic!("login failed: {other:?}"),
        }
    }
}
