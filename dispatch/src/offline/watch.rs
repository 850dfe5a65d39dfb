//! The second push trigger, sans-IO: a connected device with a push registration is watched
//! for `ack_timeout` after a message for it; if its user's delivered watermark has not reached
//! the message by then, it is notified anyway. On mobile this is the trigger that matters: a
//! phone whose app was suspended keeps its TCP connection open (the server sees it online)
//! until the idle timeout, minutes later, and never reads the Deliver.
//!
//! One entry per (conversation, user, device): further messages update it (latest seq, the
//! loudest mention) without moving its deadline, so an unread burst is notified once,
//! `ack_timeout` after its first message. At the deadline the caller reads the conversation's
//! watermarks and [`AckWatch::settle`]s each entry:
//! - delivered below the first watched seq: nothing arrived, notify (the latest message);
//! - delivered at or above the latest seq: acknowledged, nothing to do;
//! - in between: the device is reading, but not everything yet: watched again from now.
//!
//! The watermark is the user's (receipts are per user, section 11 of PROTOCOL.md): a message
//! acknowledged by any of the user's devices notifies none of them, as messengers do while
//! their user is active on another device.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tern_notify::Notification;

/// (conversation, user, device).
pub type Key = (String, String, String);

/// One watched device in one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// The first seq watched (what the deadline is for).
    pub first_seq: u64,
    /// The latest message's notification (with the loudest mention of the burst).
    pub latest: Notification,
}

/// What [`AckWatch::settle`] decided for one due entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Not acknowledged: send this.
    Notify(Box<Notification>),
    /// Acknowledged.
    Acked,
    /// Partly acknowledged: watched again.
    Rearmed,
}

/// The watched devices and their deadlines (one timeout for all, so deadlines come in
/// insertion order and a queue keeps them sorted).
#[derive(Debug)]
pub struct AckWatch {
    timeout: Duration,
    cap: usize,
    entries: HashMap<Key, Watched>,
    deadlines: VecDeque<(Instant, Key)>,
}

impl AckWatch {
    /// Watches for `timeout`, at most `cap` entries.
    pub fn new(timeout: Duration, cap: usize) -> Self {
        Self { timeout, cap, entries: HashMap::new(), deadlines: VecDeque::new() }
    }

    /// Entries watched now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is watched.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Watches `n`'s device for `n`'s message. False when the table is full and `n` is for a
    /// device not watched yet (the caller counts it; the device syncs when it next reads).
    pub fn watch(&mut self, now: Instant, n: Notification) -> bool {
        let key = (n.conversation_id.clone(), n.user_id.clone(), n.device_id.clone());
        if let Some(w) = self.entries.get_mut(&key) {
            if n.seq > w.latest.seq {
                let mention = w.latest.mention.merge(n.mention);
                w.latest = Notification { mention, ..n };
            }
            return true;
        }
        if self.entries.len() >= self.cap {
            return false;
        }
        self.deadlines.push_back((now + self.timeout, key.clone()));
        self.entries.insert(key, Watched { first_seq: n.seq, latest: n });
        true
    }

