//! A hashed timer wheel for connection deadlines (login timeout, idle timeout, close linger):
//! one 8-byte entry per connection in a ring of buckets, instead of a timer object per
//! connection. Sans-IO: time is passed in.
//!
//! Entries are lazy. A connection's entry fires at (or, for deadlines beyond one turn of the
//! wheel, before) its deadline; the owner then looks at the connection's current deadline and
//! either acts or schedules again. Activity never touches the wheel: a busy connection's entry
//! just fires once per idle timeout and is put back. An entry whose connection is gone (its
//! generation changed) is dropped when it fires.

use std::time::{Duration, Instant};

/// Which connection an entry is for: slab index and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Slab index.
    pub slot: u32,
    /// Generation of the slot when the entry was made.
    pub generation: u32,
}

/// The wheel.
#[derive(Debug)]
pub struct Wheel {
    start: Instant,
    tick: Duration,
    buckets: Vec<Vec<Key>>,
    /// The next tick to fire.
    cursor: u64,
    len: usize,
}

impl Wheel {
    /// A wheel of `buckets` buckets of `tick` each, starting at `now`.
    pub fn new(now: Instant, tick: Duration, buckets: usize) -> Self {
        assert!(buckets > 0 && !tick.is_zero());
        Self { start: now, tick, buckets: vec![Vec::new(); buckets], cursor: 0, len: 0 }
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start);
        (since.as_nanos() / self.tick.as_nanos()) as u64
    }

    /// Entries waiting (live and stale).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fires `key` at the first tick at or after `at` (or one turn from now, if that is sooner).
    pub fn schedule(&mut self, at: Instant, key: Key) {
        // Round up so that an entry never fires before its deadline (within one turn).
        let tick = self.tick_of(at + self.tick - Duration::from_nanos(1));
        let n = self.buckets.len() as u64;
        let tick = tick.clamp(self.cursor, self.cursor + n - 1);
        self.buckets[(tick % n) as usize].push(key);
        self.len += 1;
    }

    /// Moves every entry due by `now` into `due`.
    pub fn advance(&mut self, now: Instant, due: &mut Vec<Key>) {
        let now_tick = self.tick_of(now);
        let n = self.buckets.len() as u64;
        // After a long stall, every bucket is due once.
        let last = now_tick.min(self.cursor + n - 1);
        while self.cursor <= last {
            let bucket = &mut self.buckets[(self.cursor % n) as usize];
            self.len -= bucket.len();
            due.append(bucket);
            if bucket.capacity() > 1024 {
                // Give back what a burst grew.
                bucket.shrink_to(64);
            }
            self.cursor += 1;
        }
        self.cursor = self.cursor.max(now_tick + 1);
    }

    /// How long until the next tick that may fire something, if anything waits.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let nanos = (self.tick.as_nanos() as u64).saturating_mul(self.cursor);
        let next = self.start + Duration::from_nanos(nanos);
        Some(next.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(slot: u32) -> Key {
        Key { slot, generation: 0 }
    }

    #[test]
    fn fires_at_or_after_deadline_never_before() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, Duration::from_millis(100), 16);
        w.schedule(t0 + Duration::from_millis(250), k(1));
        w.schedule(t0 + Duration::from_millis(100), k(2));
        let mut due = Vec::new();
        w.advance(t0 + Duration::from_millis(99), &mut due);
        assert!(due.is_empty());
        w.advance(t0 + Duration::from_millis(100), &mut due);
        assert_eq!(due, vec![k(2)]);
        due.clear();
        w.advance(t0 + Duration::from_millis(299), &mut due);
        assert!(due.is_empty(), "250 ms rounds up to the 300 ms tick");
        w.advance(t0 + Duration::from_millis(300), &mut due);
        assert_eq!(due, vec![k(1)]);
        assert!(w.is_empty());
    }

    #[test]
    fn far_deadlines_fire_within_one_turn_for_rescheduling() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, Duration::from_millis(10), 8);
        w.schedule(t0 + Duration::from_secs(60), k(7));
        let mut due = Vec::new();
        w.advance(t0 + Duration::from_millis(80), &mut due);
        assert_eq!(due, vec![k(7)]);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_advance_and_stalls_lose_nothing() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, Duration::from_millis(10), 8);
        let mut due = Vec::new();
        w.advance(t0 + Duration::from_millis(500), &mut due);
        w.schedule(t0, k(1));
        for i in 0..8 {
            w.schedule(t0 + Duration::from_millis(500 + 10 * i), k(10 + i as u32));
        }
        assert_eq!(w.len(), 9);
        w.advance(t0 + Duration::from_secs(10), &mut due);
        assert_eq!(due.len(), 9);
        assert!(w.is_empty());
        assert_eq!(w.timeout(t0), None);
    }

    #[test]
    fn timeout_points_at_the_next_tick() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, Duration::from_millis(100), 16);
        w.schedule(t0 + Duration::from_millis(500), k(1));
        let mut due = Vec::new();
        w.advance(t0 + Duration::from_millis(150), &mut due);
        assert_eq!(w.timeout(t0 + Duration::from_millis(150)), Some(Duration::from_millis(50)));
    }
}
