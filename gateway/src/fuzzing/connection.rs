//! The `gateway_connection` fuzz body: a script of driver inputs fed to one
//! [`crate::conn::Connection`] over the in-memory driver ([`crate::conn::testing`]).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use tern_proto::encode_to_bytes;
use tern_proto::session::server::error;
use tern_proto::v1::{self, Envelope, ErrorCode, KickReason, envelope::Body};

use crate::config::{DuplicateLogin, GatewayConfig};
use crate::conn::testing::{Harness, frame, login, ping, send};

/// Longest script run (ops beyond it are ignored), so that each input stays fast.
const MAX_SCRIPT: usize = 4096;

/// Runs `data` as a script of (op, argument) byte pairs: bytes read (raw, or a Login, Ping or
/// Send frame), pushes and batches of server frames, the sink's room, writability, request
/// answers, presence answers, kicks, time passing, EOF, and environment switches (presence
/// answering at once, the device being registered already, a broken sink). The first byte
/// picks the duplicate-login policy. Afterwards the connection is shut down and left to close.
///
/// Invariants (a panic is the finding): the sink only ever holds whole frames in order
/// (the SLOW_CONSUMER replacement keeps frame borders) and nothing after a Kick or fatal
/// Error; a live connection with a deadline has a timer armed, and never more than a few;
/// the queued-bytes gauge equals what the connection queues; once dropped, the gauge, the
/// pending-login count and the registry are back where they started.
pub fn connection(data: &[u8]) {
    let data = &data[..data.len().min(MAX_SCRIPT)];
    let mut ops = data.iter().copied();
    let policy = match ops.next() {
        Some(b) if b & 1 == 1 => DuplicateLogin::OldestWins,
        _ => DuplicateLogin::NewestWins,
    };
    let cfg = GatewayConfig {
        max_outbound_bytes: 512,
        max_outbound_frames: 8,
        max_inflight_requests: 3,
        duplicate_login: policy,
        ..GatewayConfig::default()
    };
    let mut h = Harness::new(cfg);
    // As the driver counts a connection at accept.
    h.env.metrics.logins_pending.fetch_add(1, Relaxed);
    let mut s =
        Script { request_id: 1, answered: 0, elapsed: Duration::ZERO, eof: false, last: false };
    while let Some(op) = ops.next() {
        if h.dropped() {
            break;
        }
        let arg = ops.next().unwrap_or(0);
        match op % 13 {
            0 => {
                let chunk: Vec<u8> = ops.by_ref().take(usize::from(arg % 64)).collect();
                s.read(&mut h, &chunk);
            }
            1 => {
                let token = if arg & 1 == 0 { "u/d" } else { "no-slash" };
                let l =
                    v1::Login { token: token.into(), protocol_version: 1, ..Default::default() };
                let bytes = if arg & 2 == 0 { login_frame(l) } else { login(u64::from(arg)) };
                s.read(&mut h, &bytes);
            }
            2 => {
                let bytes = ping(s.next_id());
                s.read(&mut h, &bytes);
            }
            3 => {
                let bytes = send(s.next_id());
                s.read(&mut h, &bytes);
            }
            4 => h.push(server_frame(arg)),
            5 => {
                let mut frames: Vec<Bytes> = (0..arg % 6).map(|i| server_frame(arg ^ i)).collect();
                h.with(|c, now, io, env| c.push_batch(now, &mut frames, io, env));
            }
            6 => h.sink.room = usize::from(arg) * 8,
            7 => {
                if h.conn.as_ref().is_some_and(|c| c.wants_write()) {
                    h.with(|c, now, io, env| c.on_writable(now, io, env));
                }
            }
            8 => {
                // The upstream answers only requests it was given.
                if s.answered < h.env.submitted.borrow().len() {
                    s.answered += 1;
                    let answer = frame(u64::from(arg), Body::Pong(v1::Pong::default()));
                    h.with(|c, _, _, env| c.on_answer(env));
                    h.push(answer);
                }
            }
            9 => h.with(|c, now, io, env| c.on_reachable(now, io, env)),
            10 => {
                let reason = if arg & 1 == 0 {
                    KickReason::DuplicateLogin
                } else {
                    KickReason::ServerShutdown
                };
                h.with(|c, now, io, env| c.on_kick(now, reason, io, env));
            }
            11 => {
                s.elapsed += Duration::from_millis(u64::from(arg) * 50);
                h.at(s.elapsed);
            }
            _ => match arg % 4 {
                0 => {
                    s.eof = true;
                    h.with(|c, _, _, _| c.on_eof());
                }
                1 => h.env.reachable.set(!h.env.reachable.get()),
                2 => h.env.device_taken.set(!h.env.device_taken.get()),
                _ => h.sink.broken = true,
            },
        }
        s.check(&mut h);
    }
    // Shut down and let time pass: every connection closes within the close timeout.
    h.with(|c, now, io, env| c.on_kick(now, KickReason::ServerShutdown, io, env));
    s.check(&mut h);
    let close_timeout = h.env.cfg.close_timeout;
    for _ in 0..3 {
        s.elapsed += close_timeout + Duration::from_secs(1);
        h.at(s.elapsed);
        s.check(&mut h);
    }
    assert!(h.dropped(), "a shut-down connection closes within its close timeout");
    let m = &h.env.metrics;
    assert_eq!(m.outbound_queued_bytes.load(Relaxed), 0, "queued bytes released");
    assert_eq!(m.logins_pending.load(Relaxed), 0, "pending login counted out exactly once");
    assert_eq!(h.env.settled.get(), 1, "the source's pending login released once");
    assert_eq!(h.env.registered.get(), h.env.unregistered.get(), "left the registry");
}

