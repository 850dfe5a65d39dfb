//! Shared harness for end-to-end tests: an embedded server in this process (bound to port 0,
//! stopped by a shutdown future) or as a child `tern serve` process, token minting, SDK
//! clients and a raw frame client for bad-input tests.
#![allow(dead_code)]

pub mod chat;
pub mod ledger;
pub mod power;
pub mod swarm;
pub mod transport;

pub use transport::Transport;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tern::config::Config;
use tern_gateway::TokenKey;
use tern_proto::v1::{self, Envelope, envelope::Body};
use tern_proto::{FrameDecoder, encode_to_bytes};
use tern_sdk::{Client, ClientConfig, Event, MemoryPersistence};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;

/// Upper bound for any single wait in a test (a failure guard, not a timing assertion).
pub const WAIT: Duration = Duration::from_secs(30);

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A fixed test key (base64 of 32 bytes).
pub fn test_key() -> TokenKey {
    TokenKey::from_secret(&[42u8; 32]).unwrap()
}

/// An embedded server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The QUIC address, when started over [`Transport::Quic`].
    pub quic: Option<SocketAddr>,
    /// What [`TestServer::client`] connects over.
    pub transport: Transport,
    pub http: SocketAddr,
    pub key: TokenKey,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts with extra `section.key=value` overrides.
    pub async fn start_with(overrides: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, overrides).await
    }

    pub async fn start_in(dir: tempfile::TempDir, overrides: &[&str]) -> Self {
        Self::start_at(dir, "127.0.0.1:0".parse().unwrap(), overrides).await
    }

    /// Starts serving `transport` too (QUIC on a UDP port beside the TCP one); its
    /// [`client`](Self::client)s connect over it.
    pub async fn start_over(transport: Transport, overrides: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_full(dir, "127.0.0.1:0".parse().unwrap(), None, transport, overrides).await
    }

    /// Stops the server and starts a new one on the same addresses and data directory.
    pub async fn restart(self, overrides: &[&str]) -> Self {
        let (addr, quic, transport) = (self.addr, self.quic, self.transport);
        let dir = self.stop().await;
        Self::start_full(dir, addr, quic, transport, overrides).await
    }

    pub async fn start_at(dir: tempfile::TempDir, at: SocketAddr, overrides: &[&str]) -> Self {
        Self::start_full(dir, at, None, Transport::Tcp, overrides).await
    }

    /// Starts on `at` (TCP) and, over QUIC, on `quic` (None: the same port as TCP, or a free
    /// one if that UDP port is taken).
    pub async fn start_full(
        dir: tempfile::TempDir,
        at: SocketAddr,
        quic: Option<SocketAddr>,
        transport: Transport,
        overrides: &[&str],
    ) -> Self {
        let key = test_key();
        let mut sets = vec![
            format!("server.data_dir={}", dir.path().display()),
            format!("auth.hs256_key={}", key.to_base64()),
        ];
        match (transport, quic) {
            (Transport::Tcp | Transport::Tls, _) => sets.push("server.quic_listen=".into()),
            (Transport::Quic, Some(q)) => sets.push(format!("server.quic_listen={q}")),
            // "same" with a requested port 0 falls back to a free UDP port if taken.
            (Transport::Quic, None) => sets.push(format!("server.listen={at}")),
        }
        sets.extend(overrides.iter().map(|s| s.to_string()));
        let cfg = Config::load(None, Vec::new(), &sets).unwrap();
        let s = &cfg.server;
        let listener = tern_gateway::listen(at, 1024, s.io_threads, s.share_port).unwrap();
        let listener = tern::quic::bind(&cfg, listener).unwrap();
        let listener = tern::tls::bind(&cfg, listener).unwrap();
        let quic = listener.quic_addr();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr();
        let http_addr = http.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tern::embedded::run(&cfg, listener, Some(http), async move {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            addr,
            quic,
            transport,
            http: http_addr,
            key,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn token(&self, user: &str, device: &str) -> String {
        self.key.mint_for(user, device, now_secs(), 3600)
    }

    /// The SDK address of this server over its transport.
    pub fn sdk_addr(&self) -> String {
        match self.transport {
            Transport::Tcp | Transport::Tls => self.transport.sdk_addr(self.addr),
            Transport::Quic => Transport::Quic.sdk_addr(self.quic.expect("QUIC is served")),
        }
    }

    /// An SDK client configuration for `user`/`device` over this server's transport.
    pub fn client_config(&self, user: &str, device: &str) -> ClientConfig {
        let mut cfg = ClientConfig::new(self.sdk_addr(), self.token(user, device));
        cfg.trust = self.transport.trust(self.dir.path());
        cfg
    }

    pub async fn client(&self, user: &str, device: &str) -> (Client, Receiver<Event>) {
        connect_with(self.client_config(user, device)).await
    }

    /// GET a path from the HTTP endpoint; returns the body.
    pub async fn http_get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(self.http).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// The value of one metric from /metrics.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.http_get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    /// Stops the server (kicks everyone) and waits for it; returns its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        // Give the store's blocking threads a moment to drop the database handle.
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub async fn connect(addr: SocketAddr, token: &str) -> (Client, Receiver<Event>) {
    connect_with(ClientConfig::new(addr.to_string(), token.to_string())).await
}

/// Connects an SDK client with `cfg`, within [`WAIT`].
pub async fn connect_with(cfg: ClientConfig) -> (Client, Receiver<Event>) {
    tokio::time::timeout(WAIT, Client::connect(cfg, Arc::new(MemoryPersistence::default())))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// Waits for the next Message event (skipping others).
pub async fn next_message(events: &mut Receiver<Event>) -> v1::Message {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.expect("no event in time") {
            Some(Event::Message(m)) => return m,
            Some(_) => continue,
            None => panic!("event stream ended"),
        }
    }
}

/// Waits for an event matching `f`.
pub async fn wait_event<T>(
    events: &mut Receiver<Event>,
    mut f: impl FnMut(&Event) -> Option<T>,
) -> T {
    loop {
        let ev = tokio::time::timeout(WAIT, events.recv()).await.expect("no event in time");
        match ev {
            Some(ev) => {
                if let Some(t) = f(&ev) {
                    return t;
                }
            }
            None => panic!("event stream ended"),
        }
    }
}

pub fn text(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A raw frame-level client, for bad-input tests.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        Self::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Self {
        Self { stream, buf: BytesMut::new(), decoder: FrameDecoder::new(16 * 1024 * 1024) }
    }

    pub async fn send(&mut self, request_id: u64, body: Body) {
        let frame =
            encode_to_bytes(&Envelope { request_id, body: Some(body) }, usize::MAX).unwrap();
        self.stream.write_all(&frame).await.unwrap();
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Next frame, or None at EOF/reset.
    pub async fn recv(&mut self) -> Option<Envelope> {
        loop {
            if let Some(env) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(env);
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("no frame in time");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Next frame that is not a push (request_id != 0) or is an Error/Kick.
    pub async fn recv_answer(&mut self) -> Envelope {
        loop {
            let env = self.recv().await.expect("connection closed");
            if env.request_id != 0 || matches!(env.body, Some(Body::Error(_)) | Some(Body::Kick(_)))
            {
                return env;
            }
        }
    }

    /// Logs in and returns the LoginOk.
    pub async fn login(addr: SocketAddr, token: &str) -> (Self, v1::LoginOk) {
        let mut raw = Self::connect(addr).await;
        raw.send(
            1,
            Body::Login(v1::Login {
                token: token.into(),
                protocol_version: 1,
                client_version: "test".into(),
                ..Default::default()
            }),
        )
        .await;
        match raw.recv().await {
            Some(Envelope { body: Some(Body::LoginOk(ok)), .. }) => (raw, ok),
            other => panic!("login failed: {other:?}"),
        }
    }

    /// Splits into a frame reader and the raw write half (to write and read concurrently).
    pub fn into_split(self) -> (RawReader, tokio::net::tcp::OwnedWriteHalf) {
        let (read, write) = self.stream.into_split();
        (RawReader { read, buf: self.buf, decoder: self.decoder }, write)
    }

    /// Reads until EOF and returns every frame seen.
    pub async fn drain_to_eof(&mut self) -> Vec<Envelope> {
        let mut out = Vec::new();
        while let Some(e) = self.recv().await {
            out.push(e);
        }
        out
    }
}

/// The reading half of a [`Raw`].
pub struct RawReader {
    read: tokio::net::tcp::OwnedReadHalf,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl RawReader {
    /// Next frame, or None at EOF/reset.
    pub async fn recv(&mut self) -> Option<Envelope> {
        loop {
            if let Some(env) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(env);
            }
            let n = tokio::time::timeout(WAIT, self.read.read_buf(&mut self.buf))
                .await
                .expect("no frame in time");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

pub fn error_code(env: &Envelope) -> Option<(v1::ErrorCode, bool)> {
    match &env.body {
        Some(Body::Error(e)) => {
            Some((v1::ErrorCode::try_from(e.code).unwrap_or_default(), e.fatal))
        }
        _ => None,
    }
}

/// A `tern serve` child process (for tests that kill the server).
pub struct ChildServer {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, "127.0.0.1:0", &[])
    }

    /// `tern serve` on `listen` with extra arguments (e.g. `--set k=v`).
    pub fn start_with(data_dir: &Path, listen: &str, extra: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = serve_command(data_dir, listen, extra)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tern serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("client="))
            .unwrap_or_else(|| panic!("unexpected first line from tern serve: {line:?}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }

    pub fn key(data_dir: &Path) -> TokenKey {
        TokenKey::load_or_create(&data_dir.join("jwt.key")).unwrap().0
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn data_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().to_path_buf()
}

/// A `tern serve` command on `listen` with `data_dir` and extra arguments, logging warnings,
/// stdout piped (its first line is the "listening" line).
pub fn serve_command(data_dir: &Path, listen: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["serve", "--listen", listen, "--http-listen", ""])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .env("TERN_SERVER_LOG", "warn")
        .stdout(Stdio::piped());
    cmd
}
