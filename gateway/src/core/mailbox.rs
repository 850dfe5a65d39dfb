//! Cross-thread hand-off into one I/O thread: a command queue plus a mio [`Waker`], written only
//! when the thread sleeps in `poll` (at most once per sleep): a busy thread drains its queue
//! before it sleeps again, so senders to it make no syscall. Pushes from dispatch, kicks, and the answers of requests that ran on the async
//! runtime all reach a connection this way, and so do the datagrams of a migrated QUIC client that
//! reached another thread's socket; only its I/O thread touches the connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use mio::Waker;
use tern_proto::v1::KickReason;

/// Work for an I/O thread.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// Queue a frame (a push) on a connection.
    Push { slot: u32, generation: u32, frame: Bytes },
    /// Close a connection after writing `last` (a Kick).
    Close { slot: u32, generation: u32, last: Option<Bytes> },
    /// Kick a connection (the connection writes the Kick, then closes).
    Kick { slot: u32, generation: u32, reason: KickReason },
    /// A forwarded request finished: write its answer, take one request off the in-flight count.
    Answer { slot: u32, generation: u32, frame: Option<Bytes> },
    /// The upstream made a new login reachable: write LoginOk and resume reading.
    LoginReady { slot: u32, generation: u32 },
    /// The device check-in of a login answered.
    CheckedIn { slot: u32, generation: u32, answer: Box<tern_proto::v1::Envelope> },
    /// Stop accepting, kick every connection (SERVER_SHUTDOWN), exit once they closed.
    Shutdown,
    /// A QUIC datagram another thread's socket received for this thread's endpoint.
    Datagram(Box<Forwarded>),
}

/// A QUIC datagram handed between I/O threads, as received.
#[derive(Debug)]
pub(crate) struct Forwarded {
    /// The client's address.
    pub from: SocketAddr,
    /// The local address it was received on, when the socket knows it.
    pub local: Option<IpAddr>,
    pub data: BytesMut,
}

/// One I/O thread's inbox.
#[derive(Debug)]
pub struct Mailbox {
    state: Mutex<State>,
    waker: Waker,
}

#[derive(Debug, Default)]
struct State {
    cmds: Vec<Cmd>,
    /// The thread is (about to be) blocked in `poll` and nobody has woken it yet.
    asleep: bool,
}

impl Mailbox {
    pub(crate) fn new(waker: Waker) -> Self {
        Self { state: Mutex::default(), waker }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Critical sections are a push, a swap or a flag: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `cmd`; wakes the thread only if it sleeps (the first sender after it fell asleep
    /// does; the thread then drains everything queued at once).
    pub(crate) fn send(&self, cmd: Cmd) {
        self.send_all(std::iter::once(cmd));
    }

    /// Queues several commands with one lock and at most one wake.
    pub(crate) fn send_all(&self, cmds: impl IntoIterator<Item = Cmd>) {
        let wake = {
            let mut s = self.lock();
            s.cmds.extend(cmds);
            std::mem::take(&mut s.asleep)
        };
        if wake && let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "waking an I/O thread failed");
        }
    }

    /// Takes every queued command into `into` (which must be empty; its buffer is reused).
    pub(crate) fn drain(&self, into: &mut Vec<Cmd>) {
        std::mem::swap(&mut self.lock().cmds, into);
    }

    /// The owning thread is about to block in `poll`: false (do not block) when commands
    /// wait, else later senders wake it.
    pub(crate) fn going_to_sleep(&self) -> bool {
        let mut s = self.lock();
        s.asleep = s.cmds.is_empty();
        s.asleep
    }

    /// The owning thread returned from `poll`: it drains before it sleeps again, so senders
    /// need not wake it.
    pub(crate) fn awake(&self) {
        self.lock().asleep = false;
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

    /// The push of `frame` to this connection, for [`Mailbox::send_all`] on its mailbox.
    pub(crate) fn push_cmd(&self, frame: Bytes) -> Cmd {
        Cmd::Push { slot: self.slot, generation: self.generation, frame }
    }

    /// The I/O thread's inbox.
    pub(crate) fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    /// Closes the connection after writing `last`.
    pub fn close_with(&self, last: Option<Bytes>) {
        self.mailbox.send(Cmd::Close { slot: self.slot, generation: self.generation, last });
    }

    /// Kicks the connection: it writes a Kick with `reason`, then closes.
    pub fn kick(&self, reason: KickReason) {
        self.mailbox.send(Cmd::Kick { slot: self.slot, generation: self.generation, reason });
    }

    pub(crate) fn answer(&self, frame: Option<Bytes>) {
        self.mailbox.send(Cmd::Answer { slot: self.slot, generation: self.generation, frame });
    }

    pub(crate) fn checked_in(&self, answer: tern_proto::v1::Envelope) {
        let (slot, generation, answer) = (self.slot, self.generation, Box::new(answer));
        self.mailbox.send(Cmd::CheckedIn { slot, generation, answer });
    }

    pub(crate) fn login_ready(&self) {
        self.mailbox.send(Cmd::LoginReady { slot: self.slot, generation: self.generation });
    }
}

#[cfg(test)]
mod tests {
    use mio::{Events, Poll, Token};

    use super::*;

    const WAKER: Token = Token(7);

    fn wakes(poll: &mut Poll) -> usize {
        let mut events = Events::with_capacity(8);
        poll.poll(&mut events, Some(std::time::Duration::ZERO)).unwrap();
        events.iter().filter(|e| e.token() == WAKER).count()
    }

    fn shutdowns(m: &Mailbox) -> usize {
        let mut cmds = Vec::new();
        m.drain(&mut cmds);
        cmds.len()
    }

    #[test]
    fn only_a_sleeping_thread_is_woken_and_only_once() {
        let mut poll = Poll::new().unwrap();
        let m = Mailbox::new(Waker::new(poll.registry(), WAKER).unwrap());
        // Awake (never slept): senders make no syscall; the thread finds the commands itself.
        m.send(Cmd::Shutdown);
        assert_eq!(wakes(&mut poll), 0);
        assert!(!m.going_to_sleep(), "commands wait: the thread must not block");
        assert_eq!(shutdowns(&m), 1);
        // Asleep: the first sender wakes it, the next ones do not.
        assert!(m.going_to_sleep());
        m.send(Cmd::Shutdown);
        m.send(Cmd::Shutdown);
        assert_eq!(wakes(&mut poll), 1);
        m.awake();
        m.send(Cmd::Shutdown);
        assert_eq!(wakes(&mut poll), 0, "awake again: no wake-up");
        assert_eq!(shutdowns(&m), 3);
        assert!(m.going_to_sleep());
        m.awake();
        m.send(Cmd::Shutdown);
        assert_eq!(wakes(&mut poll), 0);
        assert_eq!(shutdowns(&m), 1);
    }
}
