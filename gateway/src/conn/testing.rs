//! An in-memory driver for [`Connection`], shared by its unit tests and the
//! `gateway_connection` fuzz target: a virtual clock, a sink with a settable room, a recording
//! [`Env`] and the TCP driver's real timer wheel. No sockets, no sleeps, no runtime.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_proto::session::server::{AuthError, Authenticator, Identity};
use tern_proto::v1::{self, Envelope, envelope::Body};
use tern_proto::{FrameDecoder, encode_to_bytes};

use super::{Connection, Env, Event, LOGIN_PUBLISH_WAIT};
use crate::config::{DuplicateLogin, GatewayConfig};
use crate::core::wheel::{Key, Wheel};
use crate::metrics::GatewayMetrics;
use crate::upstream::RequestCtx;

/// Tokens are "user/device"; anything else is refused.
pub struct Auth;

impl Authenticator for Auth {
    fn authenticate(&self, token: &str, _now_unix_ms: i64) -> Result<Identity, AuthError> {
        let (user, device) = token.split_once('/').ok_or(AuthError::BadToken("no /".into()))?;
        Ok(Identity { user_id: user.into(), device_id: device.into() })
    }
}

/// Records what the connection asked of the gateway.
pub struct TestEnv {
    pub cfg: GatewayConfig,
    pub metrics: GatewayMetrics,
    /// Whether presence answers at once.
    pub reachable: Cell<bool>,
    /// Whether the registry holds the device already (for `OldestWins`).
    pub device_taken: Cell<bool>,
    pub registered: Cell<u32>,
    pub unregistered: Cell<u32>,
    pub settled: Cell<u32>,
    pub submitted: RefCell<Vec<u64>>,
    /// The answer the device check-in gets at once (`None`: it comes later).
    pub check_in_answer: RefCell<Option<Envelope>>,
    /// Check-ins asked for.
    pub check_ins: RefCell<Vec<Envelope>>,
}

impl Env for TestEnv {
    type Auth = Auth;
    fn config(&self) -> &GatewayConfig {
        &self.cfg
    }
    fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }
    fn authenticator(&self) -> &Auth {
        &Auth
    }
    fn unix_ms(&self) -> i64 {
        1_000_000
    }
    fn register(&self, _ctx: &Arc<RequestCtx>, policy: DuplicateLogin) -> bool {
        if policy == DuplicateLogin::OldestWins && self.device_taken.get() {
            return false;
        }
        self.registered.set(self.registered.get() + 1);
        true
    }
    fn unregister(&self, _ctx: &Arc<RequestCtx>) {
        self.unregistered.set(self.unregistered.get() + 1);
    }
    fn reachable(&self, _ctx: &Arc<RequestCtx>, within: Duration) -> bool {
        assert_eq!(within, LOGIN_PUBLISH_WAIT);
        self.reachable.get()
    }
    fn submit(&self, _ctx: &Arc<RequestCtx>, request: Envelope) {
        self.submitted.borrow_mut().push(request.request_id);
    }
    fn check_in(&self, _ctx: &Arc<RequestCtx>, request: Envelope) -> Option<Envelope> {
        self.check_ins.borrow_mut().push(request);
        self.check_in_answer.borrow().clone()
    }
    fn login_settled(&self) {
        self.settled.set(self.settled.get() + 1);
    }
}

/// A check-in answer that lets the login go on, with the device's logout fence.
pub fn checked_in(revoked_before_ms: i64) -> Envelope {
    Envelope {
        request_id: 1,
        body: Some(Body::DeviceCheckedIn(v1::DeviceCheckedIn { revoked_before_ms })),
    }
}

/// A transport's send side that takes `room` more bytes, then says `WouldBlock`.
pub struct Sink {
    pub bytes: Vec<u8>,
    pub room: usize,
    pub broken: bool,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        self.bytes.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The driver in miniature: one connection, its sink, the timer wheel, and what it carried out.
pub struct Harness {
    pub env: TestEnv,
    pub conn: Option<Connection>,
    pub sink: Sink,
    pub dec: FrameDecoder,
    pub wheel: Wheel,
    pub t0: Instant,
    pub now: Instant,
    /// Bytes of `sink` already decoded by [`Harness::frames`].
    pub seen: usize,
    pub shut: bool,
    pub resumed: u32,
}

impl Harness {
    pub fn new(cfg: GatewayConfig) -> Self {
        let t0 = Instant::now();
        let env = TestEnv {
            cfg,
            metrics: GatewayMetrics::default(),
            reachable: Cell::new(true),
            device_taken: Cell::new(false),
            registered: Cell::new(0),
            unregistered: Cell::new(0),
            settled: Cell::new(0),
            submitted: RefCell::new(Vec::new()),
            check_in_answer: RefCell::new(Some(checked_in(0))),
            check_ins: RefCell::new(Vec::new()),
        };
        let conn = Connection::new(t0, 7, &env.cfg);
        let mut h = Self {
            env,
            conn: Some(conn),
            sink: Sink { bytes: Vec::new(), room: usize::MAX, broken: false },
            dec: FrameDecoder::new(1 << 20),
            wheel: Wheel::new(t0, Duration::from_millis(100), 1024),
            t0,
            now: t0,
            seen: 0,
            shut: false,
            resumed: 0,
        };
        h.events();
        h
    }

