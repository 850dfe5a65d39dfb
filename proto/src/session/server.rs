//! The server side of one client connection as a state machine with no I/O and no clock.
//!
//! Calling convention (the gateway's connection loop is the driver):
//! 1. [`ServerSession::new`] when a connection is accepted.
//! 2. For each decoded frame, [`ServerSession::on_frame`]; for a frame that failed to decode,
//!    [`ServerSession::on_decode_error`]. Carry out the returned [`Action`].
//! 3. Arm a timer for [`ServerSession::deadline`]; when it fires call [`ServerSession::on_tick`]
//!    and carry out its action. The deadline moves whenever a frame arrives, so re-read it after
//!    every call.
//!
//! The session decides only protocol rules; it never touches sockets, presence or storage.

use std::time::{Duration, Instant};

use crate::error::FrameError;
use crate::v1::{self, ErrorCode, KickReason, envelope::Body};

/// Longest `Login.client_version` accepted, in bytes (longer: fatal INVALID_REQUEST).
pub const MAX_CLIENT_VERSION_BYTES: usize = 64;
mod token;
pub use token::Verified;

/// Session limits and timings, shared by all connections of a gateway (keep one `Arc` of it).
#[derive(Debug, Clone)]
pub struct ServerSessionConfig {
    /// How long a new connection may take to send its Login frame.
    pub login_timeout: Duration,
    /// The heartbeat interval the server asks clients to keep (sent in LoginOk).
    pub heartbeat_interval: Duration,
    /// Close a logged-in connection after this long without any frame from it.
    pub idle_timeout: Duration,
    /// Largest frame accepted, announced in LoginOk.
    pub max_frame_bytes: usize,
    /// Frames per second a logged-in connection may send on average (a token bucket holding
    /// twice this as burst). A frame beyond it is answered RATE_LIMITED (not fatal) without
    /// being processed; once more than a full burst of frames was refused since the bucket was
    /// last full, the next refusal is a fatal RATE_LIMITED and closes. 0 turns the limit off.
    pub max_frames_per_sec: u32,
}

impl Default for ServerSessionConfig {
    fn default() -> Self {
        Self {
            login_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_frame_bytes: crate::codec::DEFAULT_MAX_FRAME_BYTES,
            max_frames_per_sec: 1000,
        }
    }
}

/// Who a connection logged in as, read from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user_id: String,
    /// The user's device.
    pub device_id: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Malformed, wrong signature, wrong algorithm, or invalid claims.
    #[error("bad token: {0}")]
    BadToken(String),
    /// Valid signature but `exp` is in the past.
    #[error("token expired")]
    Expired,
}

/// Checks login tokens. Implemented by the gateway (JWT); tests may use any implementation.
pub trait Authenticator {
    /// Verifies `token` at wall-clock time `now_unix_ms`.
    fn authenticate(&self, token: &str, now_unix_ms: i64) -> Result<Identity, AuthError>;

    /// Verifies `token` and says until when it is valid (the session closes then, see
    /// [`Verified`]). The default: [`Authenticator::authenticate`], never expiring.
    fn verify(&self, token: &str, now_unix_ms: i64) -> Result<Verified, AuthError> {
        self.authenticate(token, now_unix_ms).map(Verified::forever)
    }
}

/// What the driver must do after feeding the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing to do.
    None,
    /// Write this frame to the client.
    Reply(v1::Envelope),
    /// Login succeeded: register the connection for `identity` (kicking an older connection of
    /// the same user and device), then write `reply` (the LoginOk).
    LoggedIn {
        /// Who logged in.
        identity: Identity,
        /// The LoginOk frame.
        reply: v1::Envelope,
    },
    /// A request for dispatch, from the logged-in identity ([`ServerSession::identity`]).
    Forward(v1::Envelope),
    /// Write `reply` if any, then close the connection.
    Close {
        /// Last frame for the client (an Error or a Kick).
        reply: Option<v1::Envelope>,
        /// Why, for logs and metrics.
        reason: CloseReason,
    },
}

/// Why the session closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A frame failed to decode or was too large.
    BadFrame,
    /// A frame other than Login arrived first.
    NotLoggedIn,
    /// Login was refused (bad or expired token, request_id 0, client_version too long).
    AuthFailed,
    /// No Login within the login timeout.
    LoginTimeout,
    /// Nothing received within the idle timeout.
    IdleTimeout,
    /// Unsupported protocol version.
    UnsupportedVersion,
    /// Kept sending over its frame rate limit.
    RateLimited,
    /// The token's `exp` (plus leeway) passed without a RefreshToken.
    TokenExpired,
}

#[derive(Debug)]
enum Phase {
    AwaitingLogin { deadline: Instant },
    Active { identity: Identity, last_rx: Instant, bucket: Bucket, token_end: Option<Instant> },
    Closed,
}

/// The inbound token bucket of a logged-in connection (a few bytes per connection).
///
/// The close rule: refusals are counted from the moment the bucket was last full (it is full
/// at login, and fills again only while the client stays under its rate), not from the last
/// accepted frame. So a flood at any multiple of the rate reaches the fatal close after one
/// burst of accepted frames and then one more burst of refusals, while the tokens earned
/// meanwhile are still spent on accepted frames.
#[derive(Debug)]
struct Bucket {
    /// Frames that may still be sent now.
    tokens: u32,
    /// Frames refused since the bucket was last full.
    refused: u32,
    /// When tokens were last added.
    refilled: Instant,
}

