//! [`QuicHost`]: one QUIC endpoint and its connections, sans-IO. The I/O thread that owns it
//! feeds it the datagrams its UDP socket received ([`QuicHost::handle`]) and the time
//! ([`QuicHost::handle_timeouts`]), writes the frames of its sessions into connections'
//! streams ([`QuicHost::write`]), and sends what [`QuicHost::poll_transmit`] returns. What
//! happened comes out of [`QuicHost::poll_event`]: a client opened its stream, bytes arrived
//! on it, the stream can take more, a connection ended.
//!
//! Each connection carries exactly one bidirectional stream, opened by the client, on which
//! the same length-prefixed frames flow as on TCP. Nothing here knows about frames: the bytes
//! go to the same session logic the TCP driver uses. Connections are boxed in a vector indexed
//! by quinn's connection handle, with a generation so that a stale [`QuicConnId`] never
//! reaches a newer connection in the same place. Timers are a heap of (deadline, connection)
//! entries, superseded entries skipped lazily, so an idle connection costs nothing per tick.
//!
//! Handshakes in progress (accepted, neither complete nor closed) are counted, in all and per
//! source address ([`HandshakeLimits`]): past `retry` a client whose address is not validated
//! gets a stateless Retry, past `max` (or its source's cap) a new client is refused. A
//! connection leaves the count once, when its handshake completes or it closes.

use std::cmp::Reverse;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    Connection, ConnectionHandle, DatagramEvent, Dir, EcnCodepoint, Endpoint, EndpointConfig,
    Event, Incoming, ReadError, ReadableError, ServerConfig, StreamEvent, StreamId, VarInt,
    WriteError,
};

use super::config::QuicSettings;
use crate::sources::source_of;

/// Caps on the handshakes in progress on one host (see [`QuicSettings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// From this many on, a client whose address is not validated gets a Retry.
    pub retry: usize,
    /// From this many on, new clients are refused.
    pub max: usize,
    /// From this many from one source on, its new clients are refused; 0 = no cap.
    pub per_source: usize,
}

impl HandshakeLimits {
    /// The limits `s` sets.
    pub fn of(s: &QuicSettings) -> Self {
        Self {
            retry: s.retry_handshakes,
            max: s.max_handshakes,
            per_source: s.max_handshakes_per_source,
        }
    }
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self::of(&QuicSettings::default())
    }
}

/// What the host did with new clients since the last [`QuicHost::take_stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeStats {
    /// Clients refused at their first packet (CONNECTION_REFUSED): at the connection cap, at
    /// `max` handshakes, or at their source's cap.
    pub refused: u64,
    /// Stateless Retries sent to clients whose address was not validated.
    pub retries: u64,
}

/// A connection of one [`QuicHost`]: its slot and the generation of the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuicConnId {
    /// The slot (quinn's connection handle).
    pub index: u32,
    /// How many connections held the slot before this one.
    pub generation: u32,
}

/// What happened on the host's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// The client opened its stream: frames may flow. `early` when the handshake is not
    /// complete yet (the client resumed and sent 0-RTT data).
    Opened { conn: QuicConnId, remote: SocketAddr, early: bool },
    /// Bytes arrived on the client's stream, in order. `early` while they came in 0-RTT data
    /// (the handshake is not complete: they may be a replay).
    Data { conn: QuicConnId, data: Bytes, early: bool },
    /// The handshake completed: data from now on is not 0-RTT. `zero_rtt` when the client
    /// resumed a session and the host accepted its 0-RTT data.
    Established { conn: QuicConnId, zero_rtt: bool },
    /// The stream can take more bytes after a [`QuicHost::write`] came up short.
    Writable { conn: QuicConnId },
    /// The client finished (or reset) its side of the stream: no more bytes will come.
    ReadClosed { conn: QuicConnId },
    /// Everything written after [`QuicHost::finish`] has been acknowledged by the client.
    Flushed { conn: QuicConnId },
    /// The connection ended (closed by either side, timed out, or lost); its id is dead.
    Closed { conn: QuicConnId, reason: String },
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// From which local address, when the connection knows (a socket bound to a wildcard).
    pub src_ip: Option<IpAddr>,
    /// ECN bits to set.
    pub ecn: Option<EcnCodepoint>,
    /// The contents.
    pub data: Vec<u8>,
}

