//! The router's presence cache: where each recently routed user is connected (or that they
//! are offline), kept exact by the presence change feed ([`tern_presence::changes`]). Sans-IO:
//! the router feeds it the feed's messages and its lookups' results.
//!
//! Why a cached answer is never stale where it matters. A routing round first reads the
//! feed's mark (after the commit of every message it routes) and uses the cache only once the
//! cache applied the feed up to that mark ([`PresenceCache::covers`]): every presence write made
//! before the round, in particular every login whose client then synced (a login is written
//! before its LoginOk), has dropped its user's entry by then, so that user is looked up afresh.
//! A lookup's result is cached only if no change of its user was applied while it was in
//! flight ([`PresenceCache::insert`]); any doubt (a gap in the feed, a new epoch, a lost
//! subscription, a change log that no longer reaches back) empties the cache or skips the
//! insert. A gateway's periodic refresh announces only the entries it changed (missing,
//! expired, another connection), so refreshes do not empty the cache; an entry of a gateway
//! that died keeps naming it until its user logs in elsewhere, and pushes to it are dropped as
//! unlinked, as any push to a dead gateway is.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tern_presence::{Change, Location, Mark};

/// Changes remembered for the insert check: lookups in flight across more changes than this
/// are not cached.
const LOG: usize = 65_536;

/// See the module doc.
#[derive(Debug)]
pub struct PresenceCache {
    entries: HashMap<String, Arc<[Location]>, foldhash::fast::RandomState>,
    max_users: usize,
    /// The last change applied (epoch "" until the first message since (re)subscribing).
    applied: Mark,
    /// How many changes (of single users) were applied since start: positions in `log`.
    position: u64,
    /// The latest applied changes as (position, user), oldest first.
    log: VecDeque<(u64, String)>,
}

impl PresenceCache {
    /// An empty cache of at most `max_users` users.
    pub fn new(max_users: usize) -> Self {
        Self {
            entries: HashMap::default(),
            max_users,
            applied: Mark::default(),
            position: 0,
            log: VecDeque::new(),
        }
    }

    /// Cached users.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies one feed message: drops its users, or everything on a gap or a new epoch. (A
    /// message at or below the applied count, published before the subscription's
    /// [`PresenceCache::baseline`] was read, only drops its users.)
    pub fn apply(&mut self, change: Change) {
        let same_epoch = self.applied.epoch == change.mark.epoch;
        if same_epoch && change.mark.count <= self.applied.count {
            self.forget(change.users);
            return;
        }
        if !same_epoch || change.mark.count != self.applied.count + 1 {
            self.entries.clear();
        }
        self.forget(change.users);
        self.applied = change.mark;
    }

    /// A new subscription's starting point: the mark read right after subscribing. The cache
    /// is empty then ([`PresenceCache::reset`]), so it holds nothing older, and every later
    /// change reaches the subscription.
    pub fn baseline(&mut self, mark: Mark) {
        if self.applied.epoch.is_empty() {
            self.applied = mark;
        }
    }

    fn forget(&mut self, users: Vec<String>) {
        for user in users {
            self.entries.remove(&user);
            self.position += 1;
            if self.log.len() == LOG {
                self.log.pop_front();
            }
            self.log.push_back((self.position, user));
        }
    }

    /// The subscription was lost (or is new): whatever it missed is unknown, so start over.
    pub fn reset(&mut self) {
        self.entries.clear();
        self.applied = Mark::default();
        self.position += LOG as u64 + 1;
        self.log.clear();
    }

    /// Whether every change up to `mark` (read from presence) has been applied, so that the
    /// cache may answer for the round that read it.
    pub fn covers(&self, mark: &Mark) -> bool {
        !mark.epoch.is_empty()
            && self.applied.epoch == mark.epoch
            && self.applied.count >= mark.count
    }

    /// The cached locations of `user` (empty: offline), if cached.
    pub fn get(&self, user: &str) -> Option<Arc<[Location]>> {
        self.entries.get(user).cloned()
    }

    /// [`PresenceCache::get`] without the clone, for planning under the lock.
    pub fn get_ref(&self, user: &str) -> Option<&[Location]> {
        self.entries.get(user).map(|l| &**l)
    }

