//! The gateway over QUIC on real loopback UDP, with quinn clients and an in-process upstream:
//! login, requests and answers, heartbeats, pushes, a duplicate login across TCP and QUIC, a
//! bad token, shutdown, and a client whose address keeps changing while several I/O threads
//! share the port (its datagrams land on other threads' sockets and are handed over), a slow
//! upstream pausing a stream held back by QUIC flow control, and a reader too slow for its
//! pushes. Every wait is for an event, bounded by a timeout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{frame, now_secs};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tern_gateway::core::QuicListen;
use tern_gateway::metrics::GatewayMetrics;
use tern_gateway::quic::{QuicSettings, config};
use tern_gateway::{BoxFuture, Gateway, GatewayConfig, Registry, RequestCtx, TokenKey, Upstream};
use tern_proto::FrameDecoder;
use tern_proto::v1::{self, Envelope, ErrorCode, KickReason, envelope::Body};
use tokio::sync::{Notify, Semaphore, oneshot};

/// Longest wait for any one thing a test expects.
const WAIT: Duration = Duration::from_secs(10);
/// The upstream's answers carry this in their Pong (the session's own Pongs carry the clock).
const UPSTREAM_MARK: i64 = -7;

/// Answers every request with a marked Pong carrying the request id, once the gate lets it.
struct Echo {
    requests: Arc<AtomicUsize>,
    /// The request ids in the order the gateway handed them up.
    seen: Arc<std::sync::Mutex<Vec<u64>>>,
    started: Arc<Notify>,
    gate: Arc<Semaphore>,
}

impl Upstream for Echo {
    fn request(&self, _ctx: &Arc<RequestCtx>, env: Envelope) -> BoxFuture<'static, Envelope> {
        self.requests.fetch_add(1, SeqCst);
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).push(env.request_id);
        self.started.notify_one();
        let gate = self.gate.clone();
        Box::pin(async move {
            if let Ok(p) = gate.acquire().await {
                p.forget();
            }
            Envelope {
                request_id: env.request_id,
                body: Some(Body::Pong(v1::Pong { server_time_ms: UPSTREAM_MARK })),
            }
        })
    }
}

struct Server {
    tcp: SocketAddr,
    quic: SocketAddr,
    key: TokenKey,
    cert: CertificateDer<'static>,
    gw: Arc<Gateway<Echo>>,
    requests: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<u64>>>,
    started: Arc<Notify>,
    gate: Arc<Semaphore>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// A gateway with `threads` I/O threads on a free TCP port and a free UDP port.
    fn start(threads: usize) -> Self {
        Self::start_with(GatewayConfig::default(), threads, false)
    }

    /// As [`Server::start`] with `cfg`; requests wait for the gate's permits when `gated`.
    fn start_with(cfg: GatewayConfig, threads: usize, gated: bool) -> Self {
        Self::start_quic(cfg, QuicSettings::default(), threads, gated)
    }

    /// As [`Server::start_with`] with QUIC `settings`.
    fn start_quic(cfg: GatewayConfig, settings: QuicSettings, threads: usize, gated: bool) -> Self {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = c.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.signing_key.serialize_der()));
        let tls = config::tls(vec![cert.clone()], key, &settings).unwrap();
        let server_config = config::server(tls, &settings).unwrap();
        let token_key = TokenKey::generate().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let started = Arc::new(Notify::new());
        let gate = Arc::new(Semaphore::new(if gated { 0 } else { Semaphore::MAX_PERMITS }));
        let registry = Arc::new(Registry::new(Arc::new(GatewayMetrics::default())));
        let gw = Arc::new(Gateway::new(
            cfg,
            TokenKey::from_base64(&token_key.to_base64()).unwrap(),
            registry,
            Echo {
                requests: requests.clone(),
                seen: seen.clone(),
                started: started.clone(),
                gate: gate.clone(),
            },
        ));
        let quic = QuicListen { addr: "127.0.0.1:0".parse().unwrap(), server_config, settings };
        let listeners = tern_gateway::listen("127.0.0.1:0".parse().unwrap(), 1024, threads, false)
            .unwrap()
            .with_quic(Some(quic))
            .unwrap();
        let (tcp, quic) = (listeners.local_addr(), listeners.quic_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tern_gateway::serve(gw.clone(), listeners, async move {
            let _ = stopped.await;
        }));
        let (stop, task) = (Some(stop), Some(task));
        Self { tcp, quic, key: token_key, cert, gw, requests, seen, started, gate, stop, task }
    }

    fn login_bytes(&self, user: &str, device: &str) -> Bytes {
        let token = self.key.mint_for(user, device, now_secs(), 3600);
        login(token)
    }

    async fn connect(&self) -> Client {
        Client::connect(self.quic, &self.cert).await
    }

    /// A QUIC client logged in as (`user`, `device`).
    async fn logged_in(&self, user: &str, device: &str) -> Client {
        let mut c = self.connect().await;
        c.send(&self.login_bytes(user, device)).await;
        let ok = c.expect("LoginOk").await;
        assert!(matches!(ok.body, Some(Body::LoginOk(_))), "got {ok:?}");
        c
    }

    /// The gateway's connection id of `user`'s one connection.
    fn connection_of(&self, user: &str) -> u64 {
        let conns = self.gw.registry.snapshot();
        let mine: Vec<_> = conns.into_iter().filter(|c| c.0 == user).collect();
        assert_eq!(mine.len(), 1, "one registered connection of {user}");
        mine[0].2
    }

    async fn stop(mut self) {
        let (stop, task) = (self.stop.take().unwrap(), self.task.take().unwrap());
        common::stop_serving(stop, task, WAIT).await;
    }
}

