//! The client's plain configuration struct; the app fills it (no files, no environment).

use std::time::Duration;

/// How a [`crate::Client`] connects and behaves. Build it with [`ClientConfig::new`] and change
/// the public fields as needed.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server address, `"host:port"` (plain TCP) or with a scheme: `tcp://host:port`,
    /// `tls://host:port` (TLS 1.3 over TCP), `quic://host:port`; or several gateways'
    /// addresses comma-separated: each (re)connect starts at a random one and moves on to the
    /// next when one refuses, so clients spread over gateways and move to another when theirs
    /// dies. With QUIC and TCP/TLS addresses both listed, QUIC is tried first and the others
    /// after `happy_eyeballs_delay` (UDP may be blocked).
    pub addr: String,
    /// Which server certificates `tls://` and `quic://` accept. Default: the system's roots.
    pub trust: crate::Trust,
    /// Head start of QUIC over TCP/TLS when both are listed. Default 250 ms (RFC 8305).
    pub happy_eyeballs_delay: Duration,
    /// Login token (see docs/PROTOCOL.md "Tokens"). [`crate::Client::refresh_token`] swaps it
    /// for a newer one without reconnecting.
    pub token: String,
    /// Where a fresh token comes from when the current one is dead: after a Kick
    /// TOKEN_EXPIRED, or a re-login refused with TOKEN_EXPIRED or BAD_TOKEN, the client asks it
    /// (bounded by `request_timeout`) and reconnects with the new token, retrying with backoff
    /// while it fails. `None` (default): the client stops after such a kick or refusal (the
    /// event channel closes), since the same token cannot succeed.
    pub token_provider: Option<crate::token::TokenProvider>,
    /// How long a request (other than a send) waits for its answer, and the bound on connecting
    /// and logging in. Default 10 s.
    pub request_timeout: Duration,
    /// How long [`crate::Client::send`] waits for the ack across reconnects before it returns
    /// `SdkError::Timeout` (the message stays in the outbox and is resent later). Default 30 s.
    pub send_timeout: Duration,
    /// Largest frame accepted from the server, and largest sent (the server's own limit from
    /// LoginOk applies too). Default 64 KiB. Costs nothing until a frame that large arrives.
    pub max_frame_bytes: usize,
    /// Free-form client name and version sent at login (at most 64 bytes).
    pub client_version: String,
    /// What kind of device this is, sent at login: shown in the user's device list and
    /// mapped to a device class by the server's login policy (one phone, one desktop ...).
    /// Default `Unspecified` (class "other").
    pub platform: tern_proto::v1::DevicePlatform,
    /// Capacity of the event channel. When the app does not drain it, the connection task waits
    /// (it stops reading the socket), and past the server's queue cap the server drops the
    /// connection; the client then reconnects and catches up by sync. Default 4096.
    pub event_capacity: usize,
    /// Most unacknowledged sends held (in memory, and in persistence); beyond it `send` fails
    /// with `SdkError::OutboxFull`. Default 10 000.
    pub max_outbox: usize,
    /// Most out-of-order messages held per conversation while a gap is synced; beyond it they
    /// are forgotten and fetched again by sync. Default 1000.
    pub max_buffered_per_conversation: usize,
    /// Page size asked for in sync requests (0: the server's default). Default 100.
    pub sync_page_limit: u32,
    /// How long a gap seen on the live path (a push or an own ack past a missing seq) may stay
    /// open before the client syncs it: the missing pushes are usually already in flight (acks
    /// and pushes of concurrent senders interleave). Catch-up after login syncs at once.
    /// Default 500 ms.
    pub gap_grace: Duration,
    /// Most conversations synced at the same time. Default 4.
    pub max_concurrent_syncs: usize,
    /// Requests issued while disconnected wait for the next login; at most this many. Default
    /// 1024.
    pub max_queued_requests: usize,
    /// First reconnect delay (the backoff grows from it, with jitter). Default 100 ms.
    pub reconnect_min: Duration,
    /// Largest reconnect delay. Default 30 s.
    pub reconnect_max: Duration,
}

impl ClientConfig {
    /// A configuration with defaults for `addr` (`"host:port"`) and `token`.
    pub fn new(addr: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            trust: crate::Trust::default(),
            happy_eyeballs_delay: Duration::from_millis(250),
            token: token.into(),
            token_provider: None,
            request_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            max_frame_bytes: tern_proto::DEFAULT_MAX_FRAME_BYTES,
            client_version: concat!("tern-sdk/", env!("CARGO_PKG_VERSION")).to_owned(),
            platform: tern_proto::v1::DevicePlatform::Unspecified,
            event_capacity: 4096,
            max_outbox: 10_000,
            max_buffered_per_conversation: 1000,
            sync_page_limit: 100,
            gap_grace: Duration::from_millis(500),
            max_concurrent_syncs: 4,
            max_queued_requests: 1024,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
        }
    }
}
