//! The gateway's presence publisher: logins and logouts written to presence Redis in batches,
//! periodic refreshes, and recovery (republish + SyncHint) when presence lost its data.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tern_presence::{Entry, Presence};
use tern_proto::link::v1::{self as link, link_frame::Body as LinkBody};
use tokio::sync::mpsc;

use super::{Inner, PresenceOp, send_any};

/// After a failed presence write, how soon everything is republished.
const RETRY_PUBLISH: Duration = Duration::from_secs(1);
/// How often a gateway checks that presence Redis still has its data.
const MARKER_EVERY: Duration = Duration::from_secs(1);

/// Publishes logins and logouts in batches, and refreshes every local connection every
/// `ttl / 3`. Every second it also checks its marker key: when Redis lost its data (restart
/// without persistence, FLUSHALL), it republishes everything at once, so pushes recover within
/// about a second of Redis coming back.
pub(super) async fn publish_presence(
    inner: Arc<Inner>,
    presence: Presence,
    mut rx: mpsc::Receiver<PresenceOp>,
) {
    let refresh_every = presence.config().ttl / 3;
    let mut next_refresh = tokio::time::Instant::now() + refresh_every;
    let mut next_marker = tokio::time::Instant::now() + MARKER_EVERY;
    // Set when presence lost its data: pushes routed meanwhile found nobody, so once this
    // gateway's connections are published again, each is told to catch up (SyncHint).
    let mut hint_after_refresh = false;
    let mut ops = Vec::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_marker) => {
                next_marker = tokio::time::Instant::now() + MARKER_EVERY;
                match presence.marker_was_missing(&inner.cfg.gateway_id).await {
                    // Lost (or first start): refresh now, then tell clients to catch up.
                    Ok(true) => {
                        next_refresh = tokio::time::Instant::now();
                        hint_after_refresh = true;
                    }
                    Ok(false) => {}
                    Err(_) => {
                        inner.metrics.presence_errors.fetch_add(1, Relaxed);
                    }
                }
            }
            n = rx.recv_many(&mut ops, 4096) => {
                if n == 0 {
                    return;
                }
                let (mut up, mut down, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
                for op in ops.drain(..) {
                    match op {
                        PresenceOp::Up(e, done) => {
                            up.push(e);
                            waiting.push(done);
                        }
                        PresenceOp::Down(e) => down.push(e),
                    }
                }
                let published = presence.publish_logins(&up).await;
                for done in waiting {
                    let _ = done.send(());
                }
                // The same device still connected through another gateway: kick it there.
                if let Ok(replaced) = &published {
                    for (e, old) in up.iter().zip(replaced) {
                        if let Some(old) = old.as_ref().filter(|o| o.gateway_id != inner.cfg.gateway_id) {
                            let kick = link::KickConnection {
                                gateway_id: old.gateway_id.clone(),
                                user_id: e.user_id.clone(),
                                connection_id: old.connection_id,
                                device_id: e.device_id.clone(),
                                reason: tern_proto::v1::KickReason::DuplicateLogin as i32,
                            };
                            if !send_any(&inner, LinkBody::KickConnection(kick)) {
                                tracing::warn!(user = %e.user_id, "no worker link to forward a duplicate-login kick");
                            }
                        }
                    }
                }
                if published.is_err() | presence.remove(&down).await.is_err() {
                    inner.metrics.presence_errors.fetch_add(1, Relaxed);
                    // Republish everything soon rather than at the next full refresh.
                    next_refresh = next_refresh.min(tokio::time::Instant::now() + RETRY_PUBLISH);
                }
            }
            _ = tokio::time::sleep_until(next_refresh) => {
                next_refresh = tokio::time::Instant::now() + refresh_every;
                let entries: Vec<Entry> = inner
                    .registry
                    .snapshot()
                    .into_iter()
                    .map(|(user_id, device_id, connection_id)| Entry {
                        user_id,
                        device_id,
                        gateway_id: inner.cfg.gateway_id.clone(),
                        connection_id,
                    })
                    .collect();
                let mut all_published = true;
                for chunk in entries.chunks(1000) {
                    if presence.publish(chunk).await.is_err() {
                        inner.metrics.presence_errors.fetch_add(1, Relaxed);
                        all_published = false;
                        break;
                    }
                }
                if hint_after_refresh && all_published {
                    hint_after_refresh = false;
                    let hint = tern_proto::v1::Envelope {
                        request_id: 0,
                        body: Some(tern_proto::v1::envelope::Body::SyncHint(tern_proto::v1::SyncHint {
                            reason: "presence was restored; pushes may have been missed".into(),
                        })),
                    };
                    if let Ok(frame) = tern_proto::encode_to_bytes(&hint, usize::MAX) {
                        let n = inner.registry.broadcast(&frame);
                        inner.metrics.sync_hints.fetch_add(n as u64, Relaxed);
                        tracing::info!(connections = n, "presence restored; sent SyncHint");
                    }
                }
            }
        }
    }
}
