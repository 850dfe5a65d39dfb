//! TLS on TCP for an I/O thread, on the same port as plain TCP: a new connection's first byte
//! decides (a TLS record starts with 0x16, the handshake content type; a Tern frame's 4-byte
//! length prefix never does, since it would announce more than 16 MiB). A TLS connection is a
//! [`TlsStream`]: its socket and a rustls [`ServerConnection`] driven without I/O of its own.
//! Records read from the socket are decrypted into the thread's scratch buffer and handed to
//! the connection's [`crate::conn::Connection`] like plain TCP input; what the connection writes
//! is encrypted and written at once. When the socket does not take a write, its records wait in
//! rustls (one write's worth at most: the next write is `WouldBlock` until the socket is
//! writable), so the connection's own outbound queue and caps work as on plain TCP.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use mio::net::TcpStream;
use rustls::ServerConnection;
use tern_proto::v1::ErrorCode;

use super::sink::Sink;
use super::{Env, IoThread, Key, READS_PER_TURN, Transport};
use crate::upstream::Upstream;

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// Whether the client port speaks TLS, besides plain TCP ([`crate::core::Listeners::with_tls`]).
#[derive(Clone)]
pub struct TlsListen {
    /// The rustls configuration every TLS connection of the process shares
    /// ([`crate::tls::server_config`]).
    pub config: Arc<rustls::ServerConfig>,
    /// Whether plain-TCP clients are still served on the port (false: TLS is required, and a
    /// plain client gets a fatal `ERROR_CODE_TLS_REQUIRED`).
    pub plaintext: bool,
}

impl std::fmt::Debug for TlsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListen").field("plaintext", &self.plaintext).finish_non_exhaustive()
    }
}

/// A TLS connection's socket and TLS state.
#[derive(Debug)]
pub(super) struct TlsStream {
    sock: TcpStream,
    tls: ServerConnection,
    /// The connection half-closed: close_notify is queued, the socket's write side shuts once
    /// every record is out.
    shut: bool,
}

impl TlsStream {
    pub(super) fn sock(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// Writes the records rustls holds to the socket: `Ok(true)` when none is left.
    fn send_records(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.shut {
            let _ = self.sock.shutdown(Shutdown::Write);
        }
        Ok(true)
    }

    /// The connection's half-close: close_notify, then the socket's FIN once all is out.
    pub(super) fn shutdown_write(&mut self) {
        if !self.shut {
            self.tls.send_close_notify();
            self.shut = true;
        }
        let _ = self.send_records();
    }

    /// Before encrypting more: the socket must have taken what is already encrypted.
    fn ready(&mut self) -> io::Result<()> {
        match self.send_records() {
            Ok(true) => Ok(()),
            Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e),
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.ready()?;
        let n = self.tls.writer().write(buf)?;
        self.send_records()?;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.ready()?;
        // One record holds frames of several slices.
        let n = self.tls.writer().write_vectored(bufs)?;
        self.send_records()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_records().map(|_| ())
    }
}

/// What reading a TLS connection came to.
enum Read1 {
    /// Read records and handled them.
    Records,
    WouldBlock,
    Eof,
    /// The TLS layer failed (a bad record, a failed handshake) or the socket did.
    Failed,
}

impl<U: Upstream> IoThread<U> {
    /// A connection's first bytes (`n` of them, in the scratch buffer): TLS when they start
    /// a TLS record (the connection becomes [`Transport::Tls`] and they are its first
    /// records), plain TCP otherwise (refused when TLS is required). Returns whether the
    /// bytes were plain input, still to be handed to the connection.
    pub(super) fn sniff(&mut self, i: u32, n: usize) -> bool {
        let Some(tls) = self.tls.as_ref() else { return true };
        let plaintext = tls.plaintext;
        let Some(slot) = self.slots.get_mut(i as usize) else { return false };
        let Some(mut c) = slot.conn.take() else { return false };
        let is_tls = self.scratch.first() == Some(&TLS_HANDSHAKE);
        let mut failed = false;
        c.io = match c.io {
            Transport::Fresh(sock) if !is_tls => Transport::Tcp(sock),
            Transport::Fresh(sock) => match ServerConnection::new(tls.config.clone()) {
                Ok(conn) => Transport::Tls(Box::new(TlsStream { sock, tls: conn, shut: false })),
                Err(e) => {
                    tracing::warn!(error = %e, "starting a TLS connection failed");
                    failed = true;
                    Transport::Tcp(sock)
                }
            },
            other => other,
        };
        slot.conn = Some(c);
        if failed {
            self.drop_conn(i);
            return false;
        }
        if !is_tls {
            if !plaintext {
                self.refuse_plaintext(i);
            }
            return plaintext;
        }
        self.gw.metrics.tls_connections_open.fetch_add(1, Relaxed);
        // The scratch buffer takes the plaintext: the records read so far move out of it.
        let first = self.scratch[..n].to_vec();
        let mut rest = &first[..];
        while !rest.is_empty() {
            match self.read_records(i, Some(&mut rest)) {
                Read1::Records => {}
                Read1::Failed => return false,
                Read1::WouldBlock | Read1::Eof => break,
            }
        }
        // The socket may hold more (no new edge will say so).
        self.on_tls_readable(i);
        false
    }

