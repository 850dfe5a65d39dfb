//! The QUIC side of an I/O thread: its UDP socket and its [`QuicHost`] (one endpoint of the
//! process), whose connections sit in the thread's slab beside the TCP ones and are driven by
//! the same [`crate::conn::Connection`]. Datagrams are read into the thread's own buffer;
//! one whose destination connection ID names another thread's endpoint (a client whose address
//! changed, so the kernel now hashes it to this socket) is handed to that thread's mailbox.
//! Host events map onto the connection's inputs: the completed handshake (or a stream opened
//! in 0-RTT data before it) is the accept, `Data` the read,
//! `Writable` the socket's writability, `ReadClosed` the EOF; a connection's half-close is the
//! stream's `finish`, after which `Flushed` (all acknowledged) closes it. After each loop turn
//! the host's datagrams are sent (one `send_to` each).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::BytesMut;
use mio::net::UdpSocket;

use super::super::QuicListen;
use super::super::mailbox::{Cmd, Forwarded, Mailbox};
use super::{Conn, IoThread, Transport};
use crate::conn::{Connection, admission};
use crate::quic::config::{self, endpoint_of};
use crate::quic::{HandshakeLimits, HostEvent, QuicConnId, QuicHost, Transmit};
use crate::upstream::Upstream;

/// Datagrams read per loop turn before the thread's other work gets its turn.
const DATAGRAMS_PER_TURN: usize = 64;
/// Largest UDP payload.
const DATAGRAM_BYTES: usize = 65_535;
/// Application close code when the gateway closes a QUIC connection (the Kick or Error frame
/// before it says why).
const CLOSE_CODE: u32 = 0;

/// What an I/O thread needs to serve QUIC: its UDP socket and which endpoint it is.
pub(in crate::core) struct QuicEndpoint {
    pub socket: std::net::UdpSocket,
    /// This thread's endpoint among `count` (the first byte of its connection IDs).
    pub index: u8,
    pub count: u8,
    /// The stateless-reset key every endpoint of the process shares.
    pub reset_key: [u8; 32],
    pub listen: QuicListen,
}

/// The thread's QUIC state.
pub(super) struct QuicSide {
    socket: UdpSocket,
    pub(super) host: QuicHost,
    index: u8,
    count: u8,
    local_ip: Option<IpAddr>,
    /// The slab slot of each host connection that has one, by [`QuicConnId::index`].
    slots: Vec<Option<(QuicConnId, u32)>>,
    /// Every thread's mailbox, by endpoint index (set before the thread starts).
    peers: Arc<[Option<Arc<Mailbox>>]>,
    /// A datagram the socket refused (its buffer was full): sent first when it is writable.
    blocked: Option<Transmit>,
    /// The turn's datagram budget ran out with datagrams left in the socket.
    pub(super) more: bool,
    buf: Vec<u8>,
}

impl QuicSide {
    pub(super) fn new(
        e: QuicEndpoint,
        max_connections: usize,
        poll: &mio::Poll,
        token: mio::Token,
    ) -> io::Result<Self> {
        e.socket.set_nonblocking(true)?;
        let local_ip = Some(e.socket.local_addr()?.ip()).filter(|ip| !ip.is_unspecified());
        let mut socket = UdpSocket::from_std(e.socket);
        let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
        poll.registry().register(&mut socket, token, interest)?;
        let endpoint = config::endpoint(e.index, e.count, &e.reset_key);
        let limits = HandshakeLimits::of(&e.listen.settings);
        Ok(Self {
            socket,
            host: QuicHost::new(endpoint, e.listen.server_config, max_connections, limits),
            index: e.index,
            count: e.count,
            local_ip,
            slots: Vec::new(),
            peers: Arc::new([]),
            blocked: None,
            more: false,
            buf: vec![0; DATAGRAM_BYTES],
        })
    }

    pub(super) fn set_peers(&mut self, peers: Arc<[Option<Arc<Mailbox>>]>) {
        self.peers = peers;
    }

    /// The slab slot of host connection `id`.
    fn slot(&self, id: QuicConnId) -> Option<u32> {
        match self.slots.get(id.index as usize) {
            Some(Some((held, slot))) if *held == id => Some(*slot),
            _ => None,
        }
    }

