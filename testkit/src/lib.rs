//! Test harness: real `redis-server` and `tern` child processes on loopback ports, whole
//! distributed-mode clusters of them, a chaos proxy to put between them, and a filesystem
//! that can lose power.
//!
//! - [`redis_server`]: [`RedisServer`], a throwaway `redis-server` in its own temporary directory that
//!   a test can restart, kill -9 and flush, and [`RedisOptions`] for its persistence settings.
//! - [`replica`]: replication controls on [`RedisServer`] (start a replica, wait until it
//!   caught up, freeze / thaw, promote) for failover tests.
//! - [`resp`]: the few RESP commands the harness itself sends (PING, FLUSHALL, SET/GET in its
//!   tests), over a plain `TcpStream`, so this crate needs no Redis client library.
//! - [`process`]: [`TernProcess`], one `tern` subcommand as a child process: its announced
//!   addresses, a bounded log tail, kill -9, SIGTERM and restart on the same addresses.
//! - [`cluster`]: [`Cluster`], presence and store Redis, N dispatch workers and M gateways
//!   sharing one random token key, with kill and restart controls for each part.
//! - [`chaos`]: [`ChaosProxy`], a TCP proxy that can stall, delay, reset, drop and redirect the
//!   connections through it.
//! - [`udp_chaos`]: [`UdpChaosProxy`], a UDP proxy (for QUIC) that loses, delays, jitters,
//!   reorders and duplicates datagrams, blackholes, and rebinds its flows like a NAT; seeded.
//! - [`lazyfs`]: [`LazyFs`], a FUSE passthrough that keeps unsynced writes in memory and drops
//!   them at a simulated power cut (torn tails on request): the proof that a program fsyncs.
//! - [`metrics`]: `GET /metrics` and `/healthz` over a raw socket, and the Prometheus text
//!   parsed ([`Metrics`]).
//! - [`corpus`]: fuzz-corpus replay and seed checks for the stable test runs.
//! - [`push_services`]: [`ApnsImitation`], [`FcmImitation`] (with its OAuth2 token endpoint)
//!   and [`WebhookReceiver`], local HTTP/2 and HTTP servers that accept exactly the documented
//!   request shapes of APNs, FCM HTTP v1 and Tern's signed webhook, with scripted answers per
//!   device token and every request awaitable as an event.
//! - [`ports`]: free loopback ports below the ephemeral range, safe to restart servers on.
//!
//! # Why tests use real servers
//!
//! The properties the Redis-backed store promises (an acknowledged append survives a restart
//! or a kill -9 of Redis; a client heals by itself after Redis comes back; Lua scripts are
//! atomic with several writers) are properties of Redis itself: its AOF, its fsync policy, its
//! script engine, its connection handling. A fake or in-memory imitation would only test what
//! its author believed about Redis. So tests start a real `redis-server`, on a free loopback
//! port (never the system's 6379), in a temporary directory that disappears with it. The same
//! goes for tern itself: the chaos suite kills real processes and resets real sockets.
//!
//! Every method here is blocking (std I/O, bounded waits); from an async test call them from
//! `tokio::task::block_in_place` or a blocking task. The chaos proxy runs on a runtime of its
//! own, so its controls are safe to call from anywhere. The push-service imitations run on
//! runtimes of their own too; only their waits for requests are async (any tokio runtime with
//! time enabled).

pub mod chaos;
pub mod cluster;
pub mod corpus;
pub mod lazyfs;
pub mod metrics;
pub mod ports;
pub mod process;
pub mod push_services;
pub mod redis_server;
pub mod replica;
pub mod resp;
pub mod udp_chaos;

pub use chaos::{ChaosError, ChaosOptions, ChaosProxy, ChaosStats};
pub use cluster::{Cluster, ClusterError, ClusterOptions, Discovery};
pub use lazyfs::{Cut, FsyncMode, LazyFs, LazyFsError, LazyFsOptions};
pub use metrics::{HttpError, HttpResponse, Metrics, http_get};
pub use process::{Announcement, ProcessError, ProcessOptions, TernProcess};
pub use push_services::{
    Answer, ApnsImitation, ApnsOptions, FcmImitation, FcmOptions, PushServiceError, TestCa,
    WebhookOptions, WebhookReceiver,
};
pub use redis_server::{AppendFsync, RedisOptions, RedisServer, TestkitError};
pub use resp::Reply;
pub use udp_chaos::{Faults, Spikes, UdpChaosError, UdpChaosOptions, UdpChaosProxy, UdpChaosStats};