fn login(token: String) -> Bytes {
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

fn ping(request_id: u64) -> Bytes {
    frame(request_id, Body::Ping(v1::Ping::default()))
}

/// A request the session forwards to the upstream.
fn sync(request_id: u64) -> Bytes {
    let body = v1::SyncRequest { conversation_id: "dm:a:b".into(), from_seq: 0, limit: 10 };
    frame(request_id, Body::SyncRequest(body))
}

fn is_pong(env: &Envelope, request_id: u64) -> bool {
    env.request_id == request_id && matches!(env.body, Some(Body::Pong(_)))
}

fn is_upstream_answer(env: &Envelope, request_id: u64) -> bool {
    env.request_id == request_id
        && matches!(&env.body, Some(Body::Pong(p)) if p.server_time_ms == UPSTREAM_MARK)
}

fn kick_reason(env: &Envelope) -> Option<KickReason> {
    match &env.body {
        Some(Body::Kick(k)) => Some(k.reason()),
        _ => None,
    }
}

fn client_config(cert: &CertificateDer<'static>) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![config::ALPN.to_vec()];
    tls.enable_early_data = true;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// A quinn client: one endpoint, one connection, its one bidirectional stream.
struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    rx: Reader,
}

/// The receiving side of a client's stream, decoding frames.
struct Reader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    dec: FrameDecoder,
}

impl Reader {
    /// The next frame; None once the stream ended or the connection closed.
    async fn next(&mut self) -> Option<Envelope> {
        loop {
            if let Some(env) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(env);
            }
            let read = tokio::time::timeout(WAIT, self.recv.read_chunk(64 * 1024, true));
            match read.await.expect("a frame or the end within the wait") {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn expect(&mut self, what: &str) -> Envelope {
        self.next().await.unwrap_or_else(|| panic!("the stream ended while waiting for {what}"))
    }
}

impl Client {
    async fn connect(server: SocketAddr, cert: &CertificateDer<'static>) -> Self {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client_config(cert));
        let connecting = endpoint.connect(server, "localhost").unwrap();
        let conn = tokio::time::timeout(WAIT, connecting).await.expect("handshake").unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let rx = Reader { recv, buf: BytesMut::new(), dec: FrameDecoder::new(1 << 20) };
        Self { endpoint, conn, send, rx }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    async fn next(&mut self) -> Option<Envelope> {
        self.rx.next().await
    }

    async fn expect(&mut self, what: &str) -> Envelope {
        self.rx.expect(what).await
    }

    /// Waits for the end of the stream, then for the connection to close.
    async fn expect_end(&mut self) {
        if let Some(env) = self.next().await {
            panic!("expected the end, got {env:?}");
        }
        tokio::time::timeout(WAIT, self.conn.closed()).await.expect("connection closed");
    }

    /// Moves the client to a new UDP socket (a new local port: a new path for the server).
    fn rebind(&self) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        self.endpoint.rebind(socket).unwrap();
    }
}

/// A blocking TCP client.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
    dec: FrameDecoder,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        Self { s, buf: BytesMut::new(), dec: FrameDecoder::new(1 << 20) }
    }

