//! What a `pairs` run counted: totals over the whole run, counts inside the measured window,
//! and the latency samples of the messages sent inside it.

use std::collections::{BTreeMap, HashMap};

/// The measured window, in nanoseconds since the run's epoch (when sending started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First instant of the window (the end of the warm-up).
    pub start_ns: u64,
    /// First instant after it.
    pub end_ns: u64,
}

impl Window {
    /// Whether a message sent at `ns` is measured.
    pub fn contains(&self, ns: u64) -> bool {
        ns >= self.start_ns && ns < self.end_ns
    }
}

/// Counts of events that happened while the window was open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InWindow {
    /// Sends written.
    pub sent: u64,
    /// SendAcks received.
    pub acked: u64,
    /// Delivers received (first copies).
    pub delivered: u64,
    /// Receipts sent.
    pub receipts_sent: u64,
    /// ReceiptUpdate pushes received.
    pub receipt_pushes: u64,
}

/// Everything counted (one thread: plain fields).
#[derive(Debug, Clone)]
pub struct Tally {
    /// The measured window.
    pub window: Window,
    /// Whether the window is open now (set by the driver when it crosses its bounds).
    pub measuring: bool,
    /// Counts while it was open.
    pub in_window: InWindow,
    /// Sends written.
    pub sent: u64,
    /// SendAcks received (duplicates included).
    pub acked: u64,
    /// SendAcks with `duplicate = true` (never expected: every send has a new id).
    pub duplicate_acks: u64,
    /// Sends answered with an Error, by code.
    pub send_errors: BTreeMap<String, u64>,
    /// Distinct messages of this run delivered to their receiver.
    pub delivered: u64,
    /// Delivers of a message this receiver already had.
    pub duplicate_deliveries: u64,
    /// Delivers whose body is not from this run (an earlier run, another client).
    pub foreign_deliveries: u64,
    /// Delivers of this run that reached the receiver of another pair.
    pub misrouted_deliveries: u64,
    /// Receipts sent by receivers.
    pub receipts_sent: u64,
    /// Receipts answered with a ReceiptUpdate.
    pub receipt_answers: u64,
    /// Receipts answered with an Error, by code.
    pub receipt_errors: BTreeMap<String, u64>,
    /// ReceiptUpdate pushes received (pairs: by the senders; groups: by every member).
    pub receipt_pushes: u64,
    /// READ receipts among `receipts_sent` (group members).
    pub read_receipts_sent: u64,
    /// Group events (CREATED) delivered to members, ignored.
    pub group_events: u64,
    /// Groups: deliveries of one message that make it complete (every other member).
    pub fanout_expect: u32,
    /// Groups: messages (sender index, number) delivered to some members but not all yet.
    pub fanout: HashMap<(u32, u64), u32>,
    /// Groups: send→deliver to the last member, per message sent in the window, µs.
    pub deliver_last_us: Vec<u32>,
    /// Pings sent (only connections silent for half a heartbeat send one).
    pub pings: u64,
    /// Pongs received.
    pub pongs: u64,
    /// Frames nobody asked for (sync hints, non-fatal errors without a request...), by kind.
    pub other_frames: BTreeMap<String, u64>,
    /// RegisterPush requests answered Ok (`--register-push`).
    pub push_registrations: u64,
    /// Connections that failed, by kind.
    pub failures: BTreeMap<String, u64>,
    /// Send→ack latency of messages sent in the window, microseconds.
    pub ack_us: Vec<u32>,
    /// Send→deliver latency of messages sent in the window, microseconds.
    pub deliver_us: Vec<u32>,
    /// How late each send of the window went out against its schedule (`--rate` only), µs.
    pub lag_us: Vec<u32>,
}

impl Tally {
    /// A tally for `window`, closed.
    pub fn new(window: Window) -> Self {
        Self {
            window,
            measuring: false,
            in_window: InWindow::default(),
            sent: 0,
            acked: 0,
            duplicate_acks: 0,
            send_errors: BTreeMap::new(),
            delivered: 0,
            duplicate_deliveries: 0,
            foreign_deliveries: 0,
            misrouted_deliveries: 0,
            receipts_sent: 0,
            receipt_answers: 0,
            receipt_errors: BTreeMap::new(),
            receipt_pushes: 0,
            read_receipts_sent: 0,
            group_events: 0,
            fanout_expect: 0,
            fanout: HashMap::new(),
            deliver_last_us: Vec::new(),
            pings: 0,
            pongs: 0,
            other_frames: BTreeMap::new(),
            push_registrations: 0,
            failures: BTreeMap::new(),
            ack_us: Vec::new(),
            deliver_us: Vec::new(),
            lag_us: Vec::new(),
        }
    }

