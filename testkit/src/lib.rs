//! Test harness: real `redis-server` (and later tern) child processes on free loopback ports.
//!
//! - [`redis_server`]: [`RedisServer`], a throwaway `redis-server` in its own temporary directory that
//!   a test can restart, kill -9 and flush, and [`RedisOptions`] for its persistence settings.
//! - [`resp`]: the few RESP commands the harness itself sends (PING, FLUSHALL, SET/GET in its
//!   tests), over a plain `TcpStream`, so this crate needs no Redis client library.
//!
//! # Why tests use real servers
//!
//! The properties the Redis-backed store promises (an acknowledged append survives a restart
//! or a kill -9 of Redis; a client heals by itself after Redis comes back; Lua scripts are
//! atomic with several writers) are properties of Redis itself: its AOF, its fsync policy, its
//! script engine, its connection handling. A fake or in-memory imitation would only test what
//! its author believed about Redis. So tests start a real `redis-server`, on a free loopback
//! port (never the system's 6379), in a temporary directory that disappears with it.
//!
//! Every method here is blocking (std I/O, bounded waits); from an async test call them from
//! `tokio::task::block_in_place` or a blocking task.

pub mod redis_server;
pub mod resp;

pub use redis_server::{AppendFsync, RedisOptions, RedisServer, TestkitError};
pub use resp::Reply;
