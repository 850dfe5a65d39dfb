//! Burst coalescing per (user, device, conversation), as a state machine without I/O or clock.
//!
//! The first notification for a key goes out at once and opens a window of `window`. Further
//! notifications inside it are merged (latest wins, counted, loudest mention kept); when the
//! window ends, the merge goes out as one push with its count and a new window opens, so a
//! steady stream yields one push per window. A window that ends with nothing merged closes,
//! and the next notification goes out at once again.
//!
//! Calling convention (the driver in [`crate::notifier`] follows it):
//! 1. [`Coalescer::offer`] each notification with the current time; send what it returns.
//! 2. Arm a timer for [`Coalescer::next_deadline`]; when it fires (or at any time), call
//!    [`Coalescer::poll`] with the current time until it returns `None`, sending each push.
//! 3. At shutdown, [`Coalescer::flush`] hands out every merge still waiting.
//!
//! Time only moves forward: an earlier `now` than one seen before counts as that one.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::notification::{Notification, Push};

/// Identifies a coalescing window.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    user_id: String,
    device_id: String,
    conversation_id: String,
}

impl Key {
    fn of(n: &Notification) -> Self {
        Self {
            user_id: n.user_id.clone(),
            device_id: n.device_id.clone(),
            conversation_id: n.conversation_id.clone(),
        }
    }
}

#[derive(Debug)]
struct Window {
    /// Tells this window's deadline entry from a closed predecessor's.
    generation: u64,
    /// The burst merged since the window opened.
    pending: Option<Push>,
}

/// What [`Coalescer::offer`] did with a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// No window was open: send this now (a window is open from now on).
    Send(Push),
    /// Merged into the open window's burst; it goes out when the window ends.
    Merged,
    /// The window table is full: send this now, without a window.
    SendUntracked(Push),
}

/// The coalescer. See the module doc for its calling convention.
#[derive(Debug)]
pub struct Coalescer {
    window: Duration,
    max_keys: usize,
    windows: HashMap<Key, Window>,
    /// Window ends in time order: every window lasts `window` and opens at the latest `now`,
    /// so appending keeps the queue sorted.
    deadlines: VecDeque<(Instant, u64, Key)>,
    next_generation: u64,
    last_now: Option<Instant>,
}

