//! The connection core over real loopback sockets, with an in-process upstream: frames split at
//! every byte offset, thousands of connections on one I/O thread, the slow-reader cap with its
//! memory gauge, batched pushes keeping their order, back-pressure from a slow upstream, and shutdown.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{frame, now_secs};
use tern_gateway::metrics::GatewayMetrics;
use tern_gateway::{BoxFuture, Gateway, GatewayConfig, Registry, RequestCtx, TokenKey, Upstream};
use tern_proto::FrameDecoder;
use tern_proto::v1::{self, Envelope, KickReason, envelope::Body};
use tokio::sync::{Semaphore, oneshot};

/// Answers every request with a Pong carrying the request id, once the gate lets it through.
struct Gated {
    gate: Arc<Semaphore>,
    started: Arc<AtomicUsize>,
}

impl Upstream for Gated {
    fn request(&self, _ctx: &Arc<RequestCtx>, env: Envelope) -> BoxFuture<'static, Envelope> {
        self.started.fetch_add(1, SeqCst);
        let gate = self.gate.clone();
        Box::pin(async move {
            if let Ok(p) = gate.acquire().await {
                p.forget();
            }
            Envelope {
                request_id: env.request_id,
                body: Some(Body::Pong(v1::Pong { server_time_ms: 0 })),
            }
        })
    }
}

struct Server {
    addr: SocketAddr,
    key: TokenKey,
    gw: Arc<Gateway<Gated>>,
    gate: Arc<Semaphore>,
    started: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// A gateway on a free port with `threads` I/O threads; requests pass freely unless
    /// `gated`.
    fn start(cfg: GatewayConfig, threads: usize, gated: bool) -> Self {
        Self::start_on(cfg, threads, gated, false)
    }

    /// As [`Server::start`], with the port shared with other processes when `share_port`.
    fn start_on(cfg: GatewayConfig, threads: usize, gated: bool, share_port: bool) -> Self {
        let key = TokenKey::generate().unwrap();
        let gate = Arc::new(Semaphore::new(if gated { 0 } else { Semaphore::MAX_PERMITS }));
        let started = Arc::new(AtomicUsize::new(0));
        let upstream = Gated { gate: gate.clone(), started: started.clone() };
        let registry = Arc::new(Registry::new(Arc::new(GatewayMetrics::default())));
        let gw = Arc::new(Gateway::new(
            cfg,
            TokenKey::from_base64(&key.to_base64()).unwrap(),
            registry,
            upstream,
        ));
        let listeners =
            tern_gateway::listen("127.0.0.1:0".parse().unwrap(), 4096, threads, share_port)
                .unwrap();
        assert_eq!(listeners.threads(), threads);
        let addr = listeners.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tern_gateway::serve(gw.clone(), listeners, async move {
            let _ = stopped.await;
        }));
        Self { addr, key, gw, gate, started, stop: Some(stop), task: Some(task) }
    }

    fn login_bytes(&self, user: &str, device: &str) -> Bytes {
        let token = self.key.mint_for(user, device, now_secs(), 3600);
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

fn ping(request_id: u64) -> Bytes {
    frame(request_id, Body::Ping(v1::Ping::default()))
}

/// A blocking raw client.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
    dec: FrameDecoder,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self { s, buf: BytesMut::new(), dec: FrameDecoder::new(1 << 20) }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next frame; None at EOF.
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

    fn expect(&mut self, what: &str) -> Envelope {
        self.next().unwrap_or_else(|| panic!("EOF while waiting for {what}"))
    }
}

fn is_login_ok(env: &Envelope) -> bool {
    matches!(env.body, Some(Body::LoginOk(_)))
}

