//! [`QuicHost`] against quinn-proto clients, in memory: datagrams are handed across by the test
//! and time is a virtual clock that jumps to the next timer, as quinn-proto tests itself. No
//! sockets, no sleeps: every run does the same thing.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::crypto::rustls::QuicClientConfig;
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
    StreamId,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::config::{self, QuicSettings};
use super::host::{HandshakeLimits, HandshakeStats, HostEvent, QuicConnId, QuicHost};

fn server_addr() -> SocketAddr {
    "127.0.0.1:7400".parse().unwrap()
}

/// A fresh self-signed certificate for `localhost` and its key.
pub(super) fn cert() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = PrivatePkcs8KeyDer::from(c.signing_key.serialize_der());
    (c.cert.der().clone(), PrivateKeyDer::Pkcs8(key))
}

/// A TLS 1.3 client config that trusts `cert` and offers ALPN `tern/1`.
pub(super) fn client_tls(cert: &CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![config::ALPN.to_vec()];
    tls
}

fn client_config(cert: &CertificateDer<'static>) -> ClientConfig {
    let mut tls = client_tls(cert);
    tls.enable_early_data = true;
    ClientConfig::new(Arc::new(QuicClientConfig::try_from(Arc::new(tls)).unwrap()))
}

/// One client connection as the test drives it.
struct Client {
    addr: SocketAddr,
    ch: ConnectionHandle,
    conn: Connection,
    stream: Option<StreamId>,
    received: Vec<u8>,
}

/// A host, a client endpoint and its connections, and the virtual clock.
struct World {
    now: Instant,
    host: QuicHost,
    client_ep: Endpoint,
    client_cfg: ClientConfig,
    clients: Vec<Client>,
    events: Vec<HostEvent>,
    /// Datagrams in flight to the host: (from, data).
    to_host: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl World {
    fn new(settings: QuicSettings, max_connections: usize) -> Self {
        let (cert, key) = cert();
        let tls = config::tls(vec![cert.clone()], key, &settings).unwrap();
        let server = config::server(tls, &settings).unwrap();
        let limits = HandshakeLimits::of(&settings);
        let host = QuicHost::new(config::endpoint(0, 1, &[7; 32]), server, max_connections, limits);
        let client_ep = Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None);
        Self {
            now: Instant::now(),
            host,
            client_ep,
            client_cfg: client_config(&cert),
            clients: Vec::new(),
            events: Vec::new(),
            to_host: VecDeque::new(),
        }
    }

    /// Starts a connection from `addr` and completes its handshake; returns its index.
    fn connect(&mut self, addr: SocketAddr) -> usize {
        let c = self.start(addr);
        self.run_for(Duration::from_millis(10));
        c
    }

    /// Starts a connection from `addr` without waiting for the handshake.
    fn start(&mut self, addr: SocketAddr) -> usize {
        let (ch, conn) = self
            .client_ep
            .connect(self.now, self.client_cfg.clone(), server_addr(), "localhost")
            .unwrap();
        self.clients.push(Client { addr, ch, conn, stream: None, received: Vec::new() });
        self.clients.len() - 1
    }

    /// Hands the clients' pending datagrams (their first flight) to the host, and nothing back.
    fn deliver_to_host(&mut self) {
        for client in &mut self.clients {
            let mut buf = Vec::new();
            while let Some(t) = client.conn.poll_transmit(self.now, 1, &mut buf) {
                let data = BytesMut::from(&buf[..t.size]);
                self.host.handle(self.now, client.addr, None, None, data);
                buf.clear();
            }
        }
    }

    /// How many handshakes the host reported complete.
    fn established(&self) -> usize {
        let done = self.events.iter().filter(|e| matches!(e, HostEvent::Established { .. }));
        done.count()
    }

    /// Opens the client's stream (in 0-RTT data if the handshake is not done) and writes.
    fn send(&mut self, c: usize, data: &[u8]) {
        let client = &mut self.clients[c];
        let stream =
            *client.stream.get_or_insert_with(|| client.conn.streams().open(Dir::Bi).unwrap());
        assert_eq!(client.conn.send_stream(stream).write(data).unwrap(), data.len());
    }

