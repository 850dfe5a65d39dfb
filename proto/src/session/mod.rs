//! I/O-free session state machines for both ends of a connection.
//!
//! - [`server`]: what the gateway runs per connection (login first and on time, heartbeats,
//!   idle timeout, which frames go to dispatch).
//! - [`client`]: what the SDK runs per connection (login, heartbeat schedule, outbox of
//!   unacknowledged sends, dedupe and gap detection of incoming messages, reconnect backoff).

pub mod client;
pub mod link;
pub mod server;