impl Coalescer {
    /// A coalescer with windows of `window` (zero: every notification is sent at once) and at
    /// most `max_keys` windows open at once.
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys,
            windows: HashMap::new(),
            deadlines: VecDeque::new(),
            next_generation: 0,
            last_now: None,
        }
    }

    /// Windows open now.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Takes one notification at `now`.
    pub fn offer(&mut self, now: Instant, n: Notification) -> Offered {
        let now = self.advance(now);
        if self.window.is_zero() {
            return Offered::Send(Push::single(n));
        }
        let key = Key::of(&n);
        if let Some(w) = self.windows.get_mut(&key) {
            match &mut w.pending {
                Some(p) => {
                    p.count = p.count.saturating_add(1);
                    p.mention = p.mention.merge(n.mention);
                    // Keep the newest message (sequence numbers can arrive out of order).
                    if n.seq >= p.latest.seq {
                        p.latest = n;
                    }
                }
                None => w.pending = Some(Push::single(n)),
            }
            return Offered::Merged;
        }
        if self.windows.len() >= self.max_keys {
            return Offered::SendUntracked(Push::single(n));
        }
        self.open(now, key);
        Offered::Send(Push::single(n))
    }

    /// When [`Coalescer::poll`] next has work, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(at, _, _)| *at)
    }

    /// The next merged burst whose window ended by `now`, if any. Call until `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Push> {
        let now = self.advance(now);
        while let Some((at, generation, _)) = self.deadlines.front() {
            if *at > now {
                return None;
            }
            let generation = *generation;
            let Some((_, _, key)) = self.deadlines.pop_front() else { break };
            let Some(w) = self.windows.get_mut(&key) else { continue };
            if w.generation != generation {
                continue;
            }
            match w.pending.take() {
                Some(push) => {
                    // Send the burst and keep the key quiet for another window.
                    self.windows.remove(&key);
                    self.open(now, key);
                    return Some(push);
                }
                None => {
                    self.windows.remove(&key);
                }
            }
        }
        None
    }

    /// Every merged burst still waiting, and closes all windows (for shutdown).
    pub fn flush(&mut self) -> Vec<Push> {
        self.deadlines.clear();
        self.windows.drain().filter_map(|(_, w)| w.pending).collect()
    }

    fn open(&mut self, now: Instant, key: Key) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.deadlines.push_back((now + self.window, generation, key.clone()));
        self.windows.insert(key, Window { generation, pending: None });
    }

    fn advance(&mut self, now: Instant) -> Instant {
        let now = match self.last_now {
            Some(last) if last > now => last,
            _ => now,
        };
        self.last_now = Some(now);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::tests::sample;
    use crate::rules::Mention;

    const W: Duration = Duration::from_secs(3);

    /// A virtual clock: instants derived from one base, no waiting.
    struct Clock(Instant);
    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    fn drain(c: &mut Coalescer, now: Instant) -> Vec<Push> {
        std::iter::from_fn(|| c.poll(now)).collect()
    }

    #[test]
    fn the_first_goes_at_once_and_a_burst_goes_once_at_the_window_end_with_its_count() {
        let clock = Clock(Instant::now());
        let mut c = Coalescer::new(W, 100);
        assert!(matches!(c.offer(clock.at(0), sample("g:1", 1)), Offered::Send(p) if p.count == 1));
        assert_eq!(c.next_deadline(), Some(clock.at(3_000)));
        for seq in 2..=4 {
            assert_eq!(c.offer(clock.at(seq * 100), sample("g:1", seq)), Offered::Merged);
        }
        assert!(drain(&mut c, clock.at(2_999)).is_empty());
        let out = drain(&mut c, clock.at(3_000));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].count, out[0].latest.seq), (3, 4));
        // A new window opened at the flush: the next message merges again.
        assert_eq!(c.offer(clock.at(3_100), sample("g:1", 5)), Offered::Merged);
        assert_eq!(c.next_deadline(), Some(clock.at(6_000)));
        let out = drain(&mut c, clock.at(6_000));
        assert_eq!((out.len(), out[0].count), (1, 1));
        // A window that ends empty closes; the next message goes at once.
        assert!(drain(&mut c, clock.at(9_000)).is_empty());
        assert_eq!(c.open_windows(), 0);
        assert!(matches!(c.offer(clock.at(9_001), sample("g:1", 6)), Offered::Send(_)));
    }

    #[test]
    fn windows_are_per_user_device_and_conversation() {
        let clock = Clock(Instant::now());
        let mut c = Coalescer::new(W, 100);
        let mut other_device = sample("g:1", 1);
        other_device.device_id = "tablet".into();
        let mut other_user = sample("g:1", 1);
        other_user.user_id = "carol".into();
        for n in [sample("g:1", 1), sample("g:2", 1), other_device, other_user] {
            assert!(matches!(c.offer(clock.at(0), n), Offered::Send(_)));
        }
        assert_eq!(c.open_windows(), 4);
    }

    #[test]
    fn a_merge_keeps_the_newest_message_and_the_loudest_mention() {
        let clock = Clock(Instant::now());
        let mut c = Coalescer::new(W, 100);
        c.offer(clock.at(0), sample("g:1", 1));
        let mut mention = sample("g:1", 3);
        mention.mention = Mention::User;
        c.offer(clock.at(1), mention);
        c.offer(clock.at(2), sample("g:1", 2)); // late arrival of an older seq
        let out = drain(&mut c, clock.at(3_000));
        assert_eq!((out[0].count, out[0].latest.seq, out[0].mention), (2, 3, Mention::User));
    }

    #[test]
    fn a_full_table_sends_untracked_and_zero_window_never_merges() {
        let clock = Clock(Instant::now());
        let mut c = Coalescer::new(W, 1);
        assert!(matches!(c.offer(clock.at(0), sample("g:1", 1)), Offered::Send(_)));
        assert!(matches!(c.offer(clock.at(0), sample("g:2", 1)), Offered::SendUntracked(_)));
        let mut z = Coalescer::new(Duration::ZERO, 10);
        for seq in 1..4 {
            assert!(matches!(z.offer(clock.at(0), sample("g:1", seq)), Offered::Send(_)));
        }
        assert_eq!(z.next_deadline(), None);
    }

    #[test]
    fn time_never_runs_backwards_and_flush_hands_out_waiting_bursts() {
        let clock = Clock(Instant::now());
        let mut c = Coalescer::new(W, 100);
        c.offer(clock.at(5_000), sample("g:1", 1));
        // An earlier instant counts as 5 s: the window still ends at 8 s.
        c.offer(clock.at(1_000), sample("g:1", 2));
        assert!(drain(&mut c, clock.at(7_999)).is_empty());
        c.offer(clock.at(7_999), sample("g:2", 1));
        c.offer(clock.at(7_999), sample("g:2", 2));
        let mut flushed = c.flush();
        flushed.sort_by(|a, b| a.latest.conversation_id.cmp(&b.latest.conversation_id));
        assert_eq!(flushed.len(), 2);
        assert_eq!((flushed[0].latest.seq, flushed[1].latest.seq), (2, 2));
        assert_eq!((c.open_windows(), c.next_deadline()), (0, None));
    }

    #[test]
    fn many_keys_end_in_order() {
        let clock = Clock(Instant::now());
        let mut c = Coalescer::new(W, 1_000);
        for i in 0..100u64 {
            let conv = format!("g:{i}");
            c.offer(clock.at(i * 10), sample(&conv, 1));
            c.offer(clock.at(i * 10 + 1), sample(&conv, 2));
        }
        let out = drain(&mut c, clock.at(3_000 + 495));
        assert_eq!(out.len(), 50);
        assert!(out.iter().all(|p| p.count == 1 && p.latest.seq == 2));
        assert_eq!(c.next_deadline(), Some(clock.at(3_500)));
    }
}
