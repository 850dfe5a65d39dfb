//! TLS on TCP for an I/O thread, on the same port as plain TCP: a new connection's first byte
//! decides (a TLS record starts with 0x16, the handshake content type; a Tern frame's 4-byte
//! length prefix never does, since it would announce more than 16 MiB). A TLS connection is a
//! [`TlsStream`] (submodule `stream`): its socket and a rustls
//! [`UnbufferedServerConnection`], which buffers nothing of its own. Records are read into the
//! thread's scratch buffer (after the few bytes of an incomplete record the connection kept
//! from its last read) and processed there; their plaintext, collected in the thread's
//! [`TlsScratch`], goes to the connection's [`crate::conn::Connection`] like plain TCP input.
//! What the connection writes is encrypted into the thread's scratch and written at once; what
//! the socket does not take waits with the connection (one write's worth at most: the next
//! write is `WouldBlock` until it is out), so the connection's own outbound queue and caps
//! work as on plain TCP. An idle TLS connection so holds no buffer at all.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use rustls::server::UnbufferedServerConnection;
use tern_proto::v1::ErrorCode;

use super::sink::Sink;
use super::{Env, IoThread, Key, READS_PER_TURN, Transport};
use stream::MAX_RECORD;
pub(super) use stream::{TlsScratch, TlsStream, WriteScratch};

use crate::upstream::Upstream;

mod stream;
#[cfg(test)]
mod tests;

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
            Transport::Fresh(sock) => match UnbufferedServerConnection::new(tls.config.clone()) {
                Ok(conn) => Transport::Tls(Box::new(TlsStream::new(sock, conn))),
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
        // The bytes read so far are the first records, in the scratch buffer.
        match self.read_records(i, Some(n)) {
            Read1::Failed => return false,
            Read1::Eof => {
                self.on_tls_eof(i);
                return false;
            }
            Read1::Records | Read1::WouldBlock => {}
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
                // A short read may have drained the socket or not (a record cut short waits
                // for its end): read on to WouldBlock.
                Read1::Records => {}
                Read1::WouldBlock | Read1::Failed => return,
                Read1::Eof => return self.on_tls_eof(i),
            }
        }
        let key = self.key(i);
        self.again.push(key);
    }

    fn on_tls_eof(&mut self, i: u32) {
        if let Some(c) = self.slots.get_mut(i as usize).and_then(|s| s.conn.as_mut()) {
            c.conn.on_eof();
        }
        self.after(i);
    }

    /// One read of connection `i`: its records are the bytes it kept, then the first `first`
    /// bytes of the scratch buffer (already read) or else what its socket has. Their plaintext
    /// goes to the connection, their handshake answers to the socket, the bytes of a record
    /// still incomplete stay with the connection.
    fn read_records(&mut self, i: u32, first: Option<usize>) -> Read1 {
        let Some(slot) = self.slots.get_mut(i as usize) else { return Read1::Failed };
        let generation = slot.generation;
        let Some(c) = slot.conn.as_mut() else { return Read1::Failed };
        let Transport::Tls(t) = &mut c.io else { return Read1::Failed };
        let used = match first {
            Some(n) => n,
            None => {
                // The kept bytes first, then a record's room at least.
                let kept = t.partial().len();
                if self.scratch.len() < kept + MAX_RECORD {
                    self.scratch.resize(kept + MAX_RECORD, 0);
                }
                self.scratch[..kept].copy_from_slice(t.partial());
                match t.read_sock(&mut self.scratch[kept..]) {
                    Ok(0) => return Read1::Eof,
                    // After close_notify, what comes is ignored.
                    Ok(_) if t.peer_closed() => return Read1::Records,
                    Ok(m) => {
                        t.release_partial();
                        kept + m
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read1::WouldBlock,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => return Read1::Records,
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS read failed");
                        self.drop_conn(i);
                        return Read1::Failed;
                    }
                }
            }
        };
        let TlsScratch { plain, write } = &mut self.tls_scratch;
        plain.clear();
        let handshaking = t.is_handshaking();
        let processed = t.process(&mut self.scratch[..used], plain, &mut write.out);
        // Handshake answers, a session ticket or an alert: before any app data.
        let sent = t.transmit(&mut write.out);
        let processed = match processed {
            Ok(p) => p,
            Err(e) => {
                if handshaking {
                    self.gw.metrics.tls_handshake_failures.fetch_add(1, Relaxed);
                }
                tracing::debug!(error = %e, "TLS connection failed");
                self.drop_conn(i);
                return Read1::Failed;
            }
        };
        if sent.is_err() {
            self.drop_conn(i);
            return Read1::Failed;
        }
        let env =
            Env::new(&self.gw, &self.mailbox, &self.rt, Key { slot: i, generation }, c.source);
        let now = Instant::now();
        let opened = handshaking && !t.is_handshaking();
        let mut sink = Sink::Tls(t, write);
        if !plain.is_empty() {
            c.conn.on_input(now, plain, &self.decoder, &mut sink, &env);
        }
        // Frames written during the handshake waited (WouldBlock): they can go now.
        if opened && c.conn.wants_write() {
            c.conn.on_writable(now, &mut sink, &env);
        }
        if processed.peer_closed {
            return Read1::Eof;
        }
        self.after(i);
        Read1::Records
    }

    /// The socket of TLS connection `i` can take records again: first those waiting unsent,
    /// then the connection's queue.
    pub(super) fn on_tls_writable(&mut self, i: u32) -> bool {
        let Some(c) = self.slots.get_mut(i as usize).and_then(|s| s.conn.as_mut()) else {
            return false;
        };
        let Transport::Tls(t) = &mut c.io else { return true };
        match t.send_unsent() {
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