/// What the script tracks besides the harness.
struct Script {
    request_id: u64,
    /// Requests answered so far.
    answered: usize,
    elapsed: Duration,
    /// The peer closed its side: reads return 0 from now on.
    eof: bool,
    /// A Kick or fatal Error was written: nothing may follow it.
    last: bool,
}

impl Script {
    fn next_id(&mut self) -> u64 {
        self.request_id += 1;
        self.request_id
    }

    /// Bytes from the peer, as the driver reads them: only while reading is not paused, and
    /// after EOF only EOF again.
    fn read(&mut self, h: &mut Harness, bytes: &[u8]) {
        let Some(c) = h.conn.as_ref() else { return };
        if c.reading_paused(&h.env.cfg) {
            return;
        }
        if self.eof {
            h.with(|c, _, _, _| c.on_eof());
        } else {
            h.input(bytes);
        }
    }

    fn check(&mut self, h: &mut Harness) {
        loop {
            match h.dec.decode_slice(&h.sink.bytes[h.seen..]) {
                Ok(None) => break,
                Ok(Some((env, len))) => {
                    h.seen += len;
                    assert!(!self.last, "a frame after the last one: {env:?}");
                    self.last = is_last(&env);
                }
                Err(e) => panic!("the sink holds a broken frame: {e}"),
            }
        }
        let Some(c) = h.conn.as_ref() else { return };
        let armed = h.wheel.len();
        if c.deadline(&h.env.cfg).is_some() {
            assert!(armed >= 1, "a deadline without a timer");
        }
        assert!(armed <= 5, "{armed} timers for one connection");
        let gauge = h.env.metrics.outbound_queued_bytes.load(Relaxed);
        assert_eq!(gauge, c.queued_bytes() as u64, "the gauge follows the queue");
    }
}

fn is_last(env: &Envelope) -> bool {
    match &env.body {
        Some(Body::Kick(_)) => true,
        Some(Body::Error(e)) => e.fatal,
        _ => false,
    }
}

fn login_frame(login: v1::Login) -> Bytes {
    frame(1, Body::Login(login))
}

/// A server push of some size (a non-fatal Error with an `arg`-byte message).
fn server_frame(arg: u8) -> Bytes {
    let env = error(0, ErrorCode::Internal, &"x".repeat(usize::from(arg) * 4), false);
    encode_to_bytes(&env, usize::MAX).unwrap_or_default()
}
