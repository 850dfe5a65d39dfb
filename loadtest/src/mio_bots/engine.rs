//! The mio bot engine's event loop: every TCP bot of the process on one `Poll` (epoll, edge
//! triggered), one reused 64 KiB read buffer whose every complete frame is decoded per read,
//! logins/pings/reconnects driven by one deadline heap ([`super::timers`]). Each connection is
//! a [`BotSession`] (the same sans-IO state machine as the tokio engine) plus its socket and
//! the bytes it could not write yet.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::time::Instant;

use super::timers::{Deadlines, Entry, Live};
use crate::bot::{BotCtx, BotSession, Tick, count_event};
use crate::probe::unix_nanos_now;
use crate::stats::FailKind;

/// The waker's token (connections use their slot number).
const WAKE: Token = Token(usize::MAX);

/// Bytes per `read`: one read takes every frame queued on a socket at once.
const READ_BUF_BYTES: usize = 64 * 1024;

/// Reads one readiness event may do before the connection waits for the next turn.
const MAX_READS_PER_EVENT: usize = 16;

/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;

/// One open connection of a bot.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    session: BotSession,
    /// The bot's index (user `{prefix}{bot}`).
    bot: usize,
    /// Bytes not written yet (the socket was full, or still connecting).
    out: Vec<u8>,
    connected: bool,
    logged_in: bool,
    /// The deadline this slot's live heap entry has.
    scheduled: Option<Instant>,
}

/// A connection slot: reused after a close, with a new generation.
#[derive(Debug, Default)]
struct Slot {
    generation: u64,
    conn: Option<Conn>,
}

/// Per bot, across its connections.
#[derive(Debug, Clone, Copy)]
struct BotState {
    /// Its first login attempt has not ended yet.
    first_pending: bool,
    /// Connections opened so far.
    attempts: u64,
}

struct Slots<'a>(&'a [Slot]);

impl Live for Slots<'_> {
    fn is_live(&self, e: &Entry) -> bool {
        self.0.get(e.slot).is_some_and(|s| {
            s.generation == e.generation
                && s.conn.as_ref().is_some_and(|c| c.scheduled == Some(e.at))
        })
    }
}

/// Every bot of one process and the loop that drives them.
pub struct Engine {
    poll: Poll,
    events: Events,
    ctx: Arc<BotCtx>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    bots: Vec<BotState>,
    deadlines: Deadlines,
    buf: Vec<u8>,
    /// Most connections one bot may open (churn reconnects included).
    max_connections: u64,
    /// Bots whose first login attempt ended (logged in or failed).
    first_done: u64,
    /// Set by the waker (the stdin "go" line).
    woken: bool,
    /// The events of one wake-up (token, readable), reused.
    ready: Vec<(usize, bool)>,
    /// Kept for the engine's life: closing a waker's eventfd drops the event it raised.
    waker: Arc<Waker>,
}

impl Engine {
    /// A loop for bots of `ctx` (TCP only), none started yet.
    pub fn new(ctx: Arc<BotCtx>) -> std::io::Result<Self> {
        let max_connections = ctx.churn.map_or(1, |c| {
            (ctx.token_ttl.as_secs_f64() / c.period.as_secs_f64().max(1e-3)).ceil() as u64 + 2
        });
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        Ok(Self {
            poll,
            events: Events::with_capacity(EVENTS),
            ctx,
            slots: Vec::new(),
            free: Vec::new(),
            bots: Vec::new(),
            deadlines: Deadlines::default(),
            buf: vec![0; READ_BUF_BYTES],
            max_connections,
            first_done: 0,
            woken: false,
            ready: Vec::new(),
            waker,
        })
    }

    /// A waker that makes the current or next [`Engine::turn`] return and
    /// [`Engine::take_woken`] say so.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Whether the waker fired since the last call.
    pub fn take_woken(&mut self) -> bool {
        std::mem::take(&mut self.woken)
    }

    /// Bots whose first login attempt has ended either way.
    pub fn first_attempts_done(&self) -> u64 {
        self.first_done
    }

    /// Starts bot `index` (the next one: bots are started in order).
    pub fn start_bot(&mut self, index: usize) {
        if self.bots.len() <= index {
            self.bots.resize(index + 1, BotState { first_pending: true, attempts: 0 });
        }
        self.open(index);
    }

