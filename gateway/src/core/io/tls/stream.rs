//! A TLS connection's socket and its rustls [`UnbufferedServerConnection`]: what it keeps of its
//! own is only what cannot wait in the I/O thread's shared buffers ([`TlsScratch`]): the bytes
//! of a record not yet complete (`partial`) and the encrypted bytes the socket has not taken
//! (`unsent`). Both are empty, with nothing allocated, while the connection is idle.

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};

/// Plaintext taken by one write at most: a connection's write cut short goes on with the rest
/// at the next write, as on plain TCP.
const MAX_WRITE: usize = 64 * 1024;

/// Room a read gets after a connection's kept bytes: one record of the largest size TLS allows
/// (2^14 bytes of payload, 2048 of expansion, a 5-byte header).
pub(super) const MAX_RECORD: usize = 16 * 1024 + 2048 + 5;

/// Calls of `process_tls_records` in a row that consume no bytes before the driver gives up
/// (each returns a state to handle; no such run is that long).
const MAX_STEPS: usize = 64;

/// The buffers an I/O thread's TLS connections share: decrypted input, and what writes use.
#[derive(Debug, Default)]
pub(in crate::core::io) struct TlsScratch {
    /// The plaintext of the records one read brought, handed to the connection at once.
    pub(super) plain: Vec<u8>,
    pub(in crate::core::io) write: WriteScratch,
}

/// What writing a TLS connection uses: records to send, and slices joined for one encryption.
#[derive(Debug, Default)]
pub(in crate::core::io) struct WriteScratch {
    /// Records encoded or encrypted and not yet written to the socket.
    pub(super) out: Vec<u8>,
    /// A vectored write's slices, joined to be encrypted as one run of records.
    join: Vec<u8>,
}

/// What processing a read's records came to.
pub(super) struct Processed {
    /// The peer's close_notify came (first seen in these records).
    pub(super) peer_closed: bool,
}

/// A TLS connection's socket and TLS state.
pub(in crate::core::io) struct TlsStream {
    sock: TcpStream,
    tls: UnbufferedServerConnection,
    /// The bytes after the last complete record, as rustls left them (a handshake message
    /// still being joined lies there, reassembled in place): the start of the next read.
    partial: Vec<u8>,
    /// Encrypted bytes the socket did not take: sent before anything else is encrypted.
    unsent: Vec<u8>,
    /// The connection half-closed: close_notify is queued, the socket's write side shuts once
    /// every record is out.
    shut: bool,
    /// The socket's write side is shut.
    fin: bool,
    /// The peer's close_notify came: what it sends after is ignored.
    peer_closed: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("sock", &self.sock)
            .field("partial", &self.partial.len())
            .field("unsent", &self.unsent.len())
            .field("shut", &self.shut)
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

impl TlsStream {
    pub(super) fn new(sock: TcpStream, tls: UnbufferedServerConnection) -> Self {
        Self {
            sock,
            tls,
            partial: Vec::new(),
            unsent: Vec::new(),
            shut: false,
            fin: false,
            peer_closed: false,
        }
    }

    pub(in crate::core::io) fn sock(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    pub(super) fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    pub(super) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// The capacities of the connection's own buffers (kept bytes, unsent bytes).
    #[cfg(test)]
    pub(super) fn held(&self) -> (usize, usize) {
        (self.partial.capacity(), self.unsent.capacity())
    }

    /// The kept bytes of an incomplete record, taken to start the next read with.
    pub(super) fn partial(&self) -> &[u8] {
        &self.partial
    }

    /// The kept bytes are in the read buffer now: the connection no longer holds them.
    pub(super) fn release_partial(&mut self) {
        self.partial = Vec::new();
    }

    /// Reads from the socket into `buf`.
    pub(super) fn read_sock(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut self.sock, buf)
    }

