//! One I/O thread: a mio event loop over its listener, its UDP socket (QUIC, submodule
//! `quic`) and its slab of connections of both transports. It only
//! moves bytes and timers: it accepts, reads into the thread's scratch buffer, feeds each
//! connection's sans-IO [`Connection`] (which decodes and decides every protocol rule), carries
//! out the [`Event`]s it asks for (timers in the wheel, read again, half-close, drop), and
//! writes what it is handed (submodule `write`: coalesced mailbox frames; `env`: the gateway
//! as the connection's [`crate::conn::Env`]). Nothing here blocks: requests for dispatch run
//! as tasks on the async runtime and answer through the mailbox.

use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use tern_proto::FrameDecoder;
use tern_proto::v1::KickReason;
use tokio::sync::oneshot;

use super::mailbox::{Cmd, Mailbox};
use super::wheel::{Key, Wheel};
use crate::conn::{Connection, Event, admission};
use crate::server::Gateway;
use crate::sources::SourceKey;
use crate::upstream::Upstream;
use env::Env;
pub(super) use quic::QuicEndpoint;
use quic::QuicSide;
use sink::Sink;
pub use tls::TlsListen;
use tls::{TlsScratch, TlsStream};

mod env;
mod quic;
mod sink;
mod tls;
mod write;

const UDP: Token = Token(usize::MAX - 2);
const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
/// The thread's read buffer: one frame of the default maximum size and its prefix fit.
const SCRATCH_BYTES: usize = 64 * 1024 + 4;
/// Reads of one connection per readiness event before others get a turn.
const READS_PER_TURN: usize = 16;
const WHEEL_TICK: Duration = Duration::from_millis(100);
const WHEEL_BUCKETS: usize = 1024;
/// At shutdown, how long connections get to take their Kick.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// After an accept error (out of file descriptors, say), how long until accepting again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Wall clock in Unix milliseconds.
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Wall clock in Unix nanoseconds.
pub fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// One connection: its transport, the sans-IO [`Connection`], and its source's key.
#[derive(Debug)]
struct Conn {
    io: Transport,
    conn: Connection,
    /// Its source address's key in the gateway's per-source counters.
    source: SourceKey,
}

/// How a connection's bytes travel.
#[derive(Debug)]
enum Transport {
    Tcp(TcpStream),
    /// Accepted on a port that also speaks TLS, nothing read yet: its first byte decides
    /// between [`Transport::Tcp`] and [`Transport::Tls`] (submodule `tls`). Written to as
    /// plain TCP until then.
    Fresh(TcpStream),
    /// TLS on TCP (boxed: the TLS state is large next to the slot).
    Tls(Box<TlsStream>),
    /// A connection of the thread's [`crate::quic::QuicHost`].
    Quic(crate::quic::QuicConnId),
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// A started I/O thread.
pub(super) struct Running {
    pub mailbox: Arc<Mailbox>,
    pub done: oneshot::Receiver<()>,
}

/// An I/O thread's state, owned by the thread.
pub(super) struct IoThread<U: Upstream> {
    gw: Arc<Gateway<U>>,
    poll: Poll,
    listener: Option<TcpListener>,
    /// The UDP socket and QUIC endpoint, when QUIC is served (boxed: most of it is cold).
    quic: Option<Box<QuicSide>>,
    /// Whether the TCP port also speaks TLS, and how.
    tls: Option<TlsListen>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    wheel: Wheel,
    due: Vec<Key>,
    scratch: Vec<u8>,
    /// The buffers TLS connections share (empty until one is served).
    tls_scratch: TlsScratch,
    decoder: FrameDecoder,
    mailbox: Arc<Mailbox>,
    cmds: Vec<Cmd>,
    /// Frames of one mailbox drain, by connection slot, written per connection at its end.
    staged: Vec<(u32, Bytes)>,
    /// Connections to read again without waiting for an event: their turn ran out, or they
    /// were paused and may read again.
    again: Vec<Key>,
    rt: tokio::runtime::Handle,
    accept_retry_at: Option<Instant>,
    stopping_since: Option<Instant>,
}

impl<U: Upstream> IoThread<U> {
    pub(super) fn new(
        gw: Arc<Gateway<U>>,
        listener: std::net::TcpListener,
        quic: Option<QuicEndpoint>,
        tls: Option<TlsListen>,
        rt: tokio::runtime::Handle,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let max_frame = gw.cfg.session.max_frame_bytes;
        let quic = match quic {
            Some(e) => Some(Box::new(QuicSide::new(e, gw.cfg.max_connections, &poll, UDP)?)),
            None => None,
        };
        Ok(Self {
            gw,
            poll,
            listener: Some(listener),
            quic,
            tls,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            wheel: Wheel::new(Instant::now(), WHEEL_TICK, WHEEL_BUCKETS),
            due: Vec::new(),
            scratch: vec![0; SCRATCH_BYTES.max(max_frame.saturating_add(4).min(1 << 24))],
            tls_scratch: TlsScratch::default(),
            decoder: FrameDecoder::new(max_frame),
            mailbox: Arc::new(Mailbox::new(waker)),
            cmds: Vec::new(),
            staged: Vec::new(),
            again: Vec::new(),
            rt,
            accept_retry_at: None,
            stopping_since: None,
        })
    }