    /// Waits for readiness or `until` (or the next bot deadline, if earlier), handles it, and
    /// then every deadline that has passed.
    pub fn turn(&mut self, until: Instant) -> std::io::Result<()> {
        let next = self.deadlines.next(&Slots(&self.slots)).map_or(until, |d| d.min(until));
        let timeout = next.saturating_duration_since(Instant::now());
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.extend(
            self.events.iter().map(|e| (e.token().0, e.is_readable() || e.is_read_closed())),
        );
        for &(token, readable) in &ready {
            if token == WAKE.0 {
                self.woken = true;
            } else {
                self.on_ready(token, readable);
            }
        }
        ready.clear();
        self.ready = ready;
        let now = Instant::now();
        // Bounded: each pass removes one heap entry.
        while let Some(e) = self.deadlines.pop_due(now, &Slots(&self.slots)) {
            self.on_deadline(e.slot, now);
        }
        Ok(())
    }

    /// Closes every connection (the hold is over).
    pub fn stop_all(&mut self) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].conn.is_some() {
                self.close(slot);
            }
        }
    }

    /// Opens a connection for `bot`: the session (its Login queued), a non-blocking connect
    /// from the bot's source IP, and its login deadline.
    fn open(&mut self, bot: usize) {
        let ctx = self.ctx.clone();
        let Some(state) = self.bots.get_mut(bot) else { return };
        if state.attempts >= self.max_connections {
            return self.first_attempt_ended(bot);
        }
        if state.attempts > 0 {
            ctx.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        state.attempts += 1;
        let started = Instant::now();
        let user = format!("{}{bot}", ctx.user_prefix);
        let now_unix = i64::try_from(unix_nanos_now() / 1_000_000_000).unwrap_or(i64::MAX);
        let token = ctx.key.mint_for(&user, "d", now_unix, ctx.token_ttl.as_secs() as i64);
        let reconnect_at = ctx.churn.map(|ch| ch.next_after(bot, started));
        let mut out = Vec::new();
        let session = BotSession::start(
            token,
            started,
            ctx.login_timeout,
            ctx.heartbeat,
            reconnect_at,
            &mut out,
        );
        let session = match session {
            Ok(s) => s,
            Err(e) => return self.give_up(bot, e.kind()),
        };
        let source = ctx.source_ips.get(bot % ctx.source_ips.len().max(1)).copied();
        let mut stream = match connect(ctx.addr, source) {
            Ok(s) => s,
            Err(_) => return self.give_up(bot, FailKind::Connect),
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            self.slots.len() - 1
        });
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self.poll.registry().register(&mut stream, Token(slot), interest).is_err() {
            self.free.push(slot);
            return self.give_up(bot, FailKind::Io);
        }
        let deadline = session.deadline();
        let s = &mut self.slots[slot];
        s.generation += 1;
        s.conn = Some(Conn {
            stream,
            session,
            bot,
            out,
            connected: false,
            logged_in: false,
            scheduled: Some(deadline),
        });
        self.deadlines.push(deadline, slot, s.generation);
    }

    fn on_ready(&mut self, slot: usize, readable: bool) {
        let Some(c) = self.slots.get_mut(slot).and_then(|s| s.conn.as_mut()) else { return };
        if !c.connected {
            match c.stream.take_error() {
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => return self.fail(slot, FailKind::Connect),
            }
            match c.stream.peer_addr() {
                Ok(_) => {
                    c.connected = true;
                    self.ctx.counters.connected.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(_) => return self.fail(slot, FailKind::Connect),
            }
        }
        if !c.out.is_empty()
            && let Err(kind) = flush(c)
        {
            return self.fail(slot, kind);
        }
        if readable && let Err(kind) = self.read_all(slot) {
            self.fail(slot, kind);
        }
    }

    /// Reads until the socket is empty (a short read) or the per-event bound, feeding every
    /// read to the session.
    fn read_all(&mut self, slot: usize) -> Result<(), FailKind> {
        let counters = &self.ctx.counters;
        let Some(c) = self.slots.get_mut(slot).and_then(|s| s.conn.as_mut()) else { return Ok(()) };
        let mut login = false;
        let mut result = Ok(());
        for _ in 0..MAX_READS_PER_EVENT {
            let n = match c.stream.read(&mut self.buf) {
                Ok(0) => {
                    result = Err(FailKind::Closed);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    result = Err(FailKind::Io);
                    break;
                }
            };
            let fed = c.session.feed(&self.buf[..n], Instant::now(), unix_nanos_now(), |ev| {
                login |= count_event(counters, ev);
            });
            if let Err(e) = fed {
                result = Err(e.kind());
                break;
            }
            // A short read emptied the socket: bytes arriving later raise a new edge.
            if n < self.buf.len() {
                break;
            }
        }
        if login && !c.logged_in {
            c.logged_in = true;
            counters.logged_in.fetch_add(1, Ordering::Relaxed);
            let bot = c.bot;
            // The deadline moved from the login timeout to the first ping.
            self.reschedule(slot);
            self.first_attempt_ended(bot);
        }
        result
    }

    fn on_deadline(&mut self, slot: usize, now: Instant) {
        let Some(c) = self.slots.get_mut(slot).and_then(|s| s.conn.as_mut()) else { return };
        c.scheduled = None;
        let before = c.out.len();
        match c.session.on_deadline(now, &mut c.out) {
            Ok(Tick::Idle) => {}
            Ok(Tick::SendPing) => {
                self.ctx.counters.pings.fetch_add(1, Ordering::Relaxed);
                if c.connected
                    && before == 0
                    && let Err(kind) = flush(c)
                {
                    return self.fail(slot, kind);
                }
            }
            Ok(Tick::Reconnect) => {
                let bot = c.bot;
                self.close(slot);
                return self.open(bot);
            }
            Err(e) => return self.fail(slot, e.kind()),
        }
        self.reschedule(slot);
    }

    /// Puts the session's current deadline in the heap (the old entry goes stale).
    fn reschedule(&mut self, slot: usize) {
        let Some(s) = self.slots.get_mut(slot) else { return };
        let Some(c) = s.conn.as_mut() else { return };
        let at = c.session.deadline();
        if c.scheduled != Some(at) {
            c.scheduled = Some(at);
            self.deadlines.push(at, slot, s.generation);
        }
    }

    /// Counts a failure and closes the connection; the bot gives up (as in the tokio engine).
    fn fail(&mut self, slot: usize, kind: FailKind) {
        let bot = self.slots.get(slot).and_then(|s| s.conn.as_ref()).map(|c| c.bot);
        self.close(slot);
        if let Some(bot) = bot {
            self.give_up(bot, kind);
        }
    }

    fn give_up(&mut self, bot: usize, kind: FailKind) {
        self.ctx.counters.fail(kind);
        self.first_attempt_ended(bot);
    }

    fn first_attempt_ended(&mut self, bot: usize) {
        if let Some(b) = self.bots.get_mut(bot)
            && std::mem::take(&mut b.first_pending)
        {
            self.first_done += 1;
            self.ctx.counters.first_attempts_done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Deregisters and drops a connection, lowering the gauges it raised; frees its slot.
    fn close(&mut self, slot: usize) {
        let Some(mut c) = self.slots.get_mut(slot).and_then(|s| s.conn.take()) else { return };
        let _ = self.poll.registry().deregister(&mut c.stream);
        let counters = &self.ctx.counters;
        if c.connected {
            counters.connected.fetch_sub(1, Ordering::Relaxed);
        }
        if c.logged_in {
            counters.logged_in.fetch_sub(1, Ordering::Relaxed);
        }
        self.free.push(slot);
    }
}

/// Writes as much of `c.out` as the socket takes; the rest waits for a writable edge.
fn flush(c: &mut Conn) -> Result<(), FailKind> {
    let mut at = 0;
    // Bounded: every pass writes at least one byte or stops.
    while at < c.out.len() {
        match c.stream.write(&c.out[at..]) {
            Ok(0) => return Err(FailKind::Closed),
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(FailKind::Io),
        }
    }
    c.out.drain(..at);
    if c.out.is_empty() && c.out.capacity() > 256 {
        c.out = Vec::new();
    }
    Ok(())
}

/// A non-blocking TCP connect (TCP_NODELAY) from `source`, if given.
fn connect(addr: SocketAddr, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(socket)))
}
