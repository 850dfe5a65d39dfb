//! Tern load tester: one process drives thousands of raw-TCP bots; a coordinator runs many.
//!
//! - [`config`]: command-line arguments and the plain run configuration.
//! - [`bot`]: the per-connection state machine (sans-IO) and the thin task that drives it.
//! - [`mio_bots`]: `bots --engine mio`, every TCP bot of a process on one epoll loop.
//! - [`ramp`]: starts bots at a rate, holds, stops, prints progress.
//! - [`stats`]: shared counters and latency percentiles.
//! - [`sys`]: `/proc` readings (gateway RSS, kernel TCP memory).
//! - [`report`]: the final report (JSON and a human table) and how reports merge.
//! - [`coordinator`]: `swarm`, which spawns `bots` child processes and merges their reports.
//! - [`probe`]: `probe`, one SDK client sending timed messages to random bots (send→ack here,
//!   delivery latency in the bots' report).
//! - [`pairs`]: `pairs`, N sender→receiver pairs on one thread measuring the server's message
//!   path (latency, throughput, server CPU per 100k messages).

pub mod bot;
pub mod config;
pub mod coordinator;
pub mod mio_bots;
pub mod pairs;
pub mod probe;
pub mod ramp;
pub mod report;
pub mod stats;
pub mod sys;
pub mod transport;
