//! One TCP connection speaking frames: connect, log in, read frames, write frames.

use std::io;

use bytes::BytesMut;
use tern_proto::v1::{self, envelope::Body};
use tern_proto::{FrameDecoder, encode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::config::ClientConfig;
use crate::error::{SdkError, error_code};

/// The request id of the Login frame on every connection; other requests count up from it.
pub(crate) const LOGIN_REQUEST_ID: u64 = 1;

/// A logged-in (or logging-in) connection: a read half with its frame decoder and buffer, and a
/// write half with an output buffer that batches frames into one write.
#[derive(Debug)]
pub(crate) struct Transport {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    decoder: FrameDecoder,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_out: usize,
}

impl Transport {
    /// Connects to `cfg.addr` with TCP_NODELAY, sends Login with `token` and waits for
    /// LoginOk, all within `cfg.request_timeout`.
    pub(crate) async fn connect(
        cfg: &ClientConfig,
        token: String,
    ) -> Result<(Self, v1::LoginOk), SdkError> {
        match tokio::time::timeout(cfg.request_timeout, Self::connect_inner(cfg, token)).await {
            Ok(result) => result,
            Err(_) => Err(SdkError::Timeout),
        }
    }

    /// Opens TCP to the first address that accepts, trying the configured addresses from a
    /// random one onwards (so clients spread over gateways, and a dead gateway is skipped).
    async fn open(cfg: &ClientConfig) -> Result<TcpStream, SdkError> {
        let addrs: Vec<&str> =
            cfg.addr.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
        if addrs.is_empty() {
            return Err(SdkError::InvalidArgument("no server address configured".to_owned()));
        }
        let start = fastrand::usize(..addrs.len());
        let mut last = None;
        for i in 0..addrs.len() {
            match TcpStream::connect(addrs[(start + i) % addrs.len()]).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or(SdkError::Closed, SdkError::Io))
    }

    async fn connect_inner(
        cfg: &ClientConfig,
        token: String,
    ) -> Result<(Self, v1::LoginOk), SdkError> {
        let stream = Self::open(cfg).await?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let mut t = Transport {
            reader,
            writer,
            decoder: FrameDecoder::new(cfg.max_frame_bytes),
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(4096),
            max_out: cfg.max_frame_bytes,
        };
        t.queue(&v1::Envelope {
            request_id: LOGIN_REQUEST_ID,
            body: Some(Body::Login(v1::Login {
                token,
                protocol_version: tern_proto::PROTOCOL_VERSION,
                client_version: cfg.client_version.clone(),
            })),
        })?;
        t.flush().await?;
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
