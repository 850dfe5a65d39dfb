//! The request router: one entry point, [`Dispatcher::handle`], that sends each request kind to
//! its handler module and turns the result into a reply frame.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tern_proto::session::server::error as error_frame;
use tern_proto::v1::{Envelope, ErrorCode, envelope::Body};
use tern_store::Store;

use crate::config::DispatchConfig;
use crate::error::DispatchError;
use crate::metrics::DispatchMetrics;
use crate::pipeline::Pipeline;
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
}

impl Dispatcher {
    /// A dispatcher over `store` and `pusher`; starts the commit task on the current runtime.
    pub fn new(cfg: DispatchConfig, store: Arc<dyn Store>, pusher: Arc<dyn Pusher>) -> Arc<Self> {
        let metrics = Arc::new(DispatchMetrics::default());
        let pipeline = Pipeline::start(
            store.clone(),
            pusher.clone(),
            metrics.clone(),
            cfg.pipeline_queue,
            cfg.max_commit_batch,
        );
        Arc::new(Self { cfg, store, pusher, pipeline, metrics })
    }

    /// Handles one request and resolves to its answer. Sends enter the commit pipeline before
    /// this returns, so one connection's sends are sequenced in the order it sent them.
    pub fn handle(
        self: &Arc<Self>,
        origin: &Origin,
        env: Envelope,
    ) -> BoxFuture<'static, Envelope> {
        let request_id = env.request_id;
        let this = self.clone();
        let origin = origin.clone();
        let result: BoxFuture<'static, Result<Body, DispatchError>> = match env.body {
            Some(Body::Send(req)) => match crate::send::submit(&this, &origin, req) {
                Ok((pending, id)) => Box::pin(crate::send::answer(pending, id)),
                Err(e) => Box::pin(std::future::ready(Err(e))),
            },
            Some(Body::Recall(req)) => {
                Box::pin(async move { crate::recall::handle(&this, &origin, req).await })
            }
            Some(Body::Receipt(req)) => {
                Box::pin(async move { crate::receipt::update(&this, &origin, req).await })
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
            Some(
                Body::CreateGroup(_)
                | Body::AddMembers(_)
                | Body::RemoveMembers(_)
                | Body::LeaveGroup(_)
                | Body::GetGroup(_),
            ) => Box::pin(std::future::ready(crate::group::unimplemented())),
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
                    metrics.request_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if matches!(e, DispatchError::Store(_)) {
                        tracing::warn!(error = %e, "request failed");
                    }
                    e.to_frame(request_id)
                }
            }
        })
    }
}

/// Wall clock in Unix milliseconds.
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