    /// Moves datagrams and events until nothing moves, without advancing time.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for client in &mut self.clients {
                while let Some(ev) = client.conn.poll_endpoint_events() {
                    if let Some(back) = self.client_ep.handle_event(client.ch, ev) {
                        client.conn.handle_event(back);
                    }
                }
                while client.conn.poll().is_some() {}
                if let Some(stream) = client.stream
                    && let Ok(mut chunks) = client.conn.recv_stream(stream).read(true)
                {
                    while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                        client.received.extend_from_slice(&chunk.bytes);
                    }
                    let _ = chunks.finalize();
                }
                let mut buf = Vec::new();
                while let Some(t) = client.conn.poll_transmit(self.now, 1, &mut buf) {
                    self.to_host.push_back((client.addr, buf[..t.size].to_vec()));
                    buf.clear();
                    moved = true;
                }
            }
            while let Some((from, data)) = self.to_host.pop_front() {
                self.host.handle(self.now, from, None, None, BytesMut::from(&data[..]));
                moved = true;
            }
            while let Some(ev) = self.host.poll_event(self.now) {
                self.events.push(ev);
                moved = true;
            }
            while let Some(t) = self.host.poll_transmit(self.now) {
                moved = true;
                let mut buf = Vec::new();
                let data = BytesMut::from(&t.data[..]);
                let ev = self.client_ep.handle(self.now, server_addr(), None, None, data, &mut buf);
                if let Some(DatagramEvent::ConnectionEvent(ch, ev)) = ev
                    && let Some(client) = self.clients.iter_mut().find(|c| c.ch == ch)
                {
                    // A datagram for an address the client left is lost, as on a real path.
                    if t.destination == client.addr {
                        client.conn.handle_event(ev);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the exchange never settled");
    }

    /// The earliest timer of the host and the clients.
    fn next_timer(&mut self) -> Option<Instant> {
        let clients = self.clients.iter_mut().filter_map(|c| c.conn.poll_timeout());
        clients.chain(self.host.next_timeout()).min()
    }

    /// Settles, then jumps the clock timer by timer until `until`.
    fn run_until(&mut self, until: Instant) {
        self.settle();
        while let Some(at) = self.next_timer().filter(|&at| at <= until) {
            self.now = self.now.max(at);
            for c in &mut self.clients {
                if c.conn.poll_timeout().is_some_and(|t| t <= self.now) {
                    c.conn.handle_timeout(self.now);
                }
            }
            self.host.handle_timeouts(self.now);
            self.settle();
        }
        self.now = self.now.max(until);
    }

    /// Advances the world's virtual clock by `d` (datagrams exchanged in memory, timers
    /// fired at their virtual deadlines): no real time passes, so the test has no timing luck.
    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn opened(&self) -> Vec<(QuicConnId, SocketAddr, bool)> {
        let opened = self.events.iter().filter_map(|e| match e {
            HostEvent::Opened { conn, remote, early } => Some((*conn, *remote, *early)),
            _ => None,
        });
        opened.collect()
    }

    fn data(&self, id: QuicConnId) -> (Vec<u8>, bool) {
        let (mut all, mut early) = (Vec::new(), false);
        for e in &self.events {
            if let HostEvent::Data { conn, data, early: e } = e
                && *conn == id
            {
                all.extend_from_slice(data);
                early |= *e;
            }
        }
        (all, early)
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2], port))
}

#[test]
fn a_client_opens_its_stream_and_bytes_flow_both_ways() {
    let mut w = World::new(QuicSettings::default(), 10);
    let c = w.connect(addr(5000));
    w.run_for(Duration::from_millis(10));
    w.send(c, b"hello server");
    w.run_for(Duration::from_millis(10));
    let [(id, remote, early)] = w.opened()[..] else { panic!("{:?}", w.events) };
    assert_eq!((remote, early), (addr(5000), false));
    assert!(w.events.contains(&HostEvent::Established { conn: id, zero_rtt: false }));
    assert_eq!(w.data(id).0, b"hello server");
    assert_eq!(w.host.write(id, b"hello client").unwrap(), 12);
    w.run_for(Duration::from_millis(10));
    assert_eq!(w.clients[c].received, b"hello client");
    assert_eq!(w.host.connections(), 1);
}

