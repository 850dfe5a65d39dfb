//! The membership cache: each recently used group's current members, read from the store, and
//! the group version they are at least as new as.
//!
//! Correct by construction, not by invalidation: every committed group message carries the
//! group's version at its seq ([`tern_store::Appended::group_version`], decided by the store
//! atomically with the seq). The fan-out uses a cached entry only if it is at that version or
//! later; otherwise it reloads first. An entry at version ≥ v holds no one removed at or before
//! v, so a removed member never gets a push of a message sequenced after their removal, even
//! when another worker made the change. Of the members it holds, a message at seq s goes only
//! to those who joined at or before s ([`tern_store::Member::receives`]). (A member removed
//! after s but before the load misses that push and reads the message by sync.) Changes made
//! through this worker also drop the entry at once, so the next message reloads without a
//! wasted push.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tern_store::{Appended, Member, Store, StoreError};
use tokio::runtime::Handle;

use crate::offline::{Alert, Alerts};
use crate::push::{ConnRef, Pusher};

/// Members read per store call while loading.
const PAGE: u32 = 1000;

/// One group's members as cached.
#[derive(Debug)]
pub struct Cached {
    /// The group's version when the load began: the members are at least as new.
    pub version: u64,
    /// The current members then, in user id order.
    pub members: Vec<Member>,
    /// Their user ids, shared by every push to all of them.
    pub user_ids: Arc<[String]>,
    /// The latest join seq among them: a message at or after it reaches all of them.
    pub latest_join: u64,
}

impl Cached {
    /// Caches `members` (current ones) as of `version`.
    pub fn new(version: u64, members: Vec<Member>) -> Self {
        let user_ids = members.iter().map(|m| m.user_id.clone()).collect();
        let latest_join = members.iter().map(|m| m.joined_seq).max().unwrap_or(0);
        Self { version, members, user_ids, latest_join }
    }

    /// The members a message at `seq` reaches: those who joined at or before it.
    pub fn recipients(&self, seq: u64) -> Arc<[String]> {
        if seq >= self.latest_join {
            return self.user_ids.clone();
        }
        self.members.iter().filter(|m| m.receives(seq)).map(|m| m.user_id.clone()).collect()
    }
}

/// The cache (see the module doc). Bounded by `max_rows` member rows over all groups; past it,
/// entries are dropped (arbitrary ones: a reload is one paged read).
pub struct GroupCache {
    store: Arc<dyn Store>,
    entries: Mutex<Entries>,
    max_rows: usize,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Arc<Cached>>,
    rows: usize,
}

impl GroupCache {
    /// An empty cache over `store`, holding at most `max_rows` member rows.
    pub fn new(store: Arc<dyn Store>, max_rows: usize) -> Self {
        Self { store, entries: Mutex::default(), max_rows }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Every critical section leaves the map consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached members of `conv` if they are at version `min_version` or later.
    pub fn fresh(&self, conv: &str, min_version: u64) -> Option<Arc<Cached>> {
        self.lock().map.get(conv).filter(|c| c.version >= min_version).cloned()
    }

    /// Drops `conv`'s entry (after a change through this worker).
    pub fn invalidate(&self, conv: &str) {
        let mut e = self.lock();
        if let Some(old) = e.map.remove(conv) {
            e.rows -= old.members.len();
        }
    }

    /// Reads `conv`'s current members from the store and caches them.
    pub async fn load(&self, conv: &str) -> Result<Arc<Cached>, StoreError> {
        let version = self.store.get_group(conv).await?.map_or(0, |g| g.version);
        let mut members = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.store.group_members(conv, &after, PAGE).await?;
            let full = page.len() == PAGE as usize;
            members.extend(page);
            match members.last() {
                Some(last) if full => after.clone_from(&last.user_id),
                _ => break,
            }
        }
        let cached = Arc::new(Cached::new(version, members));
        let mut e = self.lock();
        let keep = !matches!(e.map.get(conv), Some(old) if old.version > version);
        if keep && cached.members.len() <= self.max_rows {
            while e.rows + cached.members.len() > self.max_rows {
                let Some(key) = e.map.keys().next().cloned() else { break };
                if let Some(old) = e.map.remove(&key) {
                    e.rows -= old.members.len();
                }
            }
            if let Some(old) = e.map.insert(conv.to_owned(), cached.clone()) {
                e.rows -= old.members.len();
            }
            e.rows += cached.members.len();
        }
        Ok(cached)
    }

    /// Pushes `frame` (the Deliver of the group message committed as `out`, sequenced at its
    /// `group_version`) to every member who receives it, except the connection `skip`: at once
    /// from a fresh entry, else after a reload on `rt`.
    pub fn fan_out(
        self: &Arc<Self>,
        pusher: &Arc<dyn Pusher>,
        rt: &Handle,
        out: &Appended,
        frame: Bytes,
        skip: Option<ConnRef>,
        alert: Option<(Alert, Arc<Alerts>)>,
    ) {
        let (conv, seq, version) = (out.conversation_id.as_str(), out.seq, out.group_version);
        if let Some(cached) = self.fresh(conv, version) {
            push_to(&**pusher, &cached, seq, &frame, skip.as_ref(), alert);
            return;
        }
        let (this, pusher, conv) = (self.clone(), pusher.clone(), conv.to_owned());
        rt.spawn(async move {
            match this.load(&conv).await {
                Ok(cached) => push_to(&*pusher, &cached, seq, &frame, skip.as_ref(), alert),
                // Recipients read it by sync; the sender has its ack.
                Err(e) => {
                    tracing::warn!(error = %e, conv, seq, "group fan-out: loading members failed")
                }
            }
        });
    }
}

/// Pushes to the members who receive `seq`, and hands them to offline push.
fn push_to(
    pusher: &dyn Pusher,
    cached: &Cached,
    seq: u64,
    frame: &Bytes,
    skip: Option<&ConnRef>,
    alert: Option<(Alert, Arc<Alerts>)>,
) {
    let recipients = cached.recipients(seq);
    pusher.push_many(recipients.clone(), frame, skip);
    if let Some((alert, alerts)) = alert {
        alerts.committed(alert, recipients);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_store::Role;

    fn member(user: &str, joined_seq: u64) -> Member {
        Member {
            user_id: user.into(),
            role: Role::Member,
            joined_seq,
            visible_from: joined_seq,
            removed_seq: 0,
        }
    }

    struct Recorder(Mutex<Vec<String>>);
    impl Pusher for Recorder {
        fn push(&self, user_id: &str, _frame: &Bytes, _skip: Option<&ConnRef>) {
            self.0.lock().unwrap().push(user_id.to_owned());
        }
    }

    #[test]
    fn a_message_reaches_only_members_who_joined_before_it() {
        let cached = Cached::new(5, vec![member("a", 1), member("b", 5), member("c", 9)]);
        let rec = Recorder(Mutex::new(Vec::new()));
        push_to(&rec, &cached, 6, &Bytes::new(), None, None);
        assert_eq!(*rec.0.lock().unwrap(), ["a", "b"]);
        push_to(&rec, &cached, 9, &Bytes::new(), None, None);
        assert_eq!(*rec.0.lock().unwrap(), ["a", "b", "a", "b", "c"]);
        assert!(Arc::ptr_eq(&cached.recipients(10), &cached.user_ids), "shared, not copied");
    }
}
