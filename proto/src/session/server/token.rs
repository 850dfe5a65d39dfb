//! Token lifecycle of a logged-in session: the expiry deadline (`exp` plus the verifier's clock
//! leeway, on the session's monotonic clock) and `RefreshToken`, which swaps in a newer token of
//! the same user and device without reconnecting.

use std::time::{Duration, Instant};

use super::{Action, AuthError, Authenticator, CloseReason, Identity, Phase, ServerSession};
use super::{error, kick};
use crate::v1::{self, ErrorCode, KickReason, envelope::Body};

/// A verified token: who it names and until when it may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Who the token names.
    pub identity: Identity,
    /// The token's `exp` in Unix milliseconds; `None`: it does not expire.
    pub expires_at_ms: Option<i64>,
    /// Clock-skew allowance: the session ends `leeway_ms` after `expires_at_ms`.
    pub leeway_ms: i64,
    /// The token's `iat` in Unix milliseconds; `None`: it has none.
    pub issued_at_ms: Option<i64>,
}

impl Verified {
    /// A token that never expires (authenticators without expiry).
    pub fn forever(identity: Identity) -> Self {
        Self { identity, expires_at_ms: None, leeway_ms: 0, issued_at_ms: None }
    }

    /// When a session using this token must end, on the monotonic clock: `exp + leeway` mapped
    /// from the wall clock (`now_unix_ms`) to `now`. `None`: never (or beyond what an
    /// `Instant` can hold).
    pub fn session_end(&self, now: Instant, now_unix_ms: i64) -> Option<Instant> {
        let end_ms = self.expires_at_ms?.saturating_add(self.leeway_ms.max(0));
        let left = u64::try_from(end_ms.saturating_sub(now_unix_ms)).unwrap_or(0);
        now.checked_add(Duration::from_millis(left))
    }
}

impl ServerSession {
    /// Handles `RefreshToken` on a logged-in session: a token that verifies and names the
    /// session's user and device replaces the current one (and its expiry deadline) and is
    /// answered `TokenRefreshed`; anything else is answered with a non-fatal Error and changes
    /// nothing.
    pub(super) fn refresh_token(
        &mut self,
        now: Instant,
        now_unix_ms: i64,
        request_id: u64,
        token: &str,
        auth: &impl Authenticator,
    ) -> Action {
        let Phase::Active { identity, token_end, .. } = &mut self.phase else {
            return Action::None;
        };
        let verified = match auth.verify(token, now_unix_ms) {
            Ok(v) => v,
            Err(e) => {
                let code = match e {
                    AuthError::BadToken(_) => ErrorCode::BadToken,
                    AuthError::Expired => ErrorCode::TokenExpired,
                };
                let message = format!("{e}; the current token stays in force");
                return Action::Reply(error(request_id, code, &message, false));
            }
        };
        if verified.identity != *identity {
            return Action::Reply(error(
                request_id,
                ErrorCode::BadToken,
                "the new token names another user or device; the current token stays in force",
                false,
            ));
        }
        *token_end = verified.session_end(now, now_unix_ms);
        Action::Reply(v1::Envelope {
            request_id,
            body: Some(Body::TokenRefreshed(v1::TokenRefreshed {
                expires_at_ms: verified.expires_at_ms.unwrap_or(0),
            })),
        })
    }

