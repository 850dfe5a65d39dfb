//! The gateway's limits and timings. Every limit bounds memory or work; its doc says the cost.

use std::time::Duration;

use tern_proto::session::server::ServerSessionConfig;

/// What happens when a (user, device) that is connected logs in again (`auth.duplicate_login`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DuplicateLogin {
    /// The new login wins: the older connection gets Kick DUPLICATE_LOGIN and closes.
    #[default]
    NewestWins,
    /// The connection already there wins: the new login is refused with a fatal
    /// ALREADY_LOGGED_IN (a stolen token can no longer kick its victim off; a client whose
    /// old connection died silently waits until the server drops it at the idle timeout).
    /// Enforced per gateway: not available in the distributed mode.
    OldestWins,
}

/// Gateway settings. Defaults suit a loopback development server.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Login timeout, heartbeat interval, idle timeout and maximum frame size.
    pub session: ServerSessionConfig,
    /// Cap on bytes queued for one connection that it has not read yet. Past it the connection
    /// is kicked (SLOW_CONSUMER) and closed; the client recovers by sync. Worst-case memory per
    /// connection is about this much. Default 1 MiB.
    pub max_outbound_bytes: usize,
    /// Cap on frames queued for one connection (same effect as the byte cap). Default 4096.
    pub max_outbound_frames: usize,
    /// Requests of one connection being processed at once; past it the gateway stops reading
    /// that connection until one finishes (back-pressure). Default 256.
    pub max_inflight_requests: usize,
    /// Connections held at once; further connections are closed at accept. Default 100_000.
    pub max_connections: usize,
    /// Connections accepted but not logged in yet, at once; further connections are closed at
    /// accept. Bounds the work a login storm (or a flood of idle sockets) can pile up before
    /// the login timeout. Default 10_000.
    pub max_pending_logins: usize,
    /// How long a closing connection keeps its socket so that its last frame (the
    /// SLOW_CONSUMER Kick, any Kick or fatal Error) reaches a client that reads slowly; the
    /// socket closes sooner once the frame is written (plus a 500 ms linger). Costs one socket
    /// and the last frame per closing connection. Default 10 s.
    pub close_timeout: Duration,
    /// Connections from one source (an IPv4 address or an IPv6 /64) held at once; further
    /// ones from it are closed at accept. 0 = no cap. Default 10_000.
    pub max_connections_per_source: usize,
    /// Connections from one source accepted but not logged in yet, at once; further ones from
    /// it are closed at accept, so one host cannot take every pending-login slot. 0 = no cap.
    /// Default 1000.
    pub max_pending_logins_per_source: usize,
    /// Duplicate-login policy. Default newest wins.
    pub duplicate_login: DuplicateLogin,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            session: ServerSessionConfig::default(),
            max_outbound_bytes: 1024 * 1024,
            max_outbound_frames: 4096,
            max_inflight_requests: 256,
            max_connections: 100_000,
            max_pending_logins: 10_000,
            close_timeout: Duration::from_secs(10),
            max_connections_per_source: 10_000,
            max_pending_logins_per_source: 1000,
            duplicate_login: DuplicateLogin::NewestWins,
        }
    }
}