    /// Runs rustls over `buf` (the kept bytes, then those read): the plaintext of its records
    /// goes to `plain`, the records to send to `out` (handshake, session ticket, alerts), and
    /// the bytes of an incomplete record are kept. On an error, `out` holds the alert rustls
    /// has for the peer, if any.
    pub(super) fn process(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<Processed, rustls::Error> {
        let was_closed = self.peer_closed;
        let mut start = 0;
        let mut done = false;
        // Steps since bytes were last consumed (each record consumes its own).
        let mut idle = 0;
        while !done && idle < MAX_STEPS {
            let UnbufferedStatus { mut discard, state } =
                self.tls.process_tls_records(&mut buf[start..]);
            let result = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    let mut result = Ok(());
                    while let Some(record) = r.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                plain.extend_from_slice(record.payload);
                            }
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    result
                }
                Ok(ConnectionState::EncodeTlsData(mut s)) => {
                    encode(&mut s, out).map_err(|e| rustls::Error::General(e.to_string()))
                }
                // `out` is written once the records are processed, before any app data.
                Ok(ConnectionState::TransmitTlsData(s)) => {
                    s.done();
                    Ok(())
                }
                // No complete record left: the rest waits for more bytes.
                Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => {
                    done = true;
                    Ok(())
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(())
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    done = true;
                    Ok(())
                }
                // Early data is off for TLS on TCP (0-RTT is QUIC's).
                Ok(_) => Err(rustls::Error::General("unexpected TLS state".into())),
            };
            idle = if discard > 0 { 0 } else { idle + 1 };
            start = (start + discard).min(buf.len());
            if let Err(e) = result {
                self.take_alert(&mut buf[start..], out);
                return Err(e);
            }
        }
        if !done {
            return Err(rustls::Error::General("TLS records made no progress".into()));
        }
        // After close_notify the peer has nothing more to say: nothing is kept.
        self.partial =
            if self.peer_closed || start == buf.len() { Vec::new() } else { buf[start..].to_vec() };
        Ok(Processed { peer_closed: self.peer_closed && !was_closed })
    }

    /// After an error: the alert rustls queued for the peer, encoded into `out`.
    fn take_alert(&mut self, buf: &mut [u8], out: &mut Vec<u8>) {
        // While rustls holds records, it hands them out before looking at `buf` again.
        for _ in 0..MAX_STEPS {
            if !self.tls.wants_write() {
                return;
            }
            let UnbufferedStatus { state, .. } = self.tls.process_tls_records(buf);
            let Ok(ConnectionState::EncodeTlsData(mut s)) = state else { return };
            if encode(&mut s, out).is_err() {
                return;
            }
        }
    }

    /// Runs rustls on the kept bytes until it can encrypt (sending the records it has queued
    /// on the way into `out`), then `f` encrypts into `out`: `None` while the handshake is
    /// not done.
    fn traffic<R>(
        &mut self,
        out: &mut Vec<u8>,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> io::Result<R>,
    ) -> io::Result<Option<R>> {
        let mut f = Some(f);
        for _ in 0..MAX_STEPS {
            let UnbufferedStatus { discard, state } =
                self.tls.process_tls_records(&mut self.partial);
            let step = match state {
                Err(e) => Err(io::Error::other(e)),
                Ok(ConnectionState::EncodeTlsData(mut s)) => {
                    encode(&mut s, out).map(|()| None).map_err(io::Error::other)
                }
                Ok(ConnectionState::TransmitTlsData(s)) => {
                    s.done();
                    Ok(None)
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => match f.take() {
                    Some(f) => f(&mut w, out).map(|r| Some(Some(r))),
                    None => Err(io::Error::other("TLS write state repeated")),
                },
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(None)),
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => Err(io::ErrorKind::BrokenPipe.into()),
                // Every record read was handled when it was read.
                Ok(_) => Err(io::Error::other("unexpected TLS state on write")),
            };
            if discard > 0 {
                let discard = discard.min(self.partial.len());
                self.partial.drain(..discard);
                if self.partial.is_empty() {
                    self.partial = Vec::new();
                }
            }
            if let Some(r) = step? {
                return Ok(r);
            }
        }
        Err(io::Error::other("TLS write made no progress"))
    }

    /// Sends `out` (after what waits unsent); what the socket does not take waits. `out` is
    /// left empty.
    pub(super) fn transmit(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        if !self.unsent.is_empty() {
            self.unsent.extend_from_slice(out);
            out.clear();
            return self.send_unsent().map(|_| ());
        }
        let r = write_nb(&mut self.sock, out);
        if let Ok(n) = r
            && n < out.len()
        {
            self.unsent = out[n..].to_vec();
        }
        out.clear();
        r?;
        self.fin();
        Ok(())
    }

    /// Writes what waits unsent: `Ok(true)` when nothing is left.
    pub(super) fn send_unsent(&mut self) -> io::Result<bool> {
        if !self.unsent.is_empty() {
            let n = write_nb(&mut self.sock, &self.unsent)?;
            if n < self.unsent.len() {
                self.unsent.drain(..n);
                return Ok(false);
            }
            self.unsent = Vec::new();
        }
        self.fin();
        Ok(true)
    }

    /// Once half-closed and all is out: the socket's FIN.
    fn fin(&mut self) {
        if self.shut && !self.fin && self.unsent.is_empty() {
            self.fin = true;
            let _ = self.sock.shutdown(Shutdown::Write);
        }
    }

    /// The connection's half-close: close_notify (once the handshake is done), then the
    /// socket's FIN once all is out.
    pub(in crate::core::io) fn shutdown_write(&mut self, w: &mut WriteScratch) {
        if !self.shut {
            self.shut = true;
            let out = &mut w.out;
            let _ = self.traffic(out, |t, out| {
                append(out, 64, |b| t.queue_close_notify(b), encrypt_size).map_err(io::Error::other)
            });
            let _ = self.transmit(out);
        }
        let _ = self.send_unsent();
    }

    /// Encrypts what `bufs` hold (up to [`MAX_WRITE`] bytes) and writes it: the plaintext
    /// taken. `WouldBlock` while records of the last write wait, or the handshake is not done.
    pub(in crate::core::io) fn write_tls(
        &mut self,
        bufs: &[IoSlice<'_>],
        w: &mut WriteScratch,
    ) -> io::Result<usize> {
        if self.shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if !self.send_unsent()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let WriteScratch { out, join } = w;
        let mut slices = bufs.iter().filter(|b| !b.is_empty());
        let data: &[u8] = match (slices.next(), slices.next()) {
            (None, _) => return Ok(0),
            (Some(b), None) => &b[..b.len().min(MAX_WRITE)],
            (Some(_), Some(_)) => {
                // One run of records for several frames.
                join.clear();
                for b in bufs {
                    let take = b.len().min(MAX_WRITE - join.len());
                    join.extend_from_slice(&b[..take]);
                    if join.len() == MAX_WRITE {
                        break;
                    }
                }
                join
            }
        };
        let n = data.len();
        let guess = n + (n / (16 * 1024) + 1) * 22;
        let encrypted = self.traffic(out, |t, out| {
            append(out, guess, |b| t.encrypt(data, b), encrypt_size).map_err(io::Error::other)
        });
        // The records queued before (a ticket, a key update) go out in any case.
        let sent = self.transmit(out);
        match encrypted? {
            Some(()) => sent.map(|()| n),
            None => sent.and(Err(io::ErrorKind::WouldBlock.into())),
        }
    }
}

/// Encodes a handshake record rustls holds at the end of `out`.
fn encode(
    s: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let size = |e: &EncodeError| match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        EncodeError::AlreadyEncoded => None,
    };
    append(out, 0, |b| s.encode(b), size)
}

fn encrypt_size(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        EncryptError::EncryptExhausted => None,
    }
}

/// Appends what `f` writes to `out`: room for `guess` bytes first, then as much as `f` says it
/// needs (rustls writes nothing when the room is short).
fn append<E>(
    out: &mut Vec<u8>,
    guess: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
    size: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let at = out.len();
    out.resize(at + guess, 0);
    let r = match f(&mut out[at..]) {
        Err(e) => match size(&e) {
            Some(need) => {
                out.resize(at + need, 0);
                f(&mut out[at..])
            }
            None => Err(e),
        },
        ok => ok,
    };
    match r {
        Ok(n) => {
            out.truncate(at + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(at);
            Err(e)
        }
    }
}

/// Writes `buf` to the socket until it is all out or the socket would block: the bytes
/// written.
fn write_nb(sock: &mut TcpStream, buf: &[u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match sock.write(&buf[n..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => n += m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
