//! What the client keeps across restarts (per-conversation cursors, unacknowledged sends) as a
//! trait, with an in-memory implementation.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::event::Target;

/// A send that was not acknowledged yet, as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSend {
    /// The message's own id (the idempotency key).
    pub client_msg_id: String,
    /// Where it goes.
    pub target: Target,
    /// The app's content type.
    pub content_type: String,
    /// The payload.
    pub body: Bytes,
    /// Users it mentions.
    pub mention_user_ids: Vec<String>,
    /// Whether it mentions every member.
    pub mention_all: bool,
}

/// Storage for what must survive a restart of the app. Calls come from the client's tasks and
/// should be quick (they run inline; a slow backend slows the connection down).
///
/// - Cursors: the highest seq per conversation handed to the app (saved after the events are
///   queued on the event channel), loaded at connect so that sync resumes where it stopped.
/// - Outbox: sends are put before their first write and removed once acknowledged (or finally
///   refused); those listed at connect are resent with the same client_msg_id.
pub trait Persistence: Send + Sync + 'static {
    /// Every saved cursor (conversation id → seq).
    fn load_cursors(&self) -> io::Result<HashMap<String, u64>>;
    /// Saves a conversation's cursor.
    fn save_cursor(&self, conversation_id: &str, seq: u64) -> io::Result<()>;
    /// Adds (or replaces) an unacknowledged send.
    fn put_pending(&self, send: &PendingSend) -> io::Result<()>;
    /// Removes an acknowledged or refused send; removing an absent one is not an error.
    fn remove_pending(&self, client_msg_id: &str) -> io::Result<()>;
    /// Every unacknowledged send, oldest first.
    fn list_pending(&self) -> io::Result<Vec<PendingSend>>;
}

#[derive(Debug, Default)]
struct MemoryState {
    cursors: HashMap<String, u64>,
    next_order: u64,
    order: BTreeMap<u64, String>,
    pending: HashMap<String, (u64, PendingSend)>,
}

/// Persistence in memory (lost with the process): for tests, tools and apps that keep nothing.
/// Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct MemoryPersistence {
    state: Arc<Mutex<MemoryState>>,
}

impl MemoryPersistence {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters here, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Persistence for MemoryPersistence {
    fn load_cursors(&self) -> io::Result<HashMap<String, u64>> {
        Ok(self.lock().cursors.clone())
    }

    fn save_cursor(&self, conversation_id: &str, seq: u64) -> io::Result<()> {
        let mut state = self.lock();
        let cursor = state.cursors.entry(conversation_id.to_owned()).or_default();
        *cursor = (*cursor).max(seq);
        Ok(())
    }

    fn put_pending(&self, send: &PendingSend) -> io::Result<()> {
        let mut state = self.lock();
        let state = &mut *state;
        if let Some((_, existing)) = state.pending.get_mut(&send.client_msg_id) {
            *existing = send.clone();
            return Ok(());
        }
        let order = state.next_order;
        state.next_order += 1;
        state.order.insert(order, send.client_msg_id.clone());
        state.pending.insert(send.client_msg_id.clone(), (order, send.clone()));
        Ok(())
    }

    fn remove_pending(&self, client_msg_id: &str) -> io::Result<()> {
        let mut state = self.lock();
        if let Some((order, _)) = state.pending.remove(client_msg_id) {
            state.order.remove(&order);
        }
        Ok(())
    }

    fn list_pending(&self) -> io::Result<Vec<PendingSend>> {
        let state = self.lock();
        Ok(state
            .order
            .values()
            .filter_map(|id| state.pending.get(id).map(|(_, send)| send.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str) -> PendingSend {
        PendingSend {
            mention_user_ids: Vec::new(),
            mention_all: false,
            client_msg_id: id.to_owned(),
            target: Target::Peer("bob".to_owned()),
            content_type: "text/plain".to_owned(),
            body: Bytes::from_static(b"hi"),
        }
    }

    #[test]
    fn memory_outbox_keeps_order_and_clones_share_state() {
        let p = MemoryPersistence::new();
        let q = p.clone();
        for id in ["b", "a", "c"] {
            p.put_pending(&pending(id)).unwrap();
        }
        p.put_pending(&pending("a")).unwrap();
        q.remove_pending("b").unwrap();
        q.remove_pending("absent").unwrap();
        let ids: Vec<_> = p.list_pending().unwrap().into_iter().map(|s| s.client_msg_id).collect();
        assert_eq!(ids, ["a", "c"]);
    }

    #[test]
    fn memory_cursors_never_go_back() {
        let p = MemoryPersistence::new();
        p.save_cursor("c", 5).unwrap();
        p.save_cursor("c", 3).unwrap();
        p.save_cursor("d", 1).unwrap();
        let cursors = p.load_cursors().unwrap();
        assert_eq!(cursors.get("c"), Some(&5));
        assert_eq!(cursors.get("d"), Some(&1));
    }
}
