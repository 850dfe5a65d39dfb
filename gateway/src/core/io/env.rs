//! The gateway as one connection's [`crate::conn::Env`]: registry, presence, upstream and
//! per-source counts, reached from an I/O thread (answers come back through its mailbox).

use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use tern_proto::v1::Envelope;

use super::super::mailbox::{ConnHandle, Mailbox};
use super::super::wheel::Key;
use super::unix_ms;
use crate::auth::Verifier;
use crate::config::{DuplicateLogin, GatewayConfig};
use crate::metrics::GatewayMetrics;
use crate::registry;
use crate::server::Gateway;
use crate::sources::SourceKey;
use crate::upstream::{RequestCtx, Upstream};

/// One connection's view of its gateway, built per input (a few references, no allocation).
pub(super) struct Env<'a, U: Upstream> {
    gw: &'a Gateway<U>,
    mailbox: &'a Arc<Mailbox>,
    rt: &'a tokio::runtime::Handle,
    key: Key,
    source: SourceKey,
}

impl<'a, U: Upstream> Env<'a, U> {
    pub(super) fn new(
        gw: &'a Gateway<U>,
        mailbox: &'a Arc<Mailbox>,
        rt: &'a tokio::runtime::Handle,
        key: Key,
        source: SourceKey,
    ) -> Self {
        Self { gw, mailbox, rt, key, source }
    }

    fn handle(&self) -> ConnHandle {
        ConnHandle::new(self.mailbox.clone(), self.key.slot, self.key.generation)
    }
}

impl<U: Upstream> crate::conn::Env for Env<'_, U> {
    type Auth = Verifier;

    fn config(&self) -> &GatewayConfig {
        &self.gw.cfg
    }

    fn metrics(&self) -> &GatewayMetrics {
        &self.gw.metrics
    }

    fn authenticator(&self) -> &Verifier {
        &self.gw.auth
    }

    fn unix_ms(&self) -> i64 {
        unix_ms()
    }

    fn register(&self, ctx: &Arc<RequestCtx>, policy: DuplicateLogin) -> bool {
        let conn = registry::Conn { ctx: ctx.clone(), handle: self.handle() };
        match policy {
            DuplicateLogin::OldestWins => self.gw.registry.try_register(conn),
            DuplicateLogin::NewestWins => {
                self.gw.registry.register(conn);
                true
            }
        }
    }

    fn unregister(&self, ctx: &Arc<RequestCtx>) {
        self.gw.registry.unregister(&ctx.user_id, ctx.connection_id);
        self.gw.upstream.disconnected(ctx);
    }

    fn reachable(&self, ctx: &Arc<RequestCtx>, within: Duration) -> bool {
        // Bounded here too, so that the task ends when the connection stops waiting.
        let mut published = Box::pin(tokio::time::timeout(within, self.gw.upstream.connected(ctx)));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if published.as_mut().poll(&mut cx).is_ready() {
            return true;
        }
        let handle = self.handle();
        self.rt.spawn(async move {
            let _ = published.await;
            handle.login_ready();
        });
        false
    }

    fn submit(&self, ctx: &Arc<RequestCtx>, request: Envelope) {
        let handle = self.handle();
        let reply = Box::new(move |reply| handle.answer(registry::encode(reply)));
        self.gw.upstream.submit(ctx, request, reply);
    }

    fn check_in(&self, ctx: &Arc<RequestCtx>, request: Envelope) -> Option<Envelope> {
        let mut answer = self.gw.upstream.check_in(ctx, request);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(a) = answer.as_mut().poll(&mut cx) {
            return Some(a);
        }
        let handle = self.handle();
        let wait = crate::conn::checkin::CHECK_IN_WAIT;
        self.rt.spawn(async move {
            // Bounded, so the task ends when the connection stops waiting.
            if let Ok(a) = tokio::time::timeout(wait, answer).await {
                handle.checked_in(a);
            }
        });
        None
    }

    fn login_settled(&self) {
        self.gw.sources.not_pending(self.source);
    }
}
