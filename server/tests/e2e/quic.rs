//! `tern serve` over QUIC as a real process: it announces its QUIC address (by default the
//! client port), presents the certificate it generated in its data directory, a quinn client
//! logs in on one bidirectional stream and gets its heartbeat answered, and SDK clients on
//! `quic://` addresses message each other.

use crate::common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use common::*;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tern_proto::v1::{self, envelope::Body};
use tern_proto::{FrameDecoder, encode_to_bytes};

fn quinn_client(cert: CertificateDer<'static>) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![tern_gateway::quic::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// `tern serve` in `dir`; returns it with its announced client and QUIC addresses.
fn serve_quic(dir: &std::path::Path) -> (ChildServer, SocketAddr, SocketAddr) {
    let mut child = serve_command(dir, "127.0.0.1:0", &[]).spawn().expect("spawn");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let field = |k: &str| -> SocketAddr {
        let w = line.split_whitespace().find_map(|w| w.strip_prefix(k));
        w.unwrap_or_else(|| panic!("no {k} in {line:?}")).parse().unwrap()
    };
    let (client, quic) = (field("client="), field("quic="));
    (ChildServer { child, addr: client }, client, quic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_serve_speaks_quic_on_its_client_port() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client, quic) = serve_quic(dir.path());
    assert_eq!(quic.ip(), client.ip(), "QUIC on the client address by default");
    let cert = CertificateDer::from_pem_file(dir.path().join("tls").join("cert.pem")).unwrap();
    let key = ChildServer::key(dir.path());

    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn_client(cert));
    let connecting = endpoint.connect(quic, "localhost").unwrap();
    let conn = tokio::time::timeout(WAIT, connecting).await.expect("handshake").unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let token = key.mint_for("quic-e2e", "d", now_secs(), 3600);
    let login = v1::Login {
        token,
        protocol_version: 1,
        client_version: "e2e".into(),
        ..Default::default()
    };
    for (id, body) in [(1, Body::Login(login)), (2, Body::Ping(v1::Ping::default()))] {
        let env = v1::Envelope { request_id: id, body: Some(body) };
        send.write_all(&encode_to_bytes(&env, usize::MAX).unwrap()).await.unwrap();
    }
    let (mut dec, mut buf, mut got) = (FrameDecoder::new(1 << 20), BytesMut::new(), Vec::new());
    while got.len() < 2 {
        if let Some(env) = dec.decode(&mut buf).unwrap() {
            got.push(env);
            continue;
        }
        let chunk = tokio::time::timeout(WAIT, recv.read_chunk(1 << 16, true)).await.unwrap();
        buf.extend_from_slice(&chunk.unwrap().expect("the stream stays open").bytes);
    }
    assert!(matches!(got[0].body, Some(Body::LoginOk(_))), "got {:?}", got[0]);
    assert!(got[1].request_id == 2 && matches!(got[1].body, Some(Body::Pong(_))), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_message_each_other_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, _, quic) = serve_quic(dir.path());
    let key = ChildServer::key(dir.path());
    let trust = tern_sdk::Trust::CaFile(dir.path().join("tls").join("cert.pem"));
    let connect = |user: &str| {
        let token = key.mint_for(user, "d", now_secs(), 3600);
        let mut cfg = tern_sdk::ClientConfig::new(format!("quic://{quic}"), token);
        cfg.trust = trust.clone();
        let persistence = Arc::new(tern_sdk::MemoryPersistence::default());
        async move {
            let c = tern_sdk::Client::connect(cfg, persistence);
            tokio::time::timeout(WAIT, c).await.expect("connect in time").expect("connect")
        }
    };
    let (alice, _alice_events) = connect("alice").await;
    let (_bob, mut bob_events) = connect("bob").await;
    let target = tern_sdk::Target::Peer("bob".into());
    let ack = alice.send(target, "text/plain", text("over quic")).await.unwrap();
    let m = next_message(&mut bob_events).await;
    assert_eq!((m.seq, m.body.as_ref()), (ack.seq, &b"over quic"[..]));
}

/// An SDK reconnect resumes: its first connection is a full handshake, and the next one, from
/// the same dialer (a [`tern_sdk::Connector`], what a client reconnects with), sends its Login
/// in 0-RTT data and the server accepts it. (The first connection gets its session ticket
/// before LoginOk: the server completes the handshake on the client's Finished, which comes
/// with the Login, and sends the ticket then.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_reconnect_logs_in_in_0rtt_data() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, _, quic) = serve_quic(dir.path());
    let key = ChildServer::key(dir.path());
    let token = key.mint_for("zero", "d", now_secs(), 3600);
    let mut cfg = tern_sdk::ClientConfig::new(format!("quic://{quic}"), token);
    cfg.trust = tern_sdk::Trust::CaFile(dir.path().join("tls").join("cert.pem"));
    let connector = tern_sdk::Connector::new(cfg).unwrap();
    let first = tokio::time::timeout(WAIT, connector.connect()).await.expect("in time").unwrap();
    assert!(!first.zero_rtt, "no ticket yet: a full handshake");
    assert_eq!(first.scheme, tern_sdk::Scheme::Quic);
    first.close().await;
    let again = tokio::time::timeout(WAIT, connector.connect()).await.expect("in time").unwrap();
    assert!(again.zero_rtt, "the reconnect's Login went in accepted 0-RTT data");
    assert_eq!((again.login_ok.user_id.as_str(), again.login_ok.device_id.as_str()), ("zero", "d"));
    again.close().await;
}
