//! Embedded single-node mode: gateway and dispatch in one process over the embedded store,
//! with the gateway's registry as presence.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use tern_dispatch::{ConnRef, Dispatcher, Origin, Pusher};
use tern_gateway::metrics::GatewayMetrics;
use tern_gateway::{BoxFuture, Gateway, Registry, Reply, RequestCtx, Upstream};
use tern_proto::v1::Envelope;
use tern_store::embedded::EmbeddedStore;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::health::{Health, store_check};

/// Presence in embedded mode: the local registry.
struct LocalPusher(Arc<Registry>);

impl Pusher for LocalPusher {
    fn push(&self, user_id: &str, frame: &Bytes, skip: Option<&ConnRef>) {
        // One gateway: every connection id is this registry's.
        self.0.push(user_id, frame, skip.map(|s| s.connection_id));
    }

    fn push_many(&self, users: Arc<[String]>, frame: &Bytes, skip: Option<&ConnRef>) {
        let skip = skip.map(|s| s.connection_id);
        self.0.push_many(users.iter().map(|u| (u.as_str(), skip)), frame);
    }
}

/// The gateway's upstream in embedded mode: a direct call into dispatch.
struct InProcess(Arc<Dispatcher>);

fn origin(ctx: &RequestCtx) -> Origin {
    Origin {
        user_id: ctx.user_id.clone(),
        device_id: ctx.device_id.clone(),
        gateway_id: String::new(),
        connection_id: ctx.connection_id,
    }
}

impl Upstream for InProcess {
    fn request(&self, ctx: &Arc<RequestCtx>, env: Envelope) -> BoxFuture<'static, Envelope> {
        self.0.handle(&origin(ctx), env)
    }

    fn submit(&self, ctx: &Arc<RequestCtx>, env: Envelope, reply: Reply) {
        self.0.submit(&origin(ctx), env, reply);
    }

    fn check_in(&self, ctx: &Arc<RequestCtx>, env: Envelope) -> BoxFuture<'static, Envelope> {
        self.0.handle(&origin(ctx), env)
    }
}

/// Who is connected in embedded mode: the one gateway's registry.
struct LocalSessions(Arc<Registry>);

impl tern_dispatch::devices::Sessions for LocalSessions {
    fn online<'a>(
        &'a self,
        user_id: &'a str,
    ) -> tern_dispatch::BoxFuture<'a, Vec<(String, ConnRef)>> {
        let conns = self.0.connections(user_id);
        let out = conns
            .into_iter()
            .map(|(d, id)| (d, ConnRef { gateway_id: String::new(), connection_id: id }))
            .collect();
        Box::pin(std::future::ready(out))
    }

    fn kick(
        &self,
        user_id: &str,
        device_id: &str,
        conn: &ConnRef,
        reason: tern_proto::v1::KickReason,
    ) {
        self.0.kick_with(user_id, device_id, conn.connection_id, reason);
    }
}

/// Runs the embedded server on already-bound listeners until `shutdown` resolves.
pub async fn run(
    cfg: &Config,
    listener: tern_gateway::Listeners,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_ready(cfg, listener, http, shutdown, || {}).await
}

/// As [`run`], calling `ready` once the server is really up (the store is open and connections
/// are about to be served); `tern serve` prints its "listening" line there.
pub async fn run_with_ready(
    cfg: &Config,
    listener: tern_gateway::Listeners,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let key = cfg.verifier()?;
    let store_dir = cfg.server.data_dir.join("store");
    let store_cfg = cfg.embedded_store_config();
    let store = EmbeddedStore::open_with(&store_dir, &store_cfg)
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    let store: Arc<dyn tern_store::Store> = Arc::new(store);
    let health = Arc::new(Health::new().with_check("store", store_check(store.clone())));
    let gw_cfg = cfg.gateway_config();
    let registry = Arc::new(Registry::new(Arc::new(GatewayMetrics::default())));
    let dispatcher =
        Dispatcher::new(cfg.dispatch_config(), store, Arc::new(LocalPusher(registry.clone())));
    dispatcher.set_sessions(Arc::new(LocalSessions(registry.clone())));
    let push = crate::push::start(cfg, &dispatcher)?;
    let push_metrics = crate::push::renderer(&push);
    let gateway = Arc::new(Gateway::new(gw_cfg, key, registry, InProcess(dispatcher.clone())));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_task = http.map(|l| {
        let gw = gateway.clone();
        let d = dispatcher.clone();
        let render: crate::http::Render = Arc::new(move || {
            let mut out = String::new();
            gw.metrics.render(&mut out);
            d.metrics.render(&mut out);
            if let Some(p) = &push_metrics {
                p(&mut out);
            }
            out
        });
        let mut rx = stop_rx.clone();
        tokio::spawn(crate::http::serve(l, render, health.clone(), async move {
            let _ = rx.wait_for(|v| *v).await;
        }))
    });
    let shutdown = health.lifecycle(shutdown, cfg.server.drain_delay);
    ready();
    tern_gateway::serve(gateway, listener, shutdown).await;
    // Connections are closed: commit and answer what still waits, then stop the commit thread
    // (off the runtime's threads: it may wait for one fsync).
    let d = dispatcher.clone();
    let _ = tokio::task::spawn_blocking(move || d.shutdown()).await;
    crate::push::shutdown(push).await;
    let _ = stop_tx.send(true);
    if let Some(t) = http_task {
        let _ = t.await;
    }
    Ok(())
}
