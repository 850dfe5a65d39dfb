//! The device check-in between a verified token and LoginOk: the gateway verifies tokens
//! locally but keeps no durable state, so before a login counts it asks dispatch
//! (`DeviceCheckIn`, through [`Env::check_in`]) whether the device was logged out after its
//! token was issued, and has the login recorded (platform, last seen; the class policy kicks
//! the devices it replaces). Only then is the connection registered (so a refused token never
//! kicks the device's live connection) and the presence wait of [`super`] begins.
//!
//! The answers, decided by [`verdict`]:
//! - `DeviceCheckedIn{revoked_before_ms}`: go on; the fence stays with the connection
//!   ([`RequestCtx::logout_fence_ms`]), whose RefreshTokens are checked against it.
//! - `Error{BAD_TOKEN}`: the device was logged out; fatal BAD_TOKEN with dispatch's message.
//! - `Error{UNKNOWN_FRAME | UNIMPLEMENTED}`: an upstream without device records (an older
//!   worker during a rolling upgrade): go on without a fence.
//! - anything else, or no answer within [`CHECK_IN_WAIT`]: fatal UNAVAILABLE (retry with
//!   backoff). A logout must hold while the store is down, so the check fails closed.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_proto::session::server::{DeviceLogin, error};
use tern_proto::v1::{self, Envelope, ErrorCode, envelope::Body};

use super::{Connection, Env, LOGIN_PUBLISH_WAIT, Phase, REARM, WAIT_TIMER};
use crate::config::DuplicateLogin;
use crate::registry::encode;
use crate::upstream::RequestCtx;

/// Longest wait for the check-in's answer before the login is refused (UNAVAILABLE).
pub const CHECK_IN_WAIT: Duration = Duration::from_secs(5);

/// A login waiting for its check-in (boxed in the connection's phase: per-connection state
/// stays small).
#[derive(Debug)]
pub(super) struct Waiting {
    pub(super) until: Instant,
    pub(super) request_id: u64,
    pub(super) login_ok: Option<Box<Bytes>>,
    pub(super) ctx: Arc<RequestCtx>,
}

/// What a check-in answer means for the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on; the device's logout fence (0: none).
    Accept(i64),
    /// Refuse the login with this fatal error code and message.
    Refuse(ErrorCode, String),
}

/// Reads a check-in answer (see the module doc).
pub fn verdict(answer: &Envelope) -> Verdict {
    match &answer.body {
        Some(Body::DeviceCheckedIn(c)) => Verdict::Accept(c.revoked_before_ms),
        Some(Body::Error(e)) if e.code == ErrorCode::BadToken as i32 => {
            Verdict::Refuse(ErrorCode::BadToken, e.message.clone())
        }
        Some(Body::Error(e))
            if e.code == ErrorCode::UnknownFrame as i32
                || e.code == ErrorCode::Unimplemented as i32 =>
        {
            Verdict::Accept(0)
        }
        _ => Verdict::Refuse(
            ErrorCode::Unavailable,
            "the device check-in failed; retry later".to_owned(),
        ),
    }
}

/// The internal request of a login (`request_id` = the Login's).
pub fn request(request_id: u64, device: DeviceLogin) -> Envelope {
    Envelope {
        request_id,
        body: Some(Body::DeviceCheckIn(v1::DeviceCheckIn {
            platform: device.platform,
            issued_at_ms: device.issued_at_ms.unwrap_or(0),
        })),
    }
}

impl Connection {
    /// The token checked out: wait for the check-in (see the module doc).
    pub(super) fn start_check_in(
        &mut self,
        now: Instant,
        ctx: Arc<RequestCtx>,
        login_ok: Envelope,
        device: DeviceLogin,
        io: &mut impl Write,
        env: &impl Env,
    ) {
        let request_id = login_ok.request_id;
        self.phase = Phase::CheckIn(Box::new(Waiting {
            until: now + CHECK_IN_WAIT,
            request_id,
            login_ok: encode(login_ok).map(Box::new),
            ctx: ctx.clone(),
        }));
        match env.check_in(&ctx, request(request_id, device)) {
            Some(answer) => self.on_checked_in(now, &answer, io, env),
            None => self.flags |= REARM | WAIT_TIMER,
        }
    }

