//! The ScyllaDB Tern store: a shared [`tern_store::Store`] that several dispatch workers use
//! at once, on the official `scylla` driver.
//!
//! - [`config`]: [`ScyllaConfig`] and its env layer ([`ScyllaConfig::from_env`]).
//! - [`schema`]: `schema.cql` (keyspace and tables, idempotent) and its rendering.
//! - `statements`: every data statement, prepared, checked against the schema by tests.
//! - `append`: dedupe and seq allocation with lightweight transactions (the mechanism and its
//!   failure cases are documented there and in `store/scylla/README.md`), including the
//!   membership check of a message to a group and the compare-and-set of a group change.
//! - `commit`: [`tern_store::Store::commit`]: runs of appends and group changes, watermarks.
//! - `group`: where a group lives (allocator row, member rows), its reads, writes and the
//!   pure decisions they share.
//! - `flags`: mentions and the user's own conversation flags (muted, pinned): where they
//!   live, what writes them, what they cost.
//! - `device`: users' device records (blind upserts with timestamps, no LWT).
//! - `listing`: a user's conversation list (index entries with mentions and flags,
//!   watermarks, group entries).
//! - [`bucket`]: message partitions (`seq / bucket_size`) and which ones a read touches.
//! - [`row`]: row <-> type mapping.
//! - [`ScyllaStore`]: connect (schema, policies, timeouts) and the [`tern_store::Store`] impl.
//!
//! Live tests: `TERN_SCYLLA_NODES=host:port cargo test -p tern-store-scylla` runs the
//! conformance suite against a node; without the variable those tests are ignored (skipped)
//! with that reason.

mod append;
pub mod bucket;
mod commit;
pub mod config;
mod device;
mod error;
mod flags;
mod group;
mod health;
mod listing;
pub mod row;
pub mod schema;
mod select;
mod statements;
mod store;

pub use config::{ConfigError, ScyllaConfig};
pub use error::{ConnectError, OpError};
pub use store::ScyllaStore;
