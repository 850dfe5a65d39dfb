//! The worker's side of gateway links. Each gateway opens one TCP link to every worker and
//! multiplexes its clients' requests over it (`tern.link.v1.LinkFrame`, framed like client
//! frames). The worker answers each Request on the link it came from, and pushes deliveries to
//! a gateway over that gateway's link ([`Links`]).
//!
//! Every link starts with the mutual handshake of `tern_proto::session::link` (both sides prove
//! that they hold the cluster secret): until the gateway's proof checked out this side accepts
//! no Request, forwards no Kick and sends no Push, and frames are capped at
//! [`MAX_HANDSHAKE_FRAME`]. A peer that fails, or does not finish within the handshake timeout,
//! is logged (who it claimed to be, from where, why), counted, told why and disconnected.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_proto::FrameDecoder;
use tern_proto::link::v1::{self as link, link_frame::Body as LinkBody};
use tern_proto::session::link::{
    Acceptor, AcceptorStep, AuthFailure, LinkSecrets, MAX_HANDSHAKE_FRAME, NONCE_BYTES,
    refused_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::dispatcher::{Dispatcher, Origin};

/// Largest link frame accepted (a sync page answer is the largest thing on a link).
pub const MAX_LINK_FRAME: usize = 16 * 1024 * 1024;
/// Frames queued for one link before pushes to it are dropped (answers wait instead).
const LINK_QUEUE: usize = 65_536;
/// Connections in the handshake at once; more are closed at accept (and counted as refused),
/// so unauthenticated peers cannot hold an unbounded number of sockets.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// How this worker authenticates gateways.
#[derive(Debug, Clone)]
pub struct LinkAuth {
    /// The cluster secrets (the first proves this worker; all are accepted).
    pub secrets: LinkSecrets,
    /// The address this worker proves: what gateways dial (`cluster.link_advertise`, else the
    /// bound link address).
    pub address: String,
    /// How long a new link has to complete the handshake.
    pub handshake_timeout: Duration,
}

/// The links of this worker, by gateway id.
#[derive(Default)]
pub struct Links {
    by_gateway: Mutex<HashMap<String, (u64, mpsc::Sender<Bytes>)>>,
    next: AtomicU64,
    /// Push frames dropped because a gateway had no link or a full one.
    pub pushes_dropped: AtomicU64,
    /// Links refused during the handshake (bad or missing proof, timeout, too many pending).
    pub auth_failures: AtomicU64,
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, mpsc::Sender<Bytes>)>> {
        self.by_gateway.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame for `gateway_id`'s link without waiting. False when the gateway has no
    /// link here or its queue is full (the push is dropped; clients recover by sync).
    pub fn try_send(&self, gateway_id: &str, frame: Bytes) -> bool {
        self.try_send_frames(gateway_id, frame, 1)
    }

    /// Queues `frames`, `count` encoded link frames back to back, for `gateway_id`'s link as
    /// one item (written with one write). False when the gateway has no link here or its queue
    /// is full: all `count` are dropped and counted.
    pub fn try_send_frames(&self, gateway_id: &str, frames: Bytes, count: usize) -> bool {
        let tx = self.lock().get(gateway_id).map(|(_, tx)| tx.clone());
        let ok = tx.is_some_and(|tx| tx.try_send(frames).is_ok());
        if !ok {
            self.pushes_dropped.fetch_add(count as u64, Relaxed);
        }
        ok
    }

    /// Gateways linked now.
    pub fn gateways(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn register(&self, gateway_id: &str, tx: mpsc::Sender<Bytes>) -> u64 {
        let id = self.next.fetch_add(1, Relaxed);
        self.lock().insert(gateway_id.to_owned(), (id, tx));
        id
    }

    fn unregister(&self, gateway_id: &str, id: u64) {
        let mut map = self.lock();
        if map.get(gateway_id).is_some_and(|(i, _)| *i == id) {
            map.remove(gateway_id);
        }
    }

    /// Appends the link counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "tern_dispatch_link_auth_failures_total";
        let _ = writeln!(
            out,
            "# HELP {name} Gateway links refused in the handshake (no or bad proof, timeout).\n\
             # TYPE {name} counter\n{name} {}",
            self.auth_failures.load(Relaxed)
        );
    }
}

/// Most queue items written with one write.
const WRITE_BATCH: usize = 1024;

/// Writes what is queued for one link, as few writes as it can: after the first item wakes it,
/// it lets every task already runnable go first (`yield_now`: the answers of one commit group
/// are produced by one task each, and each wake of this one would otherwise be a write of its
/// own), then writes everything queued by then at once.
async fn write_link(mut rx: mpsc::Receiver<Bytes>, mut wr: OwnedWriteHalf) {
    let mut batch = Vec::new();
    let mut buf = Vec::new();
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        tokio::task::yield_now().await;
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        buf.clear();
        for f in batch.drain(..) {
            buf.extend_from_slice(&f);
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
    }
}

/// Encodes a link frame.
pub fn encode_link(id: u64, body: LinkBody) -> Bytes {
    tern_proto::encode_to_bytes(&link::LinkFrame { id, body: Some(body) }, usize::MAX)
        .unwrap_or_default()
}

/// Accepts gateway links until `shutdown` resolves.
pub async fn serve(
    dispatcher: Arc<Dispatcher>,
    links: Arc<Links>,
    worker_id: String,
    auth: LinkAuth,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let auth = Arc::new(auth);
    let pending = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    if pending.fetch_add(1, Relaxed) >= MAX_PENDING_HANDSHAKES {
                        pending.fetch_sub(1, Relaxed);
                        links.auth_failures.fetch_add(1, Relaxed);
                        tracing::warn!(%peer, "refused a link: too many links in the handshake");
                        continue;
                    }
                    let (d, l, w, a) =
                        (dispatcher.clone(), links.clone(), worker_id.clone(), auth.clone());
                    let pending = pending.clone();
                    tokio::spawn(async move {
                        match run_link(d, l, w, a, stream, peer, pending).await {
                            Ok(()) | Err(LinkError::Refused(_)) => {}
                            Err(e) => tracing::info!(%peer, error = %e, "gateway link closed"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a gateway link failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Socket failure or EOF.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame that is not a valid LinkFrame, or a protocol violation.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The peer did not authenticate (already logged and counted).
    #[error("refused: {0}")]
    Refused(AuthFailure),
}

/// Runs the handshake on a new link: the authenticated gateway id, or why it was refused.
/// Bytes that follow the gateway's proof (its first Requests) stay in `buf`.
async fn handshake(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    buf: &mut BytesMut,
    acceptor: &mut Acceptor,
    claimed: &mut Option<String>,
) -> Result<String, AuthFailure> {
    let mut decoder = FrameDecoder::new(MAX_HANDSHAKE_FRAME);
    loop {
        let frame = match decoder.decode_as::<link::LinkFrame>(buf) {
            Ok(Some(f)) => f,
            Ok(None) => match rd.read_buf(buf).await {
                Ok(0) => {
                    return Err(AuthFailure::Incomplete(
                        "closed by the peer during the handshake".into(),
                    ));
                }
                Ok(_) => continue,
                Err(e) => return Err(AuthFailure::Incomplete(format!("read failed: {e}"))),
            },
            Err(e) => return Err(AuthFailure::Incomplete(format!("bad frame: {e}"))),
        };
        match acceptor.on_frame(frame)? {
            AcceptorStep::Reply(reply) => {
                *claimed = acceptor.claimed_gateway().map(str::to_owned);
                let bytes = encode_frame_bytes(&reply);
                wr.write_all(&bytes)
                    .await
                    .map_err(|e| AuthFailure::Incomplete(format!("write failed: {e}")))?;
            }
            AcceptorStep::Authenticated { gateway_id, reply } => {
                let bytes = encode_frame_bytes(&reply);
                wr.write_all(&bytes)
                    .await
                    .map_err(|e| AuthFailure::Incomplete(format!("write failed: {e}")))?;
                return Ok(gateway_id);
            }
        }
    }
}

fn encode_frame_bytes(frame: &link::LinkFrame) -> Bytes {
    tern_proto::encode_to_bytes(frame, usize::MAX).unwrap_or_default()
}

/// Authenticates a new link: the gateway's id, or `Err` after logging, counting and telling
/// the peer why.
async fn authenticate(
    links: &Links,
    worker_id: &str,
    auth: &LinkAuth,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    buf: &mut BytesMut,
    peer: SocketAddr,
) -> Result<String, AuthFailure> {
    let mut nonce = [0u8; NONCE_BYTES];
    let mut claimed = None;
    let result = match getrandom::fill(&mut nonce) {
        Err(e) => Err(AuthFailure::Incomplete(format!("no randomness for a nonce: {e}"))),
        Ok(()) => {
            let mut acceptor =
                Acceptor::new(auth.secrets.clone(), worker_id, auth.address.clone(), nonce);
            let run = handshake(rd, wr, buf, &mut acceptor, &mut claimed);
            match tokio::time::timeout(auth.handshake_timeout, run).await {
                Ok(r) => r,
                Err(_) => Err(AuthFailure::Incomplete(format!(
                    "no proof within the handshake timeout ({:?})",
                    auth.handshake_timeout
                ))),
            }
        }
    };
    if let Err(failure) = &result {
        links.auth_failures.fetch_add(1, Relaxed);
        tracing::warn!(
            %peer,
            claimed_gateway = %claimed.as_deref().unwrap_or("-"),
            reason = %failure,
            "refused a gateway link"
        );
        if !matches!(failure, AuthFailure::Incomplete(_) | AuthFailure::RefusedByPeer(_)) {
            let refused = encode_frame_bytes(&refused_frame(failure));
            let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_all(&refused)).await;
        }
    }
    result
}

async fn run_link(
    dispatcher: Arc<Dispatcher>,
    links: Arc<Links>,
    worker_id: String,
    auth: Arc<LinkAuth>,
    stream: TcpStream,
    peer: SocketAddr,
    pending: Arc<AtomicUsize>,
) -> Result<(), LinkError> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(MAX_HANDSHAKE_FRAME);
    let authenticated =
        authenticate(&links, &worker_id, &auth, &mut rd, &mut wr, &mut buf, peer).await;
    pending.fetch_sub(1, Relaxed);
    let gateway_id = authenticated.map_err(LinkError::Refused)?;
    let (tx, rx) = mpsc::channel::<Bytes>(LINK_QUEUE);
    let rt = tokio::runtime::Handle::current();
    let writer = tokio::spawn(write_link(rx, wr));
    // Authenticated: pushes to this gateway may use the link from now on.
    let link_id = links.register(&gateway_id, tx.clone());
    tracing::info!(gateway = %gateway_id, %peer, "gateway linked");
    let mut decoder = FrameDecoder::new(MAX_LINK_FRAME);
    let result = loop {
        let frame = match decoder.decode_as::<link::LinkFrame>(&mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => {
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(64 * 1024);
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) => break Ok(()),
                    Ok(_) => continue,
                    Err(e) => break Err(e.into()),
                }
            }
            Err(e) => break Err(LinkError::Protocol(e.to_string())),
        };
        match frame.body {
            Some(LinkBody::Request(req)) => {
                let Some(env) = req.envelope else {
                    break Err(LinkError::Protocol("request without envelope".into()));
                };
                let origin = Origin {
                    user_id: req.user_id,
                    device_id: req.device_id,
                    gateway_id: gateway_id.clone(),
                    connection_id: req.connection_id,
                };
                // Enter the pipeline now, in link order. Sends and receipts are answered by
                // the commit thread itself (a whole group's answers in one pass, so the link
                // writer wakes once for them); other requests by a task.
                let (tx, rt, id) = (tx.clone(), rt.clone(), frame.id);
                dispatcher.submit(
                    &origin,
                    env,
                    Box::new(move |envelope| {
                        let response = link::Response { envelope: Some(envelope) };
                        let frame = encode_link(id, LinkBody::Response(response));
                        if let Err(mpsc::error::TrySendError::Full(frame)) = tx.try_send(frame) {
                            // A full link queue: wait for room off this thread.
                            rt.spawn(async move {
                                let _ = tx.send(frame).await;
                            });
                        }
                    }),
                );
            }
            Some(LinkBody::KickConnection(k)) => {
                // A device logged in again elsewhere: forward to the gateway holding the old one.
                let target = k.gateway_id.clone();
                links.try_send(&target, encode_link(0, LinkBody::KickConnection(k)));
            }
            Some(LinkBody::Ping(_)) => {
                if tx.send(encode_link(frame.id, LinkBody::Pong(link::Pong {}))).await.is_err() {
                    break Ok(());
                }
            }
            Some(LinkBody::Pong(_)) => {}
            other => {
                break Err(LinkError::Protocol(format!("unexpected link frame {other:?}")));
            }
        }
    };
    links.unregister(&gateway_id, link_id);
    drop(tx);
    let _ = writer.await;
    result
}
