//! A connection's output: frames go straight into the sink when nothing waits, else into the
//! capped [`OutQueue`] (past a cap: the SLOW_CONSUMER kick); the closing sequence (last frame,
//! half-close, linger) driven by [`CloseTimer`].

use std::io::{self, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use tern_proto::session::server::kick;
use tern_proto::v1::KickReason;

use super::{Connection, Env, Phase, REARM, SHUTDOWN_WRITE};
use crate::closing::CloseTimer;
use crate::metrics::GatewayMetrics;
use crate::outbound::OutQueue;

impl Connection {
    /// Sends `frame` (a push, an answer, a reply): straight into the sink when nothing waits,
    /// else into the outbound queue under its caps (past a cap: SLOW_CONSUMER kick and close).
    /// Nothing is sent once closing.
    pub fn push(
        &mut self,
        now: Instant,
        frame: Option<Bytes>,
        io: &mut impl Write,
        env: &impl Env,
    ) {
        let Some(frame) = frame else { return };
        if !self.sends() {
            return;
        }
        let (cfg, m) = (env.config(), env.metrics());
        m.frames_out.fetch_add(1, Relaxed);
        match self.out.as_mut() {
            None => {
                if write_or_queue(&mut self.out, io, frame, m).is_err() {
                    self.finish();
                }
            }
            Some(q) => {
                let before = q.queued_bytes();
                let overflow =
                    q.push(frame, cfg.max_outbound_bytes, cfg.max_outbound_frames).is_err();
                if overflow {
                    m.slow_consumer_kicks.fetch_add(1, Relaxed);
                    q.replace_with(slow_consumer_kick(cfg.session.max_frame_bytes));
                }
                account(m, before, q.queued_bytes());
                if overflow {
                    self.close_with(now, None, io, env);
                }
            }
        }
    }

    /// [`push`](Self::push) for several frames in order (a group commit's answers and pushes
    /// to one connection): one `writev` when nothing waits; what the sink does not take is
    /// queued under the same caps. Leaves `frames` empty.
    pub fn push_batch(
        &mut self,
        now: Instant,
        frames: &mut Vec<Bytes>,
        io: &mut impl Write,
        env: &impl Env,
    ) {
        if !self.sends() {
            frames.clear();
            return;
        }
        if self.out.is_some() {
            for frame in frames.drain(..) {
                self.push(now, Some(frame), io, env);
            }
            return;
        }
        let (cfg, m) = (env.config(), env.metrics());
        m.frames_out.fetch_add(frames.len() as u64, Relaxed);
        let mut q = OutQueue::default();
        for frame in frames.drain(..) {
            q.push_uncapped(frame);
        }
        match q.flush(io) {
            Ok(true) => {}
            Ok(false) => {
                // As if pushed one by one after the first, partly written frame.
                let overflow = q.queued_bytes() > cfg.max_outbound_bytes
                    || q.frames() > cfg.max_outbound_frames;
                if overflow {
                    m.slow_consumer_kicks.fetch_add(1, Relaxed);
                    q.replace_with(slow_consumer_kick(cfg.session.max_frame_bytes));
                }
                account(m, 0, q.queued_bytes());
                self.out = Some(Box::new(q));
                if overflow {
                    self.close_with(now, None, io, env);
                }
            }
            Err(_) => self.finish(),
        }
    }

    /// The sink has room again: writes what waits. Once a closing connection's last byte is
    /// out: half-close ([`super::Event::ShutdownWrite`]) and linger from `now`.
    pub fn on_writable(&mut self, now: Instant, io: &mut impl Write, env: &impl Env) {
        let Some(q) = self.out.as_mut() else { return };
        let before = q.queued_bytes();
        let r = q.flush(io);
        account(env.metrics(), before, q.queued_bytes());
        match r {
            Ok(true) => {
                self.out = None;
                if let Phase::Closing(t) = &mut self.phase {
                    t.on_written(now);
                    self.flags |= SHUTDOWN_WRITE | REARM;
                }
            }
            Ok(false) => {}
            Err(_) => self.finish(),
        }
    }

    /// Starts closing at `now`: leaves the registry, writes `last` (a Kick or a fatal Error)
    /// after what is queued, half-closes once all is out, and drains input until EOF or the
    /// deadline of [`CloseTimer`] (the close timeout while the last frame waits, then the
    /// linger). Does nothing if already closing.
    pub fn close_with(
        &mut self,
        now: Instant,
        last: Option<Bytes>,
        io: &mut impl Write,
        env: &impl Env,
    ) {
        if !self.sends() {
            return;
        }
        self.leave(env);
        self.session.close_now();
        self.partial = Vec::new();
        let m = env.metrics();
        if let Some(frame) = last {
            m.frames_out.fetch_add(1, Relaxed);
            let r = match self.out.as_mut() {
                Some(q) => {
                    account(m, 0, frame.len());
                    q.push_uncapped(frame);
                    Ok(())
                }
                None => write_or_queue(&mut self.out, io, frame, m),
            };
            if r.is_err() {
                return self.finish();
            }
        }
        let written = self.out.is_none();
        if written {
            self.flags |= SHUTDOWN_WRITE;
        }
        self.phase = Phase::Closing(CloseTimer::start(now, written, env.config().close_timeout));
        self.flags |= REARM;
    }

    /// Whether frames may still be sent (not closing, not done).
    fn sends(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::LoginWait { .. })
    }
}

/// Writes `frame` into a sink with nothing queued; what the sink does not take goes into a new
/// outbound queue in `out`. Err when the sink failed.
fn write_or_queue(
    out: &mut Option<Box<OutQueue>>,
    io: &mut impl Write,
    frame: Bytes,
    m: &GatewayMetrics,
) -> io::Result<()> {
    let mut written = 0;
    while written < frame.len() {
        match io.write(&frame[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if written < frame.len() {
        account(m, 0, frame.len() - written);
        *out = Some(Box::new(OutQueue::with_rest(frame, written)));
    }
    Ok(())
}

/// Keeps the queued-bytes gauge in step with a queue that went from `before` to `after` bytes.
pub(super) fn account(m: &GatewayMetrics, before: usize, after: usize) {
    let g = &m.outbound_queued_bytes;
    if after > before {
        g.fetch_add((after - before) as u64, Relaxed);
    } else if before > after {
        g.fetch_sub((before - after) as u64, Relaxed);
    }
}

fn slow_consumer_kick(max_frame_len: usize) -> Bytes {
    let env = kick(KickReason::SlowConsumer, "outbound queue full: reconnect and sync");
    tern_proto::encode_to_bytes(&env, max_frame_len).unwrap_or_default()
}
