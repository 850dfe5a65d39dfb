//! The single-threaded event loop of `pairs`: every connection on one mio `Poll`, a timerfd for
//! the open-loop send schedule (epoll's own timeout has only millisecond resolution), one
//! shared read buffer, one reused output buffer per connection written at the end of each
//! wake-up.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

use super::peer::{Peer, PeerError};
use super::tally::Tally;

/// The timer's token (connections use their index).
const TIMER: Token = Token(usize::MAX);

/// Bytes read per `read` call (one batch, for the receipt rule).
const READ_BUF_BYTES: usize = 64 * 1024;

/// Reads one readiness event may do before the connection goes to the back of the line.
const MAX_READS_PER_EVENT: usize = 16;

/// A write buffer this far consumed is compacted even while its tail waits.
const COMPACT_BYTES: usize = 64 * 1024;

/// How sends are paced.
#[derive(Debug, Clone)]
pub enum Pace {
    /// Open loop: message `m` (of all pairs) is due at `m / rate` seconds; it goes to pair
    /// `m % pairs`. `due[i]`: messages of pair `i` due so far.
    Rate {
        /// Messages per second in all.
        rate: f64,
        /// Next message (global number) not yet due.
        next_m: u64,
        /// Per pair, messages due so far.
        due: Vec<u64>,
    },
    /// Saturation: every sender keeps its window full.
    Window,
}

impl Pace {
    /// When global message `m` is due, ns since the epoch.
    pub fn due_ns(rate: f64, m: u64) -> u64 {
        (m as f64 * 1e9 / rate) as u64
    }
}

/// One connection: its socket, protocol state and output buffer.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Protocol state.
    pub peer: Peer,
    out: Vec<u8>,
    out_at: usize,
    connected: bool,
    /// Failed: deregistered, ignored from now on.
    pub dead: bool,
    queued: bool,
}

/// The event loop and everything it drives.
pub struct Driver {
    poll: Poll,
    events: Events,
    timer: OwnedFd,
    /// Pairs: sender of pair `i` at `2i`, receiver at `2i + 1`. Groups: member `j` of group
    /// `g` at `g * group_size + j`, every one a sender.
    pub conns: Vec<Conn>,
    /// Members per group (0: pairs).
    pub group_size: usize,
    buf: Vec<u8>,
    /// The run clock's zero (reset when sending starts).
    pub epoch: Instant,
    /// What was counted.
    pub tally: Tally,
    /// Send pacing.
    pub pace: Pace,
    /// Sends in flight per sender at most.
    pub window: usize,
    /// Stop sending after this many in all.
    pub total: Option<u64>,
    /// Whether senders may send now.
    pub sending: bool,
    /// Connections with bytes to write.
    dirty: Vec<usize>,
    /// Connections whose last read stopped at the per-event bound.
    again: Vec<usize>,
    /// The events of one wake-up (token, readable, writable), reused.
    ready: Vec<(usize, bool, bool)>,
    /// The deadline the timer is set to and has not reached yet.
    armed: Option<Instant>,
}

