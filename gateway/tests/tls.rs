//! TLS on TCP over real loopback sockets, with an in-process upstream that echoes a Send's body
//! back as a Deliver: records cut into single bytes (every record reaches the gateway in
//! pieces, so it keeps incomplete ones between reads), 60 KiB frames both ways, and a backlog
//! of 60 KiB answers to a client with a small receive window that reads nothing for a while
//! (every answer arrives whole and once, with no SLOW_CONSUMER kick).
//! The exact cases (a record cut in two, a write the socket does not take) are unit tests of
//! `core::io::tls`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{frame, now_secs};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tern_gateway::metrics::GatewayMetrics;
use tern_gateway::tls::TlsListen;
use tern_gateway::{BoxFuture, Gateway, GatewayConfig, Registry, RequestCtx, TokenKey, Upstream};
use tern_proto::FrameDecoder;
use tern_proto::v1::{self, Envelope, envelope::Body};
use tokio::sync::oneshot;

/// Answers a Send with a Deliver of its body, anything else with a Pong.
struct Echo;

impl Upstream for Echo {
    fn request(&self, _ctx: &Arc<RequestCtx>, env: Envelope) -> BoxFuture<'static, Envelope> {
        let body = match env.body {
            Some(Body::Send(s)) => Body::Deliver(v1::Deliver {
                message: Some(v1::Message { body: s.body, ..Default::default() }),
            }),
            _ => Body::Pong(v1::Pong { server_time_ms: 0 }),
        };
        Box::pin(async move { Envelope { request_id: env.request_id, body: Some(body) } })
    }
}

struct Server {
    addr: SocketAddr,
    key: TokenKey,
    cert: CertificateDer<'static>,
    gw: Arc<Gateway<Echo>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    fn start() -> Self {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.signing_key.serialize_der()));
        let cert = c.cert.der().clone();
        let config = tern_gateway::tls::server_config(vec![cert.clone()], key).unwrap();
        let token_key = TokenKey::generate().unwrap();
        let registry = Arc::new(Registry::new(Arc::new(GatewayMetrics::default())));
        let gw = Arc::new(Gateway::new(
            GatewayConfig::default(),
            TokenKey::from_base64(&token_key.to_base64()).unwrap(),
            registry,
            Echo,
        ));
        let listeners = tern_gateway::listen("127.0.0.1:0".parse().unwrap(), 128, 1, false)
            .unwrap()
            .with_tls(Some(TlsListen { config, plaintext: true }));
        let addr = listeners.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tern_gateway::serve(gw.clone(), listeners, async move {
            let _ = stopped.await;
        }));
        Self { addr, key: token_key, cert, gw, stop: Some(stop), task: Some(task) }
    }

    fn login(&self, user: &str) -> Bytes {
        let token = self.key.mint_for(user, "d1", now_secs(), 3600);
        frame(
            1,
            Body::Login(v1::Login {
                token,
                protocol_version: 1,
                client_version: "t".into(),
                ..Default::default()
            }),
        )
    }

    async fn stop(mut self) {
        let (stop, task) = (self.stop.take().unwrap(), self.task.take().unwrap());
        common::stop_serving(stop, task, Duration::from_secs(10)).await;
    }
}

fn send(request_id: u64, body: Vec<u8>) -> Bytes {
    frame(request_id, Body::Send(v1::Send { body: body.into(), ..Default::default() }))
}

/// A 60 KiB body whose bytes say where they are.
fn big_body(seed: u8) -> Vec<u8> {
    (0..60 * 1024).map(|i: usize| (i % 251) as u8 ^ seed).collect()
}

/// A blocking TLS client that writes its records `chunk` bytes per socket write.
struct Client {
    s: TcpStream,
    tls: rustls::ClientConnection,
    chunk: usize,
    buf: BytesMut,
    dec: FrameDecoder,
}

impl Client {
    /// Connects and shakes hands; `small_window`: a small receive buffer, so that what the
    /// client does not read soon backs up at the gateway.
    fn connect(srv: &Server, chunk: usize, small_window: bool) -> Self {
        Self::connect_with(srv, client_config(srv), chunk, small_window)
    }

    /// [`Client::connect`] with `cfg` (its session cache: a later connection resumes).
    fn connect_with(
        srv: &Server,
        cfg: Arc<rustls::ClientConfig>,
        chunk: usize,
        small_window: bool,
    ) -> Self {
        let name = ServerName::try_from("localhost").unwrap();
        let tls = rustls::ClientConnection::new(cfg, name).unwrap();
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if small_window {
            sock.set_recv_buffer_size(8 * 1024).unwrap();
        }
        sock.connect(&srv.addr.into()).unwrap();
        let s = TcpStream::from(sock);
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Self { s, tls, chunk, buf: BytesMut::new(), dec: FrameDecoder::new(1 << 20) };
        while c.tls.is_handshaking() {
            c.flush();
            if c.tls.is_handshaking() {
                c.read_some();
            }
        }
        c
    }