#[test]
fn key_updates_by_either_side_keep_the_stream_flowing() {
    // The server derives each next key phase only when a packet needs it (quic::crypto).
    let mut w = World::new(QuicSettings::default(), 10);
    let c = w.connect(addr(5000));
    w.send(c, b"phase 0;");
    w.run_for(Duration::from_millis(10));
    let id = w.opened()[0].0;
    let mut expected_up = b"phase 0;".to_vec();
    let mut expected_down = Vec::new();
    for round in 1..=4u8 {
        // Odd rounds the client updates, even rounds the server: each side sees the other's
        // new phase and answers in it; an update waits until the previous one was acknowledged.
        if round % 2 == 1 {
            w.clients[c].conn.force_key_update();
        } else {
            w.host.force_key_update(id);
        }
        let up = format!("up {round};");
        w.send(c, up.as_bytes());
        let down = format!("down {round};");
        assert_eq!(w.host.write(id, down.as_bytes()).unwrap(), down.len());
        // Long enough (virtual time) for the old keys to be discarded (3 PTO), so that the
        // next round's update is not refused as concurrent.
        w.run_for(Duration::from_secs(2));
        expected_up.extend_from_slice(up.as_bytes());
        expected_down.extend_from_slice(down.as_bytes());
        assert_eq!(w.data(id).0, expected_up, "round {round}");
        assert_eq!(w.clients[c].received, expected_down, "round {round}");
    }
    let stats = w.clients[c].conn.stats();
    assert_eq!(stats.frame_rx.connection_close, 0, "no side closed the connection");
    assert_eq!(w.host.connections(), 1);
}

#[test]
fn a_migrating_client_keeps_its_connection_and_its_stream() {
    let mut w = World::new(QuicSettings::default(), 10);
    let c = w.connect(addr(5000));
    w.send(c, b"before");
    w.run_for(Duration::from_millis(10));
    let id = w.opened()[0].0;
    // NAT rebinding: the same client now comes from another port.
    w.clients[c].addr = addr(6000);
    w.send(c, b" after");
    w.run_for(Duration::from_millis(50));
    assert_eq!(w.data(id).0, b"before after", "same connection, same stream");
    assert_eq!(w.host.remote(id), Some(addr(6000)));
    w.host.write(id, b"to the new address").unwrap();
    w.run_for(Duration::from_millis(50));
    assert_eq!(w.clients[c].received, b"to the new address");
    assert_eq!(w.opened().len(), 1, "no second connection");
}

#[test]
fn an_idle_connection_times_out_and_its_id_dies() {
    let settings =
        QuicSettings { idle_timeout: Duration::from_secs(30), ..QuicSettings::default() };
    let mut w = World::new(settings, 10);
    let c = w.connect(addr(5000));
    w.send(c, b"x");
    w.run_for(Duration::from_millis(10));
    let id = w.opened()[0].0;
    // The client vanishes without a word.
    w.clients.clear();
    w.run_for(Duration::from_secs(29));
    assert!(!w.events.iter().any(|e| matches!(e, HostEvent::Closed { .. })));
    w.run_for(Duration::from_secs(2));
    assert!(w.events.iter().any(|e| matches!(e, HostEvent::Closed { conn, .. } if *conn == id)));
    w.run_for(Duration::from_secs(5));
    assert_eq!(w.host.connections(), 0, "drained and forgotten");
    assert!(w.host.write(id, b"late").is_err(), "a dead id reaches nothing");
    assert_eq!(w.host.next_timeout(), None, "no timer left behind");
}

#[test]
fn a_resumed_client_sends_in_0rtt_and_the_host_says_so() {
    let mut w = World::new(QuicSettings::default(), 10);
    let first = w.connect(addr(5000));
    w.send(first, b"first");
    w.run_for(Duration::from_millis(50));
    assert!(!w.opened()[0].2);
    // The client got a session ticket; the second connection resumes and sends at once.
    let second = w.start(addr(5001));
    assert!(w.clients[second].conn.has_0rtt(), "0-RTT keys from the ticket");
    w.send(second, b"early login");
    w.run_for(Duration::from_millis(50));
    let (id, _, early) = w.opened()[1];
    assert!(early, "opened before the handshake completed");
    assert_eq!(w.data(id), (b"early login".to_vec(), true));
    assert!(w.clients[second].conn.accepted_0rtt());
    assert!(w.events.contains(&HostEvent::Established { conn: id, zero_rtt: true }));
}

