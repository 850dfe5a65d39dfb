//! One bot: [`BotSession`], the client side of login, heartbeats and received deliveries as a
//! sans-IO state machine, [`count_event`] (what both engines count), and [`run_bot`], the thin
//! tokio task that drives one session over a raw `TcpStream` or QUIC.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tern_gateway::TokenKey;
use tern_proto::v1::envelope::Body;
use tern_proto::v1::{Envelope, Login, Ping};
use tern_proto::{
    DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameError, PROTOCOL_VERSION, encode_frame,
};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::probe::{parse_probe_body, unix_nanos_now};
use crate::stats::{Counters, FailKind};
use crate::transport::{BotStream, QuicClients, Readable};

/// Most wake-ups one connection handles before it gives up (a bound on the I/O loop; a bot
/// with a 10 ms heartbeat for 10 minutes needs 60 000).
const MAX_WAKEUPS_PER_CONNECTION: u64 = 1 << 24;

/// Bytes read per `try_read`; the buffer lives on the stack only while reading.
const READ_CHUNK: usize = 1024;

/// Why a session ended, and whose fault it was.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SessionError {
    /// The server sent bytes that are not a frame (the peer's fault).
    #[error("bad frame from server: {0}")]
    Frame(String),
    /// The server answered Login with an Error (the peer refused us).
    #[error("login rejected: {0}")]
    LoginRejected(String),
    /// No LoginOk before the login deadline.
    #[error("no LoginOk in time")]
    LoginTimeout,
    /// The server sent Kick with this reason.
    #[error("kicked (reason {0})")]
    Kicked(i32),
    /// The server sent a fatal Error after login.
    #[error("server error: {0}")]
    ServerError(String),
}

impl From<FrameError> for SessionError {
    fn from(e: FrameError) -> Self {
        SessionError::Frame(e.to_string())
    }
}

impl SessionError {
    /// The failure counter this error bumps.
    pub fn kind(&self) -> FailKind {
        match self {
            SessionError::Frame(_) => FailKind::Protocol,
            SessionError::LoginRejected(_) => FailKind::LoginRejected,
            SessionError::LoginTimeout => FailKind::LoginTimeout,
            SessionError::Kicked(_) => FailKind::Kicked,
            SessionError::ServerError(_) => FailKind::ServerError,
        }
    }
}

/// What the session saw in the bytes it was fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// LoginOk arrived this long after the session started (connect included).
    LoggedIn {
        /// Start (before connect) to LoginOk.
        latency: Duration,
    },
    /// A Pong arrived.
    Pong,
    /// A Deliver (a pushed message) arrived.
    Delivered(Delivery),
}

/// What a received Deliver carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A message whose body is not a probe (`probe:<unix_nanos>`).
    Other,
    /// A probe, received this long after the sender stamped it (wall clocks).
    Probe {
        /// Receipt wall clock minus the stamp.
        latency: Duration,
        /// The stamp (the sender's wall clock at send, Unix ns): names the message.
        sent: u64,
    },
    /// A probe stamped later than its receipt: the sender's clock runs ahead of ours, so no
    /// latency can be told.
    ProbeFromFuture,
}

/// What the driver must do after a deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing; ask for the next deadline.
    Idle,
    /// Write the bytes appended to `out` (a Ping).
    SendPing,
    /// Close this connection and open a new one (churn).
    Reconnect,
}

/// Connection phases, each carrying only what is valid in it.
#[derive(Debug, Clone, Copy)]
enum Phase {
    AwaitLoginOk { started: Instant, deadline: Instant },
    LoggedIn { next_ping: Instant, reconnect_at: Option<Instant> },
}