/// What the bucket says about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Process it.
    Accept,
    /// Refuse it with a non-fatal RATE_LIMITED.
    Refuse,
    /// More than a full burst refused since the bucket was last full: fatal RATE_LIMITED.
    Close,
}

impl Bucket {
    fn new(now: Instant, rate: u32) -> Self {
        Self { tokens: rate.saturating_mul(2), refused: 0, refilled: now }
    }

    /// Takes a token for a frame arriving at `now`.
    fn take(&mut self, now: Instant, rate: u32) -> Admit {
        if rate == 0 {
            return Admit::Accept;
        }
        let burst = rate.saturating_mul(2);
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = (elapsed.as_micros() * u128::from(rate) / 1_000_000) as u64;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(burst)) as u32;
            // Keep the fraction of a token not yet earned.
            let used = Duration::from_micros(earned * 1_000_000 / u64::from(rate));
            self.refilled = if self.tokens == burst { now } else { self.refilled + used };
        }
        if self.tokens == burst {
            // Full again: the client stayed under its rate long enough; forget the refusals.
            self.refused = 0;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            return Admit::Accept;
        }
        self.refused = self.refused.saturating_add(1);
        if self.refused > burst { Admit::Close } else { Admit::Refuse }
    }
}

/// The server's view of one connection. See the module doc for the calling convention.
#[derive(Debug)]
pub struct ServerSession {
    phase: Phase,
    connection_id: u64,
}

impl ServerSession {
    /// A session for a connection accepted at `now`.
    pub fn new(now: Instant, connection_id: u64, cfg: &ServerSessionConfig) -> Self {
        Self { phase: Phase::AwaitingLogin { deadline: now + cfg.login_timeout }, connection_id }
    }

    /// The logged-in identity, once login succeeded.
    pub fn identity(&self) -> Option<&Identity> {
        match &self.phase {
            Phase::Active { identity, .. } => Some(identity),
            _ => None,
        }
    }

    /// Whether the session has closed (the driver must close the socket).
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// When [`ServerSession::on_tick`] must be called next, if ever.
    pub fn deadline(&self, cfg: &ServerSessionConfig) -> Option<Instant> {
        match &self.phase {
            Phase::AwaitingLogin { deadline } => Some(*deadline),
            Phase::Active { last_rx, token_end, .. } => {
                let idle = *last_rx + cfg.idle_timeout;
                Some(token_end.map_or(idle, |end| end.min(idle)))
            }
            Phase::Closed => None,
        }
    }

    /// Feeds one decoded frame received at `now` (`now_unix_ms` is the wall clock, for tokens
    /// and timestamps).
    pub fn on_frame(
        &mut self,
        now: Instant,
        now_unix_ms: i64,
        env: v1::Envelope,
        cfg: &ServerSessionConfig,
        auth: &impl Authenticator,
    ) -> Action {
        let request_id = env.request_id;
        match &mut self.phase {
            Phase::Closed => Action::None,
            Phase::AwaitingLogin { .. } => match env.body {
                Some(Body::Login(login)) => {
                    self.login(now, now_unix_ms, request_id, login, cfg, auth)
                }
                _ => self.close(
                    error(
                        request_id,
                        ErrorCode::NotLoggedIn,
                        "the first frame must be Login",
                        true,
                    ),
                    CloseReason::NotLoggedIn,
                ),
            },
            Phase::Active { token_end: Some(end), .. } if now >= *end => self.token_expired(),
            Phase::Active { last_rx, bucket, .. } => {
                *last_rx = now;
                match bucket.take(now, cfg.max_frames_per_sec) {
                    Admit::Accept => {}
                    Admit::Refuse => {
                        return Action::Reply(error(
                            request_id,
                            ErrorCode::RateLimited,
                            "too many frames; slow down and retry",
                            false,
                        ));
                    }
                    Admit::Close => {
                        return self.close(
                            error(
                                request_id,
                                ErrorCode::RateLimited,
                                "frame rate limit exceeded",
                                true,
                            ),
                            CloseReason::RateLimited,
                        );
                    }
                }
                match env.body {
                    None => Action::Reply(error(
                        request_id,
                        ErrorCode::UnknownFrame,
                        "unknown or empty frame body",
                        false,
                    )),
                    Some(_) if request_id == 0 => Action::Reply(error(
                        0,
                        ErrorCode::InvalidRequest,
                        "request_id 0 is reserved for server pushes; use a non-zero request_id",
                        false,
                    )),
                    Some(Body::Ping(_)) => Action::Reply(v1::Envelope {
                        request_id,
                        body: Some(Body::Pong(v1::Pong { server_time_ms: now_unix_ms })),
                    }),
                    Some(Body::Login(_)) => Action::Reply(error(
                        request_id,
                        ErrorCode::AlreadyLoggedIn,
                        "this connection is already logged in",
                        false,
                    )),
                    Some(Body::RefreshToken(r)) => {
                        self.refresh_token(now, now_unix_ms, request_id, &r.token, auth)
                    }
                    Some(body) if is_client_request(&body) => {
                        Action::Forward(v1::Envelope { request_id, body: Some(body) })
                    }
                    Some(_) => Action::Reply(error(
                        request_id,
                        ErrorCode::InvalidRequest,
                        "this frame kind is sent by servers, not clients",
                        false,
                    )),
                }
            }
        }
    }