    /// This thread's mailbox.
    pub(super) fn mailbox(&self) -> Arc<Mailbox> {
        self.mailbox.clone()
    }

    /// Every thread's mailbox by index, for handing over QUIC datagrams.
    pub(super) fn set_peers(&mut self, peers: Arc<[Option<Arc<Mailbox>>]>) {
        if let Some(q) = self.quic.as_deref_mut() {
            q.set_peers(peers);
        }
    }

    /// Starts the thread, pinned to `cpu` if given.
    pub(super) fn spawn(self, index: usize, cpu: Option<usize>) -> io::Result<Running> {
        let mailbox = self.mailbox.clone();
        let (tx, done) = oneshot::channel();
        std::thread::Builder::new().name(format!("tern-io-{index}")).spawn(move || {
            if let Some(cpu) = cpu {
                match super::affinity::pin_current_thread(cpu) {
                    Ok(()) => tracing::debug!(thread = index, cpu, "I/O thread pinned"),
                    Err(e) => tracing::warn!(thread = index, cpu, error = %e, "pinning an I/O thread failed; it runs unpinned"),
                }
            }
            let mut me = self;
            me.run();
            let _ = tx.send(());
        })?;
        Ok(Running { mailbox, done })
    }

    fn run(&mut self) {
        let rt = self.rt.clone();
        // Upstream calls may spawn tasks or start timers: they need the runtime's context.
        let _enter = rt.enter();
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let mut timeout = self.wheel.timeout(now);
            if let Some(at) = self.accept_retry_at {
                let until = at.saturating_duration_since(now);
                timeout = Some(timeout.map_or(until, |t| t.min(until)));
            }
            if self.stopping_since.is_some() {
                timeout = Some(timeout.map_or(WHEEL_TICK, |t| t.min(WHEEL_TICK)));
            }
            if let Some(at) = self.quic_timeout() {
                let until = at.saturating_duration_since(now);
                timeout = Some(timeout.map_or(until, |t| t.min(until)));
            }
            if !self.again.is_empty()
                || self.quic.as_ref().is_some_and(|q| q.more)
                || (timeout != Some(Duration::ZERO) && !self.mailbox.going_to_sleep())
            {
                timeout = Some(Duration::ZERO);
            }
            let polled = self.poll.poll(&mut events, timeout);
            self.mailbox.awake();
            if let Err(e) = polled {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "I/O thread poll failed; closing its connections");
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    UDP => {
                        if ev.is_writable() {
                            self.on_udp_writable();
                        }
                        if ev.is_readable() {
                            self.on_datagrams();
                        }
                    }
                    Token(i) => {
                        let i = i as u32;
                        if ev.is_writable() {
                            self.on_writable(i);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            // A peer's FIN or an error that came with this event raises no
                            // new edge: read on to EOF then.
                            self.on_readable(i, ev.is_read_closed() || ev.is_error());
                        }
                    }
                }
            }
            if self.quic.as_ref().is_some_and(|q| q.more) {
                self.on_datagrams();
            }
            self.run_commands();
            self.run_again();
            if let Some(at) = self.accept_retry_at
                && Instant::now() >= at
            {
                self.accept_retry_at = None;
                self.accept();
            }
            self.run_timers(Instant::now());
            self.quic_turn();
            if let Some(since) = self.stopping_since
                && (self.live == 0 || since.elapsed() >= SHUTDOWN_GRACE)
            {
                break;
            }
        }
        for i in 0..self.slots.len() as u32 {
            self.drop_conn(i);
        }
        // The close of each QUIC connection still open goes out.
        self.quic_turn();
    }

    fn is_live(&self, key: Key) -> bool {
        self.slots
            .get(key.slot as usize)
            .is_some_and(|s| s.generation == key.generation && s.conn.is_some())
    }

    fn key(&self, i: u32) -> Key {
        Key { slot: i, generation: self.slots[i as usize].generation }
    }

    // ----- accepting -----

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: std::net::SocketAddr) {
        let gw = self.gw.clone();
        let Some(source) = admission::admit(&gw.cfg, &gw.metrics, &gw.sources, peer.ip()) else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let i = self.free_slot();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(i as usize), interest) {
            tracing::warn!(error = %e, "registering a connection failed");
            self.free.push(i);
            admission::withdraw(&gw.sources, source);
            return;
        }
        admission::admitted(&gw.metrics);
        let conn = Connection::new(Instant::now(), gw.next_connection_id(), &gw.cfg);
        let io = if self.tls.is_some() { Transport::Fresh(stream) } else { Transport::Tcp(stream) };
        self.slots[i as usize].conn = Some(Conn { io, conn, source });
        self.live += 1;
        // The login timeout's timer.
        self.after(i);
    }

    /// A free slab slot (a new one at the end when none is free).
    fn free_slot(&mut self) -> u32 {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { generation: 0, conn: None });
                (self.slots.len() - 1) as u32
            }
        }
    }

    // ----- reading -----

    /// Reads what a connection has, within its turn. A read that returns less than the buffer
    /// holds drained the socket (a stream socket's short read), so the next data raises a new
    /// edge and no read to `WouldBlock` is needed, unless `until_block` (after a pause, or when
    /// the event also said the peer closed).
    fn on_readable(&mut self, i: u32, until_block: bool) {
        for _ in 0..READS_PER_TURN {
            let Some(slot) = self.slots.get_mut(i as usize) else { return };
            let Some(c) = slot.conn.as_mut() else { return };
            let (stream, fresh) = match &mut c.io {
                Transport::Tcp(stream) => (stream, false),
                Transport::Fresh(stream) => (stream, true),
                Transport::Tls(_) => return self.on_tls_readable(i),
                // QUIC data comes as host events; the stream reads while not paused.
                Transport::Quic(_) => return self.sync_reading(i),
            };
            if c.conn.reading_paused(&self.gw.cfg) {
                // Input waits in the kernel; reading resumes with Event::Resume.
                return;
            }
            match stream.read(&mut self.scratch) {
                Ok(0) => {
                    c.conn.on_eof();
                    return self.after(i);
                }
                Ok(n) => {
                    // The first bytes on a port that also speaks TLS say which it is.
                    if fresh && !self.sniff(i, n) {
                        return;
                    }
                    let drained = n < self.scratch.len() && !until_block;
                    let now = Instant::now();
                    let scratch = std::mem::take(&mut self.scratch);
                    self.drive(i, |c, io, env, dec| c.on_input(now, &scratch[..n], dec, io, env));
                    self.scratch = scratch;
                    if drained {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_conn(i),
            }
        }
        // Turn used up with input left: come back after the others.
        let key = self.key(i);
        self.again.push(key);
    }

    // ----- driving the connection state machine -----

    /// Feeds connection `i` one input (`f` gets the connection, its transport as the byte
    /// sink, its environment and the thread's decoder), then carries out what it asks.
    fn drive(
        &mut self,
        i: u32,
        f: impl FnOnce(&mut Connection, &mut Sink<'_>, &Env<'_, U>, &FrameDecoder),
    ) {
        let Some(slot) = self.slots.get_mut(i as usize) else { return };
        let generation = slot.generation;
        let Some(Conn { io, conn, source }) = slot.conn.as_mut() else { return };
        let env = Env::new(&self.gw, &self.mailbox, &self.rt, Key { slot: i, generation }, *source);
        let mut sink = match io {
            Transport::Tcp(stream) | Transport::Fresh(stream) => Sink::Tcp(stream),
            Transport::Tls(t) => Sink::Tls(t, &mut self.tls_scratch.write),
            Transport::Quic(id) => match self.quic.as_deref_mut() {
                Some(q) => Sink::Quic(&mut q.host, *id),
                None => return,
            },
        };
        f(conn, &mut sink, &env, &self.decoder);
        self.after(i);
    }

    /// Carries out the events connection `i` asks for after an input.
    fn after(&mut self, i: u32) {
        let key = self.key(i);
        loop {
            let Some(c) = self.slots.get_mut(i as usize).and_then(|s| s.conn.as_mut()) else {
                return;
            };
            match c.conn.poll_event() {
                None => return self.sync_reading(i),
                Some(Event::Drop) => return self.drop_conn(i),
                Some(Event::ShutdownWrite) => match &mut c.io {
                    Transport::Tcp(stream) | Transport::Fresh(stream) => {
                        let _ = stream.shutdown(Shutdown::Write);
                    }
                    Transport::Tls(t) => t.shutdown_write(&mut self.tls_scratch.write),
                    // Flushed (the client has it all) closes the connection; if finishing
                    // fails, the close timer does.
                    Transport::Quic(id) => {
                        if let Some(q) = self.quic.as_deref_mut() {
                            let _ = q.host.finish(*id);
                        }
                    }
                },
                Some(Event::Rearm) => {
                    if let Some(at) = c.conn.deadline(&self.gw.cfg) {
                        self.wheel.schedule(at, key);
                    }
                }
                Some(Event::Resume) => self.again.push(key),
            }
        }
    }

    // ----- commands, resumptions and timers -----

    fn run_commands(&mut self) {
        let mut cmds = std::mem::take(&mut self.cmds);
        self.mailbox.drain(&mut cmds);
        let now = Instant::now();
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Push { slot, generation, frame } => {
                    if self.is_live(Key { slot, generation }) {
                        self.staged.push((slot, frame));
                    }
                }
                Cmd::Close { slot, generation, last } => {
                    self.flush_staged(now);
                    if self.is_live(Key { slot, generation }) {
                        self.drive(slot, |c, io, env, _| c.close_with(now, last, io, env));
                    }
                }
                Cmd::Kick { slot, generation, reason } => {
                    self.flush_staged(now);
                    if self.is_live(Key { slot, generation }) {
                        self.drive(slot, |c, io, env, _| c.on_kick(now, reason, io, env));
                    }
                }
                Cmd::Answer { slot, generation, frame } => {
                    if !self.is_live(Key { slot, generation }) {
                        continue;
                    }
                    self.drive(slot, |c, _, env, _| c.on_answer(env));
                    if let Some(frame) = frame {
                        self.staged.push((slot, frame));
                    }
                }
                Cmd::CheckedIn { slot, generation, answer } => {
                    self.flush_staged(now);
                    if self.is_live(Key { slot, generation }) {
                        self.drive(slot, |c, io, env, _| c.on_checked_in(now, &answer, io, env));
                    }
                }
                Cmd::LoginReady { slot, generation } => {
                    self.flush_staged(now);
                    if self.is_live(Key { slot, generation }) {
                        self.drive(slot, |c, io, env, _| c.on_reachable(now, io, env));
                    }
                }
                Cmd::Shutdown => {
                    self.flush_staged(now);
                    self.shut_down(now);
                }
                Cmd::Datagram(d) => self.on_forwarded(*d),
            }
        }
        self.flush_staged(now);
        self.cmds = cmds;
    }

    fn shut_down(&mut self, now: Instant) {
        if self.stopping_since.is_some() {
            return;
        }
        self.stopping_since = Some(now);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for i in 0..self.slots.len() as u32 {
            self.drive(i, |c, io, env, _| c.on_kick(now, KickReason::ServerShutdown, io, env));
        }
    }

    /// Reads again from connections whose turn ran out or whose pause ended.
    fn run_again(&mut self) {
        let again = std::mem::take(&mut self.again);
        for key in &again {
            if self.is_live(*key) {
                let now = Instant::now();
                self.drive(key.slot, |c, io, env, dec| c.resume(now, dec, io, env));
                self.on_readable(key.slot, true);
            }
        }
        if self.again.is_empty() {
            // Keep the buffer for next time.
            self.again = again;
            self.again.clear();
        }
    }

    fn run_timers(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(now, &mut due);
        for key in due.drain(..) {
            if self.is_live(key) {
                self.drive(key.slot, |c, io, env, _| c.on_timer(now, io, env));
            }
        }
        self.due = due;
    }
}

#[cfg(test)]
mod tests {
    /// The per-connection record the slab holds inline (figures in docs/ARCHITECTURE.md):
    /// 216 bytes per slot before the connection rules moved into [`super::Connection`], and
    /// still 216 with the transport an enum of a TCP socket or a QUIC connection id; 224 since
    /// the enum also holds a boxed TLS stream (a pointer's alignment: 8 bytes more per slot).
    #[test]
    fn connection_record_stays_small() {
        let slot = std::mem::size_of::<super::Slot>();
        let conn = std::mem::size_of::<super::Connection>();
        let session = std::mem::size_of::<tern_proto::session::server::ServerSession>();
        eprintln!(
            "slot {slot} B, conn {} B, opt {} B, connection {conn} B, session {session} B",
            std::mem::size_of::<super::Conn>(),
            std::mem::size_of::<Option<super::Conn>>()
        );
        assert!(slot <= 224, "slot grew to {slot} B");
    }
}
