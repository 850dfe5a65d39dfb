//! Offline push in both modes: when `[notify]` names a provider, dispatch's offline push
//! ([`tern_dispatch::offline`]) starts with the notifier; otherwise nothing runs and messages
//! cost nothing extra.

use std::sync::Arc;

use anyhow::Context;
use tern_dispatch::Dispatcher;
use tern_dispatch::offline::{OfflinePush, Triggers};

use crate::config::Config;

/// Starts offline push for `d` (its sessions must be set) when a provider is configured.
pub fn start(cfg: &Config, d: &Arc<Dispatcher>) -> anyhow::Result<Option<OfflinePush>> {
    let n = &cfg.notify;
    if !n.any_provider() {
        return Ok(None);
    }
    let triggers = Triggers {
        ack_timeout: n.ack_timeout,
        max_watched: n.max_watched,
        registration_ttl: n.registration_ttl,
        registration_cache_users: n.registration_cache_users,
        include_preview: n.content.include_preview,
    };
    let push =
        OfflinePush::start(d, n.clone(), triggers).context("starting the notifier ([notify])")?;
    tracing::info!(
        apns = n.apns.is_some(),
        fcm = n.fcm.is_some(),
        webhook = n.webhook.is_some(),
        "offline push on"
    );
    Ok(Some(push))
}

/// Appends metrics in Prometheus text format.
pub type Render = Arc<dyn Fn(&mut String) + Send + Sync>;

/// The metrics of `push`, if it runs, for the `/metrics` renderer.
pub fn renderer(push: &Option<OfflinePush>) -> Option<Render> {
    push.as_ref().map(|p| Arc::new(p.renderer()) as Render)
}

/// Stops offline push, if it runs (after dispatch has committed what it holds).
pub async fn shutdown(push: Option<OfflinePush>) {
    if let Some(p) = push {
        p.shutdown().await;
    }
}
