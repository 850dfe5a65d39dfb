//! The gateway's side of the link handshake: dial, prove, check the worker's proof (the
//! sans-IO rules are `tern_proto::session::link`); refusals are logged and counted here.

use bytes::BytesMut;
use std::sync::atomic::Ordering::Relaxed;
use tern_proto::FrameDecoder;
use tern_proto::link::v1 as link;
use tern_proto::session::link::{
    AuthFailure, Dialer, DialerStep, MAX_HANDSHAKE_FRAME, NONCE_BYTES, refused_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::Inner;

/// Why a link ended.
pub(super) enum LinkDown {
    /// Socket failure or EOF.
    Io(std::io::Error),
    /// The worker failed the handshake (logged and counted).
    Refused,
}

impl From<std::io::Error> for LinkDown {
    fn from(e: std::io::Error) -> Self {
        LinkDown::Io(e)
    }
}

/// Runs the handshake after the Hello: reads frames (capped at [`MAX_HANDSHAKE_FRAME`]) into
/// the dialer, sends its proof once the worker proved itself, and returns the worker's id at
/// LinkUp. Bytes after LinkUp stay in `buf`.
async fn handshake(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    buf: &mut BytesMut,
    dialer: &mut Dialer,
    claimed: &mut Option<String>,
) -> Result<String, AuthFailure> {
    let mut decoder = FrameDecoder::new(MAX_HANDSHAKE_FRAME);
    loop {
        let frame = match decoder.decode_as::<link::LinkFrame>(buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => match rd.read_buf(buf).await {
                Ok(0) => {
                    return Err(AuthFailure::Incomplete(
                        "closed by the worker during the handshake".into(),
                    ));
                }
                Ok(_) => continue,
                Err(e) => return Err(AuthFailure::Incomplete(format!("read failed: {e}"))),
            },
            Err(e) => return Err(AuthFailure::Incomplete(format!("bad frame: {e}"))),
        };
        match dialer.on_frame(frame)? {
            DialerStep::Reply(proof) => {
                *claimed = dialer.claimed_worker().map(str::to_owned);
                let proof = tern_proto::encode_to_bytes(&*proof, usize::MAX).unwrap_or_default();
                wr.write_all(&proof)
                    .await
                    .map_err(|e| AuthFailure::Incomplete(format!("write failed: {e}")))?;
            }
            DialerStep::Linked { worker_id } => return Ok(worker_id),
        }
    }
}

/// Authenticates a fresh link to `addr`: sends Hello, checks the worker's proof, sends this
/// gateway's. On failure logs (which worker, where, why), counts and tells the worker.
pub(super) async fn authenticate(
    inner: &Inner,
    addr: &str,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    buf: &mut BytesMut,
) -> Result<String, LinkDown> {
    let cfg = &inner.cfg;
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(format!("nonce: {e}")))?;
    let (mut dialer, hello) = Dialer::new(cfg.secrets.clone(), &cfg.gateway_id, addr, nonce);
    let mut claimed = None;
    let run = async {
        if cfg.secrets.is_insecure() {
            let peer = rd.peer_addr().map_err(|e| AuthFailure::Incomplete(e.to_string()))?;
            if !peer.ip().is_loopback() {
                return Err(AuthFailure::Incomplete(format!(
                    "cluster.insecure_links links only loopback workers; {peer} is not one"
                )));
            }
        }
        let hello = tern_proto::encode_to_bytes(&hello, usize::MAX).unwrap_or_default();
        wr.write_all(&hello)
            .await
            .map_err(|e| AuthFailure::Incomplete(format!("write failed: {e}")))?;
        handshake(rd, wr, buf, &mut dialer, &mut claimed).await
    };
    let result = match tokio::time::timeout(cfg.handshake_timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(AuthFailure::Incomplete(format!(
            "no proof within the handshake timeout ({:?})",
            cfg.handshake_timeout
        ))),
    };
    result.map_err(|failure| {
        inner.metrics.auth_failures.fetch_add(1, Relaxed);
        tracing::warn!(
            worker = %addr,
            claimed_worker = %claimed.as_deref().unwrap_or("-"),
            reason = %failure,
            "refused a dispatch worker link"
        );
        if !matches!(failure, AuthFailure::Incomplete(_) | AuthFailure::RefusedByPeer(_)) {
            let refused = tern_proto::encode_to_bytes(&refused_frame(&failure), usize::MAX)
                .unwrap_or_default();
            // Best effort, and never waited for long: the link is closed right after.
            let _ = wr.try_write(&refused);
        }
        LinkDown::Refused
    })
}