/// The client side of one connection: Login, then a Ping every heartbeat, counting Pongs and
/// Delivers (timing probe messages). Other pushes (sync hints, receipts, non-fatal errors) are
/// ignored: they never end the session.
///
/// Calling convention: [`BotSession::start`] appends the Login frame to `out` (write it);
/// then feed every chunk of received bytes to [`BotSession::feed`] with the monotonic and the
/// wall clock of its arrival, which reports events through its callback; sleep until [`BotSession::deadline`] and then call
/// [`BotSession::on_deadline`], which may append a Ping to `out` or ask for a reconnect. Any
/// `Err` ends the connection. The session holds no buffer unless a frame arrived split.
#[derive(Debug)]
pub struct BotSession {
    phase: Phase,
    heartbeat: Duration,
    reconnect_at: Option<Instant>,
    next_request_id: u64,
    decoder: FrameDecoder,
    /// The incomplete tail of a frame, kept between reads; empty (no allocation) otherwise.
    pending: Vec<u8>,
}

impl BotSession {
    /// Starts a session at `now` (before connect, so login latency includes it): appends the
    /// Login frame to `out`. The login must finish within `login_timeout`; once logged in,
    /// pings go out every `heartbeat`, and at `reconnect_at` (if any) the session asks for a
    /// reconnect.
    pub fn start(
        token: String,
        now: Instant,
        login_timeout: Duration,
        heartbeat: Duration,
        reconnect_at: Option<Instant>,
        out: &mut Vec<u8>,
    ) -> Result<Self, SessionError> {
        let login = Envelope {
            request_id: 1,
            body: Some(Body::Login(Login {
                token,
                protocol_version: PROTOCOL_VERSION,
                client_version: "tern-loadtest".into(),
                ..Default::default()
            })),
        };
        encode_frame(&login, DEFAULT_MAX_FRAME_BYTES, out)?;
        Ok(Self {
            phase: Phase::AwaitLoginOk { started: now, deadline: now + login_timeout },
            heartbeat,
            reconnect_at,
            next_request_id: 2,
            decoder: FrameDecoder::default(),
            pending: Vec::new(),
        })
    }

    /// When [`BotSession::on_deadline`] must be called next.
    pub fn deadline(&self) -> Instant {
        match self.phase {
            Phase::AwaitLoginOk { deadline, .. } => deadline,
            Phase::LoggedIn { next_ping, reconnect_at } => {
                reconnect_at.map_or(next_ping, |r| r.min(next_ping))
            }
        }
    }

    /// Whether LoginOk has arrived.
    pub fn is_logged_in(&self) -> bool {
        matches!(self.phase, Phase::LoggedIn { .. })
    }

    /// Handles a passed deadline at `now`.
    pub fn on_deadline(&mut self, now: Instant, out: &mut Vec<u8>) -> Result<Tick, SessionError> {
        match &mut self.phase {
            Phase::AwaitLoginOk { deadline, .. } if now >= *deadline => {
                Err(SessionError::LoginTimeout)
            }
            Phase::AwaitLoginOk { .. } => Ok(Tick::Idle),
            Phase::LoggedIn { reconnect_at: Some(r), .. } if now >= *r => Ok(Tick::Reconnect),
            Phase::LoggedIn { next_ping, .. } if now >= *next_ping => {
                *next_ping = now + self.heartbeat;
                let ping = Envelope {
                    request_id: self.next_request_id,
                    body: Some(Body::Ping(Ping { client_time_ms: 0 })),
                };
                self.next_request_id += 1;
                encode_frame(&ping, DEFAULT_MAX_FRAME_BYTES, out)?;
                Ok(Tick::SendPing)
            }
            Phase::LoggedIn { .. } => Ok(Tick::Idle),
        }
    }