    /// Where the change log is now: pass it to [`PresenceCache::insert`] with the results of a
    /// lookup issued after reading it.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Caches lookup results unless their user changed since `since` (the lookup may have read
    /// the old state), or the log no longer reaches back to `since` (then nothing is cached).
    pub fn insert<'a>(
        &mut self,
        since: u64,
        results: impl IntoIterator<Item = (&'a str, &'a Arc<[Location]>)>,
    ) {
        let reaches_back = self.log.front().map_or(self.position, |(p, _)| p - 1) <= since;
        if !reaches_back || self.applied.epoch.is_empty() {
            return;
        }
        let changed: Vec<&str> = self
            .log
            .iter()
            .rev()
            .take_while(|(p, _)| *p > since)
            .map(|(_, u)| u.as_str())
            .collect();
        let changed: std::collections::HashSet<&str> = changed.into_iter().collect();
        let mut fresh: Vec<(String, Arc<[Location]>)> = Vec::new();
        for (user, locations) in results {
            if !changed.contains(user) {
                fresh.push((user.to_owned(), locations.clone()));
            }
        }
        for (user, locations) in fresh {
            if self.entries.len() >= self.max_users && !self.entries.contains_key(&user) {
                // Full: start over (a refill is one lookup per user routed).
                self.entries.clear();
            }
            self.entries.insert(user, locations);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(epoch: &str, count: u64) -> Mark {
        Mark { epoch: epoch.into(), count }
    }

    fn change(epoch: &str, count: u64, users: &[&str]) -> Change {
        Change { mark: mark(epoch, count), users: users.iter().map(|u| u.to_string()).collect() }
    }

    fn at(gw: &str) -> Arc<[Location]> {
        vec![Location { device_id: "d".into(), gateway_id: gw.into(), connection_id: 1 }].into()
    }

    fn filled(users: &[&str]) -> PresenceCache {
        let mut c = PresenceCache::new(100);
        c.apply(change("e1", 1, &[]));
        let loc = at("gw1");
        let since = c.position();
        c.insert(since, users.iter().map(|u| (*u, &loc)));
        c
    }

    #[test]
    fn answers_only_once_it_applied_the_feed_up_to_the_mark() {
        let mut c = PresenceCache::new(100);
        assert!(!c.covers(&mark("", 0)), "no feed yet: never");
        c.apply(change("e1", 5, &["alice"]));
        assert!(c.covers(&mark("e1", 5)) && c.covers(&mark("e1", 4)));
        assert!(!c.covers(&mark("e1", 6)), "a change not applied yet");
        assert!(!c.covers(&mark("e2", 1)), "another epoch");
    }

    #[test]
    fn a_change_drops_its_users_and_a_gap_or_new_epoch_drops_everything() {
        let mut c = filled(&["alice", "bob", "carol"]);
        c.apply(change("e1", 2, &["alice"]));
        assert!(c.get("alice").is_none());
        assert_eq!(c.get("bob").unwrap()[0].gateway_id, "gw1");
        c.apply(change("e1", 4, &[]));
        assert!(c.is_empty(), "count 3 was missed: nothing is trusted");

        let mut c = filled(&["bob"]);
        c.apply(change("e2", 1, &[]));
        assert!(c.is_empty(), "a new epoch: presence lost its data");

        let mut c = filled(&["bob"]);
        c.reset();
        assert!(c.is_empty() && !c.covers(&mark("e1", 1)));
    }

    /// A new subscription answers at once from its baseline, and a message published before
    /// the baseline was read (delivered after it) drops its users without a wipe.
    #[test]
    fn a_baseline_covers_what_came_before_the_subscription() {
        let mut c = PresenceCache::new(100);
        c.baseline(mark("e1", 7));
        assert!(c.covers(&mark("e1", 7)));
        let loc = at("gw1");
        let since = c.position();
        c.insert(since, [("alice", &loc), ("bob", &loc)]);
        c.apply(change("e1", 6, &["alice"]));
        assert!(c.get("alice").is_none() && c.get("bob").is_some());
        assert!(c.covers(&mark("e1", 7)), "not moved back");
        c.apply(change("e1", 8, &[]));
        assert!(c.get("bob").is_some() && c.covers(&mark("e1", 8)));
        c.baseline(mark("e1", 2));
        assert!(c.covers(&mark("e1", 8)), "a baseline only starts a subscription");
    }

    /// A lookup raced a change of its user: the change was applied while the lookup was in
    /// flight, so the lookup may have read the state before it and is not cached.
    #[test]
    fn a_result_that_raced_a_change_of_its_user_is_not_cached() {
        let mut c = PresenceCache::new(100);
        c.apply(change("e1", 1, &[]));
        let since = c.position();
        c.apply(change("e1", 2, &["alice"]));
        let (old, new) = (at("gw-old"), at("gw1"));
        c.insert(since, [("alice", &old), ("bob", &new)]);
        assert!(c.get("alice").is_none(), "raced: looked up again next time");
        assert_eq!(c.get("bob").unwrap()[0].gateway_id, "gw1");
        // Offline is cached as such.
        let none: Arc<[Location]> = Vec::new().into();
        let since = c.position();
        c.insert(since, [("carol", &none)]);
        assert!(c.get("carol").unwrap().is_empty());
    }

    #[test]
    fn nothing_is_cached_when_the_log_no_longer_reaches_back_or_after_a_reset() {
        let mut c = PresenceCache::new(100);
        c.apply(change("e1", 1, &[]));
        let since = c.position();
        let many: Vec<String> = (0..LOG + 1).map(|i| format!("u{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        c.apply(change("e1", 2, &many));
        let loc = at("gw1");
        c.insert(since, [("bob", &loc)]);
        assert!(c.get("bob").is_none(), "too many changes since: unknown whether bob's was one");

        let since = c.position();
        c.reset();
        c.apply(change("e1", 9, &[]));
        c.insert(since, [("bob", &loc)]);
        assert!(c.get("bob").is_none(), "the lookup began before the subscription was lost");
    }

    #[test]
    fn stays_within_its_bound() {
        let mut c = PresenceCache::new(2);
        c.apply(change("e1", 1, &[]));
        let loc = at("gw1");
        for u in ["a", "b", "c"] {
            let since = c.position();
            c.insert(since, [(u, &loc)]);
        }
        assert!(c.len() <= 2);
        assert!(c.get("c").is_some());
    }
}