    /// When the earliest entry is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(at, _)| *at)
    }

    /// Takes every entry due at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<(Key, Watched)> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.deadlines.front() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.deadlines.pop_front() else { break };
            if let Some(w) = self.entries.remove(&key) {
                out.push((key, w));
            }
        }
        out
    }

    /// Decides a due entry given its user's `delivered` watermark (`None`: unreadable, which
    /// notifies: a push too many beats a message nobody hears of).
    pub fn settle(
        &mut self,
        now: Instant,
        key: Key,
        w: Watched,
        delivered: Option<u64>,
    ) -> Settled {
        let Some(delivered) = delivered else { return Settled::Notify(Box::new(w.latest)) };
        if delivered >= w.latest.seq {
            Settled::Acked
        } else if delivered < w.first_seq {
            Settled::Notify(Box::new(w.latest))
        } else {
            let first_seq = delivered + 1;
            if !self.entries.contains_key(&key) {
                self.deadlines.push_back((now + self.timeout, key.clone()));
            }
            // A message watched since it became due keeps its own (later) first seq.
            let entry =
                self.entries.entry(key).or_insert(Watched { first_seq, latest: w.latest.clone() });
            entry.first_seq = entry.first_seq.min(first_seq);
            if w.latest.seq > entry.latest.seq {
                entry.latest = w.latest;
            }
            Settled::Rearmed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_notify::{Mention, Target};

    fn n(conv: &str, user: &str, seq: u64, mention: Mention) -> Notification {
        Notification {
            user_id: user.into(),
            device_id: "phone".into(),
            target: Target::Fcm { token: "t".into() },
            conversation_id: conv.into(),
            seq,
            sender_user_id: "alice".into(),
            mention,
            muted: false,
            is_group: true,
            preview: None,
        }
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn a_burst_is_due_once_at_its_first_messages_deadline_with_the_loudest_mention() {
        let t0 = Instant::now();
        let mut w = AckWatch::new(T, 100);
        assert!(w.watch(t0, n("c", "bob", 5, Mention::None)));
        assert!(w.watch(t0 + Duration::from_secs(4), n("c", "bob", 6, Mention::User)));
        assert!(w.watch(t0 + Duration::from_secs(8), n("c", "bob", 7, Mention::None)));
        assert_eq!(w.len(), 1);
        assert!(w.due(t0 + T - Duration::from_millis(1)).is_empty());
        let mut due = w.due(t0 + T);
        assert_eq!(due.len(), 1);
        let (key, watched) = due.remove(0);
        assert_eq!(watched.first_seq, 5);
        assert_eq!((watched.latest.seq, watched.latest.mention), (7, Mention::User));
        match w.settle(t0 + T, key, watched, Some(4)) {
            Settled::Notify(n) => assert_eq!(n.seq, 7),
            other => panic!("expected a notification, got {other:?}"),
        }
        assert!(w.is_empty() && w.next_deadline().is_none());
    }

    #[test]
    fn acknowledged_entries_are_dropped_and_partial_ones_rearmed() {
        let t0 = Instant::now();
        let mut w = AckWatch::new(T, 100);
        w.watch(t0, n("c", "bob", 5, Mention::None));
        w.watch(t0, n("c", "bob", 9, Mention::None));
        w.watch(t0, n("d", "bob", 1, Mention::None));
        let due = w.due(t0 + T);
        assert_eq!(due.len(), 2);
        let mut it = due.into_iter();
        let (k, v) = it.next().unwrap();
        assert_eq!(w.settle(t0 + T, k, v, Some(6)), Settled::Rearmed);
        let (k, v) = it.next().unwrap();
        assert_eq!(w.settle(t0 + T, k, v, Some(1)), Settled::Acked);
        assert_eq!(w.next_deadline(), Some(t0 + T + T));
        let (k, v) = w.due(t0 + T + T).pop().unwrap();
        assert_eq!((v.first_seq, v.latest.seq), (7, 9));
        assert!(matches!(w.settle(t0 + T + T, k, v, Some(6)), Settled::Notify(_)));
    }

    #[test]
    fn an_unreadable_watermark_notifies() {
        let t0 = Instant::now();
        let mut w = AckWatch::new(T, 100);
        w.watch(t0, n("c", "bob", 5, Mention::None));
        let (k, v) = w.due(t0 + T).pop().unwrap();
        assert!(matches!(w.settle(t0 + T, k, v, None), Settled::Notify(_)));
    }

    #[test]
    fn a_full_table_refuses_new_devices_but_updates_known_ones() {
        let t0 = Instant::now();
        let mut w = AckWatch::new(T, 1);
        assert!(w.watch(t0, n("c", "bob", 5, Mention::None)));
        assert!(!w.watch(t0, n("c", "carol", 5, Mention::None)));
        assert!(w.watch(t0, n("c", "bob", 6, Mention::None)));
        assert_eq!(w.len(), 1);
    }
}
