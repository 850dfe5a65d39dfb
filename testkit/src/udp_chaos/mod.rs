//! [`UdpChaosProxy`]: a UDP proxy on a free loopback port in front of one target (a QUIC
//! server), which loses, delays, jitters, reorders and duplicates datagrams, blackholes
//! everything for a while, and rebinds its flows as a NAT does.
//!
//! # How it runs
//!
//! Like the TCP [`ChaosProxy`](crate::ChaosProxy), the proxy owns a current-thread tokio
//! runtime on one background thread, so its controls are plain blocking methods safe to call
//! from anywhere. Clients send to [`UdpChaosProxy::addr`]. Each client address is one *flow*:
//! the proxy gives it a socket of its own towards the target (a fresh loopback port), so the
//! target sees one peer address per client, as behind a NAT. Datagrams the target sends to
//! that socket go back to the client from the proxy's address.
//!
//! # Faults
//!
//! - [`set_faults`](UdpChaosProxy::set_faults): loss, duplication, reordering, delay, jitter
//!   and delay spikes ([`Faults`]), the same both ways. Decisions come from
//!   [`fate::Decider`]: seeded, so a run is replayable (see there for what exactly repeats).
//! - [`blackhole`](UdpChaosProxy::blackhole): drop everything, both ways, for a while.
//! - [`rebind_all`](UdpChaosProxy::rebind_all): every flow moves to a new socket towards the
//!   target, so the target sees each client come from a new port (NAT rebinding: the NAT's
//!   outside port changes, the client's own socket does not). Datagrams the target still sends
//!   to the old port are lost, as they are when a NAT mapping expires.
//!   [`set_rebind_every`](UdpChaosProxy::set_rebind_every) does it periodically.
//!
//! # What it injected
//!
//! [`stats`](UdpChaosProxy::stats) counts everything per direction; [`events`](UdpChaosProxy::events)
//! is the log of each injected fault (time, flow, direction, datagram number, what), bounded
//! by [`UdpChaosOptions::max_events`]; [`report`](UdpChaosProxy::report) prints both as text
//! for a test's output.

pub mod fate;
mod io;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use fate::{Direction, Faults, Injection, Spikes};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// How to run a [`UdpChaosProxy`].
#[derive(Debug, Clone, PartialEq)]
pub struct UdpChaosOptions {
    /// Seed of every random decision. Default 1.
    pub seed: u64,
    /// Faults from the start (change them with [`UdpChaosProxy::set_faults`]). Default none.
    pub faults: Faults,
    /// Client addresses (flows) served at once; datagrams of further ones are dropped and
    /// counted. Each costs one socket. Default 4096.
    pub max_flows: usize,
    /// Injected faults kept in the event log; later ones are only counted. Default 100,000.
    pub max_events: usize,
    /// How long a control waits for the proxy's thread to carry it out. Default 5 s.
    pub control_timeout: Duration,
}

impl Default for UdpChaosOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            faults: Faults::default(),
            max_flows: 4096,
            max_events: 100_000,
            control_timeout: Duration::from_secs(5),
        }
    }
}

/// What went wrong with a [`UdpChaosProxy`].
#[derive(Debug, Error)]
pub enum UdpChaosError {
    /// A local I/O step failed (bind, runtime, thread).
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    /// The caller passed faults or options the proxy cannot run with.
    #[error("invalid UDP chaos proxy option: {0}")]
    InvalidOption(&'static str),
    /// The proxy's thread did not carry out a control in time (or has stopped).
    #[error("the UDP chaos proxy did not {0} in time")]
    ControlTimeout(&'static str),
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams that arrived at the proxy.
    pub received: u64,
    /// Datagrams sent on (copies included).
    pub sent: u64,
    /// Dropped by the loss probability.
    pub lost: u64,
    /// Dropped by a blackhole.
    pub blackholed: u64,
    /// Sent twice.
    pub duplicated: u64,
    /// Held back to be overtaken.
    pub reordered: u64,
    /// Delayed by a spike.
    pub spiked: u64,
    /// Sends that failed (the target or client socket refused them).
    pub send_errors: u64,
}

/// Counters of a [`UdpChaosProxy`], read with [`UdpChaosProxy::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpChaosStats {
    /// Client to target.
    pub to_server: DirectionStats,
    /// Target to clients.
    pub to_client: DirectionStats,
    /// Flows (client addresses) seen so far.
    pub flows: u64,
    /// Datagrams dropped because `max_flows` flows were open.
    pub refused: u64,
    /// Flow rebinds done (one per flow per [`UdpChaosProxy::rebind_all`]).
    pub rebinds: u64,
    /// Injected faults not kept in the event log (past `max_events`).
    pub events_dropped: u64,
}

/// What one logged event was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A fault injected into one datagram: the `n`-th (from 0) of its flow in its direction.
    Datagram { dir: Direction, n: u64, injected: Injection },
    /// The flow moved to a new socket towards the target.
    Rebound { from: SocketAddr, to: SocketAddr },
}