/// Why a call on a connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The connection is gone (or the id is stale).
    #[error("no such QUIC connection")]
    Gone,
    /// The client has not opened its stream yet.
    #[error("the client has not opened its stream")]
    NoStream,
    /// The stream cannot be written any more (finished, or stopped by the client).
    #[error("the stream is closed for writing")]
    StreamClosed,
}

struct Entry {
    id: QuicConnId,
    conn: Connection,
    stream: Option<StreamId>,
    /// The deadline last pushed on the timer heap.
    timer: Option<Instant>,
    /// Reading paused by the driver (back-pressure): readable data waits in quinn, whose flow
    /// control then stops the client.
    paused: bool,
    /// Data became readable while paused.
    unread: bool,
    read_closed: bool,
    /// The source (see [`source_of`]) while the handshake is in progress and counted.
    handshake: Option<IpAddr>,
    /// `Closed` was reported.
    closed: bool,
    dirty: bool,
}

/// One QUIC endpoint and its connections. See the module doc.
pub struct QuicHost {
    endpoint: Endpoint,
    entries: Vec<Option<Box<Entry>>>,
    generations: Vec<u32>,
    live: usize,
    max_connections: usize,
    limits: HandshakeLimits,
    /// Handshakes in progress, in all and by source.
    handshakes: usize,
    per_source: HashMap<IpAddr, usize>,
    stats: HandshakeStats,
    dirty: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    events: VecDeque<HostEvent>,
    out: VecDeque<Transmit>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for QuicHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicHost")
            .field("connections", &self.live)
            .field("handshakes", &self.handshakes)
            .finish_non_exhaustive()
    }
}

