//! QUIC for the gateway, on `quinn-proto` (quinn's sans-IO core), driven by the gateway's own
//! I/O threads: one endpoint per I/O thread, each on its own SO_REUSEPORT UDP socket.
//!
//! - [`config`]: lean per-connection settings, the TLS side (ALPN `tern/1`, TLS 1.3, 0-RTT),
//!   and connection IDs that name the endpoint that issued them, so that a migrating client's
//!   packets can be handed to the endpoint holding its connection ([`config::endpoint_of`]).
//! - [`crypto`]: the TLS side of a connection, which forgets rustls once the handshake is over
//!   and derives key updates only when they happen (most of an idle connection's savings).
//! - [`host`]: [`QuicHost`], one endpoint and its connections, sans-IO: datagrams and time in,
//!   datagrams and stream events out.
//!
//! Why quinn-proto and not the tokio-based `quinn`: `quinn` runs a task, a mutex and wakers per
//! connection and one driver task per endpoint. Here a connection is one boxed
//! `quinn_proto::Connection` in its I/O thread's table, reached without locks or wake-ups, the
//! same way TCP connections are: that is what keeps an idle QUIC connection small.

pub mod config;
pub mod crypto;
pub mod host;
#[cfg(test)]
mod tests;

pub use config::{ALPN, QuicSettings};
pub use host::{
    HandshakeLimits, HandshakeStats, HostError, HostEvent, QuicConnId, QuicHost, Transmit,
};
