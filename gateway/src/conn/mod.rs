//! One client connection's gateway rules as a sans-IO state machine, the same for every
//! transport (the mio TCP driver in [`crate::core`] today, a QUIC stream driver later).
//!
//! [`ServerSession`] (in `proto`) decides the wire protocol: login first and on time, pings,
//! idle and token expiry, which frames are requests. [`Connection`] wraps it with what the
//! gateway decides per connection: the device check-in before a login counts ([`checkin`]),
//! when LoginOk may go out (after presence made the login reachable, or after
//! [`LOGIN_PUBLISH_WAIT`]), when to stop reading (while waiting for
//! presence, or with `max_inflight_requests` requests in flight), the duplicate-login policy, the
//! capped outbound queue and its SLOW_CONSUMER kick, kicks from outside (duplicate login,
//! shutdown), and the closing sequence (last frame, half-close, linger: [`CloseTimer`]).
//!
//! It owns no socket, no timer and no clock. Calling convention (the driver):
//! 1. [`Connection::new`] on accept; then drain [`Connection::poll_event`].
//! 2. Feed inputs, each with `now`, the transport's byte sink (any [`Write`]: a non-blocking
//!    socket, a QUIC send stream; `WouldBlock` means "full, call [`Connection::on_writable`]
//!    later") and the [`Env`] (the gateway around the connection):
//!    - bytes read: [`Connection::on_input`] (only while [`Connection::reading_paused`] is
//!      false), end of input: [`Connection::on_eof`], a transport error:
//!      [`Connection::on_transport_error`];
//!    - the sink has room again: [`Connection::on_writable`];
//!    - frames to push: [`Connection::push`] / [`Connection::push_batch`] (one `writev`);
//!    - a request's answer arrived: [`Connection::on_answer`] (then push its frame);
//!    - presence answered: [`Connection::on_reachable`];
//!    - the device check-in answered: [`Connection::on_checked_in`];
//!    - kicks and closes from outside: [`Connection::on_kick`], [`Connection::close_with`];
//!    - a timer armed for [`Connection::deadline`] fired: [`Connection::on_timer`].
//! 3. After every input drain [`Connection::poll_event`] and carry each [`Event`] out: arm a
//!    timer, read again, half-close, or drop the connection (then [`Connection::release`]).
//!
//! Writing goes straight into the sink when nothing waits (no copy, no allocation); only what
//! the sink does not take is queued ([`OutQueue`], allocated while something waits).
//!
//! - [`admission`]: the caps checked before a connection exists, and its counts in and out.
//! - `output`: writing, the outbound caps and the SLOW_CONSUMER kick, the closing sequence.
//! - [`testing`]: an in-memory driver (virtual clock, sink, recording [`Env`], timer wheel) for
//!   the unit tests and the `gateway_connection` fuzz target.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_proto::FrameDecoder;
use tern_proto::session::server::{
    Action, Authenticator, CloseReason, Fenced, ServerSession, kick,
};
use tern_proto::v1::{Envelope, ErrorCode, KickReason, envelope::Body};

use crate::closing::CloseTimer;
use crate::config::{DuplicateLogin, GatewayConfig};
use crate::metrics::GatewayMetrics;
use crate::outbound::OutQueue;
use crate::registry::encode;
use crate::upstream::RequestCtx;

pub mod admission;
pub mod checkin;
#[cfg(test)]
mod checkin_tests;
pub mod early;
mod output;
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;

/// Longest wait for the upstream to make a new login reachable before LoginOk goes out anyway
/// (a presence outage delays logins by at most this; the presence refresh catches up).
pub const LOGIN_PUBLISH_WAIT: Duration = Duration::from_secs(2);