/// One injected fault, as [`UdpChaosProxy::events`] returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Time since the proxy started.
    pub at: Duration,
    /// The flow's number (in the order flows first sent).
    pub flow: u32,
    /// What happened.
    pub kind: EventKind,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.at.as_secs_f64();
        match self.kind {
            EventKind::Datagram { dir, n, injected } => {
                write!(f, "+{t:.3}s flow {} {dir} #{n} {injected}", self.flow)
            }
            EventKind::Rebound { from, to } => {
                write!(f, "+{t:.3}s flow {} rebound {from} -> {to}", self.flow)
            }
        }
    }
}

#[derive(Default)]
struct DirCounters {
    received: AtomicU64,
    sent: AtomicU64,
    lost: AtomicU64,
    blackholed: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    spiked: AtomicU64,
    send_errors: AtomicU64,
}

impl DirCounters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            received: self.received.load(Relaxed),
            sent: self.sent.load(Relaxed),
            lost: self.lost.load(Relaxed),
            blackholed: self.blackholed.load(Relaxed),
            duplicated: self.duplicated.load(Relaxed),
            reordered: self.reordered.load(Relaxed),
            spiked: self.spiked.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
        }
    }

    fn count(&self, injected: Injection) {
        let c = match injected {
            Injection::Lost => &self.lost,
            Injection::Blackholed => &self.blackholed,
            Injection::Duplicated => &self.duplicated,
            Injection::Reordered(_) => &self.reordered,
            Injection::Spiked(_) => &self.spiked,
        };
        c.fetch_add(1, Relaxed);
    }
}

/// State shared by the controls and the proxy's tasks.
struct Shared {
    options: UdpChaosOptions,
    target: SocketAddr,
    started: Instant,
    decider: Mutex<fate::Decider>,
    events: Mutex<Vec<Event>>,
    to_server: DirCounters,
    to_client: DirCounters,
    flows: AtomicU64,
    refused: AtomicU64,
    rebinds: AtomicU64,
    events_dropped: AtomicU64,
}

impl Shared {
    fn decider(&self) -> MutexGuard<'_, fate::Decider> {
        self.decider.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn counters(&self, dir: Direction) -> &DirCounters {
        match dir {
            Direction::ToServer => &self.to_server,
            Direction::ToClient => &self.to_client,
        }
    }

    fn log(&self, flow: u32, kind: EventKind) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if events.len() < self.options.max_events {
            events.push(Event { at: self.now(), flow, kind });
        } else {
            self.events_dropped.fetch_add(1, Relaxed);
        }
    }
}

/// An order for the proxy's thread, answered when carried out.
enum Control {
    /// Move every flow to a new socket; answers with how many moved.
    RebindAll(std_mpsc::Sender<usize>),
    /// Rebind every flow this often from now on (`None`: stop).
    RebindEvery(Option<Duration>, std_mpsc::Sender<usize>),
}

/// A UDP proxy with chaos controls. See the module doc.
pub struct UdpChaosProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    controls: mpsc::UnboundedSender<Control>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for UdpChaosProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpChaosProxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl UdpChaosProxy {
    /// Starts a proxy to `target` on a free loopback port with the default options (seed 1,
    /// no faults).
    pub fn start(target: SocketAddr) -> Result<Self, UdpChaosError> {
        Self::start_with(target, UdpChaosOptions::default())
    }

    /// Starts a proxy to `target` on a free loopback port.
    pub fn start_with(target: SocketAddr, options: UdpChaosOptions) -> Result<Self, UdpChaosError> {
        let any = if target.is_ipv6() {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
        } else {
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
        };
        Self::start_on(any, target, options)
    }

