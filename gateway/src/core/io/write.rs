//! Writing for an I/O thread: the frames one mailbox drain brings for a connection are handed
//! to its [`crate::conn::Connection`] together (one `writev`); socket writability; freeing a
//! connection's slot. The caps, the SLOW_CONSUMER kick and the closing sequence are the
//! connection's.

use std::time::Instant;

use super::{Env, IoThread};
use crate::conn::admission;
use crate::upstream::Upstream;

impl<U: Upstream> IoThread<U> {
    /// Writes the frames staged by a mailbox drain: each connection's frames, in order, with
    /// one `writev` (a group commit answers and pushes many frames to one connection at once).
    pub(super) fn flush_staged(&mut self, now: Instant) {
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
                let frame = frames.pop();
                self.drive(slot, |c, io, env, _| c.push(now, frame, io, env));
            } else {
                self.drive(slot, |c, io, env, _| c.push_batch(now, &mut frames, io, env));
            }
            frames.clear();
        }
        drop(it);
        self.staged = staged;
    }

    pub(super) fn on_writable(&mut self, i: u32) {
        // TLS records already encrypted go first.
        if !self.on_tls_writable(i) {
            return;
        }
        let wants = self
            .slots
            .get(i as usize)
            .and_then(|s| s.conn.as_ref())
            .is_some_and(|c| c.conn.wants_write());
        if wants {
            self.drive(i, |c, io, env, _| c.on_writable(Instant::now(), io, env));
        }
    }

    /// Frees a connection's slot and closes its socket (or QUIC connection).
    pub(super) fn drop_conn(&mut self, i: u32) {
        let gw = self.gw.clone();
        let Some(slot) = self.slots.get_mut(i as usize) else { return };
        let key = super::Key { slot: i, generation: slot.generation };
        let Some(mut c) = slot.conn.take() else { return };
        slot.generation = slot.generation.wrapping_add(1);
        c.conn.release(&Env::new(&gw, &self.mailbox, &self.rt, key, c.source));
        admission::closed(&gw.metrics, &gw.sources, c.source);
        match &mut c.io {
            super::Transport::Tcp(stream) | super::Transport::Fresh(stream) => {
                let _ = self.poll.registry().deregister(stream);
            }
            super::Transport::Tls(t) => {
                gw.metrics.tls_connections_open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let _ = self.poll.registry().deregister(t.sock());
            }
            super::Transport::Quic(id) => self.close_quic(*id),
        }
        self.free.push(i);
        self.live -= 1;
    }
}
