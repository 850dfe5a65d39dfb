//! [`TlsStream`] against a rustls client over a loopback socket pair, driven step by step in
//! one thread: a record arriving one byte at a time is kept between reads and nothing is kept
//! once it is whole; 60 KiB frames both ways; a write the socket does not take waits (the next
//! is `WouldBlock`) and its buffer is freed once sent; close_notify then FIN.

use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Token};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;

use super::stream::{TlsScratch, TlsStream};

struct Pair {
    /// Both sockets, registered for readiness: what the test waits on.
    poll: mio::Poll,
    events: mio::Events,
    server: TlsStream,
    scratch: Vec<u8>,
    bufs: TlsScratch,
    client: TcpStream,
    tls: rustls::ClientConnection,
    /// Plaintext the server read.
    got: Vec<u8>,
}

fn cert() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = PrivatePkcs8KeyDer::from(c.signing_key.serialize_der());
    (c.cert.der().clone(), PrivateKeyDer::Pkcs8(key))
}

impl Pair {
    /// A connected pair, the server's send buffer small (`small_send`) so that its writes
    /// back up.
    fn new(small_send: bool) -> Self {
        let (cert, key) = cert();
        let config = crate::tls::server_config(vec![cert.clone()], key).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        if small_send {
            socket2::SockRef::from(&s).set_send_buffer_size(4096).unwrap();
            socket2::SockRef::from(&client).set_recv_buffer_size(4096).unwrap();
        }
        s.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        let mut server = TlsStream::new(
            mio::net::TcpStream::from_std(s),
            UnbufferedServerConnection::new(config).unwrap(),
        );
        let poll = mio::Poll::new().unwrap();
        let both = Interest::READABLE | Interest::WRITABLE;
        poll.registry().register(server.sock(), Token(0), both).unwrap();
        let fd = client.as_raw_fd();
        poll.registry().register(&mut SourceFd(&fd), Token(1), both).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![crate::quic::ALPN.to_vec()];
        let name = ServerName::try_from("localhost").unwrap();
        let tls = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut p = Self {
            poll,
            events: mio::Events::with_capacity(8),
            server,
            scratch: vec![0; 64 * 1024],
            bufs: TlsScratch::default(),
            client,
            tls,
            got: Vec::new(),
        };
        for _ in 0..100 {
            if !p.tls.is_handshaking() && !p.server.is_handshaking() {
                break;
            }
            p.client_flush(usize::MAX);
            p.server_read();
            p.client_read();
            p.wait();
        }
        assert!(!p.server.is_handshaking(), "the handshake did not finish");
        p
    }

    /// The client's records to the socket, `chunk` bytes per write, the server reading after
    /// each.
    fn client_flush(&mut self, chunk: usize) {
        let mut out = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut out).unwrap();
        }
        for piece in out.chunks(chunk) {
            self.client.write_all(piece).unwrap();
            if chunk != usize::MAX {
                self.server_read();
            }
        }
    }

    /// What the server's socket has, read as the I/O thread does (kept bytes first).
    fn server_read(&mut self) -> bool {
        let mut peer_closed = false;
        loop {
            let kept = self.server.partial().len();
            self.scratch[..kept].copy_from_slice(self.server.partial());
            let used = match self.server.read_sock(&mut self.scratch[kept..]) {
                Ok(0) => return true,
                Ok(m) => kept + m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return peer_closed,
                Err(e) => panic!("server read: {e}"),
            };
            self.server.release_partial();
            self.bufs.plain.clear();
            let p = self
                .server
                .process(&mut self.scratch[..used], &mut self.bufs.plain, &mut self.bufs.write.out)
                .unwrap();
            self.server.transmit(&mut self.bufs.write.out).unwrap();
            self.got.extend_from_slice(&self.bufs.plain);
            peer_closed |= p.peer_closed;
        }
    }

    /// What the client's socket has; the plaintext, and whether it reached EOF.
    fn client_read(&mut self) -> (Vec<u8>, bool) {
        let mut plain = Vec::new();
        loop {
            match self.tls.read_tls(&mut self.client) {
                Ok(0) => return (plain, true),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (plain, false),
                Err(e) => panic!("client read: {e}"),
            }
            self.tls.process_new_packets().unwrap();
            match self.tls.reader().read_to_end(&mut plain) {
                Ok(_) => return (plain, true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("client TLS read: {e}"),
            }
        }
    }

    /// Until either socket has news (a real socket's bytes take their time to arrive).
    fn wait(&mut self) {
        self.poll.poll(&mut self.events, Some(Duration::from_secs(5))).unwrap();
        assert!(!self.events.is_empty(), "no socket event in 5 s");
    }

    /// Reads on the server until it has read `n` bytes of plaintext.
    fn server_read_until(&mut self, n: usize) {
        self.server_read();
        while self.got.len() < n {
            self.wait();
            self.server_read();
        }
    }

    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.server.write_tls(&[IoSlice::new(data)], &mut self.bufs.write)
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ seed).collect()
}

