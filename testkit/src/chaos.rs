//! [`ChaosProxy`]: a TCP proxy on a free loopback port in front of one target address, whose
//! connections a test can stall, slow down, reset, close cleanly or send somewhere else.
//!
//! # How it runs
//!
//! Each proxy owns a private current-thread tokio runtime on one background std thread. It does
//! not run on the test's runtime, so a test may call its controls from sync code or from inside
//! an async test (the controls are plain blocking methods that return quickly), and a test that
//! blocks its own runtime does not freeze the network under it. Every accepted connection is one
//! task that opens its own connection to the target and forwards bytes both ways in chunks of
//! at most [`ChaosOptions::chunk_bytes`].
//!
//! # Controls
//!
//! - [`pause`](ChaosProxy::pause) / [`resume`](ChaosProxy::resume): stop forwarding without
//!   closing anything, as a stalled path does. A chunk already read is held until resume; the
//!   kernel buffers fill and the peers' writes block. New connections are still accepted (the
//!   kernel would accept them into the backlog anyway) but forward nothing while paused.
//! - [`set_delay`](ChaosProxy::set_delay): a one-way latency: every chunk, in both directions,
//!   is written on this long after it was read (chunks in flight do not wait for each other).
//!   A connection accepted while a delay is set also counts its client's first bytes as sent
//!   no earlier than two delays after the accept (so they arrive three delays after it): the
//!   TCP handshake's round trip, which the kernel completed at once on loopback.
//! - [`reset_all`](ChaosProxy::reset_all): every proxied connection, on both sides, is closed
//!   with `SO_LINGER` 0, so both peers see a TCP RST (`ECONNRESET`).
//! - [`drop_all`](ChaosProxy::drop_all): every proxied connection is closed cleanly (FIN).
//! - [`retarget`](ChaosProxy::retarget): new connections go to another address (the server
//!   "moved"); existing ones stay where they are until reset or dropped.
//! - [`stats`](ChaosProxy::stats): connections accepted, refused, failed, active, bytes each way.
//!
//! Both kill controls wait (bounded by [`ChaosOptions::kill_timeout`]) until every connection
//! they hit has really been closed, so a test can assert right after them.
//!
//! # Bounds
//!
//! At most [`ChaosOptions::max_connections`] proxied connections at once; one more is accepted
//! and closed with an RST at once (counted in [`ChaosStats::refused`]). A connection to the
//! target that cannot be opened within [`ChaosOptions::connect_timeout`] closes the client's
//! connection with an RST too. Dropping the proxy stops its runtime, which closes every socket,
//! and joins its thread.
//!
//! Errors from the peers (a reset by the target, say) end the proxied connection and are passed
//! on as an RST to the other side; a clean EOF is passed on as a half close.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// How to run a [`ChaosProxy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosOptions {
    /// Proxied connections at once; past it a new connection is reset at accept. Each costs two
    /// sockets (two file descriptors) and two chunk buffers. Default 1024.
    pub max_connections: usize,
    /// Largest chunk read and forwarded at once, per direction and connection. Default 16 KiB.
    pub chunk_bytes: usize,
    /// How long a new connection waits to connect to the target. Default 5 s.
    pub connect_timeout: Duration,
    /// How long [`ChaosProxy::reset_all`] and [`ChaosProxy::drop_all`] wait for the
    /// connections to close. Default 5 s.
    pub kill_timeout: Duration,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            chunk_bytes: 16 * 1024,
            connect_timeout: Duration::from_secs(5),
            kill_timeout: Duration::from_secs(5),
        }
    }
}

