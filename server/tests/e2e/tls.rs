//! TLS on TCP through the SDK and raw sockets: the port tells TLS from plain TCP by the first
//! byte; a pinned fingerprint is the identity (a wrong one is refused); "required" refuses plain
//! clients with a fatal TLS_REQUIRED; a broken handshake closes the connection and is counted.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;

use common::*;
use tern_proto::v1::ErrorCode;
use tern_sdk::{Client, MemoryPersistence, Target, Trust};

fn own_fingerprint(srv: &TestServer) -> String {
    let pem = std::fs::read(srv.dir.path().join("tls").join("cert.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    tern::tls::fingerprint(&cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_tls_clients_share_the_port_and_a_pin_is_checked() {
    let srv = TestServer::start().await;
    // Plain TCP on the port that also speaks TLS.
    let (alice, _ae) = srv.client("alice", "phone").await;
    // TLS with the pinned fingerprint.
    let mut cfg = srv.client_config("bob", "phone");
    cfg.addr = Transport::Tls.sdk_addr(srv.addr);
    cfg.trust = Trust::Pinned(own_fingerprint(&srv));
    let (_bob, mut be) = connect_with(cfg.clone()).await;
    alice.send(Target::Peer("bob".into()), "text/plain", bytes::Bytes::from("hi")).await.unwrap();
    assert_eq!(next_message(&mut be).await.seq, 1);
    // A wrong pin: the SDK refuses the server.
    cfg.token = srv.token("bob", "tablet");
    cfg.trust = Trust::Pinned(["00"; 32].join(":"));
    let refused =
        tokio::time::timeout(WAIT, Client::connect(cfg, Arc::new(MemoryPersistence::default())))
            .await
            .expect("connect timed out");
    assert!(refused.is_err(), "a wrong pin must be refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_requires_tls_refuses_plain_clients_with_a_clear_error() {
    let srv = TestServer::start_over(Transport::Tls, &["server.tls=required"]).await;
    let mut raw = Raw::connect(srv.addr).await;
    raw.send_bytes(&[0, 0, 0, 0]).await;
    let frames = raw.drain_to_eof().await;
    let got: Vec<_> = frames.iter().filter_map(error_code).collect();
    assert_eq!(got, vec![(ErrorCode::TlsRequired, true)], "frames: {frames:?}");
    let text = srv.http_get("/metrics").await;
    assert!(text.contains("tern_gateway_tls_plaintext_refusals_total 1"), "{text}");
    // TLS clients are served.
    let (_c, _e) = srv.client("carol", "phone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_tls_handshake_closes_the_connection_and_is_counted() {
    let srv = TestServer::start().await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    // A TLS record header (handshake, TLS 1.0) and then nonsense for a ClientHello.
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x08, 1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef]).await.unwrap();
    let mut got = Vec::new();
    // The server answers with an alert (or nothing) and closes.
    tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await.expect("not closed").ok();
    assert!(got.first().is_none_or(|&b| b == 0x15), "expected an alert, got {got:?}");
    let text = srv.http_get("/metrics").await;
    assert!(text.contains("tern_gateway_tls_handshake_failures_total 1"), "{text}");
    // The port still serves.
    let (_c, _e) = srv.client("dave", "phone").await;
}
