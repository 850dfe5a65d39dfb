//! The connection core, built for density: a few I/O threads (about one per core), each with
//! its own mio event loop and a slab of compact per-connection records, polling one listening
//! socket shared by the threads (or, when the port is shared with other processes, its own
//! SO_REUSEPORT listener).
//!
//! - [`listen`]: binds the listeners (other processes may share the port only when asked);
//!   [`Listeners::with_quic`] adds one SO_REUSEPORT UDP socket per I/O thread for QUIC;
//!   [`Listeners::with_tls`] makes the TCP port speak TLS too.
//! - [`serve`]: runs the I/O threads until a shutdown future resolves.
//! - `io`: one I/O thread's loop: accept, read, feed each connection's sans-IO
//!   [`crate::conn::Connection`] (which decodes and decides), carry out its events, write
//!   coalesced mailbox frames, fire timers. It holds no protocol rule.
//! - `wheel`: the timer wheel for the connections' deadlines (login, presence wait, idle,
//!   token expiry, close and linger), a store of lazy entries.
//! - `mailbox`: how other threads (pushes, kicks, request answers, datagrams of a migrated
//!   QUIC client) reach a connection.
//!
//! QUIC connections live in the same slab, driven by the same [`crate::conn::Connection`]:
//! each I/O thread also owns one UDP socket and one [`crate::quic::QuicHost`] (endpoint
//! `index` of `threads`), whose connection IDs name it, so a datagram that lands on another
//! thread's socket (the client's address changed) is handed over through that thread's mailbox.
//!
//! An idle connection owns no buffer: reads go into the thread's scratch buffer, a partial frame
//! is copied out only when a frame is actually split across reads, and an outbound queue exists
//! only while the socket has not taken everything written to it. Requests that need dispatch run
//! as tasks on the async runtime; their answers come back through the mailbox.

pub mod affinity;
mod io;
pub(crate) mod mailbox;
pub mod wheel;

use std::future::Future;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;

pub use io::{TlsListen, unix_ms, unix_nanos};
pub use mailbox::ConnHandle;
use socket2::{Domain, Protocol, Socket, Type};

use crate::quic::QuicSettings;
use crate::server::Gateway;
use crate::upstream::Upstream;

/// The bound client listeners, one per I/O thread.
#[derive(Debug)]
pub struct Listeners {
    sockets: Vec<TcpListener>,
    addr: SocketAddr,
    quic: Option<QuicSockets>,
    tls: Option<TlsListen>,
    io_cpus: affinity::CpuList,
}

/// Where and how to serve QUIC, besides TCP ([`Listeners::with_quic`]).
#[derive(Clone)]
pub struct QuicListen {
    /// The UDP address (usually the TCP listener's IP and port).
    pub addr: SocketAddr,
    /// TLS and transport settings, shared by every endpoint of the process
    /// ([`crate::quic::config::server`]).
    pub server_config: Arc<quinn_proto::ServerConfig>,
    /// The settings `server_config` was built with.
    pub settings: QuicSettings,
}

impl std::fmt::Debug for QuicListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicListen").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// The UDP sockets of [`Listeners::with_quic`], one per I/O thread, and their configuration.
#[derive(Debug)]
struct QuicSockets {
    sockets: Vec<UdpSocket>,
    addr: SocketAddr,
    listen: QuicListen,
}

impl Listeners {
    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many I/O threads will serve them.
    pub fn threads(&self) -> usize {
        self.sockets.len()
    }

    /// The bound QUIC (UDP) address, when QUIC is served.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().map(|q| q.addr)
    }

    /// Also speaks TLS on the TCP port as `tls` says (`None`: plain TCP only). A connection
    /// whose first byte starts a TLS record (0x16) is TLS; any other is plain TCP, refused
    /// when `tls.plaintext` is false.
    pub fn with_tls(mut self, tls: Option<TlsListen>) -> Self {
        self.tls = tls;
        self
    }

    /// Pins I/O thread `i` to CPU `cpus[i % len]` when it starts (empty: the scheduler's
    /// choice). Check the list with [`affinity::CpuList::check_allowed`] first: a thread that
    /// cannot pin itself runs unpinned and logs why.
    pub fn with_io_cpus(mut self, cpus: affinity::CpuList) -> Self {
        self.io_cpus = cpus;
        self
    }

    /// Whether the TCP port speaks TLS.
    pub fn tls(&self) -> Option<&TlsListen> {
        self.tls.as_ref()
    }

    /// Also serves QUIC as `quic` says (`None`: TCP only); see [`Listeners::add_quic`].
    pub fn with_quic(mut self, quic: Option<QuicListen>) -> std::io::Result<Self> {
        match quic {
            Some(q) => self.add_quic(q)?,
            None => self.quic = None,
        }
        Ok(self)
    }

    /// Also serves QUIC: binds one UDP socket per I/O thread on `listen.addr`, each with
    /// SO_REUSEPORT (the kernel spreads clients over them by address; only processes of the
    /// same user can bind beside them). Port 0 takes a free port. At most 255 I/O threads
    /// serve QUIC (one byte of each connection ID names its thread). On error nothing is bound.
    pub fn add_quic(&mut self, listen: QuicListen) -> std::io::Result<()> {
        if self.sockets.len() > usize::from(u8::MAX) {
            return Err(std::io::Error::other("QUIC serves at most 255 I/O threads"));
        }
        let bind_one = |addr: SocketAddr| -> std::io::Result<UdpSocket> {
            let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            Ok(socket.into())
        };
        let first = bind_one(listen.addr)?;
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..self.sockets.len() {
            sockets.push(bind_one(addr)?);
        }
        self.quic = Some(QuicSockets { sockets, addr, listen });
        Ok(())
    }
}