    fn next(&mut self) -> Option<Envelope> {
        loop {
            if let Some(env) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(env);
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_requests_and_heartbeats_flow_over_quic() {
    let server = Server::start(1);
    let mut c = server.logged_in("q-login", "d").await;
    assert_eq!(server.gw.metrics.quic_connections_open.load(SeqCst), 1);
    // A heartbeat is the session's own answer; a request goes to the upstream and back.
    c.send(&ping(5)).await;
    let pong = c.expect("Pong").await;
    assert!(is_pong(&pong, 5) && !is_upstream_answer(&pong, 5), "got {pong:?}");
    // Pipelined: several requests and pings in one write, answered each once.
    let mut burst = Vec::new();
    for n in 10..20 {
        burst.extend_from_slice(&sync(n));
    }
    burst.extend_from_slice(&ping(30));
    c.send(&burst).await;
    let mut answers = Vec::new();
    let mut pinged = false;
    for _ in 0..11 {
        let env = c.expect("answer").await;
        if is_pong(&env, 30) && !is_upstream_answer(&env, 30) {
            pinged = true;
        } else {
            assert!(is_upstream_answer(&env, env.request_id), "got {env:?}");
            answers.push(env.request_id);
        }
    }
    answers.sort();
    assert_eq!(answers, (10..20).collect::<Vec<_>>());
    assert!(pinged);
    assert_eq!(server.requests.load(SeqCst), 10);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_a_quic_connection_in_order() {
    let server = Server::start(2);
    let mut c = server.logged_in("q-push", "d").await;
    for n in 0..200 {
        assert_eq!(server.gw.registry.push("q-push", &ping(1000 + n), None), 1);
    }
    for n in 0..200 {
        let env = c.expect("push").await;
        assert_eq!(env.request_id, 1000 + n, "every push once, in order");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_login_kicks_the_same_devices_tcp_connection() {
    let server = Server::start(2);
    let tcp = server.tcp;
    let login = server.login_bytes("q-dup", "phone");
    let mut raw = tokio::task::spawn_blocking(move || {
        let mut raw = Raw::connect(tcp);
        raw.s.write_all(&login).unwrap();
        let ok = raw.next().expect("LoginOk on TCP");
        assert!(matches!(ok.body, Some(Body::LoginOk(_))), "got {ok:?}");
        raw
    })
    .await
    .unwrap();
    let tcp_id = server.connection_of("q-dup");
    let mut c = server.logged_in("q-dup", "phone").await;
    let (kick, eof) = tokio::task::spawn_blocking(move || {
        let kick = raw.next().expect("the Kick on TCP");
        (kick, raw.next())
    })
    .await
    .unwrap();
    assert_eq!(kick_reason(&kick), Some(KickReason::DuplicateLogin), "got {kick:?}");
    assert!(eof.is_none(), "the TCP connection closes after its Kick");
    let quic_id = server.connection_of("q-dup");
    assert_ne!(quic_id, tcp_id, "the QUIC connection holds the device now");
    c.send(&ping(2)).await;
    assert!(is_pong(&c.expect("Pong").await, 2));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_gets_an_error_and_the_connection_closes() {
    let server = Server::start(1);
    let mut c = server.connect().await;
    c.send(&login("not a token".into())).await;
    let err = c.expect("the Error").await;
    match &err.body {
        Some(Body::Error(e)) => assert_eq!(e.code(), ErrorCode::BadToken, "got {e:?}"),
        other => panic!("expected an Error, got {other:?}"),
    }
    c.expect_end().await;
    assert_eq!(server.gw.metrics.logins_failed.load(SeqCst), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kicks_quic_connections_and_waits_for_them() {
    let server = Server::start(2);
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(server.logged_in(&format!("q-stop-{i}"), "d").await);
    }
    let gw = server.gw.clone();
    server.stop().await;
    for c in &mut clients {
        let kick = c.expect("the Kick").await;
        assert_eq!(kick_reason(&kick), Some(KickReason::ServerShutdown), "got {kick:?}");
        c.expect_end().await;
    }
    assert_eq!(gw.metrics.quic_connections_open.load(SeqCst), 0);
    assert_eq!(gw.metrics.connections_open.load(SeqCst), 0);
}

/// A client whose address changes many times keeps its session: no new login, every answer
/// and push exactly once and in order, although its datagrams land on other I/O threads'
/// sockets (which hand them to the thread holding the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_client_keeps_its_session_across_io_threads() {
    const MIN_MOVES: u64 = 6;
    const MAX_MOVES: u64 = 64;
    let server = Server::start(4);
    let mut c = server.logged_in("q-move", "d").await;
    let id = server.connection_of("q-move");
    let forwarded = || server.gw.metrics.quic_datagrams_forwarded.load(SeqCst);
    let mut moves = 0;
    // Until some datagrams went to another thread's socket (each new port hashes anew).
    while moves < MIN_MOVES || forwarded() == 0 {
        assert!(moves < MAX_MOVES, "no datagram ever reached another thread's socket");
        c.rebind();
        moves += 1;
        // A request, a heartbeat and a push on the new path, each answered once, in order.
        c.send(&sync(100 + moves)).await;
        assert!(is_upstream_answer(&c.expect("answer").await, 100 + moves));
        c.send(&ping(200 + moves)).await;
        assert!(is_pong(&c.expect("Pong").await, 200 + moves));
        assert_eq!(server.gw.registry.push("q-move", &ping(300 + moves), None), 1);
        assert_eq!(c.expect("push").await.request_id, 300 + moves);
    }
    eprintln!("{moves} moves, {} datagrams handed between threads", forwarded());
    assert_eq!(server.connection_of("q-move"), id, "the same connection throughout");
    assert_eq!(server.gw.metrics.logins_ok.load(SeqCst), 1, "no new login");
    assert_eq!(server.gw.metrics.connections_accepted.load(SeqCst), 1);
    assert_eq!(server.requests.load(SeqCst) as u64, moves);
    server.stop().await;
}

/// With one request in flight allowed, a pipelined burst larger than the stream's receive
/// window waits in quinn (its flow control holds the client back) while reading is paused;
/// the upstream never holds more than the cap, and every request is answered once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_pauses_a_quic_stream_then_every_request_is_answered() {
    const N: u64 = 120;
    const CAP: usize = 1;
    let cfg = GatewayConfig { max_inflight_requests: CAP, ..GatewayConfig::default() };
    let server = Server::start_with(cfg, 1, true);
    let mut c = server.logged_in("q-slow", "d").await;
    // About 1 MB: several times the 128 KiB the server's stream window takes.
    let mut burst = Vec::new();
    for n in 1..=N {
        burst.extend_from_slice(&padded(n, 8000));
    }
    let Client { send, rx, .. } = &mut c;
    let writer = async {
        send.write_all(&burst).await.unwrap();
    };
    let reader = async {
        let mut answered = Vec::new();
        while (answered.len() as u64) < N {
            // The next request reaches the upstream only once the previous one was answered.
            while server.requests.load(SeqCst) <= answered.len() {
                tokio::time::timeout(WAIT, server.started.notified()).await.expect("a request");
            }
            assert!(server.requests.load(SeqCst) <= answered.len() + CAP, "past the cap");
            server.gate.add_permits(1);
            let env = rx.expect("an answer").await;
            assert!(is_upstream_answer(&env, env.request_id), "got {env:?}");
            answered.push(env.request_id);
        }
        answered
    };
    let ((), answered) = tokio::join!(writer, reader);
    assert_eq!(answered, (1..=N).collect::<Vec<_>>(), "every request once, in order");
    server.stop().await;
}

/// A client that reads nothing while pushes pour in: quinn takes what the client's window
/// allows, then the outbound queue fills to its cap, and the connection is kicked
/// (SLOW_CONSUMER). When the client reads again it gets the pushes it was sent, in order, then
/// the Kick, then the end; the queue's memory is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_reader_too_slow_for_its_pushes_is_kicked_at_its_cap() {
    let cfg = GatewayConfig { max_outbound_bytes: 256 * 1024, ..GatewayConfig::default() };
    let server = Server::start_with(cfg, 1, false);
    let mut c = server.logged_in("q-sink", "d").await;
    let mut pushed = 0u64;
    // Until the kick took the connection out of the registry.
    while server.gw.registry.push("q-sink", &padded(pushed, 2000), None) == 1 {
        pushed += 1;
        assert!(pushed < 20_000, "never kicked");
        tokio::task::yield_now().await;
    }
    let mut got = 0u64;
    let kick = loop {
        let env = c.expect("a push or the Kick").await;
        if kick_reason(&env).is_some() {
            break env;
        }
        assert_eq!(env.request_id, got, "pushes once, in order");
        got += 1;
    };
    assert_eq!(kick_reason(&kick), Some(KickReason::SlowConsumer));
    assert!(got > 0 && got < pushed, "some pushes went out before the cap: {got} of {pushed}");
    c.expect_end().await;
    assert_eq!(server.gw.metrics.slow_consumer_kicks.load(SeqCst), 1);
    assert_eq!(server.gw.metrics.outbound_queued_bytes.load(SeqCst), 0);
    server.stop().await;
}

/// A request (or push) of about `bytes` bytes.
fn padded(request_id: u64, bytes: usize) -> Bytes {
    let body = v1::SyncRequest { conversation_id: "p".repeat(bytes), from_seq: 0, limit: 0 };
    frame(request_id, Body::SyncRequest(body))
}

/// A client that completes its handshake and never opens its stream is a connection like any
/// other: counted (open, pending login) under the admission caps, and closed at the login
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_that_never_opens_its_stream_is_closed_at_the_login_timeout() {
    let mut cfg = GatewayConfig::default();
    cfg.session.login_timeout = Duration::from_millis(200);
    let server = Server::start_with(cfg, 1, false);
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client_config(&server.cert));
    let conn = endpoint.connect(server.quic, "localhost").unwrap();
    let conn = tokio::time::timeout(WAIT, conn).await.expect("handshake").unwrap();
    let closed = tokio::time::timeout(WAIT, conn.closed()).await.expect("closed at the timeout");
    assert!(matches!(closed, quinn::ConnectionError::ApplicationClosed(_)), "got {closed:?}");
    let m = &server.gw.metrics;
    assert_eq!(m.connections_accepted.load(SeqCst), 1);
    assert_eq!(m.login_timeouts.load(SeqCst), 1);
    assert_eq!(m.connections_open.load(SeqCst), 0);
    assert_eq!(m.logins_pending.load(SeqCst), 0);
    server.stop().await;
}

/// A Send in early data: it must wait for the handshake (the Echo upstream answers it like any
/// request, so the test sees when it ran).
fn early_send(request_id: u64) -> Bytes {
    let body = v1::Send { client_msg_id: "m1".into(), ..Default::default() };
    frame(request_id, Body::Send(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_client_logs_in_in_0rtt_and_its_writes_wait_for_the_handshake() {
    let server = Server::start(1);
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client_config(&server.cert));
    // A first connection leaves a session ticket with the client.
    let conn = endpoint.connect(server.quic, "localhost").unwrap().await.unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut rx = Reader { recv, buf: BytesMut::new(), dec: FrameDecoder::new(1 << 20) };
    send.write_all(&server.login_bytes("zed", "phone")).await.unwrap();
    assert!(matches!(rx.expect("LoginOk").await.body, Some(Body::LoginOk(_))));
    send.write_all(&ping(2)).await.unwrap();
    assert!(is_pong(&rx.expect("Pong").await, 2));
    conn.close(0u32.into(), b"bye");
    endpoint.wait_idle().await;

    // The second one resumes: Login, a read and a write go out in 0-RTT data at once.
    let connecting = endpoint.connect(server.quic, "localhost").unwrap();
    let Ok((conn, accepted)) = connecting.into_0rtt() else { panic!("no 0-RTT keys") };
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut early = server.login_bytes("zed", "phone").to_vec();
    early.extend_from_slice(&sync(3));
    early.extend_from_slice(&early_send(4));
    send.write_all(&early).await.unwrap();
    let mut rx = Reader { recv, buf: BytesMut::new(), dec: FrameDecoder::new(1 << 20) };
    assert!(matches!(rx.expect("LoginOk").await.body, Some(Body::LoginOk(_))));
    // Answers are matched by request id, not ordered (PROTOCOL section 3): the upstream may
    // finish the write before the read on a busy machine.
    let (a, b) = (rx.expect("an answer").await, rx.expect("another answer").await);
    let (read, write) = if a.request_id == 3 { (a, b) } else { (b, a) };
    assert!(is_upstream_answer(&read, 3), "the read's answer: {read:?}");
    assert!(is_upstream_answer(&write, 4), "the write's answer: {write:?}");
    assert!(tokio::time::timeout(WAIT, accepted).await.unwrap(), "the server took the 0-RTT data");
    assert_eq!(server.requests.load(SeqCst), 2, "each request once");
    let seen = server.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(seen, [3, 4], "the held write ran after the read, in order");
    assert_eq!(server.gw.metrics.quic_0rtt_connections.load(SeqCst), 1);
    conn.close(0u32.into(), b"bye");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_handshake_load_a_client_gets_a_retry_and_the_metric_counts_it() {
    let settings = QuicSettings { retry_handshakes: 0, ..QuicSettings::default() };
    let server = Server::start_quic(GatewayConfig::default(), settings, 1, false);
    let mut c = server.logged_in("alice", "phone").await;
    c.send(&ping(2)).await;
    let pong = c.expect("Pong").await;
    assert!(is_pong(&pong, 2), "got {pong:?}");
    let m = &server.gw.metrics;
    assert_eq!(m.quic_retries.load(SeqCst), 1, "one Retry, then the validated Initial");
    assert_eq!(m.quic_handshakes_refused.load(SeqCst), 0);
    let mut text = String::new();
    m.render(&mut text);
    assert!(text.contains("tern_gateway_quic_retries_total 1"), "{text}");
    assert!(text.contains("tern_gateway_quic_handshakes_refused_total 0"), "{text}");
    server.stop().await;
}