    pub fn c(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("connection still open") // ok: test harness; the driver's own state, not peer input
    }

    pub fn paused(&self) -> bool {
        self.conn.as_ref().unwrap().reading_paused(&self.env.cfg) // ok: test harness state
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.conn.as_ref().unwrap().deadline(&self.env.cfg) // ok: test harness state
    }

    pub fn dropped(&self) -> bool {
        self.conn.is_none()
    }

    /// Carries out the connection's events as the TCP driver does.
    pub fn events(&mut self) {
        while let Some(c) = self.conn.as_mut() {
            match c.poll_event() {
                None => return,
                Some(Event::Drop) => self.conn.take().unwrap().release(&self.env), // ok: test harness state
                Some(Event::ShutdownWrite) => self.shut = true,
                Some(Event::Rearm) => {
                    if let Some(at) = c.deadline(&self.env.cfg) {
                        self.wheel.schedule(at, Key { slot: 0, generation: 0 });
                    }
                }
                Some(Event::Resume) => {
                    self.resumed += 1;
                    c.resume(self.now, &self.dec, &mut self.sink, &self.env);
                }
            }
        }
    }

    pub fn input(&mut self, bytes: &[u8]) {
        let c = self.conn.as_mut().unwrap(); // ok: test harness state
        assert!(!c.reading_paused(&self.env.cfg), "the driver reads only while not paused");
        c.on_input(self.now, bytes, &self.dec, &mut self.sink, &self.env);
        self.events();
    }

    pub fn with(&mut self, f: impl FnOnce(&mut Connection, Instant, &mut Sink, &TestEnv)) {
        if let Some(c) = self.conn.as_mut() {
            f(c, self.now, &mut self.sink, &self.env);
        }
        self.events();
    }

    pub fn push(&mut self, frame: Bytes) {
        self.with(|c, now, io, env| c.push(now, Some(frame), io, env));
    }

    /// Moves the virtual clock to `t0 + at` and fires the timers due by then.
    pub fn at(&mut self, at: Duration) {
        self.now = self.t0 + at;
        let mut due = Vec::new();
        self.wheel.advance(self.now, &mut due);
        for _ in due {
            self.with(|c, now, io, env| c.on_timer(now, io, env));
        }
    }

    /// Frames written since the last call.
    pub fn frames(&mut self) -> Vec<Envelope> {
        let mut out = Vec::new();
        while let Some((env, len)) = self.dec.decode_slice(&self.sink.bytes[self.seen..]).unwrap() {
            // ok: decodes what the connection wrote; a bad frame is the finding the fuzz target reports
            self.seen += len;
            out.push(env);
        }
        out
    }

    /// Logs in as u/d and takes the LoginOk.
    pub fn login(&mut self) {
        self.input(&login(1));
        let frames = self.frames();
        assert!(matches!(frames[..], [Envelope { body: Some(Body::LoginOk(_)), .. }]));
    }
}

/// A client frame.
pub fn frame(request_id: u64, body: Body) -> Bytes {
    encode_to_bytes(&Envelope { request_id, body: Some(body) }, usize::MAX)
        .expect("a client frame encodes") // ok: the harness's own frames
}

/// A Login as u/d.
pub fn login(request_id: u64) -> Bytes {
    let login = v1::Login {
        token: "u/d".into(),
        protocol_version: 1,
        client_version: "t".into(),
        ..Default::default()
    };
    frame(request_id, Body::Login(login))
}

/// A Ping.
pub fn ping(request_id: u64) -> Bytes {
    frame(request_id, Body::Ping(v1::Ping::default()))
}

/// An (empty) Send request.
pub fn send(request_id: u64) -> Bytes {
    frame(request_id, Body::Send(v1::Send::default()))
}