    /// Starts a proxy to `target` receiving on `listen` (port 0 picks a free port).
    pub fn start_on(
        listen: SocketAddr,
        target: SocketAddr,
        options: UdpChaosOptions,
    ) -> Result<Self, UdpChaosError> {
        options.faults.validate().map_err(UdpChaosError::InvalidOption)?;
        if options.max_flows == 0 {
            return Err(UdpChaosError::InvalidOption("max_flows must be at least 1"));
        }
        let io = |what| move |source| UdpChaosError::Io { what, source };
        let front = StdUdpSocket::bind(listen).map_err(io("bind the proxy socket"))?;
        let addr = front.local_addr().map_err(io("read the proxy address"))?;
        front.set_nonblocking(true).map_err(io("make the proxy socket non-blocking"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("build the proxy runtime"))?;
        let shared = Arc::new(Shared {
            decider: Mutex::new(fate::Decider::new(options.seed, options.faults)),
            options,
            target,
            started: Instant::now(),
            events: Mutex::new(Vec::new()),
            to_server: DirCounters::default(),
            to_client: DirCounters::default(),
            flows: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            rebinds: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
        });
        let (shutdown, stopped) = oneshot::channel();
        let (controls, control_rx) = mpsc::unbounded_channel();
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("udp-chaos-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(io::run(front, task_shared, control_rx, stopped));
                // Dropping the runtime drops every task and so closes every socket.
                drop(runtime);
            })
            .map_err(io("spawn the proxy thread"))?;
        Ok(Self { addr, shared, controls, shutdown: Some(shutdown), thread: Some(thread) })
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where datagrams go.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Injects `faults` from now on, both ways.
    pub fn set_faults(&self, faults: Faults) -> Result<(), UdpChaosError> {
        faults.validate().map_err(UdpChaosError::InvalidOption)?;
        self.shared.decider().set_faults(faults);
        Ok(())
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.decider().faults()
    }

    /// Drops every datagram, both ways, for `length` from now.
    pub fn blackhole(&self, length: Duration) {
        let now = self.shared.now();
        self.shared.decider().blackhole(now, length);
    }

    /// Ends a blackhole now.
    pub fn lift_blackhole(&self) {
        self.shared.decider().lift_blackhole();
    }

    /// Moves every flow to a new socket towards the target (NAT rebinding) and waits until
    /// done. Returns how many flows moved.
    pub fn rebind_all(&self) -> Result<usize, UdpChaosError> {
        self.control("rebind its flows", Control::RebindAll)
    }

    /// Rebinds every flow every `period` from now on (`None` stops it).
    pub fn set_rebind_every(&self, period: Option<Duration>) -> Result<(), UdpChaosError> {
        if period.is_some_and(|p| p.is_zero()) {
            return Err(UdpChaosError::InvalidOption("a rebind period must be above zero"));
        }
        self.control("set its rebind period", |tx| Control::RebindEvery(period, tx)).map(drop)
    }

    fn control(
        &self,
        what: &'static str,
        order: impl FnOnce(std_mpsc::Sender<usize>) -> Control,
    ) -> Result<usize, UdpChaosError> {
        let (tx, rx) = std_mpsc::channel();
        self.controls.send(order(tx)).map_err(|_| UdpChaosError::ControlTimeout(what))?;
        rx.recv_timeout(self.shared.options.control_timeout)
            .map_err(|_| UdpChaosError::ControlTimeout(what))
    }

    /// The counters now.
    pub fn stats(&self) -> UdpChaosStats {
        let s = &self.shared;
        UdpChaosStats {
            to_server: s.to_server.snapshot(),
            to_client: s.to_client.snapshot(),
            flows: s.flows.load(Relaxed),
            refused: s.refused.load(Relaxed),
            rebinds: s.rebinds.load(Relaxed),
            events_dropped: s.events_dropped.load(Relaxed),
        }
    }

    /// Every injected fault logged so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.shared.events.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// What the proxy injected, as text: its settings, the counters and the first `lines`
    /// logged events.
    pub fn report(&self, lines: usize) -> String {
        use std::fmt::Write;
        let s = self.stats();
        let mut out = format!(
            "UDP chaos proxy {} -> {}, seed {}, {:?}\n",
            self.addr,
            self.shared.target,
            self.shared.options.seed,
            self.faults()
        );
        for (name, d) in [("to server", s.to_server), ("to client", s.to_client)] {
            let _ = writeln!(
                out,
                "  {name}: {} received, {} sent, {} lost, {} blackholed, {} duplicated, \
                 {} reordered, {} spiked, {} send errors",
                d.received,
                d.sent,
                d.lost,
                d.blackholed,
                d.duplicated,
                d.reordered,
                d.spiked,
                d.send_errors
            );
        }
        let _ = writeln!(
            out,
            "  flows {}, refused {}, rebinds {}, events not logged {}",
            s.flows, s.refused, s.rebinds, s.events_dropped
        );
        let events = self.events();
        for e in events.iter().take(lines) {
            let _ = writeln!(out, "  {e}");
        }
        if events.len() > lines {
            let _ = writeln!(out, "  … {} more events", events.len() - lines);
        }
        out
    }
}

impl Drop for UdpChaosProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
