//! A per-user cache whose entries live a fixed time, sans-IO (the caller passes the clock).
//! Offline push keeps two: users' push registrations (a group message needs all its members'
//! registrations, and reading 10,000 device lists per message would cost more than the
//! message; this worker's own registration writes drop the user's entry at once, other
//! workers' are seen within the ttl) and which of their devices are connected (one presence
//! read per user per ttl, not per message: a stale answer is harmless, see the module doc).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The cache.
#[derive(Debug)]
pub struct TtlCache<V> {
    ttl: Duration,
    cap: usize,
    map: HashMap<String, (Instant, V)>,
    order: VecDeque<(Instant, String)>,
}

impl<V: Clone> TtlCache<V> {
    /// Entries live `ttl`; at most `cap` users (0: no cache).
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Self { ttl, cap, map: HashMap::new(), order: VecDeque::new() }
    }

    /// Users cached now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `user`'s value if cached and fresh.
    pub fn get(&self, now: Instant, user: &str) -> Option<V> {
        let (at, value) = self.map.get(user)?;
        (now < *at + self.ttl).then(|| value.clone())
    }

    /// Caches `user`'s value as read at `now`.
    pub fn insert(&mut self, now: Instant, user: String, value: V) {
        self.expire(now);
        if self.ttl.is_zero() || (self.map.len() >= self.cap && !self.map.contains_key(&user)) {
            return;
        }
        self.order.push_back((now, user.clone()));
        self.map.insert(user, (now, value));
    }

    /// Forgets `user`'s entry.
    pub fn invalidate(&mut self, user: &str) {
        self.map.remove(user);
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now < *at + self.ttl {
                break;
            }
            let Some((at, user)) = self.order.pop_front() else { break };
            // Only if this queue item is the entry's own (not a later re-insert's).
            if self.map.get(&user).is_some_and(|(t, _)| *t == at) {
                self.map.remove(&user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::plan::Registered;
    use std::sync::Arc;
    use tern_store::{PushProvider, PushRegistration};

    type Devices = Arc<[Registered]>;

    fn devices(user: &str) -> Devices {
        let push = PushRegistration {
            provider: PushProvider::Fcm,
            token: "t".into(),
            ..Default::default()
        };
        Arc::from(vec![Registered { user_id: user.into(), device_id: "d".into(), push }])
    }

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn entries_expire_and_invalidations_drop_them() {
        let t0 = Instant::now();
        let mut r = TtlCache::new(TTL, 10);
        r.insert(t0, "bob".into(), devices("bob"));
        r.insert(t0, "carol".into(), Arc::from(Vec::<Registered>::new()));
        assert!(r.get(t0 + TTL - Duration::from_millis(1), "bob").is_some());
        assert_eq!(r.get(t0, "carol").map(|d| d.len()), Some(0), "no registration is cached too");
        assert!(r.get(t0 + TTL, "bob").is_none());
        r.invalidate("carol");
        assert!(r.get(t0, "carol").is_none());
        // A re-insert outlives the first entry's queue item.
        r.insert(t0 + Duration::from_secs(5), "bob".into(), devices("bob"));
        r.insert(t0 + TTL, "dave".into(), devices("dave"));
        assert!(r.get(t0 + TTL, "bob").is_some());
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn the_cap_bounds_it_and_zero_ttl_caches_nothing() {
        let t0 = Instant::now();
        let mut r = TtlCache::new(TTL, 1);
        r.insert(t0, "bob".into(), devices("bob"));
        r.insert(t0, "carol".into(), devices("carol"));
        assert_eq!(r.len(), 1);
        assert!(r.get(t0, "carol").is_none());
        let mut off: TtlCache<Devices> = TtlCache::new(Duration::ZERO, 10);
        off.insert(t0, "bob".into(), devices("bob"));
        assert!(off.is_empty());
    }
}
