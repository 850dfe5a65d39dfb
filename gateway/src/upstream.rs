//! The seam between the gateway and dispatch: in embedded mode an in-process call, in the
//! distributed mode a link to dispatch workers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tern_proto::v1::Envelope;

/// A boxed future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who sent a request: the logged-in identity of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCtx {
    /// The user.
    pub user_id: String,
    /// The user's device.
    pub device_id: String,
    /// The gateway's id for the connection (pushes skip the sending connection).
    pub connection_id: u64,
    /// The device's logout fence (Unix ms, 0: none) as its check-in answered it: a
    /// RefreshToken with a token issued at or before it is refused.
    pub logout_fence_ms: i64,
}

/// Takes a request's answer: called once, on any thread (an Error frame carries the request's
/// id too).
pub type Reply = Box<dyn FnOnce(Envelope) + Send>;

/// Where logged-in requests go.
pub trait Upstream: Send + Sync + 'static {
    /// Handles one request and resolves to its answer (a response frame or an Error frame
    /// carrying the request's id). Work that fixes the order of requests (entering the send
    /// pipeline) happens before this returns, so requests of one connection keep their order
    /// even though their answers are awaited concurrently.
    fn request(&self, ctx: &Arc<RequestCtx>, env: Envelope) -> BoxFuture<'static, Envelope>;

    /// As [`Upstream::request`], handing the answer to `reply` instead of a future. The
    /// gateway calls this; an upstream that can answer without a task in between (embedded
    /// mode: the commit thread answers sends and receipts) overrides it. The default runs
    /// `request` as a task on the current tokio runtime.
    fn submit(&self, ctx: &Arc<RequestCtx>, env: Envelope, reply: Reply) {
        let answer = self.request(ctx, env);
        tokio::spawn(async move { reply(answer.await) });
    }

    /// Checks a logging-in device in (`request` is an internal `DeviceCheckIn`; see
    /// `conn::checkin`): resolves to `DeviceCheckedIn` or an Error. The default, for an
    /// upstream without device records: accepted, no logout fence.
    fn check_in(&self, _ctx: &Arc<RequestCtx>, request: Envelope) -> BoxFuture<'static, Envelope> {
        let answer = Envelope {
            request_id: request.request_id,
            body: Some(tern_proto::v1::envelope::Body::DeviceCheckedIn(
                tern_proto::v1::DeviceCheckedIn { revoked_before_ms: 0 },
            )),
        };
        Box::pin(std::future::ready(answer))
    }

    /// A connection logged in (the registry already holds it); LoginOk is sent when the
    /// returned future resolves. Distributed mode publishes the device's presence here first,
    /// so that every message committed after the client's catch-up sync is pushed to it.
    fn connected(&self, _ctx: &Arc<RequestCtx>) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }

    /// A logged-in connection closed. Must not block.
    fn disconnected(&self, _ctx: &Arc<RequestCtx>) {}
}
