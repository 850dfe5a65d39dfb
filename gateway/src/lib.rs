//! Tern's gateway: holds client connections and moves frames between them and dispatch.
//!
//! - [`config`]: the gateway's limits and timings.
//! - [`auth`]: JWT login tokens (HS256 and EdDSA), key sets selected by `kid`, claim rules.
//! - [`closing`]: when a closing connection's socket closes (its last frame written), sans-IO.
//! - [`upstream`]: the [`Upstream`] trait through which requests reach dispatch.
//! - [`link`]: the distributed-mode upstream: links to dispatch workers, presence publishing.
//! - [`registry`]: which local connection holds each (user, device); pushes and kicks.
//! - [`outbound`]: a connection's bounded outbound queue (the slow-reader cap), sans-IO.
//! - [`conn`]: one connection's gateway rules as a sans-IO state machine (presence wait before
//!   LoginOk, in-flight pause, outbound caps and SLOW_CONSUMER, kicks, closing), around the
//!   protocol's [`tern_proto::session::server::ServerSession`]; every transport drives it.
//! - [`core`]: the transports: mio I/O threads on a shared TCP listener and, with
//!   [`Listeners::with_quic`], one UDP socket and QUIC endpoint each ([`listen`], [`serve`]); a
//!   slab of compact connection records, a timer wheel, driving [`conn`].
//! - [`quic`]: the QUIC endpoint, sans-IO on quinn-proto, and its configuration.
//! - [`tls`]: TLS on TCP (same port as plain TCP, told apart by the first byte): its rustls
//!   configuration; [`Listeners::with_tls`] turns it on.
//! - [`server`]: [`Gateway`], what every connection shares.
//! - [`sources`]: per-source-address caps on connections and pending logins.
//! - [`metrics`]: counters in Prometheus text format.
//!
//! The gateway keeps no durable state.

pub mod auth;
pub mod closing;
pub mod config;
pub mod conn;
pub mod core;
#[doc(hidden)]
pub mod fuzzing;
pub mod link;
pub mod metrics;
pub mod outbound;
pub mod quic;
pub mod registry;
pub mod server;
pub mod sources;
pub mod tls;
pub mod upstream;

pub use auth::{TokenKey, Verifier};
pub use config::GatewayConfig;
pub use core::{Listeners, QuicListen, listen, serve};
pub use registry::Registry;
pub use server::Gateway;
pub use upstream::{BoxFuture, Reply, RequestCtx, Upstream};
