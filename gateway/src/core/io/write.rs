//! Writing and closing for an I/O thread: straight to the socket or into the capped outbound
//! queue (past the cap: the SLOW_CONSUMER kick), the closing sequence driven by the sans-IO
//! [`CloseTimer`], and freeing a connection's slot.

use std::io::{self, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use tern_proto::session::server::kick;
use tern_proto::v1::KickReason;

use super::{Conn, IoThread, Phase};
use crate::closing::CloseTimer;
use crate::outbound::OutQueue;
use crate::server::Gateway;
use crate::upstream::Upstream;

impl<U: Upstream> IoThread<U> {
    // ----- writing -----

    /// Sends `frame` on an open connection: straight to the socket when nothing waits, else
    /// into the outbound queue under its caps (past a cap: SLOW_CONSUMER kick and close).
    pub(super) fn send(&mut self, i: u32, frame: Option<Bytes>) {
        let Some(frame) = frame else { return };
        let gw = self.gw.clone();
        let Some(c) = self.conn(i) else { return };
        if c.phase == Phase::Closing {
            return;
        }
        gw.metrics.frames_out.fetch_add(1, Relaxed);
        let (max_bytes, max_frames) = (gw.cfg.max_outbound_bytes, gw.cfg.max_outbound_frames);
        match c.out.as_mut() {
            None => {
                if write_or_queue(c, frame, &gw).is_err() {
                    self.drop_conn(i);
                }
            }
            Some(q) => {
                let before = q.queued_bytes();
                let overflow = q.push(frame, max_bytes, max_frames).is_err();
                if overflow {
                    gw.metrics.slow_consumer_kicks.fetch_add(1, Relaxed);
                    q.replace_with(slow_consumer_kick(gw.cfg.session.max_frame_bytes));
                }
                account(&gw, before, q.queued_bytes());
                if overflow {
                    self.begin_close(i, None);
                }
            }
        }
    }

    /// Writes the frames staged by a mailbox drain: each connection's frames, in order, with
    /// one `writev` (a group commit answers and pushes many frames to one connection at once).
    pub(super) fn flush_staged(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let mut staged = std::mem::take(&mut self.staged);
        // Stable: a connection's frames keep their order.
        staged.sort_by_key(|&(slot, _)| slot);
        let mut frames = Vec::new();
        let mut it = staged.drain(..).peekable();
        while let Some((slot, frame)) = it.next() {
            frames.push(frame);
            while let Some((_, f)) = it.next_if(|&(s, _)| s == slot) {
                frames.push(f);
            }
            if frames.len() == 1 {
                self.send(slot, frames.pop());
            } else {
                self.send_all(slot, &mut frames);
            }
            frames.clear();
        }
        drop(it);
        self.staged = staged;
    }

    /// [`send`](Self::send) for several frames: one `writev` when nothing waits; what the
    /// socket does not take is queued under the same caps.
    fn send_all(&mut self, i: u32, frames: &mut Vec<Bytes>) {
        let gw = self.gw.clone();
        let Some(c) = self.conn(i) else { return };
        if c.phase == Phase::Closing {
            return;
        }
        if c.out.is_some() {
            for frame in frames.drain(..) {
                self.send(i, Some(frame));
            }
            return;
        }
        gw.metrics.frames_out.fetch_add(frames.len() as u64, Relaxed);
        let mut q = OutQueue::default();
        for frame in frames.drain(..) {
            q.push_uncapped(frame);
        }
        match q.flush(&mut c.stream) {
            Ok(true) => {}
            Ok(false) => {
                let (max_bytes, max_frames) =
                    (gw.cfg.max_outbound_bytes, gw.cfg.max_outbound_frames);
                // As if pushed one by one after the first, partly written frame.
                let overflow = q.queued_bytes() > max_bytes || q.frames() > max_frames;
                if overflow {
                    gw.metrics.slow_consumer_kicks.fetch_add(1, Relaxed);
                    q.replace_with(slow_consumer_kick(gw.cfg.session.max_frame_bytes));
                }
                account(&gw, 0, q.queued_bytes());
                c.out = Some(Box::new(q));
                if overflow {
                    self.begin_close(i, None);
                }
            }
            Err(_) => self.drop_conn(i),
        }
    }

    pub(super) fn on_writable(&mut self, i: u32) {
        let gw = self.gw.clone();
        let Some(c) = self.conn(i) else { return };
        let Some(q) = c.out.as_mut() else { return };
        let before = q.queued_bytes();
        let r = q.flush(&mut c.stream);
        account(&gw, before, q.queued_bytes());
        match r {
            Ok(true) => {
                c.out = None;
                if c.phase == Phase::Closing {
                    // The last frame is out: linger briefly, then close.
                    let _ = c.stream.shutdown(Shutdown::Write);
                    if let Some(t) = c.closing.as_mut() {
                        t.on_written(Instant::now());
                        let at = t.deadline();
                        let key = self.key(i);
                        self.wheel.schedule(at, key);
                    }
                }
            }
            Ok(false) => {}
            Err(_) => self.drop_conn(i),
        }
    }

    // ----- closing -----

    /// Starts closing: leaves the registry, writes `last` after what is queued, shuts down
    /// writing once all is out, and drains input until EOF or the deadline of
    /// [`CloseTimer`] (the close timeout while the last frame waits, then the linger).
    pub(super) fn begin_close(&mut self, i: u32, last: Option<Bytes>) {
        let gw = self.gw.clone();
        let Some(c) = self.conn(i) else { return };
        if c.phase == Phase::Closing {
            return;
        }
        leave(c, &gw);
        c.phase = Phase::Closing;
        c.session.close_now();
        c.partial = Vec::new();
        if let Some(frame) = last {
            gw.metrics.frames_out.fetch_add(1, Relaxed);
            let r = match c.out.as_mut() {
                Some(q) => {
                    q.push_uncapped(frame.clone());
                    account(&gw, 0, frame.len());
                    Ok(())
                }
                None => write_or_queue(c, frame, &gw),
            };
            if r.is_err() {
                return self.drop_conn(i);
            }
        }
        let written = c.out.is_none();
        if written {
            let _ = c.stream.shutdown(Shutdown::Write);
        }
        let timer = CloseTimer::start(Instant::now(), written, gw.cfg.close_timeout);
        c.closing = Some(timer);
        let key = self.key(i);
        self.wheel.schedule(timer.deadline(), key);
    }

    /// Frees a connection's slot and closes its socket.
    pub(super) fn drop_conn(&mut self, i: u32) {
        let gw = self.gw.clone();
        let Some(slot) = self.slots.get_mut(i as usize) else { return };
        let Some(mut c) = slot.conn.take() else { return };
        slot.generation = slot.generation.wrapping_add(1);
        if c.phase != Phase::Closing {
            leave(&mut c, &gw);
        }
        if let Some(q) = &c.out {
            account(&gw, q.queued_bytes(), 0);
        }
        gw.sources.release(c.source);
        gw.metrics.sources.store(gw.sources.tracked(), Relaxed);
        let _ = self.poll.registry().deregister(&mut c.stream);
        self.free.push(i);
        self.live -= 1;
        gw.metrics.connections_open.fetch_sub(1, Relaxed);
    }
}

/// Writes `frame` to a connection with nothing queued; what the socket does not take goes
/// into a new outbound queue. Err when the socket failed.
fn write_or_queue<U: Upstream>(c: &mut Conn, frame: Bytes, gw: &Gateway<U>) -> io::Result<()> {
    let mut written = 0;
    while written < frame.len() {
        match c.stream.write(&frame[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if written < frame.len() {
        account(gw, 0, frame.len() - written);
        c.out = Some(Box::new(OutQueue::with_rest(frame, written)));
    }
    Ok(())
}

/// Leaves the registry and the upstream's view, and the pending-login count.
fn leave<U: Upstream>(c: &mut Conn, gw: &Gateway<U>) {
    if std::mem::take(&mut c.pending) {
        gw.metrics.logins_pending.fetch_sub(1, Relaxed);
        gw.sources.not_pending(c.source);
    }
    if let Some(ctx) = c.ctx.take() {
        gw.registry.unregister(&ctx.user_id, c.id);
        gw.upstream.disconnected(&ctx);
    }
}

/// Keeps the queued-bytes gauge in step with a queue that went from `before` to `after` bytes.
fn account<U: Upstream>(gw: &Gateway<U>, before: usize, after: usize) {
    let g = &gw.metrics.outbound_queued_bytes;
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