/// What went wrong with a [`ChaosProxy`].
#[derive(Debug, Error)]
pub enum ChaosError {
    /// A local I/O step failed (bind, runtime, thread).
    #[error("{what}: {source}")]
    Io { what: &'static str, source: io::Error },
    /// The caller passed an option the proxy cannot run with.
    #[error("invalid chaos proxy option: {0}")]
    InvalidOption(&'static str),
    /// A kill control hit connections that did not close in time.
    #[error("{pending} of {total} connections still open {waited:?} after {what}")]
    KillTimeout { what: &'static str, pending: usize, total: usize, waited: Duration },
}

/// Counters of a [`ChaosProxy`], read with [`ChaosProxy::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChaosStats {
    /// Connections accepted and proxied (not counting refused ones).
    pub accepted: u64,
    /// Connections reset at accept because `max_connections` were open.
    pub refused: u64,
    /// Accepted connections whose connection to the target failed (reset on the client side).
    pub connect_failures: u64,
    /// Proxied connections open now.
    pub active: usize,
    /// Directions holding a chunk they read because the proxy is paused (a gauge).
    pub held_chunks: usize,
    /// Bytes forwarded to the target side (counted as each chunk's write starts).
    pub bytes_to_target: u64,
    /// Bytes forwarded to the client side (counted as each chunk's write starts).
    pub bytes_to_client: u64,
    /// Connections closed by [`ChaosProxy::reset_all`].
    pub resets: u64,
    /// Connections closed by [`ChaosProxy::drop_all`].
    pub drops: u64,
}

/// How a kill control closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillKind {
    /// `SO_LINGER` 0, then close: an RST.
    Reset,
    /// Plain close: a FIN.
    Close,
}

/// The order one connection task gets from a kill control.
struct Kill {
    kind: KillKind,
    /// Dropped (or sent on) once the sockets are closed.
    done: std_mpsc::Sender<()>,
}

/// State shared by the controls and the proxy's tasks.
struct Shared {
    options: ChaosOptions,
    target: Mutex<SocketAddr>,
    paused: watch::Sender<bool>,
    delay: watch::Sender<Duration>,
    /// Open connections by id: how to kill each.
    conns: Mutex<HashMap<u64, oneshot::Sender<Kill>>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    connect_failures: AtomicU64,
    held_chunks: AtomicUsize,
    bytes_to_target: AtomicU64,
    bytes_to_client: AtomicU64,
    resets: AtomicU64,
    drops: AtomicU64,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Kill>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn target(&self) -> SocketAddr {
        *self.target.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A TCP proxy with chaos controls. See the module doc.
pub struct ChaosProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ChaosProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosProxy")
            .field("addr", &self.addr)
            .field("target", &self.target())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl ChaosProxy {
    /// Starts a proxy to `target` on a free loopback port with the default options.
    pub fn start(target: SocketAddr) -> Result<Self, ChaosError> {
        Self::start_with(target, ChaosOptions::default())
    }

    /// Starts a proxy to `target` on a free loopback port.
    pub fn start_with(target: SocketAddr, options: ChaosOptions) -> Result<Self, ChaosError> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), target, options)
    }

