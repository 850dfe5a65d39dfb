//! What every connection of a gateway shares: [`Gateway`]. The connection core
//! ([`crate::core`]) serves it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::auth::Verifier;
use crate::config::GatewayConfig;
use crate::metrics::GatewayMetrics;
use crate::registry::Registry;
use crate::sources::SourceLimits;
use crate::upstream::Upstream;

/// Everything connections share: config, token key, registry, upstream and metrics.
pub struct Gateway<U: Upstream> {
    /// Limits and timings.
    pub cfg: GatewayConfig,
    /// Verifies login tokens.
    pub auth: Arc<Verifier>,
    /// Local connections by user.
    pub registry: Arc<Registry>,
    /// Where requests go.
    pub upstream: U,
    /// Counters.
    pub metrics: Arc<GatewayMetrics>,
    /// Per-source connection and pending-login counts.
    pub sources: SourceLimits,
    next_id: AtomicU64,
}

impl<U: Upstream> Gateway<U> {
    /// A gateway over `upstream`, with its own registry and metrics.
    pub fn new(
        cfg: GatewayConfig,
        auth: impl Into<Verifier>,
        registry: Arc<Registry>,
        upstream: U,
    ) -> Self {
        let metrics = registry.metrics();
        // Connection ids start at a random point, so that ids of a restarted gateway (same
        // gateway id) do not repeat those still named by stale presence entries.
        let mut seed = [0u8; 8];
        let start = match getrandom::fill(&mut seed) {
            Ok(()) => u64::from_le_bytes(seed) >> 2,
            Err(_) => crate::core::unix_nanos() >> 2,
        };
        let next_id = AtomicU64::new(start.max(1));
        let sources =
            SourceLimits::new(cfg.max_connections_per_source, cfg.max_pending_logins_per_source);
        Self { cfg, auth: Arc::new(auth.into()), registry, upstream, metrics, sources, next_id }
    }

    /// A new connection id, unique within this gateway process.
    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }
}
