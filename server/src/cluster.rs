//! Distributed mode: `tern dispatch` (a stateless worker over a shared store, linked to by every
//! gateway) and `tern gateway` (client connections, linked to every live worker, presence in
//! Redis). Both take bound listeners, a shutdown future and a `ready` callback (called once the
//! process is really up), like the embedded server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tern_dispatch::Dispatcher;
use tern_dispatch::link::Links;
use tern_dispatch::route::Router;
use tern_gateway::link::{LinkConfig, LinkUpstream};
use tern_gateway::metrics::GatewayMetrics;
use tern_gateway::{Gateway, Registry};
use tern_presence::{Presence, PresenceConfig};
use tern_store::Store;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::health::{Health, presence_check, store_check};

/// How often a worker announces itself, and how long an announcement lives.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
const ANNOUNCE_TTL: Duration = Duration::from_secs(3);

/// This process's node id: the configured one, or a random one with `prefix`.
pub fn node_id(cfg: &Config, prefix: &str) -> String {
    if !cfg.cluster.node_id.is_empty() {
        return cfg.cluster.node_id.clone();
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{prefix}-{:08x}", h.finish() as u32)
}

/// Connects to presence Redis.
pub async fn presence(cfg: &Config) -> anyhow::Result<Presence> {
    let mut p = PresenceConfig::new(cfg.cluster.presence_redis.clone());
    p.key_prefix = cfg.cluster.key_prefix.clone();
    p.ttl = cfg.cluster.presence_ttl;
    p.ca_file = non_empty_path(&cfg.cluster.presence_redis_ca_file);
    Presence::connect(p).await.with_context(|| {
        format!(
            "connecting to presence Redis {}",
            tern_presence::redact_url(&cfg.cluster.presence_redis)
        )
    })
}

fn non_empty_path(p: &str) -> Option<std::path::PathBuf> {
    (!p.is_empty()).then(|| std::path::PathBuf::from(p))
}

/// Opens the configured store backend.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match cfg.store.backend.as_str() {
        "redis" => {
            let mut r = tern_store_redis::RedisStoreConfig::new(cfg.store.redis_url.clone());
            r.key_prefix = cfg.cluster.key_prefix.clone();
            r.min_replicas_acked = cfg.store.redis_min_replicas_acked;
            r.failover_seq_gap = cfg.store.redis_failover_seq_gap;
            r.ca_file = non_empty_path(&cfg.store.redis_ca_file);
            let store = tern_store_redis::RedisStore::connect(r).await.with_context(|| {
                format!(
                    "opening the Redis store {}",
                    tern_presence::redact_url(&cfg.store.redis_url)
                )
            })?;
            Ok(Arc::new(store))
        }
        "scylla" => {
            let s = &cfg.store;
            let scylla = tern_store_scylla::ScyllaConfig::from_lookup(|name| {
                let v = match name {
                    "TERN_SCYLLA_NODES" => &s.scylla_nodes,
                    "TERN_SCYLLA_KEYSPACE" => &s.scylla_keyspace,
                    "TERN_SCYLLA_REPLICATION" => &s.scylla_replication,
                    "TERN_SCYLLA_LOCAL_DC" => &s.scylla_local_dc,
                    "TERN_SCYLLA_CONSISTENCY" => &s.scylla_consistency,
                    "TERN_SCYLLA_SERIAL_CONSISTENCY" => &s.scylla_serial_consistency,
                    other => return std::env::var(other).ok(),
                };
                Some(v.clone())
            })
            .context("store.scylla_* settings")?;
            let store = tern_store_scylla::ScyllaStore::connect(scylla)
                .await
                .context("connecting to ScyllaDB")?;
            Ok(Arc::new(store))
        }
        _ => {
            let dir = cfg.server.data_dir.join("store");
            let store =
                tern_store::embedded::EmbeddedStore::open_with(&dir, &cfg.embedded_store_config())
                    .with_context(|| format!("opening the embedded store in {}", dir.display()))?;
            tracing::warn!(
                "dispatch on the embedded store: only one worker can use it; use store.backend = redis or scylla for several"
            );
            Ok(Arc::new(store))
        }
    }
}