    fn map(&mut self, id: QuicConnId, slot: u32) {
        let i = id.index as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = Some((id, slot));
    }

    pub(super) fn unmap(&mut self, id: QuicConnId) {
        if let Some(entry) = self.slots.get_mut(id.index as usize)
            && entry.is_some_and(|(held, _)| held == id)
        {
            *entry = None;
        }
    }

    /// Sends the host's datagrams until none is left or the socket is full.
    fn send(&mut self, now: Instant) {
        loop {
            let Some(t) = self.blocked.take().or_else(|| self.host.poll_transmit(now)) else {
                return;
            };
            match self.socket.send_to(&t.data, t.destination) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = Some(t);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.blocked = Some(t),
                // Unreachable destinations and the like: QUIC recovers from the loss.
                Err(e) => tracing::debug!(error = %e, to = %t.destination, "QUIC send failed"),
            }
        }
    }
}

impl<U: Upstream> IoThread<U> {
    /// Reads datagrams from the UDP socket (within the turn's budget): each goes to this
    /// thread's host, or to the thread whose endpoint its connection ID names.
    pub(super) fn on_datagrams(&mut self) {
        let Some(q) = self.quic.as_deref_mut() else { return };
        let now = Instant::now();
        q.more = false;
        for _ in 0..DATAGRAMS_PER_TURN {
            match q.socket.recv_from(&mut q.buf) {
                Ok((n, from)) => {
                    let data = &q.buf[..n];
                    let to = endpoint_of(data, q.count).filter(|&e| e != q.index);
                    match to.and_then(|e| q.peers.get(usize::from(e))?.as_ref()) {
                        Some(peer) => {
                            self.gw.metrics.quic_datagrams_forwarded.fetch_add(1, Relaxed);
                            let local = q.local_ip;
                            peer.send(Cmd::Datagram(Box::new(Forwarded {
                                from,
                                local,
                                data: BytesMut::from(data),
                            })));
                        }
                        None => q.host.handle(now, from, q.local_ip, None, BytesMut::from(data)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // An error queued on the socket (an ICMP report): the next datagram is fine.
                Err(e) => tracing::debug!(error = %e, "QUIC receive failed"),
            }
        }
        q.more = true;
    }

    /// A datagram another thread received for this thread's endpoint.
    pub(super) fn on_forwarded(&mut self, d: Forwarded) {
        if let Some(q) = self.quic.as_deref_mut() {
            q.host.handle(Instant::now(), d.from, d.local, None, d.data);
        }
    }

    /// The socket can take datagrams again.
    pub(super) fn on_udp_writable(&mut self) {
        if let Some(q) = self.quic.as_deref_mut() {
            q.send(Instant::now());
        }
    }

    /// The end of a loop turn: runs the host's due timers, carries out its events, and sends
    /// its datagrams.
    pub(super) fn quic_turn(&mut self) {
        let Some(q) = self.quic.as_deref_mut() else { return };
        let now = Instant::now();
        q.host.handle_timeouts(now);
        let stats = q.host.take_stats();
        self.gw.metrics.quic_handshakes_refused.fetch_add(stats.refused, Relaxed);
        self.gw.metrics.quic_retries.fetch_add(stats.retries, Relaxed);
        loop {
            let mut any = false;
            while let Some(ev) = self.quic.as_deref_mut().and_then(|q| q.host.poll_event(now)) {
                any = true;
                self.on_host_event(now, ev);
            }
            if let Some(q) = self.quic.as_deref_mut() {
                q.send(now);
            }
            if !any {
                return;
            }
        }
    }

    /// When the host needs [`QuicHost::handle_timeouts`] next.
    pub(super) fn quic_timeout(&mut self) -> Option<Instant> {
        self.quic.as_deref_mut().and_then(|q| q.host.next_timeout())
    }

    fn on_host_event(&mut self, now: Instant, ev: HostEvent) {
        // 0-RTT data reaches the connection marked early: it acts only on replay-safe frames
        // and holds the rest until the handshake completes (`conn::early`).
        let i = match &ev {
            // The accept is whichever comes first: the handshake completed (the client has not
            // necessarily opened its stream: the login timeout runs from here), or the stream
            // opened in 0-RTT data, before the handshake completed.
            HostEvent::Opened { conn, .. } | HostEvent::Established { conn, .. } => {
                let established = matches!(ev, HostEvent::Established { .. });
                if matches!(ev, HostEvent::Established { zero_rtt: true, .. }) {
                    self.gw.metrics.quic_0rtt_connections.fetch_add(1, Relaxed);
                }
                match self.quic.as_deref().and_then(|q| q.slot(*conn)) {
                    None => self.admit_quic(now, *conn),
                    Some(i) if established => self.drive(i, |c, io, env, dec| {
                        c.on_established();
                        c.resume(now, dec, io, env);
                    }),
                    Some(_) => {}
                }
                return;
            }
            HostEvent::Data { conn, .. }
            | HostEvent::Writable { conn }
            | HostEvent::ReadClosed { conn }
            | HostEvent::Flushed { conn }
            | HostEvent::Closed { conn, .. } => {
                let Some(i) = self.quic.as_deref().and_then(|q| q.slot(*conn)) else { return };
                i
            }
        };
        match ev {
            HostEvent::Data { data, early, .. } => {
                self.drive(i, |c, io, env, dec| {
                    if early {
                        c.set_early();
                    }
                    c.on_input(now, &data, dec, io, env)
                });
            }
            HostEvent::Writable { .. } => self.on_writable(i),
            HostEvent::ReadClosed { .. } => {
                // A closing connection ends at Flushed or at its close timer: what it wrote
                // is not delivered before the client acknowledged it.
                self.drive(i, |c, _, _, _| {
                    if !c.is_closing() {
                        c.on_eof();
                    }
                });
            }
            HostEvent::Flushed { .. } => self.drop_conn(i),
            HostEvent::Closed { .. } => self.drive(i, |c, _, _, _| c.on_transport_error()),
            HostEvent::Opened { .. } | HostEvent::Established { .. } => {}
        }
    }

    /// A client completed its handshake or opened its stream: the QUIC accept, under the same
    /// caps as TCP's. Until its stream opens, writes to it fail (a login timeout or a kick
    /// then just closes it).
    fn admit_quic(&mut self, now: Instant, id: QuicConnId) {
        let gw = self.gw.clone();
        let remote = self.quic.as_deref_mut().and_then(|q| q.host.remote(id));
        let source = match (self.stopping_since, remote) {
            (None, Some(remote)) => {
                admission::admit(&gw.cfg, &gw.metrics, &gw.sources, remote.ip())
            }
            _ => None,
        };
        let Some(source) = source else {
            if let Some(q) = self.quic.as_deref_mut() {
                q.host.close(now, id, CLOSE_CODE, b"refused");
            }
            return;
        };
        let i = self.free_slot();
        admission::admitted(&gw.metrics);
        gw.metrics.quic_connections_open.fetch_add(1, Relaxed);
        let conn = Connection::new(now, gw.next_connection_id(), &gw.cfg);
        self.slots[i as usize].conn = Some(Conn { io: Transport::Quic(id), conn, source });
        if let Some(q) = self.quic.as_deref_mut() {
            q.map(id, i);
        }
        self.live += 1;
        // The login timeout's timer.
        self.after(i);
    }

    /// Stops or resumes reading a QUIC connection as its state machine wants (quinn's flow
    /// control then holds the client back).
    pub(super) fn sync_reading(&mut self, i: u32) {
        let Some(c) = self.slots.get(i as usize).and_then(|s| s.conn.as_ref()) else { return };
        let Transport::Quic(id) = c.io else { return };
        let on = !c.conn.reading_paused(&self.gw.cfg);
        if let Some(q) = self.quic.as_deref_mut() {
            q.host.set_reading(id, on);
        }
    }

    /// Closes a dropped QUIC connection's transport.
    pub(super) fn close_quic(&mut self, id: QuicConnId) {
        self.gw.metrics.quic_connections_open.fetch_sub(1, Relaxed);
        if let Some(q) = self.quic.as_deref_mut() {
            q.unmap(id);
            q.host.close(Instant::now(), id, CLOSE_CODE, b"closed");
        }
    }
}
