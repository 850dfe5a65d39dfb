//! The request router: one entry point, [`Dispatcher::submit`] (or [`Dispatcher::handle`] for
//! a future), that sends each request kind to its handler module and turns the result into a
//! reply frame.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tern_proto::session::server::error as error_frame;
use tern_proto::v1::{Envelope, ErrorCode, envelope::Body};
use tern_store::Store;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::config::DispatchConfig;
use crate::error::DispatchError;
use crate::metrics::DispatchMetrics;
use crate::pipeline::{Pipeline, Reply};
use crate::push::Pusher;

/// A boxed future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Logged-in user.
    pub user_id: String,
    /// Logged-in device.
    pub device_id: String,
    /// The gateway it came through ("" in embedded mode).
    pub gateway_id: String,
    /// The gateway connection it came on (pushes skip it).
    pub connection_id: u64,
}

impl Origin {
    /// The connection the request came on.
    pub fn conn_ref(&self) -> crate::push::ConnRef {
        crate::push::ConnRef {
            gateway_id: self.gateway_id.clone(),
            connection_id: self.connection_id,
        }
    }
}

/// Shared state of the request handlers.
pub struct Dispatcher {
    /// Settings.
    pub cfg: DispatchConfig,
    /// Durable storage.
    pub store: Arc<dyn Store>,
    /// Push delivery.
    pub pusher: Arc<dyn Pusher>,
    /// The group-commit pipeline.
    pub pipeline: Pipeline,
    /// Counters.
    pub metrics: Arc<DispatchMetrics>,
    /// Group members, for the fan-out of group messages.
    pub groups: Arc<crate::group::cache::GroupCache>,
    /// Offline push (inert until [`crate::offline::OfflinePush::start`]).
    pub alerts: Arc<crate::offline::Alerts>,
    /// Who is connected and how to kick (device logout, class policy); set once at wiring.
    sessions: std::sync::OnceLock<Arc<dyn crate::devices::Sessions>>,
    /// The runtime that runs request tasks and the store's futures.
    rt: Handle,
}