    /// Feeds a decode failure: the session closes with the matching error frame.
    pub fn on_decode_error(&mut self, err: &FrameError) -> Action {
        self.close(error(0, err.code(), &err.to_string(), true), CloseReason::BadFrame)
    }

    /// Feeds the passing of time: closes on login timeout or idle timeout.
    pub fn on_tick(&mut self, now: Instant, cfg: &ServerSessionConfig) -> Action {
        match &self.phase {
            Phase::Active { token_end: Some(end), .. } if now >= *end => self.token_expired(),
            Phase::AwaitingLogin { deadline } if now >= *deadline => self.close(
                error(0, ErrorCode::LoginTimeout, "no Login within the login timeout", true),
                CloseReason::LoginTimeout,
            ),
            Phase::Active { last_rx, .. } if now >= *last_rx + cfg.idle_timeout => self.close(
                kick(KickReason::IdleTimeout, "nothing received within the idle timeout"),
                CloseReason::IdleTimeout,
            ),
            _ => Action::None,
        }
    }

    /// Marks the session closed from outside (e.g. kicked by a newer login, slow consumer,
    /// socket error). Further frames are ignored.
    pub fn close_now(&mut self) {
        self.phase = Phase::Closed;
    }

    fn login(
        &mut self,
        now: Instant,
        now_unix_ms: i64,
        request_id: u64,
        login: v1::Login,
        cfg: &ServerSessionConfig,
        auth: &impl Authenticator,
    ) -> Action {
        if login.protocol_version > crate::PROTOCOL_VERSION {
            return self.close(
                error(
                    request_id,
                    ErrorCode::UnsupportedProtocolVersion,
                    &format!(
                        "protocol version {} is not supported (this server speaks 1..={})",
                        login.protocol_version,
                        crate::PROTOCOL_VERSION
                    ),
                    true,
                ),
                CloseReason::UnsupportedVersion,
            );
        }
        if request_id == 0 {
            return self.close(
                error(
                    0,
                    ErrorCode::InvalidRequest,
                    "request_id 0 is reserved for server pushes; send Login with a non-zero id",
                    true,
                ),
                CloseReason::AuthFailed,
            );
        }
        if login.client_version.len() > MAX_CLIENT_VERSION_BYTES {
            return self.close(
                error(
                    request_id,
                    ErrorCode::InvalidRequest,
                    &format!(
                        "client_version is {} bytes; at most {MAX_CLIENT_VERSION_BYTES} allowed",
                        login.client_version.len()
                    ),
                    true,
                ),
                CloseReason::AuthFailed,
            );
        }
        match auth.verify(&login.token, now_unix_ms) {
            Ok(verified) => {
                let token_end = verified.session_end(now, now_unix_ms);
                let identity = verified.identity;
                let reply = v1::Envelope {
                    request_id,
                    body: Some(Body::LoginOk(v1::LoginOk {
                        user_id: identity.user_id.clone(),
                        device_id: identity.device_id.clone(),
                        heartbeat_interval_ms: millis(cfg.heartbeat_interval),
                        idle_timeout_ms: millis(cfg.idle_timeout),
                        max_frame_bytes: u32::try_from(cfg.max_frame_bytes).unwrap_or(u32::MAX),
                        server_time_ms: now_unix_ms,
                        connection_id: format!("{:x}", self.connection_id),
                        token_expires_at_ms: verified.expires_at_ms.unwrap_or(0),
                    })),
                };
                self.phase = Phase::Active {
                    identity: identity.clone(),
                    last_rx: now,
                    bucket: Bucket::new(now, cfg.max_frames_per_sec),
                    token_end,
                };
                Action::LoggedIn { identity, reply }
            }
            Err(e) => {
                let code = match e {
                    AuthError::BadToken(_) => ErrorCode::BadToken,
                    AuthError::Expired => ErrorCode::TokenExpired,
                };
                self.close(error(request_id, code, &e.to_string(), true), CloseReason::AuthFailed)
            }
        }
    }

    fn close(&mut self, reply: v1::Envelope, reason: CloseReason) -> Action {
        self.phase = Phase::Closed;
        Action::Close { reply: Some(reply), reason }
    }
}