/// The gateway around one connection: configuration, counters, token checks, the registry,
/// presence and the upstream. The TCP driver implements it over [`crate::Gateway`]; tests
/// record the calls. Methods take `&self`: implementations hold shared handles.
pub trait Env {
    /// The token verifier.
    type Auth: Authenticator;
    /// Limits and timings.
    fn config(&self) -> &GatewayConfig;
    /// Counters.
    fn metrics(&self) -> &GatewayMetrics;
    /// Checks login and refresh tokens.
    fn authenticator(&self) -> &Self::Auth;
    /// The wall clock in Unix milliseconds (token expiry, Pong, LoginOk).
    fn unix_ms(&self) -> i64;
    /// Registers the logged-in connection under `policy`: `NewestWins` always registers (an
    /// older connection of the device is kicked, DUPLICATE_LOGIN); `OldestWins` registers only
    /// if the device is not registered yet. Returns whether it was registered.
    fn register(&self, ctx: &Arc<RequestCtx>, policy: DuplicateLogin) -> bool;
    /// Removes the connection from the registry and tells the upstream it is gone.
    fn unregister(&self, ctx: &Arc<RequestCtx>);
    /// Asks the upstream to make the login reachable (publish presence). True when it is now;
    /// false when the answer comes later as [`Connection::on_reachable`] (within `within`).
    fn reachable(&self, ctx: &Arc<RequestCtx>, within: Duration) -> bool;
    /// Starts a request; its answer comes back as [`Connection::on_answer`] plus a push.
    fn submit(&self, ctx: &Arc<RequestCtx>, request: Envelope);
    /// Starts the device check-in of a login (`DeviceCheckIn`, [`checkin`]): its answer now,
    /// or `None` when it comes later as [`Connection::on_checked_in`] (within
    /// [`checkin::CHECK_IN_WAIT`]).
    fn check_in(&self, ctx: &Arc<RequestCtx>, request: Envelope) -> Option<Envelope>;
    /// The connection is no longer a pending login (logged in or closing).
    fn login_settled(&self);
}

/// What the driver must do, drained with [`Connection::poll_event`] after every input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Close the transport now and free the connection ([`Connection::release`]).
    Drop,
    /// Everything including the last frame is written: shut down the sending side.
    ShutdownWrite,
    /// Arm a timer for [`Connection::deadline`] (timers are lazy: a timer that fires early
    /// just calls [`Connection::on_timer`], which asks again).
    Rearm,
    /// Reading may go on: process kept input ([`Connection::resume`]) and read again.
    Resume,
}

const DROP: u8 = 1;
const SHUTDOWN_WRITE: u8 = 2;
const REARM: u8 = 4;
const RESUME: u8 = 8;
/// Not an event: the presence wait armed a timer of its own besides the session's one; the
/// first of them that finds nothing to do is not re-armed, so one timer stays per connection.
const WAIT_TIMER: u8 = 16;
/// Not an event: input comes in QUIC 0-RTT data (see [`early`]).
const EARLY: u8 = 32;
/// Not an event: a frame that is not replay-safe waits, with the input after it, for the
/// handshake; reading is paused.
const HELD: u8 = 64;

/// A connection's phases, each with only what it needs.
#[derive(Debug)]
enum Phase {
    /// Reading frames (before or after login).
    Open,
    /// The token checked out; the device check-in ([`checkin`]) decides, at most until
    /// `until`. Not reading (as in `LoginWait`); not registered yet.
    CheckIn(Box<checkin::Waiting>),
    /// Logged in; LoginOk (kept here) waits for the login to be reachable, at most `until`.
    /// Not reading: frames pipelined behind the Login wait and are processed in order right
    /// after LoginOk is written (PROTOCOL.md section 5 step 3).
    LoginWait { until: Instant, login_ok: Option<Box<Bytes>> },
    /// Writing what is queued (the last frame included, up to the close timeout), then
    /// draining input until EOF or the linger deadline.
    Closing(CloseTimer),
    /// Finished (transport failed or the close is complete): the driver drops it.
    Done,
}

/// One connection's gateway-side state. See the module doc for the calling convention.
#[derive(Debug)]
pub struct Connection {
    session: ServerSession,
    ctx: Option<Arc<RequestCtx>>,
    /// An incomplete frame (or input not processed yet while paused); empty, unallocated, when
    /// the connection is idle.
    partial: Vec<u8>,
    /// Bytes the sink did not take yet; `None` while everything was written.
    out: Option<Box<OutQueue>>,
    phase: Phase,
    inflight: u32,
    /// Counted in `logins_pending` (and in its source's pending logins).
    pending: bool,
    /// Pending [`Event`]s and [`WAIT_TIMER`].
    flags: u8,
}

impl Connection {
    /// A connection accepted at `now` with the gateway's connection id `id`. Counts itself in
    /// `logins_pending` (the driver counted it at accept); asks for a timer (login timeout).
    pub fn new(now: Instant, id: u64, cfg: &GatewayConfig) -> Self {
        Self {
            session: ServerSession::new(now, id, &cfg.session),
            ctx: None,
            partial: Vec::new(),
            out: None,
            phase: Phase::Open,
            inflight: 0,
            pending: true,
            flags: REARM,
        }
    }

    /// The gateway's id for this connection.
    pub fn id(&self) -> u64 {
        self.session.connection_id()
    }

    /// The logged-in identity and connection id, once logged in (until closing).
    pub fn ctx(&self) -> Option<&Arc<RequestCtx>> {
        self.ctx.as_ref()
    }

