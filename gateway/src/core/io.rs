//! One I/O thread: a mio event loop over its listener and its slab of connections. It accepts,
//! reads into the thread's scratch buffer, decodes frames, feeds them to each connection's
//! sans-IO [`ServerSession`], carries out the resulting actions, writes (submodule `write`),
//! and fires deadlines from the timer wheel. Nothing here blocks: requests for dispatch run as
//! tasks on the async runtime and answer through the mailbox.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Context;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use tern_proto::FrameDecoder;
use tern_proto::session::server::{Action, CloseReason, ServerSession, error, kick};
use tern_proto::v1::{Envelope, ErrorCode, KickReason, envelope::Body};
use tokio::sync::oneshot;

use super::mailbox::{Cmd, ConnHandle, Mailbox};
use super::wheel::{Key, Wheel};
use crate::closing::CloseTimer;
use crate::config::DuplicateLogin;
use crate::outbound::OutQueue;
use crate::registry;
use crate::server::Gateway;
use crate::sources::{Refusal, SourceKey};
use crate::upstream::{RequestCtx, Upstream};

mod write;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
/// The thread's read buffer: one frame of the default maximum size and its prefix fit.
const SCRATCH_BYTES: usize = 64 * 1024 + 4;
/// Reads of one connection per readiness event before others get a turn.
const READS_PER_TURN: usize = 16;
const WHEEL_TICK: Duration = Duration::from_millis(100);
const WHEEL_BUCKETS: usize = 1024;
/// Longest wait for the upstream to make a new login reachable before LoginOk goes out.
const LOGIN_PUBLISH_WAIT: Duration = Duration::from_secs(2);
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading frames (before or after login).
    Open,
    /// Logged in; LoginOk waits for the upstream to make the login reachable. Not reading:
    /// frames pipelined behind the Login wait (in `partial` or the kernel) and are processed
    /// in order right after LoginOk is written (PROTOCOL.md section 5 step 3).
    LoginWait,
    /// Writing what is queued (the last frame included, up to the close timeout), then
    /// draining input until EOF or the linger deadline.
    Closing,
}