    /// Feeds bytes received at `now` (wall clock `now_unix_nanos`, which probe latencies are
    /// measured against); reports what they contained through `on_event`.
    pub fn feed(
        &mut self,
        data: &[u8],
        now: Instant,
        now_unix_nanos: u64,
        mut on_event: impl FnMut(Event),
    ) -> Result<(), SessionError> {
        let clock = Clock { now, unix_nanos: now_unix_nanos };
        if self.pending.is_empty() {
            let used = self.decode_all(data, clock, &mut on_event)?;
            if used < data.len() {
                self.pending.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(data);
            let used = self.decode_all(&buf, clock, &mut on_event)?;
            if used < buf.len() {
                buf.drain(..used);
                self.pending = buf;
            }
        }
        Ok(())
    }

    /// Decodes every complete frame at the front of `buf`; returns the bytes used.
    fn decode_all(
        &mut self,
        buf: &[u8],
        clock: Clock,
        on_event: &mut impl FnMut(Event),
    ) -> Result<usize, SessionError> {
        let mut used = 0;
        // Bounded: every iteration consumes at least the 4-byte prefix.
        while let Some((env, n)) = self.decoder.decode_slice(&buf[used..])? {
            used += n;
            if let Some(event) = self.on_frame(env, clock)? {
                on_event(event);
            }
        }
        Ok(used)
    }

    fn on_frame(&mut self, env: Envelope, clock: Clock) -> Result<Option<Event>, SessionError> {
        let now = clock.now;
        match (env.body, self.phase) {
            (Some(Body::LoginOk(_)), Phase::AwaitLoginOk { started, .. }) => {
                self.phase = Phase::LoggedIn {
                    next_ping: now + self.heartbeat,
                    reconnect_at: self.reconnect_at,
                };
                Ok(Some(Event::LoggedIn { latency: now.saturating_duration_since(started) }))
            }
            (Some(Body::Error(e)), Phase::AwaitLoginOk { .. }) => {
                Err(SessionError::LoginRejected(format!("{:?}: {}", e.code(), e.message)))
            }
            (Some(Body::Error(e)), Phase::LoggedIn { .. }) if e.fatal => {
                Err(SessionError::ServerError(format!("{:?}: {}", e.code(), e.message)))
            }
            (Some(Body::Kick(k)), _) => Err(SessionError::Kicked(k.reason)),
            (Some(Body::Pong(_)), Phase::LoggedIn { .. }) => Ok(Some(Event::Pong)),
            (Some(Body::Deliver(d)), Phase::LoggedIn { .. }) => {
                let stamp = d.message.as_ref().and_then(|m| parse_probe_body(&m.body));
                let delivery = match stamp {
                    None => Delivery::Other,
                    Some(sent) if sent <= clock.unix_nanos => {
                        let latency = Duration::from_nanos(clock.unix_nanos - sent);
                        Delivery::Probe { latency, sent }
                    }
                    Some(_) => Delivery::ProbeFromFuture,
                };
                Ok(Some(Event::Delivered(delivery)))
            }
            // Pushes a bot does not act on (sync hints, receipts, non-fatal errors) and frames
            // that do not fit the phase: ignored, the session goes on.
            _ => Ok(None),
        }
    }
}

/// When bytes arrived: monotonic (timeouts, login latency) and wall clock (probe latency).
#[derive(Debug, Clone, Copy)]
struct Clock {
    now: Instant,
    unix_nanos: u64,
}

/// What every bot of a process shares.
#[derive(Debug)]
pub struct BotCtx {
    /// Gateway address.
    pub addr: SocketAddr,
    /// Token signing key.
    pub key: TokenKey,
    /// User ids are `{user_prefix}{index}`.
    pub user_prefix: String,
    /// Source IPs, round-robin by bot index; empty: let the kernel choose.
    pub source_ips: Vec<IpAddr>,
    /// Ping interval.
    pub heartbeat: Duration,
    /// Connect + login timeout.
    pub login_timeout: Duration,
    /// Churn: every bot reconnects once per `period`, bot `i` at `epoch + offset(i) + k·period`.
    pub churn: Option<Churn>,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// Counters.
    pub counters: Arc<Counters>,
    /// QUIC clients, when some bots use QUIC.
    pub quic: Option<Arc<QuicClients>>,
    /// Percentage of bots (by index: `index % 100 < quic_percent`) that connect over QUIC.
    pub quic_percent: u8,
}

/// A churn schedule spread evenly so that `count / period` bots reconnect per second.
#[derive(Debug, Clone, Copy)]
pub struct Churn {
    /// No reconnect before this instant (the nominal end of the ramp).
    pub epoch: Instant,
    /// Time between two reconnects of one bot (`count / churn_per_sec`).
    pub period: Duration,
    /// Delay between the slots of consecutive bots (`1 / churn_per_sec`).
    pub step: Duration,
}

impl Churn {
    /// The first reconnect time of bot `index` strictly after `now`.
    pub fn next_after(&self, index: usize, now: Instant) -> Instant {
        let period = self.period.as_secs_f64().max(1e-3);
        let offset = (self.step.as_secs_f64() * index as f64) % period;
        let base = self.epoch + Duration::from_secs_f64(offset);
        if base > now {
            return base;
        }
        let k = (now.duration_since(base).as_secs_f64() / period).floor() + 1.0;
        base + Duration::from_secs_f64(k * period)
    }
}

enum Outcome {
    Stopped,
    Reconnect,
    Failed(FailKind),
}

/// Decrements a gauge when dropped.
struct Gauge<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Gauge<'a> {
    fn up(g: &'a std::sync::atomic::AtomicU64) -> Self {
        g.fetch_add(1, Ordering::Relaxed);
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs bot `index` until `stop` turns true (or its sender goes), reconnecting on churn and
/// giving up on the first failure. Bumps `first_attempts_done` once, when its first login
/// attempt ends either way.
pub async fn run_bot(ctx: Arc<BotCtx>, index: usize, mut stop: watch::Receiver<bool>) {
    let mut first_pending = true;
    let max_connections = ctx.churn.map_or(1, |c| {
        (ctx.token_ttl.as_secs_f64() / c.period.as_secs_f64().max(1e-3)).ceil() as u64 + 2
    });
    for attempt in 0..max_connections {
        if *stop.borrow() {
            break;
        }
        if attempt > 0 {
            ctx.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        match connection(&ctx, index, &mut stop, &mut first_pending).await {
            Outcome::Reconnect => continue,
            Outcome::Stopped => break,
            Outcome::Failed(kind) => {
                ctx.counters.fail(kind);
                break;
            }
        }
    }
    if first_pending {
        ctx.counters.first_attempts_done.fetch_add(1, Ordering::Relaxed);
    }
}

async fn connection(
    ctx: &BotCtx,
    index: usize,
    stop: &mut watch::Receiver<bool>,
    first_pending: &mut bool,
) -> Outcome {
    let c = &ctx.counters;
    let mark_first = |first_pending: &mut bool| {
        if std::mem::take(first_pending) {
            c.first_attempts_done.fetch_add(1, Ordering::Relaxed);
        }
    };
    let started = Instant::now();
    let deadline = started + ctx.login_timeout;
    let stream = tokio::select! {
        biased;
        _ = stop.changed() => return Outcome::Stopped,
        r = tokio::time::timeout_at(deadline, connect(ctx, index)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => { mark_first(first_pending); return Outcome::Failed(FailKind::Connect) }
            Err(_) => { mark_first(first_pending); return Outcome::Failed(FailKind::LoginTimeout) }
        },
    };
    let _connected = Gauge::up(&c.connected);
    let mut logged_in: Option<Gauge<'_>> = None;
    let user = format!("{}{index}", ctx.user_prefix);
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let token = ctx.key.mint_for(&user, "d", now_unix, ctx.token_ttl.as_secs() as i64);
    let reconnect_at = ctx.churn.map(|ch| ch.next_after(index, started));
    let mut out = Vec::new();
    let session =
        BotSession::start(token, started, ctx.login_timeout, ctx.heartbeat, reconnect_at, &mut out);
    let mut session = match session {
        Ok(s) => s,
        Err(e) => {
            mark_first(first_pending);
            return Outcome::Failed(e.kind());
        }
    };
    let mut stream = stream;
    if stream.write_all(&out).await.is_err() {
        mark_first(first_pending);
        return Outcome::Failed(FailKind::Io);
    }
    drop(out);
    let mut result = Outcome::Stopped;
    for _ in 0..MAX_WAKEUPS_PER_CONNECTION {
        let step = tokio::select! {
            biased;
            _ = stop.changed() => Err(Outcome::Stopped),
            r = stream.readable(READ_CHUNK) => match r {
                Err(_) => Err(Outcome::Failed(FailKind::Io)),
                Ok(Readable::Tcp(tcp)) => read_some(tcp, &mut session, c, &mut logged_in),
                Ok(Readable::Quic(None)) => Err(Outcome::Failed(FailKind::Closed)),
                Ok(Readable::Quic(Some(bytes))) => feed(&bytes, &mut session, c, &mut logged_in),
            },
            _ = tokio::time::sleep_until(session.deadline()) => {
                let mut out = Vec::new();
                match session.on_deadline(Instant::now(), &mut out) {
                    Ok(Tick::Idle) => Ok(()),
                    Ok(Tick::Reconnect) => Err(Outcome::Reconnect),
                    Ok(Tick::SendPing) => match stream.write_all(&out).await {
                        Ok(()) => { c.pings.fetch_add(1, Ordering::Relaxed); Ok(()) }
                        Err(_) => Err(Outcome::Failed(FailKind::Io)),
                    },
                    Err(e) => Err(Outcome::Failed(e.kind())),
                }
            }
        };
        if session.is_logged_in() {
            mark_first(first_pending);
        }
        if let Err(o) = step {
            result = o;
            break;
        }
    }
    mark_first(first_pending);
    result
}

/// One non-blocking read into a stack buffer, fed to the session.
fn read_some<'a>(
    stream: &TcpStream,
    session: &mut BotSession,
    c: &'a Counters,
    logged_in: &mut Option<Gauge<'a>>,
) -> Result<(), Outcome> {
    let mut buf = [0u8; READ_CHUNK];
    match stream.try_read(&mut buf) {
        Ok(0) => Err(Outcome::Failed(FailKind::Closed)),
        Ok(n) => feed(&buf[..n], session, c, logged_in),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(_) => Err(Outcome::Failed(FailKind::Io)),
    }
}

/// Feeds received bytes to the session, counting what it reports.
fn feed<'a>(
    data: &[u8],
    session: &mut BotSession,
    c: &'a Counters,
    logged_in: &mut Option<Gauge<'a>>,
) -> Result<(), Outcome> {
    session
        .feed(data, Instant::now(), unix_nanos_now(), |ev| {
            if count_event(c, ev) {
                *logged_in = Some(Gauge::up(&c.logged_in));
            }
        })
        .map_err(|e| Outcome::Failed(e.kind()))
}

/// Counts what a session reported (logins and their latency, pongs, deliveries and probe
/// latencies); returns whether it was the login (the driver raises the logged-in gauge). Both
/// engines count through here.
pub fn count_event(c: &Counters, ev: Event) -> bool {
    match ev {
        Event::LoggedIn { latency } => {
            c.logins.fetch_add(1, Ordering::Relaxed);
            c.login_latency_us(latency.as_micros() as u64);
            return true;
        }
        Event::Pong => {
            c.pongs.fetch_add(1, Ordering::Relaxed);
        }
        Event::Delivered(d) => {
            c.deliveries.fetch_add(1, Ordering::Relaxed);
            match d {
                Delivery::Probe { latency, sent } => {
                    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                    c.delivery_latency_us(us);
                    c.probe_delivered(sent, us);
                }
                Delivery::ProbeFromFuture => {
                    c.delivery_clock_skew.fetch_add(1, Ordering::Relaxed);
                }
                Delivery::Other => {}
            }
        }
    }
    false
}

async fn connect(ctx: &BotCtx, index: usize) -> std::io::Result<BotStream> {
    let source = ctx.source_ips.get(index % ctx.source_ips.len().max(1)).copied();
    let quic = ctx.quic.as_deref().filter(|_| (index % 100) < usize::from(ctx.quic_percent));
    BotStream::connect(ctx.addr, source, quic).await
}

#[cfg(test)]
#[path = "bot_tests.rs"]
mod tests;
