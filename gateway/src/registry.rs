//! The local connection registry: which connection of this gateway holds each (user, device).
//! Pushes from dispatch and kicks of older duplicate logins go through it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tern_proto::v1::KickReason;

use crate::core::ConnHandle;
use crate::core::mailbox::{Cmd, Mailbox};
use crate::metrics::GatewayMetrics;
use crate::upstream::RequestCtx;

const SHARDS: usize = 64;

/// A logged-in connection as seen by the registry.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Who it is logged in as, and its connection id.
    pub ctx: Arc<RequestCtx>,
    /// How to reach it on its I/O thread.
    pub handle: ConnHandle,
}

/// Keyed (seeded per process) fast hashing: user ids are client-controlled.
type Hasher = foldhash::fast::RandomState;
type Map = HashMap<String, Vec<Conn>, Hasher>;
type Shard = Mutex<Map>;

/// Connections by user id, sharded to keep lock contention low.
#[derive(Debug)]
pub struct Registry {
    shards: Vec<Shard>,
    /// Picks a user's shard.
    hasher: Hasher,
    metrics: Arc<GatewayMetrics>,
}

impl Registry {
    /// An empty registry counting into `metrics`.
    pub fn new(metrics: Arc<GatewayMetrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Map::default())).collect(),
            hasher: Hasher::default(),
            metrics,
        }
    }

    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, Map> {
        let shard = &self.shards[(self.hasher.hash_one(user) as usize) % SHARDS];
        // Critical sections only edit the map; a poisoned lock is still consistent.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `conn`. An older connection of the same device is removed and kicked
    /// (DUPLICATE_LOGIN).
    pub fn register(&self, conn: Conn) {
        let old = {
            let mut map = self.shard(&conn.ctx.user_id);
            let conns = match map.get_mut(conn.ctx.user_id.as_str()) {
                Some(c) => c,
                None => {
                    map.entry(conn.ctx.user_id.clone()).or_insert_with(|| Vec::with_capacity(1))
                }
            };
            let old = conns
                .iter()
                .position(|c| c.ctx.device_id == conn.ctx.device_id)
                .map(|i| conns.swap_remove(i));
            conns.push(conn);
            old
        };
        if let Some(old) = old {
            self.metrics.duplicate_login_kicks.fetch_add(1, Relaxed);
            old.handle.kick(KickReason::DuplicateLogin);
        }
    }

    /// Registers `conn` unless the same device is registered already (the `oldest_wins`
    /// policy). Returns whether it was registered.
    pub fn try_register(&self, conn: Conn) -> bool {
        let mut map = self.shard(&conn.ctx.user_id);
        let conns = map.entry(conn.ctx.user_id.clone()).or_default();
        if conns.iter().any(|c| c.ctx.device_id == conn.ctx.device_id) {
            return false;
        }
        conns.push(conn);
        true
    }

    /// Removes connection `id` of `user` if it is still registered (a newer login of the same
    /// device may have replaced it already).
    pub fn unregister(&self, user: &str, id: u64) {
        let mut map = self.shard(user);
        if let Some(conns) = map.get_mut(user) {
            conns.retain(|c| c.ctx.connection_id != id);
            if conns.is_empty() {
                map.remove(user);
            }
        }
    }

    /// Queues `frame` on every connection of `user` except `skip_connection`. Returns how many
    /// connections it was handed to (a connection whose queue overflows is kicked,
    /// SLOW_CONSUMER, by its I/O thread).
    pub fn push(&self, user: &str, frame: &Bytes, skip_connection: Option<u64>) -> usize {
        let map = self.shard(user);
        let Some(conns) = map.get(user) else { return 0 };
        let mut n = 0;
        for c in conns.iter().filter(|c| Some(c.ctx.connection_id) != skip_connection) {
            c.handle.push(frame.clone());
            n += 1;
        }
        n
    }

    /// [`Registry::push`] of one frame to many `(user, skip_connection)` targets (a group
    /// message): each I/O thread's mailbox gets all of its connections' pushes with one lock
    /// and at most one wake. Returns how many connections it was handed to.
    pub fn push_many<'a>(
        &self,
        targets: impl IntoIterator<Item = (&'a str, Option<u64>)>,
        frame: &Bytes,
    ) -> usize {
        // (mailbox, its pushes) in first-seen order: a gateway has a few I/O threads.
        let mut by_thread: Vec<(Arc<Mailbox>, Vec<Cmd>)> = Vec::new();
        let mut n = 0;
        for (user, skip_connection) in targets {
            let map = self.shard(user);
            let Some(conns) = map.get(user) else { continue };
            for c in conns.iter().filter(|c| Some(c.ctx.connection_id) != skip_connection) {
                let mailbox = c.handle.mailbox();
                let cmd = c.handle.push_cmd(frame.clone());
                match by_thread.iter_mut().find(|(m, _)| Arc::ptr_eq(m, mailbox)) {
                    Some((_, cmds)) => cmds.push(cmd),
                    None => by_thread.push((mailbox.clone(), vec![cmd])),
                }
                n += 1;
            }
        }
        for (mailbox, cmds) in by_thread {
            mailbox.send_all(cmds);
        }
        n
    }

    /// The metrics this registry counts into (shared with the gateway).
    pub fn metrics(&self) -> Arc<GatewayMetrics> {
        self.metrics.clone()
    }

    /// Devices of `user` connected here.
    pub fn devices(&self, user: &str) -> Vec<String> {
        self.shard(user)
            .get(user)
            .map(|c| c.iter().map(|c| c.ctx.device_id.clone()).collect())
            .unwrap_or_default()
    }

    /// Connections of `user` here, as (device, connection id).
    pub fn connections(&self, user: &str) -> Vec<(String, u64)> {
        self.shard(user)
            .get(user)
            .map(|c| c.iter().map(|c| (c.ctx.device_id.clone(), c.ctx.connection_id)).collect())
            .unwrap_or_default()
    }

    /// Every registered connection as (user, device, connection id), e.g. to refresh presence.
    pub fn snapshot(&self) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let map = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (user, conns) in map.iter() {
                out.extend(
                    conns
                        .iter()
                        .map(|c| (user.clone(), c.ctx.device_id.clone(), c.ctx.connection_id)),
                );
            }
        }
        out
    }

    /// Kicks connection `id` of `user`'s `device` (DUPLICATE_LOGIN) if it is here: the same
    /// device logged in on another gateway. Returns whether it was found.
    pub fn kick_connection(&self, user: &str, device: &str, id: u64) -> bool {
        self.kick_with(user, device, id, KickReason::DuplicateLogin)
    }

    /// Kicks connection `id` of `user`'s `device` with `reason` if it is here (a logout, a
    /// device replaced by the class policy, a duplicate login). Returns whether it was found.
    pub fn kick_with(&self, user: &str, device: &str, id: u64, reason: KickReason) -> bool {
        let found = {
            let mut map = self.shard(user);
            let Some(conns) = map.get_mut(user) else { return false };
            let found = conns
                .iter()
                .position(|c| c.ctx.connection_id == id && c.ctx.device_id == device)
                .map(|i| conns.swap_remove(i));
            if conns.is_empty() {
                map.remove(user);
            }
            found
        };
        let Some(conn) = found else { return false };
        if reason == KickReason::DuplicateLogin {
            self.metrics.duplicate_login_kicks.fetch_add(1, Relaxed);
        }
        conn.handle.kick(reason);
        true
    }

    /// Queues `frame` on every registered connection (e.g. a SyncHint). Returns how many
    /// connections it was handed to.
    pub fn broadcast(&self, frame: &Bytes) -> usize {
        let mut n = 0;
        for shard in &self.shards {
            let map = shard.lock().unwrap_or_else(|p| p.into_inner());
            for c in map.values().flatten() {
                c.handle.push(frame.clone());
                n += 1;
            }
        }
        n
    }
}

