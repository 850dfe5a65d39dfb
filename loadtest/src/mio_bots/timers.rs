//! The mio engine's deadlines: one min-heap of (instant, slot, generation) with lazy deletion.
//! Each connection slot has at most one live entry, the one its `scheduled` field names; an
//! entry whose slot was reused (other generation) or rescheduled (other instant) is skipped
//! when it surfaces. Sans-IO: the caller passes the time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tokio::time::Instant;

/// One scheduled wake-up of a connection slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// When.
    pub at: Instant,
    /// The connection slot.
    pub slot: usize,
    /// The slot's generation when the entry was made (a reused slot has a newer one).
    pub generation: u64,
}

/// What a slot's owner says about an entry that surfaced.
pub trait Live {
    /// Whether `e` is still the slot's current deadline (same generation, same instant).
    fn is_live(&self, e: &Entry) -> bool;
}

/// A deadline heap with lazy deletion.
#[derive(Debug, Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl Deadlines {
    /// Adds an entry (the caller records `at` as the slot's scheduled deadline).
    pub fn push(&mut self, at: Instant, slot: usize, generation: u64) {
        self.heap.push(Reverse(Entry { at, slot, generation }));
    }

    /// The earliest live entry's instant, dropping stale entries on top.
    pub fn next(&mut self, live: &impl Live) -> Option<Instant> {
        // Bounded: every pass pops one entry or returns.
        while let Some(Reverse(top)) = self.heap.peek() {
            if live.is_live(top) {
                return Some(top.at);
            }
            self.heap.pop();
        }
        None
    }

    /// Pops the earliest live entry due at `now` (stale entries on the way are dropped).
    pub fn pop_due(&mut self, now: Instant, live: &impl Live) -> Option<Entry> {
        let at = self.next(live)?;
        if at > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e)
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Per slot: (generation, scheduled instant).
    struct Slots(Vec<(u64, Option<Instant>)>);

    impl Live for Slots {
        fn is_live(&self, e: &Entry) -> bool {
            self.0.get(e.slot).is_some_and(|(g, at)| *g == e.generation && *at == Some(e.at))
        }
    }

    #[test]
    fn due_entries_come_out_in_order_and_only_when_due() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let slots = Slots(vec![(0, Some(ms(30))), (0, Some(ms(10))), (0, Some(ms(20)))]);
        let mut d = Deadlines::default();
        for (slot, (g, at)) in slots.0.iter().enumerate() {
            d.push(at.unwrap_or(t0), slot, *g);
        }
        assert_eq!(d.next(&slots), Some(ms(10)));
        assert_eq!(d.pop_due(ms(5), &slots), None);
        let got: Vec<usize> =
            std::iter::from_fn(|| d.pop_due(ms(25), &slots)).map(|e| e.slot).collect();
        assert_eq!(got, vec![1, 2]);
        assert_eq!(d.next(&slots), Some(ms(30)));
        assert_eq!(d.pop_due(ms(30), &slots).map(|e| e.slot), Some(0));
        assert!(d.is_empty());
        assert_eq!(d.next(&slots), None);
    }

    #[test]
    fn rescheduled_and_reused_slots_skip_their_stale_entries() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut slots = Slots(vec![(0, Some(ms(10))), (0, Some(ms(20)))]);
        let mut d = Deadlines::default();
        d.push(ms(10), 0, 0);
        d.push(ms(20), 1, 0);
        // Slot 0 moves later (its old entry goes stale); slot 1 is closed and reused.
        slots.0[0].1 = Some(ms(40));
        d.push(ms(40), 0, 0);
        slots.0[1] = (1, Some(ms(30)));
        d.push(ms(30), 1, 1);
        assert_eq!(d.len(), 4);
        assert_eq!(d.next(&slots), Some(ms(30)));
        assert_eq!(d.len(), 2, "the two stale entries on top are gone");
        let e = d.pop_due(ms(100), &slots);
        assert_eq!(e, Some(Entry { at: ms(30), slot: 1, generation: 1 }));
        assert_eq!(d.pop_due(ms(100), &slots).map(|e| e.at), Some(ms(40)));
        // A slot with nothing scheduled has no live entry.
        slots.0[0].1 = None;
        d.push(ms(50), 0, 0);
        assert_eq!(d.pop_due(ms(100), &slots), None);
        assert!(d.is_empty());
    }
}