/// One connection: the socket, the session, and buffers only while they hold something.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    session: ServerSession,
    ctx: Option<Arc<RequestCtx>>,
    /// An incomplete frame (or input not processed yet while paused); empty, unallocated, when
    /// the connection is idle.
    partial: Vec<u8>,
    /// Bytes the socket did not take yet; `None` while everything was written.
    out: Option<Box<OutQueue>>,
    id: u64,
    /// While closing: when the socket closes (see [`crate::closing`]).
    closing: Option<CloseTimer>,
    inflight: u32,
    phase: Phase,
    /// Counted in `logins_pending` (and in its source's pending logins).
    pending: bool,
    /// Its source address's key in the gateway's per-source counters.
    source: SourceKey,
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
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    wheel: Wheel,
    due: Vec<Key>,
    scratch: Vec<u8>,
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
        rt: tokio::runtime::Handle,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let max_frame = gw.cfg.session.max_frame_bytes;
        Ok(Self {
            gw,
            poll,
            listener: Some(listener),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            wheel: Wheel::new(Instant::now(), WHEEL_TICK, WHEEL_BUCKETS),
            due: Vec::new(),
            scratch: vec![0; SCRATCH_BYTES.max(max_frame.saturating_add(4).min(1 << 24))],
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

    /// Starts the thread.
    pub(super) fn spawn(self, index: usize) -> io::Result<Running> {
        let mailbox = self.mailbox.clone();
        let (tx, done) = oneshot::channel();
        std::thread::Builder::new().name(format!("tern-io-{index}")).spawn(move || {
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
            if !self.again.is_empty()
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
            self.run_commands();
            self.run_again();
            if let Some(at) = self.accept_retry_at
                && Instant::now() >= at
            {
                self.accept_retry_at = None;
                self.accept();
            }
            self.run_timers(Instant::now());
            if let Some(since) = self.stopping_since
                && (self.live == 0 || since.elapsed() >= SHUTDOWN_GRACE)
            {
                break;
            }
        }
        for i in 0..self.slots.len() as u32 {
            self.drop_conn(i);
        }
    }

    fn conn(&mut self, i: u32) -> Option<&mut Conn> {
        self.slots.get_mut(i as usize).and_then(|s| s.conn.as_mut())
    }

    fn is_live(&self, key: Key) -> bool {
        self.slots
            .get(key.slot as usize)
            .is_some_and(|s| s.generation == key.generation && s.conn.is_some())
    }

    fn key(&self, i: u32) -> Key {
        Key { slot: i, generation: self.slots[i as usize].generation }
    }

    fn handle(&self, i: u32) -> ConnHandle {
        ConnHandle::new(self.mailbox.clone(), i, self.slots[i as usize].generation)
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
        let gw = &*self.gw;
        let m = &gw.metrics;
        if m.connections_open.load(Relaxed) as usize >= gw.cfg.max_connections {
            m.connections_rejected.fetch_add(1, Relaxed);
            return;
        }
        if m.logins_pending.load(Relaxed) as usize >= gw.cfg.max_pending_logins {
            m.pending_login_rejections.fetch_add(1, Relaxed);
            return;
        }
        let source = gw.sources.key(peer.ip());
        if let Err(refusal) = gw.sources.admit(source) {
            match refusal {
                Refusal::Connections => m.source_connection_rejections.fetch_add(1, Relaxed),
                Refusal::PendingLogins => m.source_pending_login_rejections.fetch_add(1, Relaxed),
            };
            tracing::debug!(%peer, ?refusal, "connection refused at a per-source cap");
            return;
        }
        m.sources.store(gw.sources.tracked(), Relaxed);
        let _ = stream.set_nodelay(true);
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { generation: 0, conn: None });
                (self.slots.len() - 1) as u32
            }
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(i as usize), interest) {
            tracing::warn!(error = %e, "registering a connection failed");
            self.free.push(i);
            gw.sources.not_pending(source);
            gw.sources.release(source);
            return;
        }
        m.logins_pending.fetch_add(1, Relaxed);
        m.connections_open.fetch_add(1, Relaxed);
        m.connections_accepted.fetch_add(1, Relaxed);
        let now = Instant::now();
        let id = gw.next_connection_id();
        let session = ServerSession::new(now, id, &gw.cfg.session);
        if let Some(deadline) = session.deadline(&gw.cfg.session) {
            let key = Key { slot: i, generation: self.slots[i as usize].generation };
            self.wheel.schedule(deadline, key);
        }
        self.slots[i as usize].conn = Some(Conn {
            stream,
            session,
            ctx: None,
            partial: Vec::new(),
            out: None,
            id,
            closing: None,
            inflight: 0,
            phase: Phase::Open,
            pending: true,
            source,
        });
        self.live += 1;
    }

    // ----- reading -----

    /// Reads what a connection has, within its turn. A read that returns less than the buffer
    /// holds drained the socket (a stream socket's short read), so the next data raises a new
    /// edge and no read to `WouldBlock` is needed, unless `until_block` (after a pause, or when
    /// the event also said the peer closed).
    fn on_readable(&mut self, i: u32, until_block: bool) {
        let max_inflight = self.gw.cfg.max_inflight_requests as u32;
        for _ in 0..READS_PER_TURN {
            let Some(c) = self.slots.get_mut(i as usize).and_then(|s| s.conn.as_mut()) else {
                return;
            };
            let paused = c.phase == Phase::LoginWait
                || (c.phase == Phase::Open && c.inflight >= max_inflight);
            if paused {
                // Input waits in the kernel; reading resumes when the pause ends.
                return;
            }
            match c.stream.read(&mut self.scratch) {
                Ok(0) => return self.on_eof(i),
                Ok(n) => {
                    let drained = n < self.scratch.len() && !until_block;
                    if c.phase != Phase::Closing {
                        self.on_bytes(i, n);
                    } // else draining: input after closing is dropped
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

    fn on_eof(&mut self, i: u32) {
        let Some(c) = self.conn(i) else { return };
        if c.phase == Phase::Closing && c.out.is_some() {
            // The peer closed its side; it may still read what we are writing (until linger).
            return;
        }
        self.drop_conn(i);
    }

    /// Handles `n` new bytes in the scratch buffer.
    fn on_bytes(&mut self, i: u32, n: usize) {
        let scratch = std::mem::take(&mut self.scratch);
        let Some(c) = self.conn(i) else {
            self.scratch = scratch;
            return;
        };
        if c.partial.is_empty() {
            let used = self.process(i, &scratch[..n]);
            self.keep_rest(i, &scratch[used..n]);
        } else {
            c.partial.extend_from_slice(&scratch[..n]);
            self.process_partial(i);
        }
        self.scratch = scratch;
    }

    /// Processes the input a connection kept (after a split frame or a pause).
    fn process_partial(&mut self, i: u32) {
        let Some(c) = self.conn(i) else { return };
        if c.partial.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut c.partial);
        let used = self.process(i, &buf);
        if used == 0 {
            if let Some(c) = self.conn(i)
                && c.phase != Phase::Closing
            {
                c.partial = buf;
            }
        } else {
            self.keep_rest(i, &buf[used..]);
        }
    }

    /// Keeps unprocessed input on the connection (copied: the source is shared or temporary).
    fn keep_rest(&mut self, i: u32, rest: &[u8]) {
        if rest.is_empty() {
            return;
        }
        if let Some(c) = self.conn(i)
            && c.phase != Phase::Closing
        {
            c.partial.extend_from_slice(rest);
        }
    }

    /// Decodes and handles frames from `data` until it runs out, the connection pauses or
    /// closes. Returns the bytes used.
    fn process(&mut self, i: u32, data: &[u8]) -> usize {
        let max_inflight = self.gw.cfg.max_inflight_requests as u32;
        let mut used = 0;
        loop {
            let Some(c) = self.conn(i) else { return data.len() };
            if c.phase != Phase::Open || c.inflight >= max_inflight {
                return used;
            }
            match self.decoder.decode_slice(&data[used..]) {
                Ok(None) => return used,
                Ok(Some((env, len))) => {
                    used += len;
                    self.gw.metrics.frames_in.fetch_add(1, Relaxed);
                    self.on_frame(i, env);
                }
                Err(e) => {
                    tracing::debug!(slot = i, error = %e, "bad frame");
                    let Some(c) = self.conn(i) else { return data.len() };
                    let action = c.session.on_decode_error(&e);
                    self.apply(i, action);
                    return data.len();
                }
            }
        }
    }

    fn on_frame(&mut self, i: u32, env: Envelope) {
        let gw = self.gw.clone();
        let Some(c) = self.conn(i) else { return };
        let before = c.session.deadline(&gw.cfg.session);
        let action = c.session.on_frame(Instant::now(), unix_ms(), env, &gw.cfg.session, &*gw.auth);
        // The armed wheel entry finds later deadlines when it fires; a deadline that moved
        // earlier (a token that ends before the login timeout, a refresh to a shorter token)
        // needs an entry of its own.
        if let Some(at) = c.session.deadline(&gw.cfg.session)
            && before.is_none_or(|b| at < b)
        {
            let key = self.key(i);
            self.wheel.schedule(at, key);
        }
        self.apply(i, action);
    }

    // ----- session actions -----

    fn apply(&mut self, i: u32, action: Action) {
        let gw = self.gw.clone();
        match action {
            Action::None => {}
            Action::Reply(env) => {
                count_token_reply(&gw, &env);
                self.send(i, registry::encode(env));
            }
            Action::LoggedIn { identity, reply } => {
                let handle = self.handle(i);
                let Some(c) = self.conn(i) else { return };
                let ctx = Arc::new(RequestCtx {
                    user_id: identity.user_id,
                    device_id: identity.device_id,
                    connection_id: c.id,
                });
                let oldest_wins = gw.cfg.duplicate_login == DuplicateLogin::OldestWins;
                let conn = registry::Conn { ctx: ctx.clone(), handle: handle.clone() };
                if oldest_wins && !gw.registry.try_register(conn.clone()) {
                    gw.metrics.duplicate_login_refusals.fetch_add(1, Relaxed);
                    gw.metrics.logins_failed.fetch_add(1, Relaxed);
                    let refusal = error(
                        reply.request_id,
                        ErrorCode::AlreadyLoggedIn,
                        "this device is connected already (the server keeps the oldest \
                         connection); retry later",
                        true,
                    );
                    return self.begin_close(i, registry::encode(refusal));
                }
                gw.metrics.logins_ok.fetch_add(1, Relaxed);
                if std::mem::take(&mut c.pending) {
                    gw.metrics.logins_pending.fetch_sub(1, Relaxed);
                    gw.sources.not_pending(c.source);
                }
                c.ctx = Some(ctx.clone());
                c.phase = Phase::LoginWait;
                tracing::debug!(connection_id = c.id, user = %ctx.user_id, device = %ctx.device_id, "logged in");
                if !oldest_wins {
                    gw.registry.register(conn);
                }
                // Reachable for pushes before the client hears LoginOk (bounded: a presence
                // outage delays logins by at most this, then the refresh catches up).
                let mut published =
                    Box::pin(tokio::time::timeout(LOGIN_PUBLISH_WAIT, gw.upstream.connected(&ctx)));
                let frame = registry::encode(reply);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                if published.as_mut().poll(&mut cx).is_ready() {
                    self.login_ready(i, frame);
                } else {
                    self.rt.spawn(async move {
                        let _ = published.await;
                        handle.login_ready(frame);
                    });
                }
            }
            Action::Forward(env) => {
                let handle = self.handle(i);
                let Some(c) = self.conn(i) else { return };
                let Some(ctx) = c.ctx.clone() else { return };
                c.inflight += 1;
                let reply = Box::new(move |reply| handle.answer(registry::encode(reply)));
                gw.upstream.submit(&ctx, env, reply);
            }
            Action::Close { reply, reason } => {
                let m = &gw.metrics;
                let counter = match reason {
                    CloseReason::BadFrame | CloseReason::NotLoggedIn => &m.bad_frames,
                    CloseReason::AuthFailed | CloseReason::UnsupportedVersion => &m.logins_failed,
                    CloseReason::LoginTimeout => &m.login_timeouts,
                    CloseReason::IdleTimeout => &m.idle_timeouts,
                    CloseReason::RateLimited => &m.rate_limit_closes,
                    CloseReason::TokenExpired => &m.token_expiry_kicks,
                };
                counter.fetch_add(1, Relaxed);
                tracing::debug!(slot = i, ?reason, "closing");
                self.begin_close(i, reply.and_then(registry::encode));
            }
        }
    }

    fn login_ready(&mut self, i: u32, frame: Option<Bytes>) {
        let Some(c) = self.conn(i) else { return };
        if c.phase != Phase::LoginWait {
            return;
        }
        c.phase = Phase::Open;
        self.send(i, frame);
        let key = self.key(i);
        self.again.push(key);
    }

    // ----- commands, resumptions and timers -----

    fn run_commands(&mut self) {
        let mut cmds = std::mem::take(&mut self.cmds);
        self.mailbox.drain(&mut cmds);
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Push { slot, generation, frame } => {
                    if self.is_live(Key { slot, generation }) {
                        self.staged.push((slot, frame));
                    }
                }
                Cmd::Close { slot, generation, last } => {
                    self.flush_staged();
                    if self.is_live(Key { slot, generation }) {
                        self.begin_close(slot, last);
                    }
                }
                Cmd::Answer { slot, generation, frame } => {
                    if !self.is_live(Key { slot, generation }) {
                        continue;
                    }
                    let max_inflight = self.gw.cfg.max_inflight_requests as u32;
                    if let Some(c) = self.conn(slot) {
                        let was_full = c.inflight >= max_inflight;
                        c.inflight = c.inflight.saturating_sub(1);
                        if was_full {
                            self.again.push(Key { slot, generation });
                        }
                    }
                    if let Some(frame) = frame {
                        self.staged.push((slot, frame));
                    }
                }
                Cmd::LoginReady { slot, generation, frame } => {
                    self.flush_staged();
                    if self.is_live(Key { slot, generation }) {
                        self.login_ready(slot, frame);
                    }
                }
                Cmd::Shutdown => {
                    self.flush_staged();
                    self.shut_down();
                }
            }
        }
        self.flush_staged();
        self.cmds = cmds;
    }

    fn shut_down(&mut self) {
        if self.stopping_since.is_some() {
            return;
        }
        self.stopping_since = Some(Instant::now());
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for i in 0..self.slots.len() as u32 {
            if self.conn(i).is_some() {
                self.begin_close(
                    i,
                    registry::encode(kick(KickReason::ServerShutdown, "server shutting down")),
                );
            }
        }
    }

    /// Reads again from connections whose turn ran out or whose pause ended.
    fn run_again(&mut self) {
        let again = std::mem::take(&mut self.again);
        for key in &again {
            if self.is_live(*key) {
                self.process_partial(key.slot);
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
        let gw = self.gw.clone();
        let cfg = &gw.cfg.session;
        for key in due.drain(..) {
            if !self.is_live(key) {
                continue;
            }
            let Some(c) = self.conn(key.slot) else { continue };
            if c.phase == Phase::Closing {
                match c.closing {
                    Some(t) if !t.due(now) => self.wheel.schedule(t.deadline(), key),
                    _ => self.drop_conn(key.slot),
                }
                continue;
            }
            match c.session.deadline(cfg) {
                Some(at) if at > now => self.wheel.schedule(at, key),
                Some(_) => {
                    let action = c.session.on_tick(now, cfg);
                    self.apply(key.slot, action);
                    if let Some(c) = self.conn(key.slot)
                        && c.phase != Phase::Closing
                        && let Some(at) = c.session.deadline(cfg)
                    {
                        self.wheel.schedule(at, key);
                    }
                }
                None => {}
            }
        }
        self.due = due;
    }
}

/// Counts RefreshToken outcomes: the session answers them TokenRefreshed or with a non-fatal
/// BAD_TOKEN / TOKEN_EXPIRED (codes no other logged-in request is answered with).
fn count_token_reply<U: Upstream>(gw: &Gateway<U>, env: &Envelope) {
    match &env.body {
        Some(Body::TokenRefreshed(_)) => {
            gw.metrics.token_refreshes.fetch_add(1, Relaxed);
        }
        Some(Body::Error(e))
            if e.code == ErrorCode::BadToken as i32 || e.code == ErrorCode::TokenExpired as i32 =>
        {
            gw.metrics.token_refresh_failures.fetch_add(1, Relaxed);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    /// The per-connection record's size (the slab slot holds it inline); figures in
    /// docs/ARCHITECTURE.md.
    #[test]
    fn connection_record_size() {
        let slot = std::mem::size_of::<super::Slot>();
        let conn = std::mem::size_of::<super::Conn>();
        let session = std::mem::size_of::<tern_proto::session::server::ServerSession>();
        eprintln!("slot {slot} B, conn {conn} B, session {session} B");
    }
}