#[test]
fn zero_rtt_can_be_turned_off() {
    let mut w = World::new(QuicSettings { zero_rtt: false, ..QuicSettings::default() }, 10);
    let first = w.connect(addr(5000));
    w.send(first, b"first");
    w.run_for(Duration::from_millis(50));
    let second = w.start(addr(5001));
    w.run_for(Duration::from_millis(10));
    w.send(second, b"not early");
    w.run_for(Duration::from_millis(50));
    let (id, _, early) = w.opened()[1];
    assert_eq!((early, w.data(id)), (false, (b"not early".to_vec(), false)));
}

#[test]
fn clients_past_the_cap_are_refused() {
    let mut w = World::new(QuicSettings::default(), 1);
    let a = w.connect(addr(5000));
    w.send(a, b"a");
    w.run_for(Duration::from_millis(10));
    let b = w.connect(addr(5001));
    assert_eq!(w.opened().len(), 1);
    assert_eq!(w.host.connections(), 1);
    assert!(w.clients[b].conn.is_closed(), "refused at its first packet");
}

#[test]
fn paused_reading_holds_the_data_until_resumed() {
    let mut w = World::new(QuicSettings::default(), 10);
    let c = w.connect(addr(5000));
    w.send(c, b"one");
    w.run_for(Duration::from_millis(10));
    let id = w.opened()[0].0;
    w.host.set_reading(id, false);
    w.send(c, b" two");
    w.run_for(Duration::from_millis(10));
    assert_eq!(w.data(id).0, b"one");
    w.host.set_reading(id, true);
    w.run_for(Duration::from_millis(10));
    assert_eq!(w.data(id).0, b"one two");
}

#[test]
fn a_finished_stream_is_flushed_before_the_close() {
    let mut w = World::new(QuicSettings::default(), 10);
    let c = w.connect(addr(5000));
    w.send(c, b"hi");
    w.run_for(Duration::from_millis(10));
    let id = w.opened()[0].0;
    w.host.write(id, b"kick").unwrap();
    w.host.finish(id).unwrap();
    w.run_for(Duration::from_millis(50));
    assert!(w.events.contains(&HostEvent::Flushed { conn: id }));
    assert_eq!(w.clients[c].received, b"kick");
    let now = w.now;
    w.host.close(now, id, 0, b"bye");
    w.run_for(Duration::from_secs(5));
    assert!(w.events.iter().any(|e| matches!(e, HostEvent::Closed { conn, .. } if *conn == id)));
    assert!(w.clients[c].conn.is_closed());
    assert_eq!(w.host.connections(), 0);
}

fn other_ip(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 3], port))
}

#[test]
fn past_retry_handshakes_a_client_goes_through_a_retry_and_connects() {
    let settings = QuicSettings { retry_handshakes: 0, ..QuicSettings::default() };
    let mut w = World::new(settings, 10);
    let c = w.connect(addr(5000));
    w.send(c, b"after a retry");
    w.run_for(Duration::from_millis(10));
    let [(id, _, _)] = w.opened()[..] else { panic!("{:?}", w.events) };
    assert_eq!(w.data(id).0, b"after a retry");
    assert_eq!(w.host.take_stats(), HandshakeStats { refused: 0, retries: 1 });
    assert_eq!((w.host.handshakes(), w.host.connections()), (0, 1));
}