    /// One send written at `sent_ns`, `lag_ns` after its scheduled time (open loop).
    pub fn on_send(&mut self, sent_ns: u64, lag_ns: Option<u64>) {
        self.sent += 1;
        if self.measuring {
            self.in_window.sent += 1;
        }
        if let Some(lag) = lag_ns.filter(|_| self.window.contains(sent_ns)) {
            self.lag_us.push(micros(lag));
        }
    }

    /// One SendAck received at `now_ns` for the send written at `sent_ns`.
    pub fn on_ack(&mut self, sent_ns: u64, now_ns: u64, duplicate: bool) {
        self.acked += 1;
        self.duplicate_acks += u64::from(duplicate);
        if self.measuring {
            self.in_window.acked += 1;
        }
        if self.window.contains(sent_ns) {
            self.ack_us.push(micros(now_ns.saturating_sub(sent_ns)));
        }
    }

    /// The first copy of a message sent at `sent_ns` reached its receiver at `now_ns`.
    pub fn on_deliver(&mut self, sent_ns: u64, now_ns: u64) {
        self.delivered += 1;
        if self.measuring {
            self.in_window.delivered += 1;
        }
        if self.window.contains(sent_ns) {
            self.deliver_us.push(micros(now_ns.saturating_sub(sent_ns)));
        }
    }

    /// Groups: the first copy of message `k` of member `from`, sent at `sent_ns`, reached
    /// one more member at `now_ns`; the last member's delivery is timed apart.
    pub fn on_group_deliver(&mut self, from: u32, k: u64, sent_ns: u64, now_ns: u64) {
        self.on_deliver(sent_ns, now_ns);
        let n = self.fanout.entry((from, k)).or_insert(0);
        *n += 1;
        if *n >= self.fanout_expect {
            self.fanout.remove(&(from, k));
            if self.window.contains(sent_ns) {
                self.deliver_last_us.push(micros(now_ns.saturating_sub(sent_ns)));
            }
        }
    }

    /// A ReceiptUpdate push arrived.
    pub fn on_receipt_push(&mut self) {
        self.receipt_pushes += 1;
        if self.measuring {
            self.in_window.receipt_pushes += 1;
        }
    }

    /// A receiver sent a receipt.
    pub fn on_receipt_sent(&mut self) {
        self.receipts_sent += 1;
        if self.measuring {
            self.in_window.receipts_sent += 1;
        }
    }

    /// One more of `kind` in `map`.
    pub fn bump(map: &mut BTreeMap<String, u64>, kind: &str) {
        match map.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                map.insert(kind.to_owned(), 1);
            }
        }
    }
}

/// Nanoseconds as whole microseconds, saturated at `u32::MAX` (about 71 minutes).
pub fn micros(ns: u64) -> u32 {
    u32::try_from(ns / 1000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_messages_sent_in_the_window_are_timed_and_only_open_windows_count() {
        let mut t = Tally::new(Window { start_ns: 1_000, end_ns: 5_000 });
        t.on_send(500, Some(0));
        t.on_ack(500, 90_000, false);
        t.measuring = true;
        t.on_send(2_000, Some(3_000));
        t.on_ack(2_000, 12_000, true);
        t.on_deliver(2_000, 7_000);
        t.on_receipt_sent();
        t.on_receipt_push();
        t.measuring = false;
        t.on_deliver(5_000, 9_000);
        t.on_receipt_push();
        assert_eq!((t.sent, t.acked, t.duplicate_acks, t.delivered), (2, 2, 1, 2));
        assert_eq!(t.receipt_pushes, 2);
        assert_eq!(
            t.in_window,
            InWindow { sent: 1, acked: 1, delivered: 1, receipts_sent: 1, receipt_pushes: 1 }
        );
        assert_eq!((t.ack_us, t.deliver_us, t.lag_us), (vec![10], vec![5], vec![3]));
        Tally::bump(&mut t.send_errors, "rate_limited");
        Tally::bump(&mut t.send_errors, "rate_limited");
        assert_eq!(t.send_errors.get("rate_limited"), Some(&2));
        assert_eq!(micros(u64::MAX), u32::MAX);
    }

    #[test]
    fn a_group_message_is_timed_at_its_last_member() {
        let mut t = Tally::new(Window { start_ns: 0, end_ns: 10_000 });
        t.fanout_expect = 3;
        t.on_group_deliver(1, 0, 1_000, 2_000);
        t.on_group_deliver(1, 1, 1_000, 3_000);
        t.on_group_deliver(1, 0, 1_000, 4_000);
        assert!(t.deliver_last_us.is_empty());
        t.on_group_deliver(1, 0, 1_000, 9_000);
        assert_eq!((t.deliver_last_us.clone(), t.fanout.len()), (vec![8], 1));
        assert_eq!(t.deliver_us, vec![1, 2, 3, 8]);
        assert_eq!(t.delivered, 4);
    }
}