impl QuicHost {
    /// A host for `endpoint` serving `server`, holding at most `max_connections` (further
    /// clients are refused at their first packet) and handshakes within `limits`.
    pub fn new(
        endpoint: EndpointConfig,
        server: Arc<ServerConfig>,
        max_connections: usize,
        limits: HandshakeLimits,
    ) -> Self {
        Self {
            endpoint: Endpoint::new(Arc::new(endpoint), Some(server), false, None),
            entries: Vec::new(),
            generations: Vec::new(),
            live: 0,
            max_connections,
            limits,
            handshakes: 0,
            per_source: HashMap::new(),
            stats: HandshakeStats::default(),
            dirty: Vec::new(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            out: VecDeque::new(),
            buf: Vec::new(),
        }
    }

    /// Connections held (handshaking, open or closing).
    pub fn connections(&self) -> usize {
        self.live
    }

    /// Handshakes in progress: connections accepted whose handshake neither completed nor
    /// ended.
    pub fn handshakes(&self) -> usize {
        self.handshakes
    }

    /// Handshakes in progress from `ip`'s source (see [`source_of`]).
    pub fn handshakes_from(&self, ip: IpAddr) -> usize {
        self.per_source.get(&source_of(ip)).copied().unwrap_or(0)
    }

    /// What the host did with new clients since the last call (for the driver's metrics).
    pub fn take_stats(&mut self) -> HandshakeStats {
        std::mem::take(&mut self.stats)
    }

    /// Takes one datagram received at `now` from `remote` (on local address `local_ip`).
    pub fn handle(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        data: BytesMut,
    ) {
        self.buf.clear();
        match self.endpoint.handle(now, remote, local_ip, ecn, data, &mut self.buf) {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(e) = self.entry_at(ch.0) {
                    e.conn.handle_event(event);
                    self.mark(ch.0);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.incoming(now, incoming),
            Some(DatagramEvent::Response(t)) => self.queue_response(t),
            None => {}
        }
    }

    /// A new client's first packet: refused at the connection cap, sent a Retry past the
    /// `retry` handshakes unless its address is validated (by a Retry or a NEW_TOKEN token),
    /// refused past `max` handshakes or its source's cap, accepted otherwise.
    fn incoming(&mut self, now: Instant, mut incoming: Incoming) {
        if self.live < self.max_connections
            && self.handshakes >= self.limits.retry
            && !incoming.remote_address_validated()
        {
            self.buf.clear();
            match self.endpoint.retry(incoming, &mut self.buf) {
                Ok(t) => {
                    self.stats.retries += 1;
                    self.queue_response(t);
                    return;
                }
                // Not when the address is unvalidated (quinn guarantees it): refused below.
                Err(e) => incoming = e.into_incoming(),
            }
        }
        let source = source_of(incoming.remote_address().ip());
        let from_source = self.per_source.get(&source).copied().unwrap_or(0);
        let validated = incoming.remote_address_validated();
        if self.live >= self.max_connections
            || self.handshakes >= self.limits.max
            || (self.limits.per_source > 0 && from_source >= self.limits.per_source)
            || (!validated && self.handshakes >= self.limits.retry)
        {
            self.stats.refused += 1;
            self.buf.clear();
            let t = self.endpoint.refuse(incoming, &mut self.buf);
            self.queue_response(t);
            return;
        }
        self.buf.clear();
        match self.endpoint.accept(incoming, now, &mut self.buf, None) {
            Ok((ch, conn)) => {
                self.handshakes += 1;
                *self.per_source.entry(source).or_default() += 1;
                self.insert(ch, conn, source);
            }
            Err(e) => {
                if let Some(t) = e.response {
                    self.queue_response(t);
                }
            }
        }
    }

    /// Takes a connection out of the handshake count (once: its entry forgets its source).
    fn handshake_over(&mut self, e: &mut Entry) {
        let Some(source) = e.handshake.take() else { return };
        self.handshakes = self.handshakes.saturating_sub(1);
        if let MapEntry::Occupied(mut n) = self.per_source.entry(source) {
            *n.get_mut() = n.get().saturating_sub(1);
            if *n.get() == 0 {
                n.remove();
            }
        }
    }

    /// Queues the datagram quinn just wrote into `buf`.
    fn queue_response(&mut self, t: quinn_proto::Transmit) {
        let data = self.buf[..t.size].to_vec();
        self.out.push_back(Transmit {
            destination: t.destination,
            src_ip: t.src_ip,
            ecn: t.ecn,
            data,
        });
    }

    fn insert(&mut self, ch: ConnectionHandle, conn: Connection, source: IpAddr) {
        let i = ch.0;
        if self.entries.len() <= i {
            self.entries.resize_with(i + 1, || None);
            self.generations.resize(i + 1, 0);
        }
        let id = QuicConnId { index: i as u32, generation: self.generations[i] };
        self.entries[i] = Some(Box::new(Entry {
            id,
            conn,
            stream: None,
            timer: None,
            paused: false,
            unread: false,
            read_closed: false,
            handshake: Some(source),
            closed: false,
            dirty: false,
        }));
        self.live += 1;
        self.mark(i);
    }

    fn entry_at(&mut self, i: usize) -> Option<&mut Entry> {
        self.entries.get_mut(i)?.as_deref_mut()
    }

    fn entry(&mut self, id: QuicConnId) -> Result<&mut Entry, HostError> {
        match self.entry_at(id.index as usize) {
            Some(e) if e.id == id => Ok(e),
            _ => Err(HostError::Gone),
        }
    }

    fn mark(&mut self, i: usize) {
        if let Some(e) = self.entry_at(i)
            && !std::mem::replace(&mut e.dirty, true)
        {
            self.dirty.push(i);
        }
    }

    /// Writes `data` on the connection's stream; returns how much it took (less than all when
    /// the client's flow control or the send window is full: wait for
    /// [`HostEvent::Writable`]).
    pub fn write(&mut self, id: QuicConnId, data: &[u8]) -> Result<usize, HostError> {
        let e = self.entry(id)?;
        let stream = e.stream.ok_or(HostError::NoStream)?;
        let n = match e.conn.send_stream(stream).write(data) {
            Ok(n) => n,
            Err(WriteError::Blocked) => 0,
            Err(WriteError::Stopped(_) | WriteError::ClosedStream) => {
                return Err(HostError::StreamClosed);
            }
        };
        self.mark(id.index as usize);
        Ok(n)
    }

    /// Finishes the server's side of the stream after what was written; [`HostEvent::Flushed`]
    /// follows once the client acknowledged all of it.
    pub fn finish(&mut self, id: QuicConnId) -> Result<(), HostError> {
        let e = self.entry(id)?;
        let stream = e.stream.ok_or(HostError::NoStream)?;
        e.conn.send_stream(stream).finish().map_err(|_| HostError::StreamClosed)?;
        self.mark(id.index as usize);
        Ok(())
    }

    /// Closes the connection now with application error `code` and `reason` (unsent stream
    /// data is abandoned: [`QuicHost::finish`] and wait for `Flushed` to deliver a last frame).
    pub fn close(&mut self, now: Instant, id: QuicConnId, code: u32, reason: &[u8]) {
        if let Ok(e) = self.entry(id) {
            e.conn.close(now, VarInt::from_u32(code), Bytes::copy_from_slice(reason));
            self.mark(id.index as usize);
        }
    }

    /// Stops (false) or resumes (true) reading the connection's stream. While stopped, quinn
    /// holds what arrives up to the stream's flow-control window, and the client waits.
    pub fn set_reading(&mut self, id: QuicConnId, on: bool) {
        let Ok(e) = self.entry(id) else { return };
        e.paused = !on;
        if on && e.unread {
            self.mark(id.index as usize);
        }
    }

    /// Starts a key update on the connection (for tests: updates are otherwise rare).
    #[cfg(test)]
    pub(crate) fn force_key_update(&mut self, id: QuicConnId) {
        if let Ok(e) = self.entry(id) {
            e.conn.force_key_update();
            self.mark(id.index as usize);
        }
    }

    /// The client's current address.
    pub fn remote(&mut self, id: QuicConnId) -> Option<SocketAddr> {
        self.entry(id).ok().map(|e| e.conn.remote_address())
    }

    /// When [`QuicHost::handle_timeouts`] should next be called.
    pub fn next_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, i, generation))) = self.timers.peek().copied() {
            match self.entries.get(i).and_then(|e| e.as_deref()) {
                Some(e) if e.id.generation == generation && e.timer == Some(at) => return Some(at),
                // Superseded or gone.
                _ => {
                    self.timers.pop();
                }
            }
        }
        None
    }

    /// Runs the timers due at `now` (loss detection, acks, idle timeouts).
    pub fn handle_timeouts(&mut self, now: Instant) {
        while let Some(at) = self.next_timeout() {
            if at > now {
                break;
            }
            if let Some(Reverse((_, i, _))) = self.timers.pop()
                && let Some(e) = self.entry_at(i)
            {
                e.timer = None;
                e.conn.handle_timeout(now);
                self.mark(i);
            }
        }
    }

    /// The next event, after driving every connection that changed.
    pub fn poll_event(&mut self, now: Instant) -> Option<HostEvent> {
        self.drive(now);
        self.events.pop_front()
    }

    /// The next datagram to send, after driving every connection that changed.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.drive(now);
        self.out.pop_front()
    }

    /// Drives every connection that changed: endpoint bookkeeping, stream events and reads,
    /// datagrams to send, the next timer.
    fn drive(&mut self, now: Instant) {
        while let Some(i) = self.dirty.pop() {
            self.drive_one(now, i);
        }
    }

    fn drive_one(&mut self, now: Instant, i: usize) {
        let Some(mut e) = self.entries.get_mut(i).and_then(Option::take) else { return };
        e.dirty = false;
        let ch = ConnectionHandle(i);
        while let Some(event) = e.conn.poll_endpoint_events() {
            if let Some(back) = self.endpoint.handle_event(ch, event) {
                e.conn.handle_event(back);
            }
        }
        let mut closed = None;
        while let Some(event) = e.conn.poll() {
            match event {
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    if e.stream.is_none()
                        && let Some(stream) = e.conn.streams().accept(Dir::Bi)
                    {
                        e.stream = Some(stream);
                        let (remote, early) = (e.conn.remote_address(), e.conn.is_handshaking());
                        self.events.push_back(HostEvent::Opened { conn: e.id, remote, early });
                        self.read(&mut e);
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) if Some(id) == e.stream => {
                    self.read(&mut e);
                }
                Event::Stream(StreamEvent::Writable { id }) if Some(id) == e.stream => {
                    self.events.push_back(HostEvent::Writable { conn: e.id });
                }
                Event::Stream(StreamEvent::Finished { id }) if Some(id) == e.stream => {
                    self.events.push_back(HostEvent::Flushed { conn: e.id });
                }
                Event::Connected => {
                    // On a server, 0-RTT keys exist only when the early data was accepted.
                    let zero_rtt = e.conn.has_0rtt();
                    self.events.push_back(HostEvent::Established { conn: e.id, zero_rtt });
                }
                Event::ConnectionLost { reason } => closed = Some(reason.to_string()),
                _ => {}
            }
        }
        // Complete, or ended (a closed connection is not handshaking either).
        if !e.conn.is_handshaking() || closed.is_some() {
            self.handshake_over(&mut e);
        }
        if !e.paused && std::mem::take(&mut e.unread) {
            self.read(&mut e);
        }
        loop {
            self.buf.clear();
            let Some(t) = e.conn.poll_transmit(now, 1, &mut self.buf) else { break };
            self.queue_response(t);
        }
        if let Some(reason) = closed {
            e.closed = true;
            self.events.push_back(HostEvent::Closed { conn: e.id, reason });
        }
        if e.conn.is_drained() {
            if !e.closed {
                // Closed by this side: quinn reports no loss for that.
                self.events.push_back(HostEvent::Closed { conn: e.id, reason: "closed".into() });
            }
            // quinn's endpoint forgot it (its Drained event went through above).
            self.live -= 1;
            self.generations[i] = self.generations[i].wrapping_add(1);
            return;
        }
        let next = e.conn.poll_timeout();
        if next != e.timer {
            e.timer = next;
            if let Some(at) = next {
                self.timers.push(Reverse((at, i, e.id.generation)));
            }
        }
        self.entries[i] = Some(e);
    }

    /// Reads what the client's stream has, unless reading is paused.
    fn read(&mut self, e: &mut Entry) {
        let Some(stream) = e.stream else { return };
        if e.paused {
            e.unread = true;
            return;
        }
        if e.read_closed {
            return;
        }
        let early = e.conn.is_handshaking();
        let mut recv = e.conn.recv_stream(stream);
        let mut chunks = match recv.read(true) {
            Ok(c) => c,
            Err(ReadableError::ClosedStream | ReadableError::IllegalOrderedRead) => return,
        };
        let mut ended = false;
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => {
                    self.events.push_back(HostEvent::Data { conn: e.id, data: chunk.bytes, early })
                }
                Ok(None) | Err(ReadError::Reset(_)) => {
                    ended = true;
                    break;
                }
                Err(ReadError::Blocked) => break,
            }
        }
        // Returns flow-control credit to the client; the datagram goes out with the others.
        let _ = chunks.finalize();
        if ended {
            e.read_closed = true;
            self.events.push_back(HostEvent::ReadClosed { conn: e.id });
        }
    }
}