impl Driver {
    /// A loop with no connections yet.
    pub fn new(
        tally: Tally,
        pace: Pace,
        window: usize,
        total: Option<u64>,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        poll.registry().register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)?;
        Ok(Self {
            poll,
            events: Events::with_capacity(256),
            timer,
            conns: Vec::new(),
            group_size: 0,
            buf: vec![0; READ_BUF_BYTES],
            epoch: Instant::now(),
            tally,
            pace,
            window,
            total,
            sending: false,
            dirty: Vec::new(),
            again: Vec::new(),
            ready: Vec::new(),
            armed: None,
        })
    }

    /// Opens a connection to `addr` for `make`'s peer (which appends its Login to the buffer).
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        make: impl FnOnce(&mut Vec<u8>) -> Result<Peer, PeerError>,
    ) -> Result<(), PeerError> {
        let mut out = Vec::with_capacity(4096);
        let peer = make(&mut out)?;
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let token = Token(self.conns.len());
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.conns.push(Conn {
            stream,
            peer,
            out,
            out_at: 0,
            connected: false,
            dead: false,
            queued: false,
        });
        Ok(())
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Waits for events or `deadline`, handles them (reads, answers, refills windows), then
    /// writes every connection's new bytes.
    pub fn turn(&mut self, deadline: Instant) -> std::io::Result<()> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let timeout = if wait.is_zero() || !self.again.is_empty() {
            Some(Duration::ZERO)
        } else {
            if self.armed != Some(deadline) {
                self.arm(wait)?;
                self.armed = Some(deadline);
            }
            // Safety net only: the timer fires first (epoll's timeout is in whole ms).
            Some(wait + Duration::from_millis(50))
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.extend(
            self.events
                .iter()
                .map(|e| (e.token().0, e.is_readable() || e.is_read_closed(), e.is_writable())),
        );
        for &(token, readable, writable) in &ready {
            if token == TIMER.0 {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(&self.timer, &mut b);
                self.armed = None;
                continue;
            }
            self.on_ready(token, readable, writable);
        }
        ready.clear();
        self.ready = ready;
        for token in std::mem::take(&mut self.again) {
            if let Some(c) = self.conns.get_mut(token) {
                c.queued = false;
            }
            self.on_ready(token, true, false);
        }
        self.flush_dirty();
        Ok(())
    }

    fn arm(&self, wait: Duration) -> std::io::Result<()> {
        let value = Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos().max(1)),
        };
        let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
        let spec = Itimerspec { it_interval: zero, it_value: value };
        timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }

    fn on_ready(&mut self, token: usize, readable: bool, writable: bool) {
        let Some(c) = self.conns.get_mut(token) else { return };
        if c.dead {
            return;
        }
        if !c.connected {
            match c.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail(token, &PeerError::Io(e)),
            }
            match c.stream.peer_addr() {
                Ok(_) => c.connected = true,
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => return self.fail(token, &PeerError::Io(e)),
            }
            self.mark_dirty(token);
        }
        if writable {
            self.mark_dirty(token);
        }
        if readable && let Err(e) = self.read_some(token) {
            self.fail(token, &e);
        }
    }

    /// Reads until the socket is drained (or the per-event bound), feeding each read as a batch.
    fn read_some(&mut self, token: usize) -> Result<(), PeerError> {
        for _ in 0..MAX_READS_PER_EVENT {
            let Some(c) = self.conns.get_mut(token) else { return Ok(()) };
            let n = match c.stream.read(&mut self.buf) {
                Ok(0) => return Err(PeerError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(PeerError::Io(e)),
            };
            let now_ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let before = c.out.len();
            let fed = c.peer.feed(&self.buf[..n], now_ns, &mut self.tally, &mut c.out)?;
            if c.out.len() > before {
                self.mark_dirty(token);
            }
            if fed.answered > 0 {
                self.try_send(self.sender_of(token), now_ns);
            }
            // A short read emptied the socket: no second read just to see WouldBlock (bytes
            // arriving from now on raise a new edge-triggered event).
            if n < self.buf.len() {
                return Ok(());
            }
        }
        if let Some(c) = self.conns.get_mut(token)
            && !c.queued
        {
            c.queued = true;
            self.again.push(token);
        }
        Ok(())
    }

    /// Senders: one per pair, or every group member.
    pub fn senders(&self) -> usize {
        if self.group_size > 0 { self.conns.len() } else { self.conns.len() / 2 }
    }

    /// The sender index of connection `token` (pairs: its pair's).
    fn sender_of(&self, token: usize) -> usize {
        if self.group_size > 0 { token } else { token / 2 }
    }

    /// Sends what sender `pair` (a pair's sender or a group member) may send now: up to its
    /// window, and in open loop only the messages that are due.
    pub fn try_send(&mut self, pair: usize, now_ns: u64) {
        let token = if self.group_size > 0 { pair } else { 2 * pair };
        let pairs = self.senders() as u64;
        let mut wrote = false;
        let result = loop {
            let Some(c) = self.conns.get_mut(token) else { break Ok(()) };
            let Some(s) = c.peer.as_sender() else { break Ok(()) };
            if c.dead || !c.peer.logged_in || !self.sending || s.in_flight >= self.window {
                break Ok(());
            }
            let lag = match &self.pace {
                Pace::Rate { rate, due, .. } => {
                    if s.sent >= due.get(pair).copied().unwrap_or(0) {
                        break Ok(());
                    }
                    let m = s.sent * pairs + pair as u64;
                    Some(now_ns.saturating_sub(Pace::due_ns(*rate, m)))
                }
                Pace::Window => {
                    if self.total.is_some_and(|t| self.tally.sent >= t) {
                        break Ok(());
                    }
                    None
                }
            };
            if let Err(e) = c.peer.send_next(now_ns, lag, &mut self.tally, &mut c.out) {
                break Err(e);
            }
            wrote = true;
        };
        if wrote {
            self.mark_dirty(token);
        }
        if let Err(e) = result {
            self.fail(token, &e);
        }
    }

    /// Open loop: makes every message due by `now_ns` due at its pair, and sends it.
    pub fn release_due(&mut self, now_ns: u64) {
        let pairs = self.senders().max(1) as u64;
        // Bounded by the messages due since the last call (rate x the time since).
        loop {
            let Pace::Rate { rate, next_m, due } = &mut self.pace else { return };
            if !self.sending
                || self.total.is_some_and(|t| *next_m >= t)
                || Pace::due_ns(*rate, *next_m) > now_ns
            {
                return;
            }
            let pair = (*next_m % pairs) as usize;
            if let Some(d) = due.get_mut(pair) {
                *d += 1;
            }
            *next_m += 1;
            self.try_send(pair, now_ns);
        }
    }

    /// When the next open-loop message is due (`None` in saturation or when none is left).
    pub fn next_due(&self) -> Option<Instant> {
        let Pace::Rate { rate, next_m, .. } = &self.pace else { return None };
        if !self.sending || self.total.is_some_and(|t| *next_m >= t) {
            return None;
        }
        Some(self.epoch + Duration::from_nanos(Pace::due_ns(*rate, *next_m)))
    }

    /// Groups: member `token` (a group's first) creates its group with `members`.
    pub fn create_group(
        &mut self,
        token: usize,
        name: String,
        members: Vec<String>,
        client_request_id: String,
    ) {
        let Some(c) = self.conns.get_mut(token) else { return };
        let Some(m) = c.peer.as_member_mut() else { return };
        match m.create_group(name, members, client_request_id, &mut c.out) {
            Ok(()) => self.mark_dirty(token),
            Err(e) => self.fail(token, &e),
        }
    }

    /// Groups: appends the receipts members owe and may send now (their receipt interval).
    pub fn receipt_ticks(&mut self, now_ns: u64) {
        for token in 0..self.conns.len() {
            let c = &mut self.conns[token];
            if c.dead || !c.peer.logged_in {
                continue;
            }
            match c.peer.tick(now_ns, &mut self.tally, &mut c.out) {
                Ok(true) => self.mark_dirty(token),
                Ok(false) => {}
                Err(e) => self.fail(token, &e),
            }
        }
    }

    /// Appends a Ping to every live connection that wrote nothing for half its heartbeat.
    pub fn heartbeats(&mut self, now_ns: u64) {
        for token in 0..self.conns.len() {
            let c = &mut self.conns[token];
            let idle_ns = c.peer.heartbeat_ms * 1_000_000 / 2;
            if c.dead || !c.peer.logged_in || now_ns.saturating_sub(c.peer.last_write_ns) < idle_ns
            {
                continue;
            }
            match c.peer.ping(now_ns, &mut self.tally, &mut c.out) {
                Ok(()) => self.mark_dirty(token),
                Err(e) => self.fail(token, &e),
            }
        }
    }

    fn mark_dirty(&mut self, token: usize) {
        self.dirty.push(token);
    }

    /// Writes what every connection has waiting (the loop does it at the end of each turn).
    pub fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &token in &dirty {
            if let Err(e) = self.flush(token) {
                self.fail(token, &e);
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// Writes as much of the connection's buffer as the socket takes; the rest waits for the
    /// next writable event.
    fn flush(&mut self, token: usize) -> Result<(), PeerError> {
        let Some(c) = self.conns.get_mut(token) else { return Ok(()) };
        if c.dead || !c.connected {
            return Ok(());
        }
        // Bounded: every pass writes at least one byte or stops.
        while c.out_at < c.out.len() {
            match c.stream.write(&c.out[c.out_at..]) {
                Ok(0) => return Err(PeerError::Closed),
                Ok(n) => c.out_at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(PeerError::Io(e)),
            }
        }
        if c.out_at == c.out.len() {
            c.out.clear();
            c.out_at = 0;
        } else if c.out_at >= COMPACT_BYTES {
            c.out.drain(..c.out_at);
            c.out_at = 0;
        }
        Ok(())
    }

    /// Marks a connection failed: counted by kind, deregistered, ignored from now on.
    pub fn fail(&mut self, token: usize, e: &PeerError) {
        let Some(c) = self.conns.get_mut(token) else { return };
        if c.dead {
            return;
        }
        c.dead = true;
        tracing::warn!(conn = token, pair = c.peer.pair, "connection failed: {e}");
        let _ = self.poll.registry().deregister(&mut c.stream);
        Tally::bump(&mut self.tally.failures, e.kind());
    }

    /// Live connections that are logged in, and connections that failed.
    pub fn login_counts(&self) -> (usize, usize) {
        let logged = self.conns.iter().filter(|c| !c.dead && c.peer.logged_in).count();
        (logged, self.conns.iter().filter(|c| c.dead).count())
    }

    /// Whether every live pair is settled: no send in flight, every acked message delivered,
    /// no receipt in flight or owed. Pairs with a failed connection cannot settle; they count
    /// as settled (the report shows the failure).
    pub fn settled(&self) -> bool {
        if self.group_size > 0 {
            return self.conns.chunks(self.group_size).all(group_settled);
        }
        self.conns.chunks(2).all(|pair| match pair {
            [s, r] => {
                s.dead
                    || r.dead
                    || s.peer
                        .as_sender()
                        .is_some_and(|st| st.in_flight == 0 && r.peer.delivered() >= st.acked)
                        && r.peer.receipts_settled()
            }
            _ => true,
        })
    }

    /// Sends in flight over all senders.
    pub fn in_flight(&self) -> usize {
        self.conns.iter().filter_map(|c| c.peer.as_sender()).map(|s| s.in_flight).sum()
    }
}

/// Whether a group is settled: no send in flight, every member has every other member's acked
/// messages, no receipt in flight or owed (or a member failed: the report shows it).
fn group_settled(members: &[Conn]) -> bool {
    if members.iter().any(|c| c.dead) {
        return true;
    }
    let acked: u64 = members.iter().filter_map(|c| c.peer.as_sender()).map(|s| s.acked).sum();
    members.iter().all(|c| {
        let own = c.peer.as_sender().map_or(0, |s| s.acked);
        c.peer.as_sender().is_some_and(|s| s.in_flight == 0)
            && c.peer.delivered() >= acked - own
            && c.peer.receipts_settled()
    })
}