    /// Starts a proxy to `target` listening on `listen` (port 0 picks a free port).
    pub fn start_on(
        listen: SocketAddr,
        target: SocketAddr,
        options: ChaosOptions,
    ) -> Result<Self, ChaosError> {
        if options.chunk_bytes == 0 {
            return Err(ChaosError::InvalidOption("chunk_bytes must be at least 1"));
        }
        let io = |what| move |source| ChaosError::Io { what, source };
        let listener = StdTcpListener::bind(listen).map_err(io("bind the proxy listener"))?;
        let addr = listener.local_addr().map_err(io("read the proxy address"))?;
        listener.set_nonblocking(true).map_err(io("make the proxy listener non-blocking"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("build the proxy runtime"))?;
        let shared = Arc::new(Shared {
            options,
            target: Mutex::new(target),
            paused: watch::Sender::new(false),
            delay: watch::Sender::new(Duration::ZERO),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            held_chunks: AtomicUsize::new(0),
            bytes_to_target: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            drops: AtomicU64::new(0),
        });
        let (shutdown, stopped) = oneshot::channel();
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("chaos-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    // Registering with the reactor needs the runtime, so it happens in here.
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener, task_shared, stopped).await,
                        Err(e) => eprintln!("chaos proxy {addr}: cannot register listener: {e}"),
                    }
                });
                // Dropping the runtime drops every connection task and so closes its sockets.
                drop(runtime);
            })
            .map_err(io("spawn the proxy thread"))?;
        Ok(Self { addr, shared, shutdown: Some(shutdown), thread: Some(thread) })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections go.
    pub fn target(&self) -> SocketAddr {
        self.shared.target()
    }

    /// Sends new connections to `target` from now on; open ones are left alone.
    pub fn retarget(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap_or_else(PoisonError::into_inner) = target;
    }

    /// Stops forwarding in both directions on every connection, old and new, without closing
    /// anything, until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Forwards again after [`pause`](Self::pause), starting with the chunks held.
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Whether the proxy is paused.
    pub fn is_paused(&self) -> bool {
        *self.shared.paused.borrow()
    }

    /// Sets the one-way latency of every connection, both ways (zero: none). See the module
    /// doc: chunks are pipelined, and new connections also pay the TCP handshake's round trip.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.delay.send_replace(delay);
    }

    /// Closes every proxied connection with an RST on both sides (`SO_LINGER` 0, then close)
    /// and waits until they are closed. Returns how many it closed.
    pub fn reset_all(&self) -> Result<usize, ChaosError> {
        self.kill_all(KillKind::Reset)
    }

    /// Closes every proxied connection cleanly (FIN) on both sides and waits until they are
    /// closed. Returns how many it closed.
    pub fn drop_all(&self) -> Result<usize, ChaosError> {
        self.kill_all(KillKind::Close)
    }

    /// The counters now.
    pub fn stats(&self) -> ChaosStats {
        let s = &self.shared;
        ChaosStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            connect_failures: s.connect_failures.load(Ordering::Relaxed),
            active: s.conns().len(),
            held_chunks: s.held_chunks.load(Ordering::Relaxed),
            bytes_to_target: s.bytes_to_target.load(Ordering::Relaxed),
            bytes_to_client: s.bytes_to_client.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
            drops: s.drops.load(Ordering::Relaxed),
        }
    }

    fn kill_all(&self, kind: KillKind) -> Result<usize, ChaosError> {
        let victims: Vec<_> = self.shared.conns().drain().map(|(_, tx)| tx).collect();
        let (done_tx, done_rx) = std_mpsc::channel();
        let mut total = 0;
        for victim in victims {
            // A send fails only when the task has just ended by itself.
            if victim.send(Kill { kind, done: done_tx.clone() }).is_ok() {
                total += 1;
            }
        }
        drop(done_tx);
        // Every task sends once it has closed its sockets, or drops its `Kill` unused when it
        // ended by itself at the same moment; the channel disconnects when all have done either.
        let waited = self.shared.options.kill_timeout;
        let deadline = Instant::now() + waited;
        let mut closed = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match done_rx.recv_timeout(left) {
                Ok(()) => closed += 1,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    let what = match kind {
                        KillKind::Reset => "reset_all",
                        KillKind::Close => "drop_all",
                    };
                    return Err(ChaosError::KillTimeout {
                        what,
                        pending: total - closed,
                        total,
                        waited,
                    });
                }
            }
        }
        let counter = match kind {
            KillKind::Reset => &self.shared.resets,
            KillKind::Close => &self.shared.drops,
        };
        counter.fetch_add(closed as u64, Ordering::Relaxed);
        Ok(closed)
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stopped: oneshot::Receiver<()>) {
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of file descriptors or a connection reset before accept: back off a
                // little instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut conns = shared.conns();
        if conns.len() >= shared.options.max_connections {
            drop(conns);
            shared.refused.fetch_add(1, Ordering::Relaxed);
            reset(client);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (kill_tx, kill_rx) = oneshot::channel();
        conns.insert(id, kill_tx);
        drop(conns);
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(proxy_connection(id, client, kill_rx, shared.clone()));
    }
}

/// Removes the connection from the registry when its task ends, however it ends.
struct Registered {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.conns().remove(&self.id);
    }
}

