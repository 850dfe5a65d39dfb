//! The worker's side of gateway links. Each gateway opens one TCP link to every worker and
//! multiplexes its clients' requests over it (`tern.link.v1.LinkFrame`, framed like client
//! frames). The worker answers each Request on the link it came from, and pushes deliveries to
//! a gateway over that gateway's link ([`Links`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tern_proto::FrameDecoder;
use tern_proto::link::v1::{self as link, link_frame::Body as LinkBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::dispatcher::{Dispatcher, Origin};

/// Largest link frame accepted (a sync page answer is the largest thing on a link).
pub const MAX_LINK_FRAME: usize = 16 * 1024 * 1024;
/// Frames queued for one link before pushes to it are dropped (answers wait instead).
const LINK_QUEUE: usize = 65_536;

/// The links of this worker, by gateway id.
#[derive(Default)]
pub struct Links {
    by_gateway: Mutex<HashMap<String, (u64, mpsc::Sender<Bytes>)>>,
    next: AtomicU64,
    /// Push frames dropped because a gateway had no link or a full one.
    pub pushes_dropped: AtomicU64,
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, mpsc::Sender<Bytes>)>> {
        self.by_gateway.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame for `gateway_id`'s link without waiting. False when the gateway has no
    /// link here or its queue is full (the push is dropped; clients recover by sync).
    pub fn try_send(&self, gateway_id: &str, frame: Bytes) -> bool {
        let tx = self.lock().get(gateway_id).map(|(_, tx)| tx.clone());
        let ok = tx.is_some_and(|tx| tx.try_send(frame).is_ok());
        if !ok {
            self.pushes_dropped.fetch_add(1, Relaxed);
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
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let (d, l, w) = (dispatcher.clone(), links.clone(), worker_id.clone());
                    tokio::spawn(async move {
                        if let Err(e) = run_link(d, l, w, stream).await {
                            tracing::info!(%peer, error = %e, "gateway link closed");
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
}

async fn run_link(
    dispatcher: Arc<Dispatcher>,
    links: Arc<Links>,
    worker_id: String,
    stream: TcpStream,
) -> Result<(), LinkError> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(LINK_QUEUE);
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        let mut buf = Vec::new();
        while rx.recv_many(&mut batch, 1024).await > 0 {
            buf.clear();
            for f in batch.drain(..) {
                buf.extend_from_slice(&f);
            }
            if wr.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    let mut decoder = FrameDecoder::new(MAX_LINK_FRAME);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut gateway: Option<(String, u64)> = None;
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
        match (frame.body, &gateway) {
            (Some(LinkBody::Hello(h)), None) => {
                let id = links.register(&h.gateway_id, tx.clone());
                tracing::info!(gateway = %h.gateway_id, "gateway linked");
                let ok = LinkBody::HelloOk(link::HelloOk { worker_id: worker_id.clone() });
                if tx.send(encode_link(0, ok)).await.is_err() {
                    break Ok(());
                }
                gateway = Some((h.gateway_id, id));
            }
            (Some(LinkBody::Request(req)), Some((gateway_id, _))) => {
                let Some(env) = req.envelope else {
                    break Err(LinkError::Protocol("request without envelope".into()));
                };
                let origin = Origin {
                    user_id: req.user_id,
                    device_id: req.device_id,
                    gateway_id: gateway_id.clone(),
                    connection_id: req.connection_id,
                };
                // Enter the pipeline now, in link order; await the answer concurrently.
                let answer = dispatcher.handle(&origin, env);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let envelope = answer.await;
                    let frame = encode_link(
                        frame.id,
                        LinkBody::Response(link::Response { envelope: Some(envelope) }),
                    );
                    let _ = tx.send(frame).await;
                });
            }
            (Some(LinkBody::KickConnection(k)), Some(_)) => {
                // A device logged in again elsewhere: forward to the gateway holding the old one.
                let target = k.gateway_id.clone();
                links.try_send(&target, encode_link(0, LinkBody::KickConnection(k)));
            }
            (Some(LinkBody::Ping(_)), _) => {
                if tx.send(encode_link(frame.id, LinkBody::Pong(link::Pong {}))).await.is_err() {
                    break Ok(());
                }
            }
            (Some(LinkBody::Pong(_)), _) => {}
            (other, _) => {
                break Err(LinkError::Protocol(format!("unexpected link frame {other:?}")));
            }
        }
    };
    if let Some((gateway_id, id)) = &gateway {
        links.unregister(gateway_id, *id);
    }
    drop(tx);
    let _ = writer.await;
    result
}