/// Binds `threads` listeners on `addr` with an accept backlog of `backlog`.
///
/// One port, one server, unless asked: without `share_port`, one socket is bound without
/// SO_REUSEPORT and shared by every I/O thread (each polls its own duplicate of it; a ready
/// connection is taken by whichever thread accepts first, none is lost), so a port already in
/// use is an error and no other process can bind the port while it is held, whatever options
/// that process sets. With `share_port`, each thread gets its own SO_REUSEPORT socket (the
/// kernel spreads new connections over them) and other processes of the same user that also
/// share may bind the same port. `threads` 0 means one per core.
pub fn listen(
    addr: SocketAddr,
    backlog: u32,
    threads: usize,
    share_port: bool,
) -> std::io::Result<Listeners> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let bind_one = |addr: SocketAddr| -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // SO_REUSEADDR only allows a restart over connections in TIME_WAIT; on Linux it never
        // lets two listeners share a port.
        socket.set_reuse_address(true)?;
        if share_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(backlog.min(i32::MAX as u32) as i32)?;
        Ok(socket.into())
    };
    let first = bind_one(addr)?;
    // Port 0: the others bind the port the first one got.
    let addr = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..threads {
        sockets.push(if share_port { bind_one(addr)? } else { sockets[0].try_clone()? });
    }
    Ok(Listeners { sockets, addr, quic: None, tls: None, io_cpus: Default::default() })
}

/// Serves connections on `listeners` until `shutdown` resolves, then kicks every connection
/// with SERVER_SHUTDOWN and returns once they closed (or after a grace period of 5 s).
///
/// Must run inside a tokio runtime: requests to the upstream run as tasks on it.
pub async fn serve<U: Upstream>(
    gw: Arc<Gateway<U>>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) {
    let rt = tokio::runtime::Handle::current();
    let count = listeners.sockets.len();
    let mut udp: Vec<Option<UdpSocket>> = Vec::new();
    let mut quic = None;
    if let Some(q) = listeners.quic {
        udp = q.sockets.into_iter().map(Some).collect();
        quic = Some(q.listen);
    }
    let mut reset_key = [0u8; 32];
    if quic.is_some() && getrandom::fill(&mut reset_key).is_err() {
        tracing::error!("no random stateless-reset key; QUIC is not served");
        quic = None;
    }
    let mut built = Vec::new();
    for (i, listener) in listeners.sockets.into_iter().enumerate() {
        let endpoint = match (&quic, udp.get_mut(i).and_then(Option::take)) {
            (Some(q), Some(socket)) => Some(io::QuicEndpoint {
                socket,
                index: i as u8,
                count: count as u8,
                reset_key,
                listen: q.clone(),
            }),
            _ => None,
        };
        let tls = listeners.tls.clone();
        match io::IoThread::new(gw.clone(), listener, endpoint, tls, rt.clone()) {
            Ok(t) => built.push((i, t)),
            Err(e) => tracing::error!(error = %e, "starting an I/O thread failed"),
        }
    }
    // Every thread can hand a QUIC datagram to any other (by endpoint index).
    let mut mailboxes = vec![None; count];
    for (i, t) in &built {
        mailboxes[*i] = Some(t.mailbox());
    }
    let mailboxes: Arc<[_]> = mailboxes.into();
    let mut threads = Vec::new();
    for (i, mut t) in built {
        t.set_peers(mailboxes.clone());
        match t.spawn(i, listeners.io_cpus.for_thread(i)) {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!(error = %e, "starting an I/O thread failed"),
        }
    }
    if threads.is_empty() {
        tracing::error!("no I/O thread started; the gateway serves nothing");
        return;
    }
    shutdown.await;
    for t in &threads {
        t.mailbox.send(mailbox::Cmd::Shutdown);
    }
    for t in threads {
        // The thread exits within its shutdown grace; a panicked thread says so here.
        let _ = t.done.await;
    }
}