    /// Reads what TLS connection `i` has, within its turn (see `on_readable`), to WouldBlock.
    pub(super) fn on_tls_readable(&mut self, i: u32) {
        for _ in 0..READS_PER_TURN {
            let Some(c) = self.slots.get_mut(i as usize).and_then(|s| s.conn.as_mut()) else {
                return;
            };
            if c.conn.reading_paused(&self.gw.cfg) {
                return;
            }
            match self.read_records(i, None) {
                // rustls reads into what room its record buffer has left, which may be less
                // than a piece: a short read says nothing, read on to WouldBlock.
                Read1::Records => {}
                Read1::WouldBlock => return,
                Read1::Eof => {
                    if let Some(c) = self.slots.get_mut(i as usize).and_then(|s| s.conn.as_mut()) {
                        c.conn.on_eof();
                    }
                    return self.after(i);
                }
                Read1::Failed => return,
            }
        }
        let key = self.key(i);
        self.again.push(key);
    }

    /// One `read_tls` into connection `i`'s TLS state, from `bytes` (already read) or else
    /// from its socket, then its plaintext to the connection and its handshake answers to the
    /// socket.
    fn read_records(&mut self, i: u32, bytes: Option<&mut &[u8]>) -> Read1 {
        let Some(slot) = self.slots.get_mut(i as usize) else { return Read1::Failed };
        let generation = slot.generation;
        let Some(c) = slot.conn.as_mut() else { return Read1::Failed };
        let Transport::Tls(t) = &mut c.io else { return Read1::Failed };
        let read = match bytes {
            Some(b) => t.tls.read_tls(b),
            None => t.tls.read_tls(&mut t.sock),
        };
        match read {
            Ok(0) => return Read1::Eof,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read1::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Read1::Records,
            Err(e) => {
                tracing::debug!(error = %e, "TLS read failed");
                self.drop_conn(i);
                return Read1::Failed;
            }
        };
        let handshaking = t.tls.is_handshaking();
        if let Err(e) = t.tls.process_new_packets() {
            if handshaking {
                self.gw.metrics.tls_handshake_failures.fetch_add(1, Relaxed);
            }
            tracing::debug!(error = %e, "TLS connection failed");
            // The alert rustls queued goes out if the socket takes it.
            let _ = t.send_records();
            self.drop_conn(i);
            return Read1::Failed;
        }
        let env =
            Env::new(&self.gw, &self.mailbox, &self.rt, Key { slot: i, generation }, c.source);
        let now = Instant::now();
        let mut eof = false;
        loop {
            match t.tls.reader().read(&mut self.scratch) {
                Ok(0) => {
                    // close_notify: the client is done.
                    eof = true;
                    break;
                }
                Ok(m) => {
                    let mut sink = Sink::Tls(t);
                    c.conn.on_input(now, &self.scratch[..m], &self.decoder, &mut sink, &env);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if t.send_records().is_err() {
            self.drop_conn(i);
            return Read1::Failed;
        }
        if eof {
            return Read1::Eof;
        }
        self.after(i);
        Read1::Records
    }

    /// The socket of TLS connection `i` can take records again: first those rustls holds,
    /// then the connection's queue.
    pub(super) fn on_tls_writable(&mut self, i: u32) -> bool {
        let Some(c) = self.slots.get_mut(i as usize).and_then(|s| s.conn.as_mut()) else {
            return false;
        };
        let Transport::Tls(t) = &mut c.io else { return true };
        match t.send_records() {
            Ok(true) => true,
            Ok(false) => false,
            Err(_) => {
                self.drop_conn(i);
                false
            }
        }
    }

    /// A plain-TCP client on a port that requires TLS: a fatal Error says so.
    fn refuse_plaintext(&mut self, i: u32) {
        self.gw.metrics.tls_plaintext_refusals.fetch_add(1, Relaxed);
        let err = tern_proto::session::server::error(
            0,
            ErrorCode::TlsRequired,
            "this port requires TLS: connect with tls:// (or quic://)",
            true,
        );
        let frame = tern_proto::codec::encode_to_bytes(&err, self.gw.cfg.session.max_frame_bytes);
        let now = Instant::now();
        self.drive(i, |c, io, env, _| c.close_with(now, frame.ok(), io, env));
    }
}