    /// The check-in answered (the driver calls this with the answer of [`Env::check_in`]).
    pub fn on_checked_in(
        &mut self,
        now: Instant,
        answer: &Envelope,
        io: &mut impl Write,
        env: &impl Env,
    ) {
        if !matches!(self.phase, Phase::CheckIn(_)) {
            return;
        }
        match verdict(answer) {
            Verdict::Accept(fence) => {
                let Phase::CheckIn(w) = std::mem::replace(&mut self.phase, Phase::Open) else {
                    return;
                };
                let Waiting { ctx, login_ok, request_id, .. } = *w;
                let ctx = if fence == 0 {
                    ctx
                } else {
                    Arc::new(RequestCtx { logout_fence_ms: fence, ..(*ctx).clone() })
                };
                self.logged_in(now, ctx, request_id, login_ok, io, env);
            }
            Verdict::Refuse(code, message) => self.refuse_login(now, code, &message, io, env),
        }
    }

    /// The check-in wait is over: refuse (UNAVAILABLE). Returns whether its own timer fired.
    pub(super) fn check_in_timed_out(
        &mut self,
        now: Instant,
        io: &mut impl Write,
        env: &impl Env,
    ) -> bool {
        tracing::debug!(connection_id = self.id(), "device check-in timed out");
        let consumed = self.take_flag(WAIT_TIMER);
        self.refuse_login(now, ErrorCode::Unavailable, "the device check-in timed out", io, env);
        consumed
    }

    fn refuse_login(
        &mut self,
        now: Instant,
        code: ErrorCode,
        message: &str,
        io: &mut impl Write,
        env: &impl Env,
    ) {
        let Phase::CheckIn(w) = &self.phase else { return };
        let request_id = w.request_id;
        let m = env.metrics();
        m.logins_failed.fetch_add(1, Relaxed);
        if code == ErrorCode::BadToken {
            m.logged_out_refusals.fetch_add(1, Relaxed);
        }
        self.phase = Phase::Open;
        let refusal: Option<Bytes> = encode(error(request_id, code, message, true));
        self.close_with(now, refusal, io, env);
    }

    /// The device checked in: register the connection under the duplicate-login policy, then
    /// wait for presence before LoginOk (`login_ok`).
    fn logged_in(
        &mut self,
        now: Instant,
        ctx: Arc<RequestCtx>,
        request_id: u64,
        login_ok: Option<Box<Bytes>>,
        io: &mut impl Write,
        env: &impl Env,
    ) {
        let m = env.metrics();
        let policy = env.config().duplicate_login;
        if policy == DuplicateLogin::OldestWins && !env.register(&ctx, policy) {
            m.duplicate_login_refusals.fetch_add(1, Relaxed);
            m.logins_failed.fetch_add(1, Relaxed);
            let refusal = error(
                request_id,
                ErrorCode::AlreadyLoggedIn,
                "this device is connected already (the server keeps the oldest \
                 connection); retry later",
                true,
            );
            return self.close_with(now, encode(refusal), io, env);
        }
        m.logins_ok.fetch_add(1, Relaxed);
        self.settle(env);
        tracing::debug!(connection_id = self.id(), user = %ctx.user_id, device = %ctx.device_id, "logged in");
        if policy == DuplicateLogin::NewestWins {
            env.register(&ctx, policy);
        }
        self.ctx = Some(ctx.clone());
        // Reachable for pushes before the client hears LoginOk.
        self.phase = Phase::LoginWait { until: now + LOGIN_PUBLISH_WAIT, login_ok };
        if env.reachable(&ctx, LOGIN_PUBLISH_WAIT) {
            self.login_ready(now, io, env);
        } else if self.flags & WAIT_TIMER == 0 {
            self.flags |= REARM | WAIT_TIMER;
        } else {
            // The check-in's own timer is still armed: it serves the presence wait.
            self.flags |= REARM;
        }
    }
}
