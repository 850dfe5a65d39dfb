//! What a `pairs` run counted: totals over the whole run, counts inside the measured window,
//! and the latency samples of the messages sent inside it.

use std::collections::BTreeMap;

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
    /// ReceiptUpdate pushes the senders got (ignored otherwise).
    pub receipt_pushes: u64,
    /// Pings sent (only connections silent for half a heartbeat send one).
    pub pings: u64,
    /// Pongs received.
    pub pongs: u64,
    /// Frames nobody asked for (sync hints, non-fatal errors without a request...), by kind.
    pub other_frames: BTreeMap<String, u64>,
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
            pings: 0,
            pongs: 0,
            other_frames: BTreeMap::new(),
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
        t.measuring = false;
        t.on_deliver(5_000, 9_000);
        assert_eq!((t.sent, t.acked, t.duplicate_acks, t.delivered), (2, 2, 1, 2));
        assert_eq!(t.in_window, InWindow { sent: 1, acked: 1, delivered: 1, receipts_sent: 1 });
        assert_eq!((t.ack_us, t.deliver_us, t.lag_us), (vec![10], vec![5], vec![3]));
        Tally::bump(&mut t.send_errors, "rate_limited");
        Tally::bump(&mut t.send_errors, "rate_limited");
        assert_eq!(t.send_errors.get("rate_limited"), Some(&2));
        assert_eq!(micros(u64::MAX), u32::MAX);
    }
}