    /// Takes the next thing the driver must do.
    pub fn poll_event(&mut self) -> Option<Event> {
        for (bit, event) in [
            (DROP, Event::Drop),
            (SHUTDOWN_WRITE, Event::ShutdownWrite),
            (REARM, Event::Rearm),
            (RESUME, Event::Resume),
        ] {
            if self.flags & bit != 0 {
                self.flags &= !bit;
                return Some(event);
            }
        }
        None
    }

    /// When [`Connection::on_timer`] must be called next, if ever.
    pub fn deadline(&self, cfg: &GatewayConfig) -> Option<Instant> {
        match &self.phase {
            Phase::Open => self.session.deadline(&cfg.session),
            Phase::LoginWait { until, .. } => {
                Some(self.session.deadline(&cfg.session).map_or(*until, |d| d.min(*until)))
            }
            Phase::CheckIn(w) => {
                Some(self.session.deadline(&cfg.session).map_or(w.until, |d| d.min(w.until)))
            }
            Phase::Closing(t) => Some(t.deadline()),
            Phase::Done => None,
        }
    }

    /// Whether input must wait (in the kernel, or the transport's receive window): while
    /// LoginOk waits for presence, or with `max_inflight_requests` requests in flight. A
    /// closing connection reads (and drops) input until EOF.
    pub fn reading_paused(&self, cfg: &GatewayConfig) -> bool {
        if self.flags & HELD != 0 {
            return true;
        }
        match self.phase {
            Phase::LoginWait { .. } | Phase::CheckIn(_) => true,
            Phase::Open => self.inflight >= max_inflight(cfg),
            Phase::Closing(_) | Phase::Done => false,
        }
    }

