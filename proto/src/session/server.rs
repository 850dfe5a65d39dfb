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
    /// The token checked out: check the device in (refused if it was logged out after the
    /// token was issued: [`token_revoked`]), register the connection for `identity` (kicking
    /// an older connection of the same user and device), then write `reply` (the LoginOk).
    /// Pass the device's logout fence with every later frame through [`Fenced`], so that a
    /// RefreshToken with a token from before it is refused.
    LoggedIn {
        /// Who logged in.
        identity: Identity,
        /// The LoginOk frame.
        reply: v1::Envelope,
        /// What the device check-in needs.
        device: DeviceLogin,
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

/// What a login tells about its device, for the check-in before LoginOk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLogin {
    /// `Login.platform` (a `v1::DevicePlatform` number, unknown values kept as sent).
    pub platform: i32,
    /// The token's `iat` in Unix ms (`None`: the token has none).
    pub issued_at_ms: Option<i64>,
}

/// The logout rule: a device with a fence (`revoked_before_ms > 0`, set when the user logged
/// it out) refuses tokens without `iat` and tokens issued at or before the fence. (`iat` has
/// whole seconds: a token minted in the same second as the logout is refused too.)
pub fn token_revoked(issued_at_ms: Option<i64>, revoked_before_ms: i64) -> bool {
    revoked_before_ms > 0 && issued_at_ms.is_none_or(|iat| iat <= revoked_before_ms)
}

/// An [`Authenticator`] that also refuses tokens the device's logout fence refuses
/// ([`token_revoked`]): the driver wraps its authenticator with the fence its check-in
/// answered, so RefreshToken cannot bring back a token from before a logout. (The fence stays
/// with the driver: the session's per-connection state does not grow.)
pub struct Fenced<'a, A> {
    /// The token verifier.
    pub inner: &'a A,
    /// The device's logout fence, Unix ms (0: none).
    pub revoked_before_ms: i64,
}

impl<A: Authenticator> Authenticator for Fenced<'_, A> {
    fn authenticate(&self, token: &str, now_unix_ms: i64) -> Result<Identity, AuthError> {
        self.verify(token, now_unix_ms).map(|v| v.identity)
    }

    fn verify(&self, token: &str, now_unix_ms: i64) -> Result<Verified, AuthError> {
        let v = self.inner.verify(token, now_unix_ms)?;
        if token_revoked(v.issued_at_ms, self.revoked_before_ms) {
            return Err(AuthError::BadToken(
                "this device was logged out after the token was issued".into(),
            ));
        }
        Ok(v)
    }
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

    /// The gateway's id for the connection (given to [`ServerSession::new`]).
    pub fn connection_id(&self) -> u64 {
        self.connection_id
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
                    Some(Body::DeviceCheckIn(_) | Body::DeviceCheckedIn(_)) => Action::Reply(
                        error(request_id, ErrorCode::UnknownFrame, "unknown frame body", false),
                    ),
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
                let device =
                    DeviceLogin { platform: login.platform, issued_at_ms: verified.issued_at_ms };
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
                Action::LoggedIn { identity, reply, device }
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
            | Body::UpdateConversation(_)
            | Body::ListDevices(_)
            | Body::LogoutDevice(_)
            | Body::RegisterPush(_)
            | Body::UnregisterPush(_)
            | Body::CreateGroup(_)
            | Body::AddMembers(_)
            | Body::RemoveMembers(_)
            | Body::LeaveGroup(_)
            | Body::GetGroup(_)
            | Body::UpdateGroup(_)
            | Body::SetMemberRole(_)
            | Body::TransferOwnership(_)
            | Body::DissolveGroup(_)
            | Body::ListGroupMembers(_)
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
mod tests;

#[cfg(test)]
mod rate_tests;
