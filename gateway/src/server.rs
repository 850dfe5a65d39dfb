//! The accept loop: takes a bound listener and a shutdown future, runs one task per
//! connection, and kicks everyone (SERVER_SHUTDOWN) when the shutdown future resolves.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tern_proto::v1::KickReason;
use tokio::net::TcpListener;

use crate::auth::TokenKey;
use crate::config::GatewayConfig;
use crate::metrics::GatewayMetrics;
use crate::registry::Registry;
use crate::upstream::Upstream;

/// Everything connections share: config, token key, registry, upstream and metrics.
pub struct Gateway<U: Upstream> {
    /// Limits and timings.
    pub cfg: GatewayConfig,
    /// Verifies login tokens.
    pub auth: Arc<TokenKey>,
    /// Local connections by user.
    pub registry: Arc<Registry>,
    /// Where requests go.
    pub upstream: U,
    /// Counters.
    pub metrics: Arc<GatewayMetrics>,
    next_id: AtomicU64,
}

impl<U: Upstream> Gateway<U> {
    /// A gateway over `upstream`, with its own registry and metrics.
    pub fn new(cfg: GatewayConfig, auth: TokenKey, registry: Arc<Registry>, upstream: U) -> Self {
        let metrics = registry.metrics();
        Self { cfg, auth: Arc::new(auth), registry, upstream, metrics, next_id: AtomicU64::new(1) }
    }
}

/// Accepts connections on `listener` until `shutdown` resolves, then kicks every connection
/// with SERVER_SHUTDOWN and returns once they closed (or after a grace period of 5 s).
pub async fn serve<U: Upstream>(
    gw: Arc<Gateway<U>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, _peer)) => {
                    let open = gw.metrics.connections_open.load(Relaxed);
                    if open as usize >= gw.cfg.max_connections {
                        gw.metrics.connections_rejected.fetch_add(1, Relaxed);
                        drop(stream);
                        continue;
                    }
                    if gw.metrics.logins_pending.load(Relaxed) as usize >= gw.cfg.max_pending_logins {
                        gw.metrics.pending_login_rejections.fetch_add(1, Relaxed);
                        drop(stream);
                        continue;
                    }
                    gw.metrics.logins_pending.fetch_add(1, Relaxed);
                    gw.metrics.connections_open.fetch_add(1, Relaxed);
                    gw.metrics.connections_accepted.fetch_add(1, Relaxed);
                    let id = gw.next_id.fetch_add(1, Relaxed);
                    tokio::spawn(crate::connection::run(gw.clone(), stream, id));
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    gw.registry.kick_all(KickReason::ServerShutdown, "server shutting down");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gw.metrics.connections_open.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