/// Encodes a server-made frame (always far below any frame limit).
pub(crate) fn encode(env: tern_proto::v1::Envelope) -> Option<Bytes> {
    tern_proto::encode_to_bytes(&env, usize::MAX).ok()
}

#[cfg(test)]
mod tests {
    use mio::{Events, Poll, Token, Waker};

    use super::*;

    fn conn(mailbox: &Arc<Mailbox>, user: &str, device: &str, id: u64) -> Conn {
        let ctx = Arc::new(RequestCtx {
            user_id: user.into(),
            device_id: device.into(),
            connection_id: id,
            logout_fence_ms: 0,
        });
        Conn { ctx, handle: ConnHandle::new(mailbox.clone(), id as u32, 1) }
    }

    fn pushed_slots(m: &Mailbox) -> Vec<u32> {
        let mut cmds = Vec::new();
        m.drain(&mut cmds);
        cmds.iter()
            .map(|c| match c {
                Cmd::Push { slot, .. } => *slot,
                other => panic!("not a push: {other:?}"),
            })
            .collect()
    }

    /// One frame to many users: every device of every listed user except the skipped
    /// connection, each I/O thread woken at most once for all of its connections.
    #[test]
    fn push_many_reaches_every_device_but_the_skipped_one_with_one_wake_per_thread() {
        let (mut p1, mut p2) = (Poll::new().unwrap(), Poll::new().unwrap());
        let m1 = Arc::new(Mailbox::new(Waker::new(p1.registry(), Token(1)).unwrap()));
        let m2 = Arc::new(Mailbox::new(Waker::new(p2.registry(), Token(1)).unwrap()));
        let reg = Registry::new(Arc::default());
        reg.register(conn(&m1, "alice", "phone", 1));
        reg.register(conn(&m2, "alice", "laptop", 2));
        reg.register(conn(&m1, "bob", "phone", 3));
        reg.register(conn(&m2, "carol", "phone", 4));
        assert!(m1.going_to_sleep() && m2.going_to_sleep());
        let targets = [("alice", Some(2)), ("bob", None), ("carol", None), ("dave", None)];
        assert_eq!(reg.push_many(targets, &Bytes::from_static(b"m")), 3);
        let wakes = |p: &mut Poll| {
            let mut events = Events::with_capacity(4);
            p.poll(&mut events, Some(std::time::Duration::ZERO)).unwrap();
            events.iter().count()
        };
        assert_eq!((wakes(&mut p1), wakes(&mut p2)), (1, 1));
        assert_eq!(pushed_slots(&m1), [1, 3]);
        assert_eq!(pushed_slots(&m2), [4]);
    }
}