/// Closes a socket with an RST.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Resolves to the kill order, or never if the order can no longer come.
async fn next_kill(kill_rx: &mut oneshot::Receiver<Kill>) -> Kill {
    match kill_rx.await {
        Ok(kill) => kill,
        Err(_) => std::future::pending().await,
    }
}

async fn proxy_connection(
    id: u64,
    client: TcpStream,
    mut kill_rx: oneshot::Receiver<Kill>,
    shared: Arc<Shared>,
) {
    let accepted = tokio::time::Instant::now();
    let _registered = Registered { id, shared: shared.clone() };
    let _ = client.set_nodelay(true);
    let target = shared.target();
    let connect = tokio::time::timeout(shared.options.connect_timeout, TcpStream::connect(target));
    let connected = tokio::select! {
        kill = next_kill(&mut kill_rx) => Err(Some(kill)),
        connected = connect => match connected {
            Ok(Ok(upstream)) => Ok(upstream),
            Ok(Err(_)) | Err(_) => Err(None),
        },
    };
    let mut upstream = match connected {
        Ok(upstream) => upstream,
        Err(Some(kill)) => return finish(kill, client, None),
        Err(None) => {
            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            return reset(client);
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut client = client;
    let outcome = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let handshake = *shared.delay.borrow() * 2;
        let not_before = (!handshake.is_zero()).then(|| accepted + handshake);
        let up = pump(client_read, upstream_write, &shared, &shared.bytes_to_target, not_before);
        let down = pump(upstream_read, client_write, &shared, &shared.bytes_to_client, None);
        tokio::select! {
            kill = next_kill(&mut kill_rx) => Outcome::Killed(kill),
            forwarded = async { tokio::try_join!(up, down) } => match forwarded {
                Ok(_) => Outcome::Finished,
                Err(_) => Outcome::Failed,
            },
        }
    };
    match outcome {
        Outcome::Killed(kill) => finish(kill, client, Some(upstream)),
        Outcome::Finished => drop((client, upstream)),
        Outcome::Failed => {
            // One side failed (e.g. it was reset): pass the failure on to both as an RST.
            reset(client);
            reset(upstream);
        }
    }
}

/// How the forwarding of one connection ended.
enum Outcome {
    /// A kill control ended it.
    Killed(Kill),
    /// Both directions reached EOF.
    Finished,
    /// A read or write failed.
    Failed,
}

/// Carries out a kill order on the connection's sockets and reports it done.
fn finish(kill: Kill, client: TcpStream, upstream: Option<TcpStream>) {
    if kill.kind == KillKind::Reset {
        let _ = client.set_zero_linger();
        if let Some(upstream) = &upstream {
            let _ = upstream.set_zero_linger();
        }
    }
    drop(client);
    drop(upstream);
    let _ = kill.done.send(());
}

/// Waits while the proxy is paused.
async fn resumed(paused: &mut watch::Receiver<bool>) {
    // The sender lives in `Shared`, which outlives every task, so this cannot fail.
    let _ = paused.wait_for(|paused| !*paused).await;
}

/// Counts a held chunk in [`ChaosStats::held_chunks`] while it lives.
struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    fn new(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most chunks read but not yet written on, per direction (while delayed or paused).
const IN_FLIGHT_CHUNKS: usize = 64;

/// Forwards one direction until EOF (passed on as a half close) or an error. Every chunk is
/// written on [`Shared::delay`] after it was read, independently of the chunks before it (a
/// link's one-way latency, not a queue): chunks in flight wait in a bounded channel, so a
/// delay slows the first byte, not the throughput. The first chunk counts as sent no earlier
/// than `not_before`: the client-to-target direction passes `accepted + 2 × delay`, when the
/// client's TCP handshake would have completed over a link with that delay, so its first
/// bytes arrive a delay after that (the kernel completed the handshake at once on loopback;
/// the proxy cannot delay the SYN/SYN-ACK themselves).
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    shared: &Shared,
    counter: &AtomicU64,
    not_before: Option<tokio::time::Instant>,
) -> io::Result<()> {
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
    let read = async move {
        let mut paused = shared.paused.subscribe();
        let delay = shared.delay.subscribe();
        let mut not_before = not_before;
        loop {
            resumed(&mut paused).await;
            let mut buf = vec![0u8; shared.options.chunk_bytes];
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
            buf.truncate(n);
            let mut sent = tokio::time::Instant::now();
            if let Some(t) = not_before.take() {
                sent = sent.max(t);
            }
            let due = sent + *delay.borrow();
            if tx.send((due, buf)).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async {
        let mut paused = shared.paused.subscribe();
        while let Some((due, buf)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if *paused.borrow_and_update() {
                let _held = Held::new(&shared.held_chunks);
                resumed(&mut paused).await;
            }
            // Counted before the write, so a peer that has the bytes sees them counted.
            counter.fetch_add(buf.len() as u64, Ordering::Relaxed);
            to.write_all(&buf).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{Shutdown, TcpStream as StdTcpStream};
    use std::thread;

    use super::*;

    /// Upper bound for any wait in these tests (a failure guard, not a timing assertion).
    const WAIT: Duration = Duration::from_secs(10);

    /// A blocking echo server on a free port; each connection is echoed on its own thread.
    /// Its first byte of reply is prefixed with `tag`, so tests can tell two servers apart.
    struct Echo {
        addr: SocketAddr,
        accepted: Arc<AtomicU64>,
    }

    impl Echo {
        fn start(tag: u8) -> Self {
            let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicU64::new(0));
            let count = accepted.clone();
            // The thread ends with the test process; it only ever blocks in accept.
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    count.fetch_add(1, Ordering::Relaxed);
                    thread::spawn(move || {
                        if stream.write_all(&[tag]).is_err() {
                            return;
                        }
                        let mut buf = [0u8; 4096];
                        loop {
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if stream.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            });
            Self { addr, accepted }
        }
    }

    fn connect(proxy: &ChaosProxy) -> StdTcpStream {
        let stream = StdTcpStream::connect_timeout(&proxy.addr(), WAIT).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        stream
    }

    /// Connects to the proxy and asserts that it closes the connection with an RST (which
    /// may already show in connect or when setting the socket's timeout, it comes so fast).
    fn assert_reset(proxy: &ChaosProxy) {
        let err = match StdTcpStream::connect_timeout(&proxy.addr(), WAIT) {
            Err(e) => e,
            Ok(mut stream) => match stream.set_read_timeout(Some(WAIT)) {
                Err(e) => e,
                Ok(()) => stream.read(&mut [0u8; 1]).unwrap_err(),
            },
        };
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    }

    fn read_exact(stream: &mut StdTcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        stream.read_exact(&mut buf).unwrap();
        buf
    }

    /// Connects through the proxy and reads the echo server's tag byte.
    fn connect_tagged(proxy: &ChaosProxy) -> (StdTcpStream, u8) {
        let mut stream = connect(proxy);
        let tag = read_exact(&mut stream, 1)[0];
        (stream, tag)
    }

    /// Polls `cond` until it holds (bounded by [`WAIT`]).
    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn forwards_both_ways_and_counts() {
        let echo = Echo::start(b'A');
        let proxy = ChaosProxy::start(echo.addr).unwrap();
        assert_ne!(proxy.addr(), echo.addr);
        assert_eq!(proxy.target(), echo.addr);
        let (mut stream, tag) = connect_tagged(&proxy);
        assert_eq!(tag, b'A');
        stream.write_all(b"hello").unwrap();
        assert_eq!(read_exact(&mut stream, 5), b"hello");
        // A payload larger than one chunk comes back whole.
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let writer = {
            let mut stream = stream.try_clone().unwrap();
            let big = big.clone();
            thread::spawn(move || stream.write_all(&big).unwrap())
        };
        assert_eq!(read_exact(&mut stream, big.len()), big);
        writer.join().unwrap();
        let stats = proxy.stats();
        assert_eq!(stats.accepted, 1);
        assert_eq!(stats.active, 1);
        assert_eq!(stats.bytes_to_target, 5 + big.len() as u64);
        assert_eq!(stats.bytes_to_client, 1 + 5 + big.len() as u64);
        // A clean close by the client ends the proxied connection.
        drop(stream);
        eventually("connection gone", || proxy.stats().active == 0);
    }

    #[test]
    fn half_close_is_passed_on() {
        let echo = Echo::start(b'A');
        let proxy = ChaosProxy::start(echo.addr).unwrap();
        let (mut stream, _) = connect_tagged(&proxy);
        stream.write_all(b"bye").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        // The echo server sees EOF, stops, and its close reaches us as EOF after the echo.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bye");
    }

    #[test]
    fn pause_holds_data_until_resume() {
        let echo = Echo::start(b'A');
        let proxy = ChaosProxy::start(echo.addr).unwrap();
        let (mut stream, _) = connect_tagged(&proxy);
        proxy.pause();
        assert!(proxy.is_paused());
        let before = proxy.stats();
        stream.write_all(b"ping").unwrap();
        // The proxy reads the chunk and holds it instead of forwarding it.
        eventually("chunk held", || proxy.stats().held_chunks == 1);
        let held = proxy.stats();
        assert_eq!(held.bytes_to_target, before.bytes_to_target, "nothing forwarded");
        assert_eq!(held.active, 1, "nothing closed");
        stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(stream.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
        stream.set_nonblocking(false).unwrap();
        proxy.resume();
        assert_eq!(read_exact(&mut stream, 4), b"ping");
        assert_eq!(proxy.stats().held_chunks, 0);
    }

    #[test]
    fn delay_slows_every_chunk_but_loses_nothing() {
        let echo = Echo::start(b'A');
        let proxy = ChaosProxy::start(echo.addr).unwrap();
        let (mut stream, _) = connect_tagged(&proxy);
        let delay = Duration::from_millis(30);
        proxy.set_delay(delay);
        let started = Instant::now();
        stream.write_all(b"slow").unwrap();
        assert_eq!(read_exact(&mut stream, 4), b"slow");
        // Two delayed chunks: one each way. A lower bound, so no flakiness on a busy machine.
        assert!(started.elapsed() >= delay * 2, "{:?}", started.elapsed());
        proxy.set_delay(Duration::ZERO);
        stream.write_all(b"fast").unwrap();
        assert_eq!(read_exact(&mut stream, 4), b"fast");
    }

    /// With a delay set before it connects, the client's first bytes also wait for the TCP
    /// handshake's round trip: its first echo takes at least four one-way delays (handshake
    /// round trip, there, back), and chunks sent together arrive together.
    #[test]
    fn a_new_connection_pays_the_handshake_round_trip_and_chunks_are_pipelined() {
        let echo = Echo::start(b'A');
        let proxy = ChaosProxy::start(echo.addr).unwrap();
        let delay = Duration::from_millis(25);
        proxy.set_delay(delay);
        let started = Instant::now();
        let mut stream = connect(&proxy);
        stream.write_all(b"x").unwrap();
        // The tag, then the echo: lower bounds only, so no flakiness on a busy machine.
        assert_eq!(read_exact(&mut stream, 2), b"Ax");
        assert!(started.elapsed() >= delay * 4, "{:?}", started.elapsed());
        for _ in 0..3 {
            stream.write_all(b"yz").unwrap();
        }
        assert_eq!(read_exact(&mut stream, 6), b"yzyzyz");
        assert_eq!(proxy.stats().bytes_to_target, 7);
    }

    #[test]
    fn reset_all_sends_rst_to_every_connection() {
        let echo = Echo::start(b'A');
        let proxy = ChaosProxy::start(echo.addr).unwrap();
        let mut streams: Vec<_> = (0..3).map(|_| connect_tagged(&proxy).0).collect();
        assert_eq!(proxy.stats().active, 3);
        assert_eq!(proxy.reset_all().unwrap(), 3);
        let stats = proxy.stats();
        assert_eq!((stats.active, stats.resets), (0, 3));
        for stream in &mut streams {
            let mut buf = [0u8; 8];
            let err = stream.read(&mut buf).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
        }
        // The proxy still serves new connections.
        let (mut stream, _) = connect_tagged(&proxy);
        stream.write_all(b"again").unwrap();
        assert_eq!(read_exact(&mut stream, 5), b"again");
        assert_eq!(proxy.stats().accepted, 4);
    }

    #[test]
    fn drop_all_closes_cleanly() {
        let echo = Echo::start(b'A');
        let proxy = ChaosProxy::start(echo.addr).unwrap();
        let (mut stream, _) = connect_tagged(&proxy);
        assert_eq!(proxy.drop_all().unwrap(), 1);
        assert_eq!(proxy.stats().drops, 1);
        let mut buf = [0u8; 8];
        assert_eq!(stream.read(&mut buf).unwrap(), 0, "EOF, not an error");
        assert_eq!(proxy.stats().active, 0);
    }

    #[test]
    fn kill_controls_on_an_idle_proxy_hit_nothing() {
        let echo = Echo::start(b'A');
        let proxy = ChaosProxy::start(echo.addr).unwrap();
        assert_eq!(proxy.reset_all().unwrap(), 0);
        assert_eq!(proxy.drop_all().unwrap(), 0);
    }

    #[test]
    fn retarget_moves_new_connections_only() {
        let a = Echo::start(b'A');
        let b = Echo::start(b'B');
        let proxy = ChaosProxy::start(a.addr).unwrap();
        let (mut old, tag) = connect_tagged(&proxy);
        assert_eq!(tag, b'A');
        proxy.retarget(b.addr);
        assert_eq!(proxy.target(), b.addr);
        let (_new, tag) = connect_tagged(&proxy);
        assert_eq!(tag, b'B');
        assert_eq!(a.accepted.load(Ordering::Relaxed), 1);
        assert_eq!(b.accepted.load(Ordering::Relaxed), 1);
        // The old connection still talks to A.
        old.write_all(b"x").unwrap();
        assert_eq!(read_exact(&mut old, 1), b"x");
    }

    #[test]
    fn a_dead_target_resets_the_client() {
        // A port that was free a moment ago: nothing listens there.
        let dead = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap();
        let proxy = ChaosProxy::start(dead).unwrap();
        assert_reset(&proxy);
        eventually("failure counted", || proxy.stats().connect_failures == 1);
        eventually("connection gone", || proxy.stats().active == 0);
    }

    #[test]
    fn connections_past_the_cap_are_refused() {
        let echo = Echo::start(b'A');
        let options = ChaosOptions { max_connections: 2, ..ChaosOptions::default() };
        let proxy = ChaosProxy::start_with(echo.addr, options).unwrap();
        let _a = connect_tagged(&proxy);
        let _b = connect_tagged(&proxy);
        assert_reset(&proxy);
        let stats = proxy.stats();
        assert_eq!((stats.accepted, stats.refused, stats.active), (2, 1, 2));
    }

    #[test]
    fn drop_stops_everything() {
        let echo = Echo::start(b'A');
        let proxy = ChaosProxy::start(echo.addr).unwrap();
        let addr = proxy.addr();
        let (mut stream, _) = connect_tagged(&proxy);
        drop(proxy);
        // The runtime is gone: open connections are closed and nothing listens any more.
        let mut buf = [0u8; 1];
        assert!(matches!(stream.read(&mut buf), Ok(0) | Err(_)));
        // A child that another test forks at this moment holds a copy of the listener until
        // its exec closes it (CLOEXEC), so a connect may still succeed for an instant.
        eventually("listener closed", || match StdTcpStream::connect_timeout(&addr, WAIT) {
            Err(e) => e.kind() == ErrorKind::ConnectionRefused,
            Ok(_) => false,
        });
    }

    #[test]
    fn a_zero_chunk_size_is_refused() {
        let options = ChaosOptions { chunk_bytes: 0, ..ChaosOptions::default() };
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        let err = ChaosProxy::start_with(target, options).unwrap_err();
        assert!(matches!(err, ChaosError::InvalidOption(_)), "{err}");
    }
}
