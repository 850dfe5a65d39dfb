//! Per-source caps: how many connections and pending logins one source address holds, so that
//! one host cannot fill every pending-login (or connection) slot and lock everyone else out.
//!
//! A source is an IPv4 address or an IPv6 /64 (one host usually owns a whole /64; an IPv4
//! address mapped into IPv6 counts as the IPv4 address). The counters live in one map shared by
//! the I/O threads (sharded mutexes, touched at accept, login and close only), keyed by a
//! randomly keyed 64-bit hash of the source; a connection keeps only that 8-byte key.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const SHARDS: usize = 16;

/// A source's key (keyed hash of its address or /64).
pub type SourceKey = u64;

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source holds `max_connections_per_source` connections.
    Connections,
    /// The source holds `max_pending_logins_per_source` connections not logged in yet.
    PendingLogins,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    conns: u32,
    pending: u32,
}

/// The source a peer address counts as: the IPv4 address (also when mapped into IPv6), or the
/// IPv6 /64 prefix (the rest zeroed).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            // The /64 prefix.
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// The per-source counters of one gateway process.
#[derive(Debug)]
pub struct SourceLimits {
    shards: Box<[Mutex<HashMap<SourceKey, Counts>>]>,
    hasher: RandomState,
    max_conns: u32,
    max_pending: u32,
    tracked: AtomicU64,
}

impl SourceLimits {
    /// Caps of `max_conns` connections and `max_pending` pending logins per source; 0 turns a
    /// cap off.
    pub fn new(max_conns: usize, max_pending: usize) -> Self {
        let cap = |n: usize| if n == 0 { u32::MAX } else { u32::try_from(n).unwrap_or(u32::MAX) };
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max_conns: cap(max_conns),
            max_pending: cap(max_pending),
            tracked: AtomicU64::new(0),
        }
    }

    /// The key of a peer address.
    pub fn key(&self, ip: IpAddr) -> SourceKey {
        self.hasher.hash_one(source_of(ip))
    }

    fn shard(&self, key: SourceKey) -> std::sync::MutexGuard<'_, HashMap<SourceKey, Counts>> {
        // Critical sections only update counters: a poisoned lock is still consistent.
        self.shards[(key as usize) % SHARDS].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection (pending login) from `key`, unless the source is at a cap.
    pub fn admit(&self, key: SourceKey) -> Result<(), Refusal> {
        let mut shard = self.shard(key);
        let c = shard.entry(key).or_default();
        let refusal = if c.conns >= self.max_conns {
            Some(Refusal::Connections)
        } else if c.pending >= self.max_pending {
            Some(Refusal::PendingLogins)
        } else {
            None
        };
        if let Some(r) = refusal {
            if c.conns == 0 {
                shard.remove(&key);
            }
            return Err(r);
        }
        if c.conns == 0 {
            self.tracked.fetch_add(1, Relaxed);
        }
        c.conns += 1;
        c.pending += 1;
        Ok(())
    }

    /// A connection from `key` is no longer pending (logged in, or closing before it did).
    pub fn not_pending(&self, key: SourceKey) {
        if let Some(c) = self.shard(key).get_mut(&key) {
            c.pending = c.pending.saturating_sub(1);
        }
    }

    /// A connection from `key` is gone (call [`SourceLimits::not_pending`] first if it was
    /// still pending).
    pub fn release(&self, key: SourceKey) {
        let mut shard = self.shard(key);
        if let Some(c) = shard.get_mut(&key) {
            c.conns = c.conns.saturating_sub(1);
            if c.conns == 0 {
                shard.remove(&key);
                self.tracked.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Sources holding at least one connection now.
    pub fn tracked(&self) -> u64 {
        self.tracked.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_apply_per_source() {
        let s = SourceLimits::new(3, 2);
        let (a, b) = (s.key(ip("127.0.0.2")), s.key(ip("127.0.0.3")));
        assert_ne!(a, b);
        s.admit(a).unwrap();
        s.admit(a).unwrap();
        assert_eq!(s.admit(a), Err(Refusal::PendingLogins));
        // Another source is unaffected.
        s.admit(b).unwrap();
        // One of a's logs in: a pending slot frees, but the connection cap is next.
        s.not_pending(a);
        s.admit(a).unwrap();
        assert_eq!(s.admit(a), Err(Refusal::Connections));
        assert_eq!(s.tracked(), 2);
        for _ in 0..3 {
            s.release(a);
        }
        s.not_pending(b);
        s.release(b);
        assert_eq!(s.tracked(), 0);
        assert!(s.shards.iter().all(|m| m.lock().unwrap().is_empty()), "no entry left behind");
    }

    #[test]
    fn zero_turns_a_cap_off() {
        let s = SourceLimits::new(0, 0);
        let k = s.key(ip("10.0.0.1"));
        for _ in 0..10_000 {
            s.admit(k).unwrap();
        }
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let s = SourceLimits::new(0, 0);
        assert_eq!(s.key(ip("2001:db8:1:2::1")), s.key(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(s.key(ip("2001:db8:1:2::1")), s.key(ip("2001:db8:1:3::1")));
        assert_eq!(s.key(ip("::ffff:192.0.2.7")), s.key(ip("192.0.2.7")));
    }
}
