//! The Redis-backed Tern store: one Redis primary shared by many stateless dispatch workers.
//!
//! - [`RedisStore`] ([`store`]): the [`tern_store::Store`] trait on Redis.
//! - [`RedisStoreConfig`] ([`config`]): URL, key prefix, command timeout, `require_durable`.
//! - [`RedisStoreError`] ([`error`]): this backend's failures and how they map to
//!   [`tern_store::StoreError`].
//! - [`keys`]: the key layout (below) and bucket arithmetic.
//! - [`scripts`]: the Lua scripts that make each append batch and each watermark move atomic.
//!
//! # Durability: what an `Ok` from `append` means
//!
//! The store Redis must run with `appendonly yes` and `appendfsync always`: Redis then writes
//! and fsyncs a script's effects to its AOF before it sends the script's reply, so when
//! [`Store::append`](tern_store::Store::append) returns `Ok`, the batch survives a kill -9 of
//! Redis or a power loss of its host. With `require_durable = true` (the default)
//! [`RedisStore::connect`] checks `CONFIG GET appendonly` / `appendfsync` and refuses anything
//! else with [`RedisStoreError::NotDurable`]; tests and benches may pass `false` explicitly.
//! Whole-batch group commit still holds: one script call per batch, one fsync for all of it.
//!
//! What `require_durable` does **not** cover: replication. An acknowledged write is on the
//! primary's disk, not necessarily on a replica, so a failover to a replica (Sentinel) can
//! lose the last acknowledged writes; a deployment that fails over must accept that or add
//! `WAIT` (not done here). And this must be the *store* Redis: presence lives in another
//! Redis that may be flushed; never point both at one server.
//!
//! # Redis restarts
//!
//! On restart Redis replays its AOF (while it loads, commands answer LOADING, mapped to
//! `Unavailable`). The [`ConnectionManager`](redis::aio::ConnectionManager) notices the broken
//! connection on the first failing command (that command fails with
//! [`StoreError::Unavailable`](tern_store::StoreError::Unavailable): retryable) and reconnects
//! in the background with exponential backoff; later commands wait for the new connection, up
//! to `command_timeout`. The restarted Redis has an empty script cache; `redis::Script` answers
//! NOSCRIPT by loading the script and running it again. Nothing is retried by this backend: an
//! append that failed may still have been applied (Redis ran the script, the reply was lost),
//! and the client's resend with the same `client_msg_id` is answered by the dedupe key with the
//! original seq, so no message is stored twice and no seq is reused.
//!
//! # Key layout
//!
//! `P` is the key prefix (default `tern:`); `C` = `P{c:<byte length>:<conversation id>}`,
//! `U` = `P{u:<byte length>:<user id>}`. The length prefix makes every id-to-key mapping
//! injective whatever characters ids contain.
//!
//! | key | type | content |
//! |---|---|---|
//! | `C:meta` | hash | `last_seq` (allocated with HINCRBY), `last_time_ms` |
//! | `C:m:<seq / 1024>` | hash | `<seq>`: header (protobuf `v1::Message` without conversation id, seq, body, recalled); `b<seq>`: body (absent when empty or recalled); `r<seq>`: `1` once recalled |
//! | `C:rcpt` | hash | user id → `delivered:read` |
//! | `U:d:<client_msg_id>` | string | dedupe key of (sender U, client_msg_id) → `seq:server_time_ms:conversation_id` |
//! | `U:convs` | sorted set | every score 0, members = the user's conversation ids (paged with ZRANGEBYLEX) |
//! | `U:last` | hash | conversation id → `last_seq:last_time_ms` |
//!
//! **Why buckets of 1024 seqs.** A read of a window of W seqs is one HMGET per bucket it
//! touches (⌈W/1024⌉ + 1 at most), pipelined into one round trip, each an O(1) lookup per
//! field: no scan, and the cost depends on the window, never on the conversation's length. A
//! bucket hash holds at most 1024 messages, so no single key grows without bound (a big key
//! would make Redis's rehashing, replication and `DEL` of it slow). A sorted set by seq would
//! give the same range reads (O(log N + W)) but one unbounded key per conversation, and
//! recalling a message would mean removing and re-adding its whole member. A recall clears the
//! body by deleting its own field, so the recalled text is really gone from Redis, not masked.
//! Per message the cost is 2 hash fields (header + body) plus the dedupe string key
//! (~60 bytes of key overhead) and, per member, one index update.
//!
//! Receipts are one hash per conversation (one field per member with receipts), so
//! `watermarks` is one HGETALL bounded by the group's size. `list_conversations` is one
//! ZRANGEBYLEX (`(after` .. `+`, LIMIT limit) then one pipelined round trip: HMGET of
//! `U:last` and one HGET of `C:rcpt` per listed conversation.
//!
//! # Scripts and atomicity
//!
//! Every append batch is one EVALSHA of [`scripts::APPEND_LUA`]: dedupe check, seq allocation,
//! message, recall, meta, dedupe key and member indexes for every message of the batch, in
//! batch order, with no other client's command in between. That is what makes seqs unique and
//! gap-free and dedupe exact with any number of dispatch workers at once (and a duplicate later
//! in the same batch sees the earlier one's dedupe key). Watermarks move with
//! [`scripts::SET_WATERMARK_LUA`] (monotonic; read raises delivered). The script text and its
//! arguments are documented in [`scripts`]. A script runs to completion while every other
//! client waits: a batch of B messages with M members each costs O(B·M) Redis operations.
//!
//! Measured with `cargo run -p tern-store-redis --example append_rate` (dev profile; 2-core
//! Debian 12 VM, ext4 on virtio; redis-server 7.0 with `appendfsync always` on the same host;
//! ~100-byte bodies over 64 conversations, 2 members; median per `append` call, two runs):
//! batch 1: 0.30–0.34 ms; batch 16: 0.59–0.65 ms; batch 128: 2.7–3.7 ms (~35–48 k msgs/s);
//! batch 512: 10–15 ms (~34–52 k msgs/s). As with the embedded store, the fsync dominates
//! small batches, which is why dispatch groups sends into one call.
//!
//! # Single primary, not Redis Cluster
//!
//! Each conversation's keys share a hash tag (so do each user's), so one conversation's reads
//! would stay in one Cluster slot. But one append batch spans many conversations and users,
//! and the script builds bucket keys from the seq it allocates, so it cannot declare them in
//! KEYS: this backend targets a **single Redis primary** (with replicas / Sentinel for
//! availability), not Redis Cluster. Scaling out means sharding conversations across primaries
//! above this crate (or the Scylla backend).

mod client;
pub mod config;
pub mod error;
pub mod keys;
pub mod scripts;
pub mod store;

pub use config::RedisStoreConfig;
pub use error::RedisStoreError;
pub use store::RedisStore;