/// Whether a body is a request a client may send to dispatch once logged in.
fn is_client_request(body: &Body) -> bool {
    matches!(
        body,
        Body::Send(_)
            | Body::Recall(_)
            | Body::Receipt(_)
            | Body::GetReceipts(_)
            | Body::SyncRequest(_)
            | Body::ListConversations(_)
            | Body::CreateGroup(_)
            | Body::AddMembers(_)
            | Body::RemoveMembers(_)
            | Body::LeaveGroup(_)
            | Body::GetGroup(_)
    )
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// An Error frame.
pub fn error(request_id: u64, code: ErrorCode, message: &str, fatal: bool) -> v1::Envelope {
    v1::Envelope {
        request_id,
        body: Some(Body::Error(v1::Error {
            code: code as i32,
            message: message.to_owned(),
            fatal,
        })),
    }
}

/// A Kick frame (always a server push: request_id 0).
pub fn kick(reason: KickReason, message: &str) -> v1::Envelope {
    v1::Envelope {
        request_id: 0,
        body: Some(Body::Kick(v1::Kick { reason: reason as i32, message: message.to_owned() })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0_UNIX_MS: i64 = 1_700_000_000_000;

    /// Tokens: `ok:<user>:<device>`, `expired`; anything else is a bad token.
    struct TestAuth;

    impl Authenticator for TestAuth {
        fn authenticate(&self, token: &str, _now_unix_ms: i64) -> Result<Identity, AuthError> {
            if token == "expired" {
                return Err(AuthError::Expired);
            }
            match token.strip_prefix("ok:").and_then(|t| t.split_once(':')) {
                Some((user, device)) => {
                    Ok(Identity { user_id: user.to_owned(), device_id: device.to_owned() })
                }
                None => Err(AuthError::BadToken("unknown token".to_owned())),
            }
        }
    }

    /// A session and a virtual clock: `base` plus elapsed durations.
    struct Harness {
        cfg: ServerSessionConfig,
        base: Instant,
        elapsed: Duration,
        session: ServerSession,
    }

    impl Harness {
        fn new() -> Self {
            let cfg = ServerSessionConfig::default();
            let base = Instant::now();
            let session = ServerSession::new(base, 0xabc, &cfg);
            Self { cfg, base, elapsed: Duration::ZERO, session }
        }

        fn now(&self) -> Instant {
            self.base + self.elapsed
        }

        fn advance(&mut self, d: Duration) {
            self.elapsed += d;
        }

        fn frame(&mut self, request_id: u64, body: Option<Body>) -> Action {
            let now = self.now();
            let unix = T0_UNIX_MS + self.elapsed.as_millis() as i64;
            let env = v1::Envelope { request_id, body };
            self.session.on_frame(now, unix, env, &self.cfg, &TestAuth)
        }

        fn tick(&mut self) -> Action {
            let now = self.now();
            self.session.on_tick(now, &self.cfg)
        }

        fn login(&mut self, request_id: u64, token: &str, protocol_version: u32) -> Action {
            let login = v1::Login {
                token: token.to_owned(),
                protocol_version,
                client_version: "test/1".to_owned(),
            };
            self.frame(request_id, Some(Body::Login(login)))
        }

        fn logged_in() -> Self {
            let mut h = Self::new();
            let action = h.login(1, "ok:alice:phone", 1);
            assert!(matches!(action, Action::LoggedIn { .. }), "{action:?}");
            h
        }
    }

    fn ping() -> Option<Body> {
        Some(Body::Ping(v1::Ping { client_time_ms: 5 }))
    }

    /// Asserts `action` is an Error reply (or Close with an Error when `fatal`), returning it.
    fn expect_error(action: Action, request_id: u64, code: ErrorCode, fatal: bool) -> v1::Error {
        let reply = match (action, fatal) {
            (Action::Reply(reply), false) => reply,
            (Action::Close { reply: Some(reply), .. }, true) => reply,
            (other, _) => panic!("expected {code:?} (fatal {fatal}), got {other:?}"),
        };
        assert_eq!(reply.request_id, request_id);
        match reply.body {
            Some(Body::Error(e)) => {
                assert_eq!(e.code, code as i32, "{e:?}");
                assert_eq!(e.fatal, fatal, "{e:?}");
                e
            }
            other => panic!("expected an Error body, got {other:?}"),
        }
    }

    #[test]
    fn any_frame_before_login_closes_with_not_logged_in() {
        let bodies = [
            ping(),
            None,
            Some(Body::Send(v1::Send::default())),
            Some(Body::SyncRequest(v1::SyncRequest::default())),
            Some(Body::LoginOk(v1::LoginOk::default())),
        ];
        for body in bodies {
            let mut h = Harness::new();
            let action = h.frame(3, body.clone());
            assert!(
                matches!(action, Action::Close { reason: CloseReason::NotLoggedIn, .. }),
                "{body:?}: {action:?}"
            );
            expect_error(action, 3, ErrorCode::NotLoggedIn, true);
            assert!(h.session.is_closed());
            assert_eq!(h.session.deadline(&h.cfg), None);
            // A closed session ignores whatever follows, including a valid Login.
            assert_eq!(h.login(4, "ok:alice:phone", 1), Action::None);
            assert_eq!(h.session.identity(), None);
        }
    }

    #[test]
    fn login_ok_carries_identity_and_limits() {
        let mut h = Harness::new();
        h.advance(Duration::from_millis(1500));
        let action = h.login(77, "ok:alice:phone", 1);
        let Action::LoggedIn { identity, reply } = action else {
            panic!("expected LoggedIn, got {action:?}");
        };
        let alice = Identity { user_id: "alice".into(), device_id: "phone".into() };
        assert_eq!(identity, alice);
        assert_eq!(reply.request_id, 77);
        let Some(Body::LoginOk(ok)) = reply.body else {
            panic!("expected LoginOk, got {reply:?}");
        };
        assert_eq!(
            ok,
            v1::LoginOk {
                user_id: "alice".into(),
                device_id: "phone".into(),
                heartbeat_interval_ms: 30_000,
                idle_timeout_ms: 90_000,
                max_frame_bytes: 65_536,
                server_time_ms: T0_UNIX_MS + 1500,
                connection_id: "abc".into(),
                token_expires_at_ms: 0,
            }
        );
        assert_eq!(h.session.identity(), Some(&alice));
        assert!(!h.session.is_closed());
        assert_eq!(h.session.deadline(&h.cfg), Some(h.now() + h.cfg.idle_timeout));
    }

    #[test]
    fn protocol_version_zero_means_one() {
        let mut h = Harness::new();
        assert!(matches!(h.login(1, "ok:a:b", 0), Action::LoggedIn { .. }));
    }

    #[test]
    fn refused_tokens_close_the_connection() {
        for (token, code) in [
            ("garbage", ErrorCode::BadToken),
            ("", ErrorCode::BadToken),
            ("expired", ErrorCode::TokenExpired),
        ] {
            let mut h = Harness::new();
            let action = h.login(5, token, 1);
            assert!(
                matches!(action, Action::Close { reason: CloseReason::AuthFailed, .. }),
                "{action:?}"
            );
            expect_error(action, 5, code, true);
            assert!(h.session.is_closed());
            assert_eq!(h.session.identity(), None);
        }
    }

    #[test]
    fn unsupported_protocol_version_closes_before_checking_the_token() {
        let mut h = Harness::new();
        let action = h.login(2, "ok:alice:phone", crate::PROTOCOL_VERSION + 1);
        assert!(
            matches!(action, Action::Close { reason: CloseReason::UnsupportedVersion, .. }),
            "{action:?}"
        );
        expect_error(action, 2, ErrorCode::UnsupportedProtocolVersion, true);
        assert!(h.session.is_closed());
    }

    #[test]
    fn login_timeout_fires_at_the_deadline_not_before() {
        let mut h = Harness::new();
        assert_eq!(h.session.deadline(&h.cfg), Some(h.base + Duration::from_secs(10)));
        h.advance(Duration::from_secs(10) - Duration::from_millis(1));
        assert_eq!(h.tick(), Action::None);
        assert!(!h.session.is_closed());
        h.advance(Duration::from_millis(1));
        let action = h.tick();
        assert!(
            matches!(action, Action::Close { reason: CloseReason::LoginTimeout, .. }),
            "{action:?}"
        );
        expect_error(action, 0, ErrorCode::LoginTimeout, true);
        assert!(h.session.is_closed());
        assert_eq!(h.tick(), Action::None, "a closed session does not close twice");
    }

    #[test]
    fn idle_timeout_kicks_after_silence() {
        let mut h = Harness::logged_in();
        h.advance(Duration::from_secs(90) - Duration::from_millis(1));
        assert_eq!(h.tick(), Action::None);
        h.advance(Duration::from_millis(1));
        let action = h.tick();
        let Action::Close { reply: Some(reply), reason: CloseReason::IdleTimeout } = action else {
            panic!("expected an idle-timeout Close, got {action:?}");
        };
        assert_eq!(
            reply,
            kick(KickReason::IdleTimeout, "nothing received within the idle timeout")
        );
        assert!(h.session.is_closed());
        assert_eq!(h.session.identity(), None);
    }

    #[test]
    fn any_frame_pushes_the_idle_deadline() {
        let mut h = Harness::logged_in();
        let frames = [
            ping(),
            None,
            Some(Body::Send(v1::Send::default())),
            Some(Body::Pong(v1::Pong::default())),
            Some(Body::Login(v1::Login::default())),
        ];
        for body in frames {
            // 89 s of silence: still open; then a frame moves the deadline 90 s past it.
            h.advance(Duration::from_secs(89));
            assert_eq!(h.tick(), Action::None);
            let _ = h.frame(9, body);
            assert_eq!(h.session.deadline(&h.cfg), Some(h.now() + Duration::from_secs(90)));
        }
        // 5 x 89 s since login, far past one idle timeout, and still open.
        assert!(!h.session.is_closed());
        h.advance(Duration::from_secs(90));
        assert!(matches!(h.tick(), Action::Close { reason: CloseReason::IdleTimeout, .. }));
    }

    #[test]
    fn ping_is_answered_with_pong_and_the_same_request_id() {
        let mut h = Harness::logged_in();
        h.advance(Duration::from_secs(2));
        let action = h.frame(0xfeed, ping());
        assert_eq!(
            action,
            Action::Reply(v1::Envelope {
                request_id: 0xfeed,
                body: Some(Body::Pong(v1::Pong { server_time_ms: T0_UNIX_MS + 2000 })),
            })
        );
    }

    #[test]
    fn second_login_is_refused_but_not_fatal() {
        let mut h = Harness::logged_in();
        let action = h.login(8, "ok:mallory:laptop", 1);
        expect_error(action, 8, ErrorCode::AlreadyLoggedIn, false);
        assert!(!h.session.is_closed());
        let alice = Identity { user_id: "alice".into(), device_id: "phone".into() };
        assert_eq!(h.session.identity(), Some(&alice), "identity must not change");
    }

    #[test]
    fn request_id_zero_is_refused_once_logged_in() {
        let mut h = Harness::logged_in();
        for body in
            [ping(), Some(Body::Send(v1::Send::default())), Some(Body::Login(v1::Login::default()))]
        {
            let e = expect_error(h.frame(0, body), 0, ErrorCode::InvalidRequest, false);
            assert!(e.message.contains("request_id 0"), "{e:?}");
        }
        // An empty frame (N = 0) decodes to request_id 0 and no body: UNKNOWN_FRAME as before.
        expect_error(h.frame(0, None), 0, ErrorCode::UnknownFrame, false);
        assert!(!h.session.is_closed());
        assert!(matches!(h.frame(1, ping()), Action::Reply(v1::Envelope { request_id: 1, .. })));
    }

    #[test]
    fn login_with_request_id_zero_is_fatal() {
        let mut h = Harness::new();
        let action = h.login(0, "ok:alice:phone", 1);
        assert!(
            matches!(action, Action::Close { reason: CloseReason::AuthFailed, .. }),
            "{action:?}"
        );
        expect_error(action, 0, ErrorCode::InvalidRequest, true);
        assert!(h.session.is_closed());
    }

    #[test]
    fn client_version_is_limited_to_64_bytes() {
        let login = |v: usize| v1::Login {
            token: "ok:alice:phone".into(),
            protocol_version: 1,
            client_version: "v".repeat(v),
        };
        let mut h = Harness::new();
        let action = h.frame(3, Some(Body::Login(login(MAX_CLIENT_VERSION_BYTES))));
        assert!(matches!(action, Action::LoggedIn { .. }), "{action:?}");
        let mut h = Harness::new();
        let action = h.frame(3, Some(Body::Login(login(MAX_CLIENT_VERSION_BYTES + 1))));
        assert!(
            matches!(action, Action::Close { reason: CloseReason::AuthFailed, .. }),
            "{action:?}"
        );
        let e = expect_error(action, 3, ErrorCode::InvalidRequest, true);
        assert!(e.message.contains("client_version"), "{e:?}");
    }

    #[test]
    fn empty_body_is_unknown_frame_not_fatal() {
        let mut h = Harness::logged_in();
        expect_error(h.frame(4, None), 4, ErrorCode::UnknownFrame, false);
        assert!(!h.session.is_closed());
    }

    #[test]
    fn server_only_frames_from_a_client_are_invalid_requests() {
        let server_only = [
            Body::LoginOk(v1::LoginOk::default()),
            Body::Pong(v1::Pong::default()),
            Body::Kick(v1::Kick::default()),
            Body::Error(v1::Error::default()),
            Body::Ok(v1::Ok {}),
            Body::SendAck(v1::SendAck::default()),
            Body::Deliver(v1::Deliver::default()),
            Body::ReceiptUpdate(v1::ReceiptUpdate::default()),
            Body::Receipts(v1::Receipts::default()),
            Body::SyncPage(v1::SyncPage::default()),
            Body::ConversationList(v1::ConversationList::default()),
            Body::GroupInfo(v1::GroupInfo::default()),
        ];
        let mut h = Harness::logged_in();
        for body in server_only {
            let what = format!("{body:?}");
            let action = h.frame(6, Some(body));
            expect_error(action, 6, ErrorCode::InvalidRequest, false);
            assert!(!h.session.is_closed(), "{what}");
        }
    }

    #[test]
    fn client_requests_are_forwarded_unchanged() {
        let requests = [
            Body::Send(v1::Send {
                conversation_id: "dm:alice:bob".into(),
                client_msg_id: "m1".into(),
                body: b"hi".to_vec().into(),
                ..Default::default()
            }),
            Body::Recall(v1::Recall::default()),
            Body::Receipt(v1::Receipt::default()),
            Body::GetReceipts(v1::GetReceipts::default()),
            Body::SyncRequest(v1::SyncRequest { from_seq: 3, ..Default::default() }),
            Body::ListConversations(v1::ListConversations::default()),
            Body::CreateGroup(v1::CreateGroup::default()),
            Body::AddMembers(v1::AddMembers::default()),
            Body::RemoveMembers(v1::RemoveMembers::default()),
            Body::LeaveGroup(v1::LeaveGroup::default()),
            Body::GetGroup(v1::GetGroup::default()),
        ];
        let mut h = Harness::logged_in();
        for (i, body) in requests.into_iter().enumerate() {
            let request_id = 100 + i as u64;
            let expected = v1::Envelope { request_id, body: Some(body.clone()) };
            assert_eq!(h.frame(request_id, Some(body)), Action::Forward(expected));
        }
    }

    #[test]
    fn decode_errors_close_with_the_matching_code() {
        let too_large = FrameError::TooLarge { len: u64::from(u32::MAX), max: 65_536 };
        let Err(decode_error) = <v1::Envelope as prost::Message>::decode(&[0x80u8][..]) else {
            panic!("a truncated varint must not decode");
        };
        let malformed = FrameError::Malformed(decode_error);
        for (err, code) in
            [(too_large, ErrorCode::FrameTooLarge), (malformed, ErrorCode::MalformedFrame)]
        {
            for logged_in in [false, true] {
                let mut h = if logged_in { Harness::logged_in() } else { Harness::new() };
                let action = h.session.on_decode_error(&err);
                assert!(
                    matches!(action, Action::Close { reason: CloseReason::BadFrame, .. }),
                    "{action:?}"
                );
                expect_error(action, 0, code, true);
                assert!(h.session.is_closed());
                assert_eq!(h.frame(1, ping()), Action::None);
            }
        }
    }

    #[test]
    fn close_now_silences_the_session() {
        let mut h = Harness::logged_in();
        h.session.close_now();
        assert!(h.session.is_closed());
        assert_eq!(h.session.deadline(&h.cfg), None);
        assert_eq!(h.frame(1, ping()), Action::None);
        h.advance(Duration::from_secs(3600));
        assert_eq!(h.tick(), Action::None);
    }

    #[test]
    fn session_fuzz_body_accepts_a_scripted_conversation() {
        // Login frame (op 0, len, bytes), a ping, a tick of 5 s, then a jump to the deadline.
        let login = v1::Envelope {
            request_id: 1,
            body: Some(Body::Login(v1::Login { token: "ok:a:b".into(), ..Default::default() })),
        };
        let ping = v1::Envelope { request_id: 2, body: ping() };
        let mut data = Vec::new();
        for env in [login, ping] {
            let bytes = prost::Message::encode_to_vec(&env);
            data.push(0);
            data.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
            data.extend_from_slice(&bytes);
        }
        data.extend_from_slice(&[1 + 4 * 5, 2, 0, 0]);
        crate::fuzzing::server_session(&data);
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    struct Anyone;
    impl Authenticator for Anyone {
        fn authenticate(&self, _: &str, _: i64) -> Result<Identity, AuthError> {
            Ok(Identity { user_id: "u".into(), device_id: "d".into() })
        }
    }

    fn ping(id: u64) -> v1::Envelope {
        v1::Envelope { request_id: id, body: Some(Body::Ping(v1::Ping::default())) }
    }

    fn is_pong(a: &Action) -> bool {
        matches!(a, Action::Reply(v1::Envelope { body: Some(Body::Pong(_)), .. }))
    }

    fn is_refusal(a: &Action) -> bool {
        matches!(a, Action::Reply(v1::Envelope { body: Some(Body::Error(e)), .. })
            if e.code == ErrorCode::RateLimited as i32 && !e.fatal)
    }

    fn logged_in(cfg: &ServerSessionConfig, t0: Instant) -> ServerSession {
        let mut s = ServerSession::new(t0, 1, cfg);
        let login = v1::Envelope { request_id: 1, body: Some(Body::Login(v1::Login::default())) };
        assert!(matches!(s.on_frame(t0, 0, login, cfg, &Anyone), Action::LoggedIn { .. }));
        s
    }

    /// What a flood of one frame every `gap` did, on a virtual clock.
    #[derive(Debug, Default)]
    struct Flood {
        accepted: u64,
        refused: u64,
        /// Frames sent until the fatal close (inclusive), if it came.
        closed_after: Option<u64>,
        /// Virtual time from the first frame to the close.
        elapsed: Duration,
    }

    fn flood(cfg: &ServerSessionConfig, gap: Duration, max_frames: u64) -> Flood {
        let t0 = Instant::now();
        let mut s = logged_in(cfg, t0);
        let mut out = Flood::default();
        for n in 1..=max_frames {
            let now = t0 + gap * (n as u32);
            let action = s.on_frame(now, 0, ping(n), cfg, &Anyone);
            if is_pong(&action) {
                out.accepted += 1;
            } else if is_refusal(&action) {
                out.refused += 1;
            } else {
                let Action::Close { reply: Some(reply), reason: CloseReason::RateLimited } = action
                else {
                    panic!("frame {n}: unexpected {action:?}");
                };
                assert_eq!(reply.request_id, n);
                assert!(matches!(reply.body, Some(Body::Error(e))
                    if e.code == ErrorCode::RateLimited as i32 && e.fatal));
                assert!(s.is_closed());
                out.closed_after = Some(n);
                out.elapsed = now - t0;
                return out;
            }
        }
        out
    }

    #[test]
    fn a_flood_at_forty_times_the_rate_is_closed_after_one_burst_of_refusals() {
        // 1000 frames/s allowed, 40,000/s sent (one every 25 us) with time advancing: tokens
        // keep arriving (one per ms) and are spent, but refusals are counted since the bucket
        // was last full, so they pass the burst (2000) and the connection closes.
        let cfg = ServerSessionConfig { max_frames_per_sec: 1000, ..Default::default() };
        let f = flood(&cfg, Duration::from_micros(25), 1_000_000);
        let n = f.closed_after.unwrap_or_else(|| panic!("never closed: {f:?}"));
        assert_eq!(f.refused, 2000, "exactly one full burst of non-fatal refusals: {f:?}");
        // The burst of 2000 plus the tokens earned meanwhile (one per ms of flood).
        let earned = f.elapsed.as_millis() as u64;
        assert!(f.accepted >= 2000 && f.accepted <= 2000 + earned + 1, "{f:?}");
        assert_eq!(n, f.accepted + f.refused + 1);
    }

    #[test]
    fn floods_at_many_multiples_of_the_rate_all_reach_the_close() {
        for (rate, per_sec) in [(10u32, 25u64), (100, 1_000), (1000, 2_000), (1000, 100_000)] {
            let cfg = ServerSessionConfig { max_frames_per_sec: rate, ..Default::default() };
            let gap = Duration::from_nanos(1_000_000_000 / per_sec);
            let f = flood(&cfg, gap, 10_000_000);
            assert!(f.closed_after.is_some(), "rate {rate}, {per_sec}/s: {f:?}");
            assert_eq!(f.refused, 2 * u64::from(rate), "rate {rate}, {per_sec}/s: {f:?}");
        }
    }

    #[test]
    fn a_client_at_its_rate_is_never_refused() {
        let cfg = ServerSessionConfig { max_frames_per_sec: 100, ..Default::default() };
        let f = flood(&cfg, Duration::from_millis(10), 100_000);
        assert_eq!((f.refused, f.closed_after), (0, None), "{f:?}");
    }

    #[test]
    fn refusals_are_forgotten_once_the_bucket_is_full_again() {
        let cfg = ServerSessionConfig { max_frames_per_sec: 10, ..Default::default() };
        let t0 = Instant::now();
        let mut s = logged_in(&cfg, t0);
        let mut id = 1;
        let mut send = |s: &mut ServerSession, at: Instant| {
            id += 1;
            s.on_frame(at, 0, ping(id), &cfg, &Anyone)
        };
        // Burst (20), then 20 refusals: one short of the close.
        for _ in 0..20 {
            assert!(is_pong(&send(&mut s, t0)));
        }
        for _ in 0..20 {
            assert!(is_refusal(&send(&mut s, t0)));
        }
        // 1.9 s of quiet: 19 tokens, not full yet, so the count stands: one more refusal after
        // them closes.
        let t1 = t0 + Duration::from_millis(1900);
        let mut s2 = logged_in(&cfg, t0);
        for _ in 0..20 {
            send(&mut s2, t0);
        }
        for _ in 0..20 {
            send(&mut s2, t0);
        }
        for _ in 0..19 {
            assert!(is_pong(&send(&mut s2, t1)));
        }
        assert!(matches!(
            send(&mut s2, t1),
            Action::Close { reason: CloseReason::RateLimited, .. }
        ));
        // 2 s of quiet fills the bucket: the count starts over, a full burst of refusals again.
        let t2 = t0 + Duration::from_secs(2);
        for _ in 0..20 {
            assert!(is_pong(&send(&mut s, t2)));
        }
        for i in 0..20 {
            assert!(is_refusal(&send(&mut s, t2)), "refusal {i} after the refill");
        }
        assert!(matches!(send(&mut s, t2), Action::Close { reason: CloseReason::RateLimited, .. }));
        assert!(s.is_closed());
    }

    #[test]
    fn bucket_refills_with_time() {
        let cfg = ServerSessionConfig { max_frames_per_sec: 10, ..Default::default() };
        let t0 = Instant::now();
        let mut s = logged_in(&cfg, t0);
        // The burst (2 x rate) passes, the next frame is refused but not fatal.
        for i in 1..=20 {
            assert!(is_pong(&s.on_frame(t0, 0, ping(i), &cfg, &Anyone)), "frame {i}");
        }
        let refused = s.on_frame(t0, 0, ping(99), &cfg, &Anyone);
        assert!(is_refusal(&refused), "{refused:?}");
        // 100 ms later exactly one token is back; 1 s later ten.
        let t1 = t0 + Duration::from_millis(100);
        assert!(is_pong(&s.on_frame(t1, 0, ping(100), &cfg, &Anyone)));
        assert!(is_refusal(&s.on_frame(t1, 0, ping(101), &cfg, &Anyone)));
        let t2 = t1 + Duration::from_secs(1);
        for i in 0..10 {
            assert!(is_pong(&s.on_frame(t2, 0, ping(200 + i), &cfg, &Anyone)), "refilled {i}");
        }
        // Two refusals so far; the 21st since the bucket was full closes.
        for i in 0..18 {
            assert!(is_refusal(&s.on_frame(t2, 0, ping(300 + i), &cfg, &Anyone)), "{i}");
        }
        let last = s.on_frame(t2, 0, ping(400), &cfg, &Anyone);
        assert!(matches!(last, Action::Close { reason: CloseReason::RateLimited, .. }), "{last:?}");
        assert!(s.is_closed());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let cfg = ServerSessionConfig { max_frames_per_sec: 0, ..Default::default() };
        let t0 = Instant::now();
        let mut s = logged_in(&cfg, t0);
        for i in 1..=10_000 {
            assert!(is_pong(&s.on_frame(t0, 0, ping(i), &cfg, &Anyone)));
        }
    }
}