/// Runs a dispatch worker until `shutdown` resolves.
pub async fn run_dispatch(
    cfg: &Config,
    id: String,
    link_listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let secrets = cfg.link_secrets()?;
    let bound = link_listener.local_addr()?;
    if secrets.is_insecure() {
        if !bound.ip().is_loopback() {
            anyhow::bail!(
                "cluster.insecure_links is for loopback development only: cluster.link_listen \
                 {bound} is not a loopback address (set cluster.secret instead)"
            );
        }
        tracing::warn!("cluster.insecure_links: links are NOT authenticated (loopback only)");
    }
    let store = open_store(cfg).await?;
    let presence = presence(cfg).await?;
    let health = Arc::new(
        Health::new()
            .with_check("store", store_check(store.clone()))
            .with_check("presence", presence_check(presence.clone(), id.clone())),
    );
    let links = Arc::new(Links::default());
    let router = Router::start(presence.clone(), links.clone(), cfg.dispatch.presence_cache_users);
    let route_metrics = router.metrics.clone();
    let dispatcher = Dispatcher::new(cfg.dispatch_config(), store, Arc::new(router));
    dispatcher.set_sessions(Arc::new(tern_dispatch::devices::ClusterSessions::new(
        presence.clone(),
        links.clone(),
    )));
    let push = crate::push::start(cfg, &dispatcher)?;
    let push_metrics = crate::push::renderer(&push);

    let advertise = if cfg.cluster.link_advertise.is_empty() {
        bound.to_string()
    } else {
        cfg.cluster.link_advertise.clone()
    };
    let announcer = {
        let (p, id, addr) = (presence.clone(), id.clone(), advertise.clone());
        tokio::spawn(async move {
            loop {
                if let Err(e) = p.announce_worker(&id, &addr, ANNOUNCE_TTL).await {
                    tracing::warn!(error = %e, "announcing this worker failed");
                }
                tokio::time::sleep(ANNOUNCE_EVERY).await;
            }
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_task = http.map(|l| {
        let (d, links) = (dispatcher.clone(), links.clone());
        let render: crate::http::Render = Arc::new(move || {
            let mut out = String::new();
            d.metrics.render(&mut out);
            route_metrics
                .render(links.pushes_dropped.load(std::sync::atomic::Ordering::Relaxed), &mut out);
            links.render(&mut out);
            if let Some(p) = &push_metrics {
                p(&mut out);
            }
            out
        });
        tokio::spawn(crate::http::serve(l, render, health.clone(), stopped(stop_rx.clone())))
    });
    tracing::info!(%id, link = %bound, %advertise, "dispatch worker started");
    let shutdown = health.lifecycle(shutdown, cfg.server.drain_delay);
    ready();
    let auth = tern_dispatch::link::LinkAuth {
        secrets,
        address: advertise.clone(),
        handshake_timeout: cfg.cluster.link_handshake_timeout,
    };
    let d = dispatcher.clone();
    tern_dispatch::link::serve(dispatcher, links, id.clone(), auth, link_listener, shutdown).await;
    // Commit and answer what still waits, then stop the commit thread (off the runtime's
    // threads: it may wait for a store round trip).
    let _ = tokio::task::spawn_blocking(move || d.shutdown()).await;
    crate::push::shutdown(push).await;
    announcer.abort();
    let _ = presence.withdraw_worker(&id).await;
    let _ = stop_tx.send(true);
    if let Some(t) = http_task {
        let _ = t.await;
    }
    Ok(())
}

/// Runs a gateway until `shutdown` resolves.
pub async fn run_gateway(
    cfg: &Config,
    id: String,
    listener: tern_gateway::Listeners,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let key = cfg.verifier()?;
    if cfg.duplicate_login()? == tern_gateway::config::DuplicateLogin::OldestWins {
        // The cross-gateway kick path (presence swap, KickConnection) is newest-wins only.
        anyhow::bail!(
            "auth.duplicate_login = \"oldest_wins\" is enforced per gateway only and is not available in the distributed mode (use tern serve, or newest_wins)"
        );
    }
    let secrets = cfg.link_secrets()?;
    if secrets.is_insecure() {
        tracing::warn!("cluster.insecure_links: links are NOT authenticated (loopback only)");
    }
    let presence = presence(cfg).await?;
    let health = Health::new().with_check("presence", presence_check(presence.clone(), id.clone()));
    let gw_cfg = cfg.gateway_config();
    let registry = Arc::new(Registry::new(Arc::new(GatewayMetrics::default())));
    let upstream = LinkUpstream::new(
        LinkConfig {
            gateway_id: id.clone(),
            request_timeout: cfg.cluster.request_timeout,
            reconnect_delay: Duration::from_millis(100),
            secrets,
            handshake_timeout: cfg.cluster.link_handshake_timeout,
        },
        registry.clone(),
        Some(presence),
    );
    let workers: Vec<String> = cfg
        .cluster
        .dispatch_workers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if workers.is_empty() {
        upstream.discover_workers(Duration::from_secs(1));
    } else {
        for w in &workers {
            w.parse::<SocketAddr>().with_context(|| format!("cluster.dispatch_workers: {w:?}"))?;
        }
        upstream.set_workers(&workers);
    }
    let link_metrics = upstream.metrics();
    let linked = upstream.clone();
    let health =
        Arc::new(
            health.with_check("links", move || {
                let live = linked.live_workers().len();
                async move {
                    if live == 0 { Err("no dispatch worker linked".to_owned()) } else { Ok(()) }
                }
            }),
        );
    let gateway = Arc::new(Gateway::new(gw_cfg, key, registry, upstream));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_task = http.map(|l| {
        let gw = gateway.clone();
        let render: crate::http::Render = Arc::new(move || {
            let mut out = String::new();
            gw.metrics.render(&mut out);
            link_metrics.render(&mut out);
            out
        });
        tokio::spawn(crate::http::serve(l, render, health.clone(), stopped(stop_rx.clone())))
    });
    tracing::info!(%id, "gateway started");
    let shutdown = health.lifecycle(shutdown, cfg.server.drain_delay);
    ready();
    tern_gateway::serve(gateway, listener, shutdown).await;
    let _ = stop_tx.send(true);
    if let Some(t) = http_task {
        let _ = t.await;
    }
    Ok(())
}

async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