    /// Whether the connection is closing (its last frame queued or written; input is drained
    /// and dropped) or done.
    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing(_) | Phase::Done)
    }

    /// Bytes waiting for the sink (counted in the `outbound_queued_bytes` gauge).
    pub fn queued_bytes(&self) -> usize {
        self.out.as_ref().map_or(0, |q| q.queued_bytes())
    }

    /// Whether bytes wait for the sink (the driver calls [`Connection::on_writable`] only then).
    pub fn wants_write(&self) -> bool {
        self.out.is_some()
    }

    /// Bytes read at `now`: decodes and handles frames until the input runs out or reading
    /// pauses; keeps the rest (a split frame, or input behind a pause). Input after closing
    /// is dropped.
    pub fn on_input(
        &mut self,
        now: Instant,
        data: &[u8],
        dec: &FrameDecoder,
        io: &mut impl Write,
        env: &impl Env,
    ) {
        if !self.keeps_input() {
            return;
        }
        if self.partial.is_empty() {
            let used = self.process(now, data, dec, io, env);
            self.keep_rest(&data[used..]);
        } else {
            self.partial.extend_from_slice(data);
            self.resume(now, dec, io, env);
        }
    }

    /// Input from now on arrives in QUIC 0-RTT data: only replay-safe frames are acted on
    /// ([`early::replay_safe`]); the first other one waits for [`Connection::on_established`].
    pub fn set_early(&mut self) {
        self.flags |= EARLY;
    }

    /// The QUIC handshake completed: held input may run (the driver then calls
    /// [`Connection::resume`]).
    pub fn on_established(&mut self) {
        self.flags &= !(EARLY | HELD);
    }

    /// Processes the input kept while paused (after [`Event::Resume`]), before reading more.
    pub fn resume(
        &mut self,
        now: Instant,
        dec: &FrameDecoder,
        io: &mut impl Write,
        env: &impl Env,
    ) {
        if self.partial.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.partial);
        let used = self.process(now, &buf, dec, io, env);
        if used == 0 {
            if self.keeps_input() {
                self.partial = buf;
            }
        } else {
            self.keep_rest(&buf[used..]);
        }
    }

    /// The peer ended its input. A closing connection whose last frame still waits keeps the
    /// transport (the peer may still read, until the close deadline); anything else is done.
    pub fn on_eof(&mut self) {
        if matches!(self.phase, Phase::Closing(_)) && self.out.is_some() {
            return;
        }
        self.finish();
    }

    /// Reading or writing the transport failed: the connection is done.
    pub fn on_transport_error(&mut self) {
        self.finish();
    }

    /// A request's answer arrived: one request fewer in flight (reading resumes if it was
    /// paused at the cap). The driver pushes the answer's frame itself (coalesced with others).
    pub fn on_answer(&mut self, env: &impl Env) {
        let max = max_inflight(env.config());
        let was_full = self.inflight >= max;
        self.inflight = self.inflight.saturating_sub(1);
        if was_full {
            self.flags |= RESUME;
        }
    }

    /// Presence made the login reachable: LoginOk goes out, reading resumes.
    pub fn on_reachable(&mut self, now: Instant, io: &mut impl Write, env: &impl Env) {
        self.login_ready(now, io, env);
    }

    /// Kicked from outside (a newer login of the device, server shutdown): the Kick is the last
    /// frame, then the connection closes.
    pub fn on_kick(
        &mut self,
        now: Instant,
        reason: KickReason,
        io: &mut impl Write,
        env: &impl Env,
    ) {
        let message = match reason {
            KickReason::DuplicateLogin => "another connection logged in as this device",
            KickReason::ServerShutdown => "server shutting down",
            KickReason::SlowConsumer => "outbound queue full: reconnect and sync",
            KickReason::LoggedOut => "this device was logged out; sign in again",
            KickReason::DeviceReplaced => "a newer device of the same kind logged in",
            _ => "closed by the server",
        };
        self.close_with(now, encode(kick(reason, message)), io, env);
    }

    /// A timer fired at `now`: closes a finished close, sends LoginOk once the presence wait
    /// is over, and lets the session time out logins, idle connections and tokens.
    pub fn on_timer(&mut self, now: Instant, io: &mut impl Write, env: &impl Env) {
        let cfg = env.config();
        match &self.phase {
            Phase::Done => return,
            Phase::Closing(t) => {
                if t.due(now) {
                    self.finish();
                } else {
                    self.flags |= REARM;
                }
                return;
            }
            Phase::CheckIn(w) => {
                if now >= w.until {
                    if self.check_in_timed_out(now, io, env) {
                        return;
                    }
                    return self.flags |= REARM;
                }
            }
            Phase::LoginWait { until, .. } => {
                if now >= *until {
                    tracing::debug!(
                        connection_id = self.id(),
                        "presence wait over; LoginOk anyway"
                    );
                    let consumed = self.take_flag(WAIT_TIMER);
                    self.login_ready(now, io, env);
                    if consumed {
                        // The session's own timer is still armed.
                        return;
                    }
                }
            }
            Phase::Open => {
                let due = self.session.deadline(&cfg.session).is_some_and(|at| at <= now);
                if !due && self.take_flag(WAIT_TIMER) {
                    // The presence wait's timer, after presence answered in time.
                    return;
                }
            }
        }
        if let Some(at) = self.session.deadline(&cfg.session)
            && at <= now
        {
            let action = self.session.on_tick(now, &cfg.session);
            self.apply(now, action, io, env);
        }
        if matches!(self.phase, Phase::Open | Phase::LoginWait { .. } | Phase::CheckIn(_))
            && self.deadline(cfg).is_some()
        {
            self.flags |= REARM;
        }
    }

    /// Leaves the registry and the counts; called by the driver when it drops the connection.
    pub fn release(mut self, env: &impl Env) {
        self.leave(env);
        if let Some(q) = &self.out {
            output::account(env.metrics(), q.queued_bytes(), 0);
        }
    }

    // ----- input -----

    fn keeps_input(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::LoginWait { .. } | Phase::CheckIn(_))
    }

    /// Keeps unprocessed input (copied: the source is the driver's scratch buffer).
    fn keep_rest(&mut self, rest: &[u8]) {
        if !rest.is_empty() && self.keeps_input() {
            self.partial.extend_from_slice(rest);
        }
    }

    /// Decodes and handles frames from `data` until it runs out or the connection pauses or
    /// closes. Returns the bytes used.
    fn process(
        &mut self,
        now: Instant,
        data: &[u8],
        dec: &FrameDecoder,
        io: &mut impl Write,
        env: &impl Env,
    ) -> usize {
        let max = max_inflight(env.config());
        let mut used = 0;
        loop {
            if !matches!(self.phase, Phase::Open) || self.inflight >= max {
                return used;
            }
            match dec.decode_slice(&data[used..]) {
                Ok(None) => return used,
                Ok(Some((frame, _))) if self.flags & EARLY != 0 && !early::replay_safe(&frame) => {
                    // Kept (by the caller, as unprocessed input) until the handshake completes.
                    self.flags |= HELD;
                    return used;
                }
                Ok(Some((frame, len))) => {
                    used += len;
                    env.metrics().frames_in.fetch_add(1, Relaxed);
                    self.on_frame(now, frame, io, env);
                }
                Err(e) => {
                    tracing::debug!(connection_id = self.id(), error = %e, "bad frame");
                    let action = self.session.on_decode_error(&e);
                    self.apply(now, action, io, env);
                    return data.len();
                }
            }
        }
    }

    fn on_frame(&mut self, now: Instant, frame: Envelope, io: &mut impl Write, env: &impl Env) {
        let cfg = &env.config().session;
        let before = self.session.deadline(cfg);
        let fence = self.ctx.as_ref().map_or(0, |c| c.logout_fence_ms);
        let auth = Fenced { inner: env.authenticator(), revoked_before_ms: fence };
        let action = self.session.on_frame(now, env.unix_ms(), frame, cfg, &auth);
        // The armed timer finds later deadlines when it fires; a deadline that moved earlier
        // (a token that ends before the login timeout, a refresh to a shorter token) needs a
        // timer of its own.
        if let Some(at) = self.session.deadline(cfg)
            && before.is_none_or(|b| at < b)
        {
            self.flags |= REARM;
        }
        self.apply(now, action, io, env);
    }

    // ----- session actions -----

    fn apply(&mut self, now: Instant, action: Action, io: &mut impl Write, env: &impl Env) {
        let m = env.metrics();
        match action {
            Action::None => {}
            Action::Reply(reply) => {
                count_token_reply(m, &reply);
                self.push(now, encode(reply), io, env);
            }
            Action::LoggedIn { identity, reply, device } => {
                let ctx = Arc::new(RequestCtx {
                    user_id: identity.user_id,
                    device_id: identity.device_id,
                    connection_id: self.id(),
                    logout_fence_ms: 0,
                });
                self.start_check_in(now, ctx, reply, device, io, env);
            }
            Action::Forward(request) => {
                if let Some(ctx) = &self.ctx {
                    self.inflight += 1;
                    env.submit(ctx, request);
                }
            }
            Action::Close { reply, reason } => {
                let counter = match reason {
                    CloseReason::BadFrame | CloseReason::NotLoggedIn => &m.bad_frames,
                    CloseReason::AuthFailed | CloseReason::UnsupportedVersion => &m.logins_failed,
                    CloseReason::LoginTimeout => &m.login_timeouts,
                    CloseReason::IdleTimeout => &m.idle_timeouts,
                    CloseReason::RateLimited => &m.rate_limit_closes,
                    CloseReason::TokenExpired => &m.token_expiry_kicks,
                };
                counter.fetch_add(1, Relaxed);
                tracing::debug!(connection_id = self.id(), ?reason, "closing");
                self.close_with(now, reply.and_then(encode), io, env);
            }
        }
    }

    /// Ends the presence wait: LoginOk goes out and reading resumes.
    fn login_ready(&mut self, now: Instant, io: &mut impl Write, env: &impl Env) {
        let Phase::LoginWait { login_ok, .. } = &mut self.phase else { return };
        let frame = login_ok.take().map(|b| *b);
        self.phase = Phase::Open;
        self.push(now, frame, io, env);
        self.flags |= RESUME;
    }

    /// No longer a pending login.
    fn settle(&mut self, env: &impl Env) {
        if std::mem::take(&mut self.pending) {
            env.metrics().logins_pending.fetch_sub(1, Relaxed);
            env.login_settled();
        }
    }

    /// Leaves the registry, the upstream's view and the pending-login count (once).
    fn leave(&mut self, env: &impl Env) {
        self.settle(env);
        if let Some(ctx) = self.ctx.take() {
            env.unregister(&ctx);
        }
    }

    /// Done: nothing more to do but drop the transport.
    fn finish(&mut self) {
        self.phase = Phase::Done;
        self.session.close_now();
        self.flags |= DROP;
    }

    fn take_flag(&mut self, bit: u8) -> bool {
        let set = self.flags & bit != 0;
        self.flags &= !bit;
        set
    }
}

fn max_inflight(cfg: &GatewayConfig) -> u32 {
    u32::try_from(cfg.max_inflight_requests).unwrap_or(u32::MAX)
}

/// Counts RefreshToken outcomes: the session answers them TokenRefreshed or with a non-fatal
/// BAD_TOKEN / TOKEN_EXPIRED (codes no other logged-in request is answered with).
fn count_token_reply(m: &GatewayMetrics, env: &Envelope) {
    match &env.body {
        Some(Body::TokenRefreshed(_)) => {
            m.token_refreshes.fetch_add(1, Relaxed);
        }
        Some(Body::Error(e))
            if e.code == ErrorCode::BadToken as i32 || e.code == ErrorCode::TokenExpired as i32 =>
        {
            m.token_refresh_failures.fetch_add(1, Relaxed);
        }
        _ => {}
    }
}