#[test]
fn a_source_past_its_handshake_cap_is_refused_until_its_handshakes_complete() {
    let settings = QuicSettings { max_handshakes_per_source: 2, ..QuicSettings::default() };
    let mut w = World::new(settings, 10);
    let a = [w.start(addr(5000)), w.start(addr(5001)), w.start(addr(5002))];
    let other = w.start(other_ip(5000));
    w.deliver_to_host();
    assert_eq!(w.host.handshakes_from(addr(0).ip()), 2, "the third was not counted");
    assert_eq!(w.host.handshakes_from(other_ip(0).ip()), 1);
    assert_eq!(w.host.handshakes(), 3);
    assert_eq!(w.host.take_stats(), HandshakeStats { refused: 1, retries: 0 });
    w.run_for(Duration::from_millis(10));
    assert!(w.clients[a[2]].conn.is_closed(), "the third from the source was refused");
    for c in [a[0], a[1], other] {
        assert!(!w.clients[c].conn.is_closed() && !w.clients[c].conn.is_handshaking());
    }
    assert_eq!(w.established(), 3);
    assert_eq!(w.host.handshakes(), 0, "completed handshakes are counted out");
    assert_eq!(w.host.handshakes_from(addr(0).ip()), 0);
    // Two more from the source fit again.
    let again = [w.start(addr(5003)), w.start(addr(5004))];
    w.run_for(Duration::from_millis(10));
    assert_eq!(w.established(), 5);
    assert!(again.iter().all(|&c| !w.clients[c].conn.is_closed()));
    assert_eq!(w.host.take_stats(), HandshakeStats::default());
    assert_eq!(w.host.connections(), 5);
}

#[test]
fn past_max_handshakes_new_clients_are_refused() {
    let settings = QuicSettings { max_handshakes: 1, ..QuicSettings::default() };
    let mut w = World::new(settings, 10);
    let first = w.start(addr(5000));
    let second = w.start(other_ip(5000));
    w.run_for(Duration::from_millis(10));
    assert!(!w.clients[first].conn.is_closed());
    assert!(w.clients[second].conn.is_closed());
    assert_eq!(w.host.take_stats(), HandshakeStats { refused: 1, retries: 0 });
    let third = w.connect(other_ip(5001));
    assert!(!w.clients[third].conn.is_closed(), "the slot is free again");
    assert_eq!(w.established(), 2);
}

#[test]
fn a_handshake_that_times_out_or_is_closed_is_counted_out() {
    let settings = QuicSettings {
        idle_timeout: Duration::from_secs(30),
        max_handshakes_per_source: 1,
        ..QuicSettings::default()
    };
    let mut w = World::new(settings, 10);
    w.start(addr(5000));
    w.deliver_to_host();
    assert_eq!((w.host.handshakes(), w.host.handshakes_from(addr(0).ip())), (1, 1));
    // The client vanishes after its first packet.
    w.clients.clear();
    w.run_for(Duration::from_secs(29));
    assert_eq!(w.host.handshakes(), 1, "still in progress before the idle timeout");
    w.run_for(Duration::from_secs(10));
    assert_eq!((w.host.handshakes(), w.host.connections()), (0, 0), "timed out, counted out");
    assert_eq!(w.host.handshakes_from(addr(0).ip()), 0);

    // A client that gives up in the middle of its handshake.
    let c = w.start(addr(5001));
    w.deliver_to_host();
    assert_eq!(w.host.handshakes(), 1);
    let now = w.now;
    w.clients[c].conn.close(now, quinn_proto::VarInt::from_u32(0), bytes::Bytes::new());
    w.run_for(Duration::from_millis(10));
    assert_eq!(w.host.handshakes(), 0, "closed, counted out");
    assert_eq!(w.established(), 0);
    // The source's slot is free: the next client from it connects.
    let next = w.connect(addr(5002));
    assert!(!w.clients[next].conn.is_closed() && !w.clients[next].conn.is_handshaking());
    assert_eq!(w.host.take_stats(), HandshakeStats::default(), "nothing refused");
}

#[test]
fn the_fuzz_seed_initial_is_the_same_every_time_and_starts_a_handshake() {
    let initial = crate::fuzzing::client_initial(0);
    assert_eq!(initial, crate::fuzzing::client_initial(0), "deterministic");
    assert_ne!(initial, crate::fuzzing::client_initial(1), "another client");
    assert!(initial.len() >= 1200 && initial[0] & 0xf0 == 0xc0, "a padded long-header Initial");
    let mut w = World::new(QuicSettings::default(), 10);
    let now = w.now;
    w.host.handle(now, addr(5000), None, None, BytesMut::from(&initial[..]));
    assert_eq!(w.host.handshakes(), 1, "accepted: a real client's first packet");
    let answer = w.host.poll_transmit(now).expect("the server's first flight");
    assert_eq!(answer.destination, addr(5000));
    assert!(answer.data.len() <= crate::fuzzing::MAX_TRANSMIT);
}
