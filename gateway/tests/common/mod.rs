//! What the gateway's socket tests (`core.rs`, `quic.rs`, `tls.rs`) share: the clock for
//! tokens, frame encoding and stopping a served gateway.

use std::time::Duration;

use bytes::Bytes;
use tern_proto::encode_to_bytes;
use tern_proto::v1::{Envelope, envelope::Body};
use tokio::sync::oneshot;

/// Unix seconds now (token `iat`).
pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The length-prefixed frame of `body` with `request_id`.
pub fn frame(request_id: u64, body: Body) -> Bytes {
    encode_to_bytes(&Envelope { request_id, body: Some(body) }, usize::MAX).unwrap()
}

/// Tells a `tern_gateway::serve` task to shut down and waits (at most `wait`) until it ended.
pub async fn stop_serving(
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    wait: Duration,
) {
    let _ = stop.send(());
    tokio::time::timeout(wait, task).await.expect("shutdown within its grace").unwrap();
}