    /// Closes a session whose token ran out: Kick TOKEN_EXPIRED.
    pub(super) fn token_expired(&mut self) -> Action {
        self.close(
            kick(KickReason::TokenExpired, "the token expired; log in again with a new token"),
            CloseReason::TokenExpired,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::ServerSessionConfig;
    use super::*;

    const T0_UNIX_MS: i64 = 1_700_000_000_000;
    const LEEWAY_MS: i64 = 30_000;

    /// Tokens `<user>:<device>:<exp seconds after T0>`, or `expired`; anything else is bad.
    struct ExpiringAuth;

    impl Authenticator for ExpiringAuth {
        fn authenticate(&self, token: &str, now: i64) -> Result<Identity, AuthError> {
            self.verify(token, now).map(|v| v.identity)
        }

        fn verify(&self, token: &str, _now: i64) -> Result<Verified, AuthError> {
            if token == "expired" {
                return Err(AuthError::Expired);
            }
            let mut parts = token.split(':');
            let (Some(user), Some(device), Some(exp), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(AuthError::BadToken("unknown token".into()));
            };
            let exp: i64 = exp.parse().map_err(|_| AuthError::BadToken("exp".into()))?;
            Ok(Verified {
                identity: Identity { user_id: user.into(), device_id: device.into() },
                expires_at_ms: Some(T0_UNIX_MS + exp * 1000),
                leeway_ms: LEEWAY_MS,
                // Issued an hour before it expires.
                issued_at_ms: Some(T0_UNIX_MS + (exp - 3600) * 1000),
            })
        }
    }

    /// A session on a virtual clock: `base + elapsed`, wall clock `T0 + elapsed`.
    struct H {
        cfg: ServerSessionConfig,
        base: Instant,
        elapsed: Duration,
        s: ServerSession,
    }

    impl H {
        /// Logged in with a token that expires `exp_secs` after T0.
        fn logged_in(exp_secs: i64) -> (Self, v1::LoginOk) {
            let cfg = ServerSessionConfig::default();
            let base = Instant::now();
            let s = ServerSession::new(base, 1, &cfg);
            let mut h = H { cfg, base, elapsed: Duration::ZERO, s };
            let login =
                v1::Login { token: format!("alice:phone:{exp_secs}"), ..Default::default() };
            let action = h.frame(1, Body::Login(login));
            let Action::LoggedIn { reply, .. } = action else { panic!("{action:?}") };
            let Some(Body::LoginOk(ok)) = reply.body else { panic!("{reply:?}") };
            (h, ok)
        }
        fn now(&self) -> Instant {
            self.base + self.elapsed
        }
        fn unix(&self) -> i64 {
            T0_UNIX_MS + self.elapsed.as_millis() as i64
        }
        fn advance_to(&mut self, since_t0: Duration) {
            self.elapsed = since_t0;
        }
        fn frame(&mut self, request_id: u64, body: Body) -> Action {
            let env = v1::Envelope { request_id, body: Some(body) };
            let (now, unix) = (self.now(), self.unix());
            self.s.on_frame(now, unix, env, &self.cfg, &ExpiringAuth)
        }
        fn refresh(&mut self, request_id: u64, token: &str) -> Action {
            self.frame(request_id, Body::RefreshToken(v1::RefreshToken { token: token.into() }))
        }
        fn ping(&mut self) -> Action {
            self.frame(9, Body::Ping(v1::Ping::default()))
        }
        fn tick(&mut self) -> Action {
            let now = self.now();
            self.s.on_tick(now, &self.cfg)
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn expect_token_kick(action: Action) {
        assert_eq!(
            action,
            Action::Close {
                reply: Some(kick(
                    KickReason::TokenExpired,
                    "the token expired; log in again with a new token"
                )),
                reason: CloseReason::TokenExpired,
            }
        );
    }

    fn expect_error(action: Action, request_id: u64, code: ErrorCode) {
        let Action::Reply(reply) = action else { panic!("expected a reply, got {action:?}") };
        assert_eq!(reply.request_id, request_id);
        let Some(Body::Error(e)) = reply.body else { panic!("expected an Error, got {reply:?}") };
        assert_eq!((e.code, e.fatal), (code as i32, false), "{e:?}");
    }

    #[test]
    fn login_ok_announces_exp_and_the_deadline_is_exp_plus_leeway() {
        let (h, ok) = H::logged_in(60);
        assert_eq!(ok.token_expires_at_ms, T0_UNIX_MS + 60_000);
        assert_eq!(h.s.deadline(&h.cfg), Some(h.base + secs(90)), "exp 60 s + leeway 30 s");
    }

    #[test]
    fn the_session_is_kicked_when_exp_plus_leeway_passes() {
        let (mut h, _) = H::logged_in(60);
        // Keep it busy so that the idle timeout is never the reason.
        h.advance_to(secs(45));
        assert!(matches!(h.ping(), Action::Reply(_)));
        h.advance_to(secs(90) - Duration::from_millis(1));
        assert_eq!(h.tick(), Action::None);
        assert!(matches!(h.ping(), Action::Reply(_)), "still valid within the leeway");
        h.advance_to(secs(90));
        expect_token_kick(h.tick());
        assert!(h.s.is_closed());
        assert_eq!(h.s.deadline(&h.cfg), None);
    }

    #[test]
    fn a_frame_after_the_deadline_is_not_processed() {
        // The driver's timer may fire a little late: a frame in between must not get through.
        let (mut h, _) = H::logged_in(10);
        h.advance_to(secs(41));
        expect_token_kick(h.frame(5, Body::Send(v1::Send::default())));
        assert!(h.s.is_closed());
    }

    #[test]
    fn idle_timeout_still_applies_before_a_long_expiry() {
        let (mut h, _) = H::logged_in(3600);
        assert_eq!(h.s.deadline(&h.cfg), Some(h.base + h.cfg.idle_timeout));
        h.advance_to(h.cfg.idle_timeout);
        assert!(matches!(h.tick(), Action::Close { reason: CloseReason::IdleTimeout, .. }));
    }

    #[test]
    fn refresh_moves_the_deadline_and_answers_token_refreshed() {
        let (mut h, _) = H::logged_in(60);
        h.advance_to(secs(50));
        let action = h.refresh(7, "alice:phone:600");
        assert_eq!(
            action,
            Action::Reply(v1::Envelope {
                request_id: 7,
                body: Some(Body::TokenRefreshed(v1::TokenRefreshed {
                    expires_at_ms: T0_UNIX_MS + 600_000,
                })),
            })
        );
        // Past the old deadline: still open (pings keep it from idling out).
        for t in [80, 90, 150, 220, 300, 380, 460, 540, 620] {
            h.advance_to(secs(t));
            assert_eq!(h.tick(), Action::None, "at {t} s");
            assert!(matches!(h.ping(), Action::Reply(_)));
        }
        h.advance_to(secs(630));
        expect_token_kick(h.tick());
    }

    #[test]
    fn refused_refreshes_are_not_fatal_and_keep_the_old_deadline() {
        let (mut h, _) = H::logged_in(60);
        let before = h.s.deadline(&h.cfg);
        h.advance_to(secs(20));
        expect_error(h.refresh(2, "garbage"), 2, ErrorCode::BadToken);
        expect_error(h.refresh(3, "expired"), 3, ErrorCode::TokenExpired);
        expect_error(h.refresh(4, "bob:phone:600"), 4, ErrorCode::BadToken);
        expect_error(h.refresh(5, "alice:laptop:600"), 5, ErrorCode::BadToken);
        assert!(!h.s.is_closed());
        assert_eq!(h.s.identity().map(|i| i.user_id.as_str()), Some("alice"));
        assert_eq!(h.s.deadline(&h.cfg), before.map(|d| d.min(h.now() + h.cfg.idle_timeout)));
        h.advance_to(secs(90));
        expect_token_kick(h.tick());
    }

    #[test]
    fn a_refresh_may_shorten_the_deadline() {
        let (mut h, _) = H::logged_in(3600);
        assert!(matches!(h.refresh(2, "alice:phone:5"), Action::Reply(_)));
        assert_eq!(h.s.deadline(&h.cfg), Some(h.base + secs(35)));
    }

    #[test]
    fn a_refresh_with_a_token_from_before_the_logout_fence_is_refused() {
        let cfg = ServerSessionConfig::default();
        let now = Instant::now();
        let mut s = ServerSession::new(now, 1, &cfg);
        let login = v1::Envelope {
            request_id: 1,
            body: Some(Body::Login(v1::Login {
                token: "alice:phone:7200".into(),
                platform: v1::DevicePlatform::Ios as i32,
                ..Default::default()
            })),
        };
        let Action::LoggedIn { device, .. } =
            s.on_frame(now, T0_UNIX_MS, login, &cfg, &ExpiringAuth)
        else {
            panic!("login refused")
        };
        assert_eq!(device.platform, v1::DevicePlatform::Ios as i32);
        assert_eq!(device.issued_at_ms, Some(T0_UNIX_MS + 3600 * 1000));
        // The device was logged out 10 s after T0: tokens issued before are refused.
        let fenced =
            super::super::Fenced { inner: &ExpiringAuth, revoked_before_ms: T0_UNIX_MS + 10_000 };
        let refresh = |id: u64, token: &str| v1::Envelope {
            request_id: id,
            body: Some(Body::RefreshToken(v1::RefreshToken { token: token.into() })),
        };
        let old = s.on_frame(now, T0_UNIX_MS, refresh(2, "alice:phone:60"), &cfg, &fenced);
        let Action::Reply(v1::Envelope { body: Some(Body::Error(e)), .. }) = old else {
            panic!("{old:?}")
        };
        assert_eq!((e.code, e.fatal), (ErrorCode::BadToken as i32, false));
        let new = s.on_frame(now, T0_UNIX_MS, refresh(3, "alice:phone:7300"), &cfg, &fenced);
        assert!(
            matches!(new, Action::Reply(v1::Envelope { body: Some(Body::TokenRefreshed(_)), .. })),
            "{new:?}"
        );
    }

    #[test]
    fn a_refresh_before_login_is_refused_like_any_frame() {
        let cfg = ServerSessionConfig::default();
        let now = Instant::now();
        let mut s = ServerSession::new(now, 1, &cfg);
        let env = v1::Envelope {
            request_id: 3,
            body: Some(Body::RefreshToken(v1::RefreshToken { token: "alice:phone:60".into() })),
        };
        let action = s.on_frame(now, T0_UNIX_MS, env, &cfg, &ExpiringAuth);
        assert!(matches!(action, Action::Close { reason: CloseReason::NotLoggedIn, .. }));
    }

    #[test]
    fn session_end_maps_the_wall_clock_and_saturates() {
        let now = Instant::now();
        let id = Identity { user_id: "u".into(), device_id: "d".into() };
        let v = |exp: Option<i64>| Verified {
            identity: id.clone(),
            expires_at_ms: exp,
            leeway_ms: 1,
            issued_at_ms: None,
        };
        assert_eq!(v(None).session_end(now, 0), None);
        assert_eq!(v(Some(999)).session_end(now, 0), Some(now + Duration::from_millis(1000)));
        assert_eq!(v(Some(-5)).session_end(now, 10), Some(now), "already over: now");
        let far = v(Some(i64::MAX)).session_end(now, i64::MIN);
        assert!(far.is_none_or(|d| d > now), "saturates, never wraps: {far:?}");
    }
}