#[test]
fn a_record_arriving_byte_by_byte_is_kept_until_whole_then_freed() {
    let mut p = Pair::new(false);
    assert_eq!(p.server.held(), (0, 0), "an idle connection holds no buffer");
    let data = pattern(60 * 1024, 3);
    p.tls.writer().write_all(&data).unwrap();
    p.client_flush(1);
    p.server_read_until(data.len());
    assert!(p.got == data, "the server read {} bytes of {}", p.got.len(), data.len());
    assert_eq!(p.server.held(), (0, 0), "nothing kept once every record is whole");
    // Half a record: kept, and only that.
    p.tls.writer().write_all(b"ping").unwrap();
    let mut out = Vec::new();
    while p.tls.wants_write() {
        p.tls.write_tls(&mut out).unwrap();
    }
    let half = out.len() / 2;
    p.client.write_all(&out[..half]).unwrap();
    while p.server.partial().len() < half {
        p.wait();
        p.server_read();
    }
    assert_eq!(p.server.partial().len(), half);
    p.client.write_all(&out[half..]).unwrap();
    p.server_read_until(data.len() + 4);
    assert!(p.got.ends_with(b"ping"));
    assert_eq!(p.server.held(), (0, 0));
}

#[test]
fn a_write_the_socket_does_not_take_waits_and_blocks_the_next_until_sent() {
    let mut p = Pair::new(true);
    let mut sent = Vec::new();
    let mut blocked = false;
    // 60 KiB frames until one is not taken whole.
    for seed in 0..64u8 {
        let frame = pattern(60 * 1024, seed);
        match p.write(&frame) {
            Ok(n) => {
                sent.extend_from_slice(&frame[..n]);
                if p.server.held().1 > 0 {
                    blocked = true;
                    break;
                }
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(blocked, "the socket took everything");
    // One write's worth waits: the next write is WouldBlock and takes nothing.
    let e = p.write(b"more").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    // The client reads; the records waiting go out as the socket takes them.
    let mut received = Vec::new();
    for _ in 0..10_000 {
        received.extend(p.client_read().0);
        if p.server.send_unsent().unwrap() {
            break;
        }
        p.wait();
    }
    assert_eq!(p.server.held(), (0, 0), "the waiting records' buffer is freed");
    assert_eq!(p.write(b"tail").unwrap(), 4);
    sent.extend_from_slice(b"tail");
    // Close: close_notify, then FIN.
    p.server.shutdown_write(&mut p.bufs.write);
    let mut eof = false;
    for _ in 0..10_000 {
        let (plain, end) = p.client_read();
        received.extend(plain);
        if end {
            eof = true;
            break;
        }
        p.server.send_unsent().unwrap();
        p.wait();
    }
    assert!(eof, "no close_notify and FIN");
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "the client read other bytes than were written");
    // A frame that spans records and the client's close_notify back.
    p.tls.writer().write_all(&pattern(60 * 1024, 9)).unwrap();
    p.tls.send_close_notify();
    p.client_flush(usize::MAX);
    let before = p.got.len();
    let mut closed = p.server_read();
    while !closed {
        p.wait();
        closed = p.server_read();
    }
    assert!(p.got[before..] == pattern(60 * 1024, 9));
    assert!(p.server.peer_closed());
}

#[test]
fn a_broken_record_fails_with_an_alert_for_the_peer() {
    let mut p = Pair::new(false);
    // An application-data record of garbage: it does not decrypt.
    let mut rec = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    rec.extend_from_slice(&[0xab; 32]);
    p.scratch[..rec.len()].copy_from_slice(&rec);
    let mut plain = Vec::new();
    let mut out = Vec::new();
    let r = p.server.process(&mut p.scratch[..rec.len()], &mut plain, &mut out);
    assert!(r.is_err());
    assert_eq!(out.first(), Some(&0x17), "an encrypted alert is queued: {out:?}");
}

/// The TLS state a connection boxes (`Transport::Tls`): rustls's unbuffered connection, the
/// socket, two empty vectors and two flags. The buffered `ServerConnection` it replaced is
/// shown for comparison; what either allocates on top is not counted here.
#[test]
fn a_tls_stream_stays_small() {
    let stream = std::mem::size_of::<TlsStream>();
    let unbuffered = std::mem::size_of::<UnbufferedServerConnection>();
    let buffered = std::mem::size_of::<rustls::ServerConnection>();
    eprintln!("TlsStream {stream} B, unbuffered {unbuffered} B, buffered {buffered} B");
    // The socket, two vectors and two flags, with padding: 1,160 B with rustls 0.23.46 (its
    // unbuffered connection 1,088 B; the buffered one 1,168 B).
    assert!(stream <= unbuffered + 80, "TlsStream grew to {stream} B");
}
