//! The local connection registry: which connection of this gateway holds each (user, device).
//! Pushes from dispatch and kicks of older duplicate logins go through it.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tern_proto::session::server::kick;
use tern_proto::v1::KickReason;

use crate::config::GatewayConfig;
use crate::metrics::GatewayMetrics;
use crate::outbound::{Outbound, PushError};

const SHARDS: usize = 64;

/// A logged-in connection as seen by the registry.
#[derive(Debug)]
pub struct Conn {
    /// The gateway's connection id.
    pub id: u64,
    /// Its device id.
    pub device_id: String,
    /// Its outbound queue.
    pub outbound: Arc<Outbound>,
}

type Shard = Mutex<HashMap<String, Vec<Arc<Conn>>>>;

/// Connections by user id, sharded to keep lock contention low.
#[derive(Debug)]
pub struct Registry {
    shards: Vec<Shard>,
    max_bytes: usize,
    max_frames: usize,
    max_frame_len: usize,
    metrics: Arc<GatewayMetrics>,
}

impl Registry {
    /// An empty registry applying `cfg`'s outbound caps.
    pub fn new(cfg: &GatewayConfig, metrics: Arc<GatewayMetrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_bytes: cfg.max_outbound_bytes,
            max_frames: cfg.max_outbound_frames,
            max_frame_len: cfg.session.max_frame_bytes,
            metrics,
        }
    }

    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Conn>>>> {
        let mut h = DefaultHasher::new();
        user.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        // Critical sections only edit the map; a poisoned lock is still consistent.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `conn` for `user`. An older connection of the same device is removed and
    /// kicked (DUPLICATE_LOGIN).
    pub fn register(&self, user: &str, conn: Arc<Conn>) {
        let old = {
            let mut map = self.shard(user);
            let conns = map.entry(user.to_owned()).or_default();
            let old = conns
                .iter()
                .position(|c| c.device_id == conn.device_id)
                .map(|i| conns.swap_remove(i));
            conns.push(conn);
            old
        };
        if let Some(old) = old {
            self.metrics.duplicate_login_kicks.fetch_add(1, Relaxed);
            old.outbound.close_with(encode(kick(
                KickReason::DuplicateLogin,
                "another connection logged in as this device",
            )));
        }
    }

    /// Removes connection `id` of `user` if it is still registered (a newer login of the same
    /// device may have replaced it already).
    pub fn unregister(&self, user: &str, id: u64) {
        let mut map = self.shard(user);
        if let Some(conns) = map.get_mut(user) {
            conns.retain(|c| c.id != id);
            if conns.is_empty() {
                map.remove(user);
            }
        }
    }

    /// Queues `frame` on every connection of `user` except `skip_connection`. Returns how many
    /// connections took it. A connection whose queue overflows is kicked (SLOW_CONSUMER).
    pub fn push(&self, user: &str, frame: &Bytes, skip_connection: Option<u64>) -> usize {
        let targets: Vec<Arc<Conn>> = match self.shard(user).get(user) {
            Some(conns) => {
                conns.iter().filter(|c| Some(c.id) != skip_connection).cloned().collect()
            }
            None => return 0,
        };
        targets.iter().filter(|c| self.queue(&c.outbound, frame.clone())).count()
    }

    /// Queues one frame on a connection's outbound queue, applying the caps. False when the
    /// frame was not queued (closing, or overflow: then the connection is being kicked).
    pub fn queue(&self, outbound: &Outbound, frame: Bytes) -> bool {
        let max_frame_len = self.max_frame_len;
        match outbound
            .push(frame, self.max_bytes, self.max_frames, || slow_consumer_kick(max_frame_len))
        {
            Ok(()) => {
                self.metrics.frames_out.fetch_add(1, Relaxed);
                true
            }
            Err(PushError::Overflow) => {
                self.metrics.slow_consumer_kicks.fetch_add(1, Relaxed);
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    /// The metrics this registry counts into (shared with the gateway).
    pub fn metrics(&self) -> Arc<GatewayMetrics> {
        self.metrics.clone()
    }

    /// Devices of `user` connected here.
    pub fn devices(&self, user: &str) -> Vec<String> {
        self.shard(user)
            .get(user)
            .map(|c| c.iter().map(|c| c.device_id.clone()).collect())
            .unwrap_or_default()
    }

    /// Every registered connection as (user, device, connection id), e.g. to refresh presence.
    pub fn snapshot(&self) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let map = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (user, conns) in map.iter() {
                out.extend(conns.iter().map(|c| (user.clone(), c.device_id.clone(), c.id)));
            }
        }
        out
    }

    /// Kicks connection `id` of `user` (DUPLICATE_LOGIN) if it is here: the same device logged
    /// in on another gateway. Returns whether it was found.
    pub fn kick_connection(&self, user: &str, id: u64) -> bool {
        let found = {
            let mut map = self.shard(user);
            let Some(conns) = map.get_mut(user) else { return false };
            let found = conns.iter().position(|c| c.id == id).map(|i| conns.swap_remove(i));
            if conns.is_empty() {
                map.remove(user);
            }
            found
        };
        let Some(conn) = found else { return false };
        self.metrics.duplicate_login_kicks.fetch_add(1, Relaxed);
        conn.outbound.close_with(encode(kick(
            KickReason::DuplicateLogin,
            "another connection logged in as this device",
        )));
        true
    }

    /// Queues `frame` on every registered connection (e.g. a SyncHint). Returns how many took it.
    pub fn broadcast(&self, frame: &Bytes) -> usize {
        let conns: Vec<Arc<Conn>> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let map = shard.lock().unwrap_or_else(|p| p.into_inner());
                map.values().flatten().cloned().collect::<Vec<_>>()
            })
            .collect();
        conns.iter().filter(|c| self.queue(&c.outbound, frame.clone())).count()
    }

    /// Kicks every connection (server shutdown).
    pub fn kick_all(&self, reason: KickReason, message: &str) {
        for shard in &self.shards {
            let conns: Vec<Arc<Conn>> = {
                let map = shard.lock().unwrap_or_else(|p| p.into_inner());
                map.values().flatten().cloned().collect()
            };
            for c in conns {
                c.outbound.close_with(encode(kick(reason, message)));
            }
        }
    }
}

fn slow_consumer_kick(max_frame_len: usize) -> Bytes {
    let env = kick(KickReason::SlowConsumer, "outbound queue full: reconnect and sync");
    tern_proto::encode_to_bytes(&env, max_frame_len).unwrap_or_default()
}

/// Encodes a server-made frame (always far below any frame limit).
pub(crate) fn encode(env: tern_proto::v1::Envelope) -> Option<Bytes> {
    tern_proto::encode_to_bytes(&env, usize::MAX).ok()
}