fn is_pong(env: &Envelope, request_id: u64) -> bool {
    env.request_id == request_id && matches!(env.body, Some(Body::Pong(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_split_at_every_byte_offset_are_reassembled() {
    let server = Server::start(GatewayConfig::default(), 1, false);
    let addr = server.addr;
    let mut stream = server.login_bytes("split", "d1").to_vec();
    stream.extend_from_slice(&ping(7));
    stream.extend_from_slice(&frame(8, Body::Ping(v1::Ping::default())));
    let total = stream.len();
    let reassembled = tokio::task::spawn_blocking(move || {
        for cut in 1..total {
            let mut c = Raw::connect(addr);
            c.send(&stream[..cut]);
            // Let the gateway read the first part on its own before the rest arrives.
            std::thread::sleep(Duration::from_millis(2));
            c.send(&stream[cut..]);
            assert!(is_login_ok(&c.expect("LoginOk")), "cut at {cut}");
            assert!(is_pong(&c.expect("pong 7"), 7), "cut at {cut}");
            assert!(is_pong(&c.expect("pong 8"), 8), "cut at {cut}");
        }
        total - 1
    })
    .await
    .unwrap();
    assert!(reassembled > 150, "the stream spans several frames: {reassembled}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_io_thread_serves_thousands_of_connections() {
    const N: usize = 3000;
    // All from 127.0.0.1 and all connected before any logs in: past the default per-source
    // pending-login cap (1000), which is not what this test is about.
    let cfg = GatewayConfig { max_pending_logins_per_source: 0, ..GatewayConfig::default() };
    let server = Server::start(cfg, 1, false);
    let addr = server.addr;
    let logins: Vec<Bytes> = (0..N).map(|i| server.login_bytes(&format!("u{i}"), "d")).collect();
    let conns = tokio::task::spawn_blocking(move || {
        let mut conns: Vec<Raw> = (0..N).map(|_| Raw::connect(addr)).collect();
        for (c, login) in conns.iter_mut().zip(&logins) {
            c.send(login);
        }
        for c in &mut conns {
            assert!(is_login_ok(&c.expect("LoginOk")));
        }
        // Heartbeats on every connection.
        for (i, c) in conns.iter_mut().enumerate() {
            c.send(&ping(i as u64 + 10));
        }
        for (i, c) in conns.iter_mut().enumerate() {
            assert!(is_pong(&c.expect("pong"), i as u64 + 10));
        }
        conns
    })
    .await
    .unwrap();
    let m = &server.gw.metrics;
    assert_eq!(m.connections_open.load(SeqCst), N as u64);
    assert_eq!(m.logins_ok.load(SeqCst), N as u64);
    assert_eq!(m.logins_pending.load(SeqCst), 0);
    // A push to every user reaches every connection through the one thread's mailbox.
    let push = frame(0, Body::SyncHint(v1::SyncHint::default()));
    let pushed: usize =
        (0..N).map(|i| server.gw.registry.push(&format!("u{i}"), &push, None)).sum();
    assert_eq!(pushed, N);
    let conns = tokio::task::spawn_blocking(move || {
        let mut conns = conns;
        for c in &mut conns {
            assert!(matches!(c.expect("push").body, Some(Body::SyncHint(_))));
        }
        conns
    })
    .await
    .unwrap();
    server.stop().await;
    // Shutdown kicked everyone with SERVER_SHUTDOWN.
    tokio::task::spawn_blocking(move || {
        for mut c in conns {
            match c.expect("kick").body {
                Some(Body::Kick(k)) => assert_eq!(k.reason(), KickReason::ServerShutdown),
                other => panic!("expected a kick, got {other:?}"),
            }
            assert!(c.next().is_none(), "closed after the kick");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_kicked_at_its_cap_and_its_memory_is_returned() {
    let cfg = GatewayConfig {
        max_outbound_bytes: 256 * 1024,
        max_outbound_frames: 100_000,
        ..GatewayConfig::default()
    };
    let cap = cfg.max_outbound_bytes as u64;
    let server = Server::start(cfg, 1, false);
    let mut c = Raw::connect(server.addr);
    c.send(&server.login_bytes("slow", "d"));
    assert!(is_login_ok(&c.expect("LoginOk")));
    // Push up to 64 MiB while the client reads nothing: the kernel buffers fill, then the
    // outbound queue, then the cap closes the connection.
    let body = Bytes::from(vec![b'x'; 16 * 1024]);
    let push = frame(
        0,
        Body::Deliver(v1::Deliver { message: Some(v1::Message { body, ..Default::default() }) }),
    );
    let m = server.gw.metrics.clone();
    let mut peak = 0;
    for _ in 0..4096 {
        server.gw.registry.push("slow", &push, None);
        peak = peak.max(m.outbound_queued_bytes.load(SeqCst));
        if m.slow_consumer_kicks.load(SeqCst) > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.slow_consumer_kicks.load(SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(m.slow_consumer_kicks.load(SeqCst), 1, "kicked once at the cap");
    assert!(peak <= cap + push.len() as u64, "queued {peak} bytes, cap {cap}");
    // The client drains and finds the kick last; then its connection is gone and its queue
    // freed.
    let last = tokio::task::spawn_blocking(move || {
        let mut last = None;
        while let Some(env) = c.next() {
            last = Some(env);
        }
        last
    })
    .await
    .unwrap();
    match last.and_then(|e| e.body) {
        Some(Body::Kick(k)) => assert_eq!(k.reason(), KickReason::SlowConsumer),
        other => panic!("expected the SLOW_CONSUMER kick last, got {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.connections_open.load(SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(m.connections_open.load(SeqCst), 0);
    assert_eq!(m.outbound_queued_bytes.load(SeqCst), 0);
    server.stop().await;
}

/// Pushes queued faster than the I/O thread drains them are written per connection in batches
/// (one `writev` per connection per drain): each connection still gets every frame once, in
/// order, and a close queued after them comes after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pushes_keeps_each_connections_order_and_a_later_kick_comes_last() {
    let server = Server::start(GatewayConfig::default(), 1, false);
    let mut a = Raw::connect(server.addr);
    a.send(&server.login_bytes("burst-a", "d"));
    assert!(is_login_ok(&a.expect("LoginOk")));
    let mut b = Raw::connect(server.addr);
    b.send(&server.login_bytes("burst-b", "d"));
    assert!(is_login_ok(&b.expect("LoginOk")));
    let id_a = server.gw.registry.snapshot().into_iter().find(|c| c.0 == "burst-a").unwrap().2;
    const N: u64 = 2000;
    // One tight loop from this thread: many commands wait in the mailbox per drain.
    for n in 0..N {
        assert_eq!(server.gw.registry.push("burst-a", &ping(n), None), 1);
        assert_eq!(server.gw.registry.push("burst-b", &ping(100_000 + n), None), 1);
    }
    assert!(server.gw.registry.kick_connection("burst-a", "d", id_a));
    let (got_a, got_b) = tokio::task::spawn_blocking(move || {
        let mut got_a = Vec::new();
        while let Some(env) = a.next() {
            got_a.push(env);
        }
        let got_b: Vec<u64> = (0..N).map(|_| b.expect("push").request_id).collect();
        (got_a, got_b)
    })
    .await
    .unwrap();
    let ids: Vec<u64> = got_a.iter().take(N as usize).map(|e| e.request_id).collect();
    assert_eq!(ids, (0..N).collect::<Vec<_>>(), "a: every push once, in order");
    assert_eq!(got_a.len(), N as usize + 1, "then the kick, then EOF");
    match &got_a[N as usize].body {
        Some(Body::Kick(k)) => assert_eq!(k.reason(), KickReason::DuplicateLogin),
        other => panic!("expected the kick last, got {other:?}"),
    }
    assert_eq!(got_b, (100_000..100_000 + N).collect::<Vec<_>>(), "b: every push, in order");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_pauses_reading_then_every_request_is_answered() {
    let cfg = GatewayConfig { max_inflight_requests: 4, ..GatewayConfig::default() };
    let server = Server::start(cfg, 1, true);
    let mut c = Raw::connect(server.addr);
    c.send(&server.login_bytes("busy", "d"));
    assert!(is_login_ok(&c.expect("LoginOk")));
    // 50 requests in one write; the upstream holds every answer.
    let mut burst = Vec::new();
    for id in 100..150u64 {
        burst.extend_from_slice(&frame(
            id,
            Body::GetReceipts(v1::GetReceipts { conversation_id: "dm:a:b".into() }),
        ));
    }
    c.send(&burst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.started.load(SeqCst), 4, "reading paused at max_inflight_requests");
    server.gate.add_permits(1000);
    let answers = tokio::task::spawn_blocking(move || {
        (0..50).map(|_| c.expect("answer").request_id).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let mut sorted = answers.clone();
    sorted.sort();
    assert_eq!(sorted, (100..150).collect::<Vec<_>>(), "every request answered once");
    assert_eq!(server.started.load(SeqCst), 50);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_is_shared_only_when_asked() {
    let server = Server::start_on(GatewayConfig::default(), 3, false, true);
    let addr = server.addr;
    // A second, independent set of sharing listeners on the same port (as another gateway
    // process with server.share_port would bind it) is allowed.
    let other = tern_gateway::listen(addr, 128, 2, true).unwrap();
    assert_eq!(other.local_addr(), addr);
    drop(other);
    let logins: Vec<Bytes> = (0..60).map(|i| server.login_bytes(&format!("p{i}"), "d")).collect();
    tokio::task::spawn_blocking(move || {
        for login in logins {
            let mut c = Raw::connect(addr);
            c.send(&login);
            assert!(is_login_ok(&c.expect("LoginOk")));
        }
    })
    .await
    .unwrap();
    assert_eq!(server.gw.metrics.logins_ok.load(SeqCst), 60);
    // A server that does not share cannot bind a shared port.
    let err = tern_gateway::listen(addr, 128, 1, false).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_one_server_unless_shared_and_its_threads_lose_nothing() {
    let server = Server::start(GatewayConfig::default(), 3, false);
    let addr = server.addr;
    // Another server is refused, whether it asks to share or not.
    for share in [false, true] {
        let err = tern_gateway::listen(addr, 128, 2, share).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "share {share}");
    }
    // The three I/O threads poll one shared socket: 300 logins from 6 concurrent clients all
    // go through, each exactly once.
    let logins: Vec<Vec<Bytes>> = (0..6)
        .map(|t| (0..50).map(|i| server.login_bytes(&format!("u{t}-{i}"), "d")).collect())
        .collect();
    let clients: Vec<_> = logins
        .into_iter()
        .map(|batch| {
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for login in batch {
                    let mut c = Raw::connect(addr);
                    c.send(&login);
                    assert!(is_login_ok(&c.expect("LoginOk")));
                    held.push(c);
                }
                held.len()
            })
        })
        .collect();
    let total: usize =
        tokio::task::spawn_blocking(move || clients.into_iter().map(|t| t.join().unwrap()).sum())
            .await
            .unwrap();
    assert_eq!(total, 300);
    assert_eq!(server.gw.metrics.logins_ok.load(SeqCst), 300);
    assert_eq!(server.gw.metrics.connections_accepted.load(SeqCst), 300);
    server.stop().await;
}
