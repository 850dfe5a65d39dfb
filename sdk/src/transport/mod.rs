//! One connection to a gateway speaking frames, over any transport: connect, log in, read
//! frames, write frames.
//!
//! - `dial`: the addresses (`tcp://`, `tls://`, `quic://`) and how one is reached: QUIC
//!   first, TCP or TLS raced against it after a short head start (happy eyeballs), QUIC 0-RTT
//!   on resumption.
//! - `trust`: which server certificates TLS and QUIC accept (system roots, a CA file, a pinned
//!   fingerprint).

mod dial;
mod trust;

use std::io;

use bytes::BytesMut;
use tern_proto::v1::{self, envelope::Body};
use tern_proto::{FrameDecoder, encode_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(crate) use dial::Dialer;
pub use dial::Scheme;
pub use trust::Trust;

use crate::config::ClientConfig;
use crate::error::{SdkError, error_code};

/// The read half of a transport (a TCP or TLS stream's, a QUIC stream's receive side).
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half.
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// The request id of the Login frame on every connection; other requests count up from it.
pub(crate) const LOGIN_REQUEST_ID: u64 = 1;

/// A logged-in (or logging-in) connection: a read half with its frame decoder and buffer, and a
/// write half with an output buffer that batches frames into one write.
pub(crate) struct Transport {
    /// Which transport carries it.
    pub(crate) scheme: Scheme,
    reader: ReadHalf,
    writer: WriteHalf,
    decoder: FrameDecoder,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_out: usize,
    /// The QUIC connection the stream belongs to (closing it ends the stream).
    _quic: Option<quinn::Connection>,
    /// The Login went in QUIC 0-RTT data and the server accepted it.
    pub(crate) zero_rtt: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("scheme", &self.scheme).finish_non_exhaustive()
    }
}

impl Transport {
    /// Opens a transport with `dialer` (see [`Dialer::open`]), sends Login with `token` and
    /// waits for LoginOk, all within `cfg.request_timeout`.
    pub(crate) async fn connect(
        dialer: &Dialer,
        cfg: &ClientConfig,
        token: String,
    ) -> Result<(Self, v1::LoginOk), SdkError> {
        let attempt = Self::connect_inner(dialer, cfg, token);
        match tokio::time::timeout(cfg.request_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(SdkError::Timeout),
        }
    }

    async fn connect_inner(
        dialer: &Dialer,
        cfg: &ClientConfig,
        token: String,
    ) -> Result<(Self, v1::LoginOk), SdkError> {
        let mut opened = dialer.open().await?;
        let login = v1::Envelope {
            request_id: LOGIN_REQUEST_ID,
            body: Some(Body::Login(v1::Login {
                token,
                protocol_version: tern_proto::PROTOCOL_VERSION,
                client_version: cfg.client_version.clone(),
                platform: cfg.platform as i32,
            })),
        };
        let mut t = Transport {
            scheme: opened.scheme,
            reader: opened.reader,
            writer: opened.writer,
            decoder: FrameDecoder::new(cfg.max_frame_bytes),
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(4096),
            max_out: cfg.max_frame_bytes,
            _quic: opened.quic.take(),
            zero_rtt: false,
        };
        t.queue(&login)?;
        t.flush().await?;
        // A QUIC Login sent in 0-RTT data: the handshake says whether the server took it. If
        // not, none of it reached the server, and it goes again on a fresh stream. (Waiting
        // costs nothing: LoginOk cannot be read before the handshake completes anyway.)
        if let Some(accepted) = opened.zero_rtt.take() {
            t.zero_rtt = accepted.await;
            if !t.zero_rtt
                && let Some(conn) = &t._quic
            {
                let (tx, rx) = conn.open_bi().await.map_err(dial::quic_error)?;
                (t.reader, t.writer) = (Box::new(rx), Box::new(tx));
                t.queue(&login)?;
                t.flush().await?;
            }
        }
        loop {
            let Some(env) = t.read_frame().await? else {
                return Err(SdkError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during login",
                )));
            };
            match env.body {
                Some(Body::LoginOk(ok)) => {
                    if ok.max_frame_bytes > 0 {
                        t.max_out = t.max_out.min(ok.max_frame_bytes as usize);
                    }
                    return Ok((t, ok));
                }
                Some(Body::Error(err)) => {
                    return Err(SdkError::Login {
                        code: error_code(err.code),
                        message: err.message,
                    });
                }
                Some(Body::Kick(kick)) => {
                    return Err(SdkError::Protocol(format!(
                        "kicked during login: {}",
                        kick.message
                    )));
                }
                // Anything else before the answer to Login is ignored.
                _ => continue,
            }
        }
    }

    /// Reads the next frame; `Ok(None)` on a clean end of stream. Cancel-safe: a partly read
    /// frame stays in the buffer for the next call.
    pub(crate) async fn read_frame(&mut self) -> Result<Option<v1::Envelope>, SdkError> {
        loop {
            if let Some(env) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(Some(env));
            }
            if self.reader.read_buf(&mut self.rbuf).await? == 0 {
                if self.rbuf.is_empty() {
                    return Ok(None);
                }
                return Err(SdkError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed in the middle of a frame",
                )));
            }
        }
    }

    /// Encodes `env` into the output buffer (sent by the next [`Transport::flush`]). Fails,
    /// queueing nothing, when the frame is larger than the connection's limit.
    pub(crate) fn queue(&mut self, env: &v1::Envelope) -> Result<(), SdkError> {
        encode_frame(env, self.max_out, &mut self.wbuf)?;
        Ok(())
    }

    /// Whether frames are waiting in the output buffer.
    pub(crate) fn has_queued(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes every queued frame.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.writer.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Shuts the write side down (a FIN to the server); errors are irrelevant at this point.
    pub(crate) async fn shutdown(mut self) {
        let _ = self.writer.shutdown().await;
    }
}
