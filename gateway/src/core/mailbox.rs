//! Cross-thread hand-off into one I/O thread: a command queue plus a mio [`Waker`], woken once
//! per batch. Pushes from dispatch, kicks, and the answers of requests that ran on the async
//! runtime all reach a connection this way; only its I/O thread touches the connection.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use mio::Waker;

/// Work for an I/O thread.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// Queue a frame (a push) on a connection.
    Push { slot: u32, generation: u32, frame: Bytes },
    /// Close a connection after writing `last` (a Kick).
    Close { slot: u32, generation: u32, last: Option<Bytes> },
    /// A forwarded request finished: write its answer, take one request off the in-flight count.
    Answer { slot: u32, generation: u32, frame: Option<Bytes> },
    /// The upstream made a new login reachable: write LoginOk and resume reading.
    LoginReady { slot: u32, generation: u32, frame: Option<Bytes> },
    /// Stop accepting, kick every connection (SERVER_SHUTDOWN), exit once they closed.
    Shutdown,
}

/// One I/O thread's inbox.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<Vec<Cmd>>,
    waker: Waker,
}

impl Mailbox {
    pub(crate) fn new(waker: Waker) -> Self {
        Self { queue: Mutex::new(Vec::new()), waker }
    }

    /// Queues `cmd`; wakes the thread when the queue was empty (it drains all at once).
    pub(crate) fn send(&self, cmd: Cmd) {
        let first = {
            // Critical sections are a push or a swap: a poisoned lock is still consistent.
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.push(cmd);
            q.len() == 1
        };
        if first && let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "waking an I/O thread failed");
        }
    }

    /// Takes every queued command into `into` (which must be empty; its buffer is reused).
    pub(crate) fn drain(&self, into: &mut Vec<Cmd>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *q, into);
    }
}

/// How other threads reach one connection: its I/O thread's mailbox and its slab slot.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    mailbox: Arc<Mailbox>,
    slot: u32,
    generation: u32,
}

impl ConnHandle {
    pub(crate) fn new(mailbox: Arc<Mailbox>, slot: u32, generation: u32) -> Self {
        Self { mailbox, slot, generation }
    }

    /// Queues `frame` for the connection (its I/O thread applies the outbound caps).
    pub fn push(&self, frame: Bytes) {
        self.mailbox.send(Cmd::Push { slot: self.slot, generation: self.generation, frame });
    }

    /// Closes the connection after writing `last`.
    pub fn close_with(&self, last: Option<Bytes>) {
        self.mailbox.send(Cmd::Close { slot: self.slot, generation: self.generation, last });
    }

    pub(crate) fn answer(&self, frame: Option<Bytes>) {
        self.mailbox.send(Cmd::Answer { slot: self.slot, generation: self.generation, frame });
    }

    pub(crate) fn login_ready(&self, frame: Option<Bytes>) {
        self.mailbox.send(Cmd::LoginReady { slot: self.slot, generation: self.generation, frame });
    }
}