impl Dispatcher {
    /// A dispatcher over `store` and `pusher`; starts the commit thread, which drives the
    /// store's futures on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(cfg: DispatchConfig, store: Arc<dyn Store>, pusher: Arc<dyn Pusher>) -> Arc<Self> {
        let metrics = Arc::new(DispatchMetrics::default());
        let rt = Handle::current();
        let groups =
            Arc::new(crate::group::cache::GroupCache::new(store.clone(), cfg.group_cache_rows));
        let alerts = Arc::new(crate::offline::Alerts::default());
        let pipeline = Pipeline::start(
            store.clone(),
            pusher.clone(),
            groups.clone(),
            alerts.clone(),
            metrics.clone(),
            &cfg,
            rt.clone(),
        );
        let sessions = std::sync::OnceLock::new();
        Arc::new(Self { cfg, store, pusher, pipeline, metrics, groups, alerts, sessions, rt })
    }

    /// Sets who answers "which devices are connected" and carries kicks (once; later calls
    /// are ignored). Without it, logouts still fence tokens but kick nobody, and the class
    /// policy replaces nobody.
    pub fn set_sessions(&self, sessions: Arc<dyn crate::devices::Sessions>) {
        let _ = self.sessions.set(sessions);
    }

    /// The sessions set with [`Dispatcher::set_sessions`].
    pub fn sessions(&self) -> Option<&Arc<dyn crate::devices::Sessions>> {
        self.sessions.get()
    }

    /// Handles one request and calls `reply` with its answer, on whichever thread has it.
    /// Sends and receipts enter the commit queue before this returns (so one connection's
    /// sends are sequenced in the order it sent them) and are answered by the commit thread
    /// with no task in between; every other request runs as a task on the runtime.
    pub fn submit(self: &Arc<Self>, origin: &Origin, env: Envelope, reply: Reply) {
        let request_id = env.request_id;
        match env.body {
            Some(Body::Send(req)) => {
                let metrics = self.metrics.clone();
                crate::send::submit(self, origin, request_id, req, counted(metrics, reply));
            }
            Some(Body::Receipt(req)) => {
                let metrics = self.metrics.clone();
                crate::receipt::submit(self, origin, request_id, req, counted(metrics, reply));
            }
            body => {
                let answer = self.handle_async(origin, Envelope { request_id, body });
                self.rt.spawn(async move { reply(answer.await) });
            }
        }
    }

    /// Handles one request and resolves to its answer (as [`Dispatcher::submit`]).
    pub fn handle(
        self: &Arc<Self>,
        origin: &Origin,
        env: Envelope,
    ) -> BoxFuture<'static, Envelope> {
        if !matches!(env.body, Some(Body::Send(_) | Body::Receipt(_))) {
            return self.handle_async(origin, env);
        }
        let request_id = env.request_id;
        let (tx, rx) = oneshot::channel();
        self.submit(
            origin,
            env,
            Box::new(move |answer| {
                let _ = tx.send(answer);
            }),
        );
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                DispatchError::Unavailable("commit thread stopped").to_frame(request_id)
            })
        })
    }

    /// Runs `task` on the dispatcher's runtime.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.rt.spawn(task);
    }

    /// Commits what waits, answers it, and stops the commit thread (at shutdown, after the
    /// gateway stopped taking requests).
    pub fn shutdown(&self) {
        self.pipeline.shutdown();
    }

    /// The requests that are tasks: reads, recalls, and what dispatch does not serve.
    fn handle_async(
        self: &Arc<Self>,
        origin: &Origin,
        env: Envelope,
    ) -> BoxFuture<'static, Envelope> {
        let request_id = env.request_id;
        let this = self.clone();
        let origin = origin.clone();
        let result: BoxFuture<'static, Result<Body, DispatchError>> = match env.body {
            Some(Body::Recall(req)) => {
                Box::pin(async move { crate::recall::handle(&this, &origin, req).await })
            }
            Some(Body::GetReceipts(req)) => {
                Box::pin(async move { crate::receipt::get(&this, &origin, req).await })
            }
            Some(Body::SyncRequest(req)) => {
                Box::pin(async move { crate::sync::page(&this, &origin, req).await })
            }
            Some(Body::ListConversations(req)) => {
                Box::pin(async move { crate::conversations::list(&this, &origin, req).await })
            }
            Some(Body::UpdateConversation(req)) => {
                Box::pin(async move { crate::conversations::update(&this, &origin, req).await })
            }
            Some(Body::DeviceCheckIn(req)) => {
                Box::pin(async move { crate::devices::check_in(&this, &origin, req).await })
            }
            Some(Body::ListDevices(_)) => {
                Box::pin(async move { crate::devices::list(&this, &origin).await })
            }
            Some(Body::LogoutDevice(req)) => {
                Box::pin(async move { crate::devices::logout(&this, &origin, req).await })
            }
            Some(Body::RegisterPush(req)) => {
                Box::pin(async move { crate::devices::register_push(&this, &origin, req).await })
            }
            Some(Body::UnregisterPush(_)) => {
                Box::pin(async move { crate::devices::unregister_push(&this, &origin).await })
            }
            Some(
                body @ (Body::CreateGroup(_)
                | Body::AddMembers(_)
                | Body::RemoveMembers(_)
                | Body::LeaveGroup(_)
                | Body::GetGroup(_)
                | Body::UpdateGroup(_)
                | Body::SetMemberRole(_)
                | Body::TransferOwnership(_)
                | Body::DissolveGroup(_)
                | Body::ListGroupMembers(_)),
            ) => Box::pin(async move { crate::group::handle(&this, &origin, body).await }),
            _ => {
                return Box::pin(std::future::ready(error_frame(
                    request_id,
                    ErrorCode::UnknownFrame,
                    "not a request dispatch serves",
                    false,
                )));
            }
        };
        let metrics = self.metrics.clone();
        Box::pin(async move {
            match result.await {
                Ok(body) => Envelope { request_id, body: Some(body) },
                Err(e) => {
                    count_error(&metrics, &e);
                    e.to_frame(request_id)
                }
            }
        })
    }
}

fn count_error(metrics: &DispatchMetrics, e: &DispatchError) {
    metrics.request_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if matches!(e, DispatchError::LoggedOut) {
        metrics.logged_out_refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if matches!(e, DispatchError::Store(_)) {
        tracing::warn!(error = %e, "request failed");
    }
}

/// `reply`, counting the Error frames it carries.
fn counted(metrics: Arc<DispatchMetrics>, reply: Reply) -> Reply {
    Box::new(move |env: Envelope| {
        if let Some(Body::Error(e)) = &env.body {
            metrics.request_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if e.code == ErrorCode::Internal as i32 || e.code == ErrorCode::Unavailable as i32 {
                tracing::warn!(message = %e.message, "request failed");
            }
        }
        reply(env)
    })
}

/// Wall clock in Unix milliseconds.
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
