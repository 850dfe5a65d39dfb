//! The Redis-backed Tern store: one Redis primary shared by many stateless dispatch workers.
//!
//! - [`RedisStore`] ([`store`]): the [`tern_store::Store`] trait on Redis.
//! - [`RedisStoreConfig`] ([`config`]): URL, key prefix, command timeout, `require_durable`.
//! - [`RedisStoreError`] ([`error`]): this backend's failures and how they map to
//!   [`tern_store::StoreError`].
//! - `failover`: the history fence at connect and `WAIT` after appends (see "Failover").
//! - [`keys`]: the key layout (below) and bucket arithmetic.
//! - [`scripts`]: the Lua scripts that make each append batch and each watermark move atomic.
//! - [`device`]: users' device records (one hash per user, one script per write).
//! - `group`: group conversations: the record and member rows, and their reads (see "Groups").
//! - `read`, `receipts`, `listing`: the [`RedisStore`] reads of messages, receipt watermarks
//!   (and their moves) and a user's conversation list; `records`: the field records they parse.
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
//! primary's disk, not necessarily on a replica (see "Failover" below for what protects
//! seqs and acknowledged messages when a replica takes over). And this must be the *store*
//! Redis: presence lives in another Redis that may be flushed; never point both at one server.
//!
//! # Failover
//!
//! Redis replicates asynchronously: when a replica is promoted (Sentinel, or an operator's
//! `REPLICAOF NO ONE`) it may lack the last batches the old primary acknowledged. Each batch is
//! one script, replicated as one MULTI/EXEC, so the replica's `last_seq` counters always match
//! the messages it holds: nothing stored on it shows that seqs above them were handed out, and
//! re-deriving the counters from its data alone would give the same numbers. Without a fence
//! it would give those seqs to new messages, and every client that had seen the lost ones would
//! drop the new ones as already seen. Two mechanisms, each with its own guarantee:
//!
//! 1. **The history fence** (always on; [`scripts`] has the exact steps). Every append batch
//!    (and [`RedisStore::connect`]) first compares the server's replication id
//!    (`INFO replication`) with the one recorded in `Phistory`, atomically with the batch's
//!    writes. A restart of the node the store wrote to is told apart by `Pnode`, a counter this
//!    node writes to its own AOF only (never replicated): the restart replayed every
//!    acknowledged batch (`appendfsync always`), so it goes on unchanged. Any other change is a
//!    takeover. With `failover_seq_gap = 0` (the default) it is **refused**: appends (and
//!    `connect`) fail with [`RedisStoreError::Fenced`] (→ `Unavailable`) and write nothing,
//!    until a worker configured with a gap `J` runs; that one records the new history and adds
//!    `J` to the recorded gap. From then on, before its first append in the new history, each
//!    conversation's counter is set to `max(last_seq, highest stored seq) + J` (conversations
//!    without any message start above the whole recorded gap: they may have existed only on the
//!    lost branch). **Guarantee: no seq is handed out twice, provided the old primary handed out
//!    at most `J` seqs in one conversation that the new primary never received.** The skipped
//!    seqs are reported missing by sync (a client pages through them, `J / limit` pages, once).
//! 2. **`min_replicas_acked = N`**: each append batch is followed by `WAIT N` on the same
//!    connection (appends get a connection of their own, since WAIT blocks it); fewer replicas
//!    in time is [`RedisStoreError::ReplicasBehind`] (→ `Unavailable`; the batch stays on the
//!    primary and a resend is answered from it, after a WAIT of its own). Every call writes the
//!    history counter, so the WAIT of a resend answered as a duplicate covers the original.
//!    **Guarantee: an acknowledged message (or duplicate answer) is on N replicas before the
//!    ack**, so promoting one of them (Sentinel promotes the most advanced) loses no
//!    acknowledged message. What it does not cover: a batch whose WAIT failed is readable on
//!    the old primary (sync) until the failover and may then be gone; the fence's gap still
//!    covers its seqs.
//!
//! What can still be lost or reused, exactly: with `min_replicas_acked = 0`, a takeover loses
//! every acknowledged batch the new primary had not received (reported missing by sync; their
//! senders got acks). Seqs are reused only if a conversation got more than `J` seqs on the lost
//! branch, or in these cases the fence cannot see: the store Redis's data deleted (FLUSHALL,
//! a new empty server: it looks like a new store), restored from an older backup of the same
//! node (delete `Pnode` before any worker connects, so it counts as a takeover), or a replica
//! promoted **and restarted** before any worker reached it while no batch had replicated since
//! its last full sync. Without any replica the store is single-node, and a restart loses
//! nothing.
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
//! | `Phistory` | hash | `replid` (the replication history written to), `batch` (counter, +1 per script call), `gap` (total seqs every conversation skips after takeovers), `changes` |
//! | `Pnode` | string | the `batch` this node last wrote as primary; in its AOF only, never replicated |
//! | `C:meta` | hash | `last_seq` (allocated with HINCRBY), `last_time_ms`, `gap` (the part of `Phistory gap` already applied; absent: 0) |
//! | `C:m:<seq / 1024>` | hash | `<seq>`: header (protobuf `v1::Message` without conversation id, seq, body, recalled); `b<seq>`: body (absent when empty or recalled); `r<seq>`: `1` once recalled |
//! | `C:rcpt` | hash | user id → `delivered:read` |
//! | `C:group` | hash | a group conversation's `version` (seq of its latest change), `dissolved` (`1`/`0`), `record` (protobuf: name, owner, attributes, history, member count, max members, created, dissolved) |
//! | `C:members` | hash | user id → `role:joined_seq:visible_from:removed_seq`, one row per current or former member (`removed_seq` 0: current) |
//! | `C:current` | sorted set | every score 0, members = the group's current member ids (paged with ZRANGEBYLEX) |
//! | `C:mentions` | hash | `u<user id>` → the latest seq mentioning that user; `*` → the latest seq mentioning all (no user field is `*`) |
//! | `U:d:<client_msg_id>` | string | dedupe key of (sender U, client_msg_id) → `seq:server_time_ms:conversation_id` |
//! | `U:convs` | sorted set | every score 0, members = the user's conversation ids (paged with ZRANGEBYLEX) |
//! | `U:last` | hash | conversation id → `last_seq:last_time_ms` |
//! | `U:flags` | hash | conversation id → the user's flags, decimal bits `1` muted \| `2` pinned (no field: none) |
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
//! **Groups** (`g:` conversations). A group change is a group event message committed by the
//! same script call with the `C:group` record (compare and set on its `version`), the changed
//! `C:members` rows, `C:current` and each changed member's `U:convs` / `U:last` entry (at the
//! event's seq). A send to a group reads `C:group`'s version and dissolved flag and the
//! sender's one row, and writes no per-member entry (read diffusion):
//! `list_conversations` shows a *current* member's group entry with the group's latest seq and
//! time from `C:meta`, and a former member's at the seq of their removal (their `U:last`
//! entry). So a send runs the same Redis commands in a group of 100 000 as in one of 3
//! (`tests/groups.rs` counts them); a change costs one row read and write per changed member. `group_members` pages `C:current` (ZRANGEBYLEX) and
//! reads those rows, in one read-only script ([`scripts`], GROUP_MEMBERS).
//!
//! Receipts are one hash per conversation (one field per member with receipts), so
//! `watermarks` is one HGETALL bounded by the group's size. `list_conversations` is one
//! ZRANGEBYLEX (`(after` .. `+`, LIMIT limit) then one pipelined round trip: HMGET of
//! `U:last` and of `U:flags`, and per listed conversation one HGET of `C:rcpt` and one HMGET
//! of `C:mentions` (the user's field and `*`; for a group also its member's row and `C:meta`),
//! in one MULTI/EXEC so that each entry is one consistent view. An entry's `mention_seq` is
//! the higher of the two, capped at the entry's last seq (as in the embedded store).
//!
//! **Mentions and flags.** Mentions are per conversation, like the message itself: an append
//! that mentions users or all sets their `C:mentions` fields to its seq (one HSET per 500
//! fields, so one for a mention of all even in a group of 100 000: read diffusion again); an append without mentions
//! runs no command for them. Flags are the user's own, so they live under the user's tag: one
//! `U:flags` field per flagged conversation, read for a whole page by one HMGET.
//! `muted_among` (which of a message's n recipients muted it: the offline-push read) is one
//! pipeline of n `HGET U:flags C`: one round trip, O(n) commands (10 000 recipients: 10 000
//! HGETs of a few microseconds each on the server, ~0.5 MB of request).
//! A [`Write::Flags`](tern_store::Write::Flags) is a record of the commit script (in batch
//! order with the rest, one HGET and at most one HSET or HDEL); like a watermark move it
//! allocates no seq, so a batch of flags and watermark moves only runs neither the history
//! fence nor `WAIT`.
//!
//! # Scripts and atomicity
//!
//! Every append batch and every group commit ([`Store::commit`](tern_store::Store::commit):
//! appends, group changes, receipt watermark moves and flags together) is one EVALSHA of
//! [`scripts::COMMIT_LUA`]:
//! the last-seq bound of each watermark move and the coalescing of moves per (conversation,
//! user) happen inside it (one `HSET` per pair whose final value moved); dedupe check, seq
//! allocation, message, recall, meta, dedupe key, member indexes and mentions for every message
//! of the batch, each flags write, the membership check of each send to a group and the
//! compare and set of each group change, in batch order, with no other client's command in between (a send after a removal
//! in the same batch sees the removal). That is what makes seqs unique and
//! gap-free and dedupe exact with any number of dispatch workers at once (and a duplicate later
//! in the same batch sees the earlier one's dedupe key). A single watermark move outside a group
//! uses [`scripts::SET_WATERMARK_LUA`] (monotonic; read raises delivered). The script text and its
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
//! KEYS (nor does it declare the member indexes `U:convs` / `U:last`, `C:mentions` or
//! `U:flags`: it builds them from the bases in ARGV as well): this backend targets a **single
//! Redis primary** (with replicas / Sentinel for availability), not Redis Cluster. Scaling out
//! means sharding conversations across primaries above this crate (or the Scylla backend).

mod client;
mod commit;
pub mod config;
pub mod device;
pub mod error;
mod failover;
mod group;
mod health;
pub mod keys;
mod listing;
mod read;
mod receipts;
mod records;
pub mod scripts;
pub mod store;

pub use config::RedisStoreConfig;
pub use error::RedisStoreError;
pub use store::RedisStore;
