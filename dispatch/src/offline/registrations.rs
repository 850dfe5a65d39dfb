//! Users' push registrations, cached briefly, sans-IO: a group message needs the
//! registrations of all its members, and reading 10,000 device lists per message would cost
//! more than the message. Entries (also "no registration") live `ttl`; this worker's own
//! registration writes (RegisterPush, UnregisterPush, LogoutDevice, a token the provider
//! refused) drop the user's entry at once. A write through another worker (distributed mode)
//! is seen within `ttl`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::Registered;

/// One user's registered devices.
pub type Devices = Arc<[Registered]>;

/// The cache.
#[derive(Debug)]
pub struct Registrations {
    ttl: Duration,
    cap: usize,
    map: HashMap<String, (Instant, Devices)>,
    order: VecDeque<(Instant, String)>,
}

impl Registrations {
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

    /// `user`'s devices if cached and fresh.
    pub fn get(&self, now: Instant, user: &str) -> Option<Devices> {
        let (at, devices) = self.map.get(user)?;
        (now < *at + self.ttl).then(|| devices.clone())
    }

    /// Caches `user`'s devices as read at `now`.
    pub fn insert(&mut self, now: Instant, user: String, devices: Devices) {
        self.expire(now);
        if self.ttl.is_zero() || (self.map.len() >= self.cap && !self.map.contains_key(&user)) {
            return;
        }
        self.order.push_back((now, user.clone()));
        self.map.insert(user, (now, devices));
    }

    /// Forgets `user`'s entry (their registration changed).
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
    use tern_store::{PushProvider, PushRegistration};

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
        let mut r = Registrations::new(TTL, 10);
        r.insert(t0, "bob".into(), devices("bob"));
        r.insert(t0, "carol".into(), Arc::from(Vec::new()));
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
        let mut r = Registrations::new(TTL, 1);
        r.insert(t0, "bob".into(), devices("bob"));
        r.insert(t0, "carol".into(), devices("carol"));
        assert_eq!(r.len(), 1);
        assert!(r.get(t0, "carol").is_none());
        let mut off = Registrations::new(Duration::ZERO, 10);
        off.insert(t0, "bob".into(), devices("bob"));
        assert!(off.is_empty());
    }
}
