//! A connection's byte sink, whichever its transport: what [`crate::conn::Connection`] writes
//! to. Plain TCP writes the socket; TLS encrypts and writes ([`TlsStream`]); QUIC copies into
//! the stream's send buffer.

use std::io::{self, IoSlice, Write};

use mio::net::TcpStream;

use super::tls::{TlsStream, WriteScratch};
use crate::quic::{QuicConnId, QuicHost};

/// A connection's byte sink: its TCP socket, its TLS stream, or its QUIC stream (a write the
/// stream does not take at all is `WouldBlock`; [`crate::quic::HostEvent::Writable`] follows).
pub(super) enum Sink<'a> {
    Tcp(&'a mut TcpStream),
    /// A TLS stream and the thread's buffers it encrypts into.
    Tls(&'a mut TlsStream, &'a mut WriteScratch),
    Quic(&'a mut QuicHost, QuicConnId),
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Tcp(s) => s.write(buf),
            Sink::Tls(s, w) => s.write_tls(&[IoSlice::new(buf)], w),
            Sink::Quic(host, id) => match host.write(*id, buf) {
                Ok(0) if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
                Ok(n) => Ok(n),
                Err(e) => Err(io::Error::new(io::ErrorKind::BrokenPipe, e)),
            },
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let (host, id) = match self {
            Sink::Tcp(s) => return s.write_vectored(bufs),
            Sink::Tls(s, w) => return s.write_tls(bufs, w),
            Sink::Quic(host, id) => (host, *id),
        };
        // The stream copies into its send buffer: take slices until one is cut short.
        let mut total = 0;
        for b in bufs.iter().filter(|b| !b.is_empty()) {
            match host.write(id, b) {
                Ok(n) => {
                    total += n;
                    if n < b.len() {
                        break;
                    }
                }
                Err(e) if total == 0 => return Err(io::Error::new(io::ErrorKind::BrokenPipe, e)),
                Err(_) => break,
            }
        }
        if total == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