    /// Writes the records rustls holds, `chunk` bytes per write.
    fn flush(&mut self) {
        let mut out = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut out).unwrap();
        }
        for piece in out.chunks(self.chunk) {
            self.s.write_all(piece).unwrap();
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.tls.writer().write_all(bytes).unwrap();
        self.flush();
    }

    /// One read from the socket into rustls; false at EOF.
    fn read_some(&mut self) -> bool {
        match self.tls.read_tls(&mut self.s) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) => panic!("read: {e}"),
        }
        self.tls.process_new_packets().unwrap();
        let mut plain = Vec::new();
        match self.tls.reader().read_to_end(&mut plain) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("TLS read: {e}"),
        }
        self.buf.extend_from_slice(&plain);
        self.flush();
        true
    }

    fn expect(&mut self, what: &str) -> Envelope {
        loop {
            if let Some(env) = self.dec.decode(&mut self.buf).unwrap() {
                return env;
            }
            assert!(self.read_some(), "EOF while waiting for {what}");
        }
    }
}

/// A TLS 1.3 client configuration trusting `srv`'s certificate, offering ALPN `tern/1`.
fn client_config(srv: &Server) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(srv.cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![tern_gateway::quic::ALPN.to_vec()];
    Arc::new(cfg)
}

fn delivered_body(env: &Envelope) -> &[u8] {
    match &env.body {
        Some(Body::Deliver(v1::Deliver { message: Some(m) })) => &m.body,
        other => panic!("expected a Deliver, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arriving_one_byte_at_a_time_and_60_kib_frames_both_ways() {
    let srv = Server::start();
    let login = srv.login("trickle");
    let addr_srv = &srv;
    let body = big_body(7);
    let got = tokio::task::block_in_place(|| {
        // Every record, the handshake's too, reaches the gateway one byte per segment.
        let mut c = Client::connect(addr_srv, 1, false);
        c.send(&login);
        assert!(matches!(c.expect("LoginOk").body, Some(Body::LoginOk(_))));
        c.send(&send(2, body.clone()));
        let env = c.expect("the echo");
        assert_eq!(env.request_id, 2);
        let echoed = delivered_body(&env).to_vec();
        // A small frame after the big one: nothing was left behind.
        c.send(&frame(3, Body::Ping(v1::Ping::default())));
        let pong = c.expect("Pong");
        assert_eq!(pong.request_id, 3);
        assert_eq!(addr_srv.gw.metrics.tls_connections_open.load(Relaxed), 1);
        echoed
    });
    assert!(got == body, "the echoed 60 KiB body differs");
    assert_eq!(srv.gw.metrics.tls_handshake_failures.load(Relaxed), 0);
    srv.stop().await;
}

/// A client that reconnects with the ticket of its first connection resumes the session (the
/// gateway's stateless tickets: no server-side cache), and the resumed connection serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resumes_the_session_from_its_ticket() {
    let srv = Server::start();
    let srv_ref = &srv;
    tokio::task::block_in_place(|| {
        let cfg = client_config(srv_ref);
        let mut first = Client::connect_with(srv_ref, cfg.clone(), usize::MAX, false);
        assert_eq!(first.tls.handshake_kind(), Some(rustls::HandshakeKind::Full));
        first.send(&srv_ref.login("again"));
        // The ticket comes right after the handshake, before the answer to Login.
        assert!(matches!(first.expect("LoginOk").body, Some(Body::LoginOk(_))));
        drop(first);
        let mut again = Client::connect_with(srv_ref, cfg, usize::MAX, false);
        assert_eq!(again.tls.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        again.send(&srv_ref.login("again"));
        assert!(matches!(again.expect("LoginOk").body, Some(Body::LoginOk(_))));
    });
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_60_kib_answers_waits_for_a_client_that_reads_late() {
    const FRAMES: u64 = 12;
    let srv = Server::start();
    let login = srv.login("late");
    let srv_ref = &srv;
    tokio::task::block_in_place(|| {
        let mut c = Client::connect(srv_ref, usize::MAX, true);
        c.send(&login);
        assert!(matches!(c.expect("LoginOk").body, Some(Body::LoginOk(_))));
        // Every request encrypted at once, written by another thread while this one reads
        // nothing: the answers (about 720 KiB, under the outbound cap) pile up at the gateway.
        c.tls.set_buffer_limit(None);
        for n in 0..FRAMES {
            c.tls.writer().write_all(&send(10 + n, big_body(n as u8))).unwrap();
        }
        let mut records = Vec::new();
        while c.tls.wants_write() {
            c.tls.write_tls(&mut records).unwrap();
        }
        let mut w = c.s.try_clone().unwrap();
        let writer = std::thread::spawn(move || w.write_all(&records).unwrap());
        writer.join().expect("the gateway read every request");
        // Requests run concurrently: answers come in any order.
        let mut seen = vec![false; FRAMES as usize];
        for _ in 0..FRAMES {
            let env = c.expect("an echo");
            let n = env.request_id.checked_sub(10).filter(|&n| n < FRAMES).expect("an echo's id");
            assert!(!std::mem::replace(&mut seen[n as usize], true), "echo {n} twice");
            assert!(delivered_body(&env) == big_body(n as u8), "echo {n} differs");
        }
    });
    assert_eq!(srv.gw.metrics.slow_consumer_kicks.load(Relaxed), 0);
    srv.stop().await;
}
