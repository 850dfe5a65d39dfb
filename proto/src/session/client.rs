//! The client side of a connection as I/O-free state machines: outbox, inbound order, heartbeat
//! schedule and reconnect backoff. The SDK (`sdk/`) drives them around a socket and a clock.
//!
//! None of these types does I/O or reads a clock: the driver passes `now` (and randomness) in and
//! carries out what they return. Each type documents its own calling convention.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::v1;

// ---------------------------------------------------------------------------------------------
// Outbox

/// The outbox is full: the caller must wait for acknowledgements before sending more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the outbox is full ({capacity} unacknowledged sends)")]
pub struct OutboxFull {
    /// The outbox's capacity.
    pub capacity: usize,
}

/// Sends (and recalls) that were not acknowledged yet, keyed by `client_msg_id`, in insertion
/// order. `T` is whatever the driver needs to resend one (e.g. the request body and who waits
/// for the ack).
///
/// Calling convention:
/// 1. [`Outbox::insert`] before the first write of a new send (persist it first if the app wants
///    sends to survive a restart).
/// 2. On a `SendAck` (or a final error for that send), [`Outbox::remove`] by `client_msg_id`.
/// 3. After every (re)login, resend everything [`Outbox::iter`] yields, in that order and with
///    the same `client_msg_id`: the server answers a resend of an accepted message with the
///    original ack (`duplicate = true`), never a second message.
#[derive(Debug)]
pub struct Outbox<T> {
    capacity: usize,
    next_order: u64,
    order: BTreeMap<u64, String>,
    entries: HashMap<String, (u64, T)>,
}

impl<T> Outbox<T> {
    /// An empty outbox holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, next_order: 0, order: BTreeMap::new(), entries: HashMap::new() }
    }

    /// Adds a send at the end. If `client_msg_id` is already pending, its entry is kept (and its
    /// position) and `item` is returned back in `Ok(Some(item))`, so the caller can merge it.
    /// `Err` when the outbox is full.
    pub fn insert(&mut self, client_msg_id: String, item: T) -> Result<Option<T>, OutboxFull> {
        if self.entries.contains_key(&client_msg_id) {
            return Ok(Some(item));
        }
        if self.entries.len() >= self.capacity {
            return Err(OutboxFull { capacity: self.capacity });
        }
        let order = self.next_order;
        self.next_order += 1;
        self.order.insert(order, client_msg_id.clone());
        self.entries.insert(client_msg_id, (order, item));
        Ok(None)
    }

    /// Removes an acknowledged (or finally failed) send; `None` when it was not pending.
    pub fn remove(&mut self, client_msg_id: &str) -> Option<T> {
        let (order, item) = self.entries.remove(client_msg_id)?;
        self.order.remove(&order);
        Some(item)
    }

    /// The pending entry for `client_msg_id`.
    pub fn get(&self, client_msg_id: &str) -> Option<&T> {
        self.entries.get(client_msg_id).map(|(_, item)| item)
    }

    /// The pending entry for `client_msg_id`, mutably.
    pub fn get_mut(&mut self, client_msg_id: &str) -> Option<&mut T> {
        self.entries.get_mut(client_msg_id).map(|(_, item)| item)
    }

    /// Whether `client_msg_id` is pending.
    pub fn contains(&self, client_msg_id: &str) -> bool {
        self.entries.contains_key(client_msg_id)
    }

    /// Every pending send in insertion order: what to resend after a (re)login.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.order
            .values()
            .filter_map(|id| self.entries.get(id).map(|(_, item)| (id.as_str(), item)))
    }

    /// The pending `client_msg_id`s in insertion order.
    pub fn ids(&self) -> Vec<String> {
        self.order.values().cloned().collect()
    }

    /// Number of pending sends.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The capacity given to [`Outbox::new`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

// ---------------------------------------------------------------------------------------------
// Inbound order

/// Default bound on the out-of-order entries kept per conversation.
pub const DEFAULT_MAX_BUFFERED_PER_CONVERSATION: usize = 1000;

/// Something known about one seq (or range) ahead of a conversation's cursor.
#[derive(Debug, Clone)]
enum Slot {
    /// A message waiting for the seqs before it.
    Message(Box<v1::Message>),
    /// This device's own send, acknowledged at this seq: seen, but released as nothing.
    Own,
    /// Seqs from the key up to and including this one were allocated but never stored.
    Missing(u64),
}

#[derive(Debug, Default)]
struct ConvState {
    /// Every seq <= cursor has been released (or was own, or missing).
    cursor: u64,
    /// Highest seq known to exist (from pushes, acks, sync pages, conversation lists).
    known_last: u64,
    /// Entries ahead of `cursor + 1`, keyed by their first seq.
    buffer: BTreeMap<u64, Slot>,
}

impl ConvState {
    /// Releases what has become contiguous with the cursor, appending messages to `out`.
    fn release(&mut self, out: &mut Vec<v1::Message>) {
        while let Some(entry) = self.buffer.first_entry() {
            let first = *entry.key();
            if first > self.cursor.saturating_add(1) {
                break;
            }
            match entry.remove() {
                Slot::Message(m) => {
                    // checked: a missing range may have taken the cursor to u64::MAX.
                    if self.cursor.checked_add(1) == Some(first) {
                        self.cursor = first;
                        out.push(*m);
                    }
                }
                Slot::Own => self.cursor = self.cursor.max(first),
                Slot::Missing(last) => self.cursor = self.cursor.max(last),
            }
        }
        self.known_last = self.known_last.max(self.cursor);
    }

    /// Records `slot` at `first..=last`; entries at or below the cursor are duplicates. Over
    /// `max_buffered` (when given) a non-contiguous entry is forgotten: `known_last` still says
    /// a sync is needed.
    fn put(&mut self, first: u64, last: u64, slot: Slot, max_buffered: Option<usize>) {
        self.known_last = self.known_last.max(last);
        if last <= self.cursor {
            return;
        }
        if first <= self.cursor + 1 {
            // Contiguous (a range may start below the cursor): release() applies it at once.
            self.buffer.insert(self.cursor + 1, slot);
            return;
        }
        if let Some(existing) = self.buffer.get(&first) {
            // Keep what we have unless the new slot covers more (a range over a single seq), or
            // it is this device's own ack for a message buffered behind a gap (a copy pushed or
            // synced before the ack): the app has it from the ack, so it must not be released.
            let keep = match (existing, &slot) {
                (Slot::Missing(a), Slot::Missing(b)) => a >= b,
                (_, Slot::Missing(_)) => false,
                (Slot::Message(_), Slot::Own) => false,
                _ => true,
            };
            if keep {
                return;
            }
        } else if max_buffered.is_some_and(|max| self.buffer.len() >= max) {
            return;
        }
        self.buffer.insert(first, slot);
    }

    /// The highest seq covered by the buffer.
    fn buffered_last(&self) -> Option<u64> {
        self.buffer.iter().next_back().map(|(first, slot)| match slot {
            Slot::Missing(last) => *last,
            _ => *first,
        })
    }
}

/// Per-conversation ordering and dedupe of incoming messages, with gap detection.
///
/// For each conversation it keeps a cursor: every seq at or below it was handed to the app (or
/// was this device's own send, or is a hole the server reported as missing). Messages above
/// `cursor + 1` wait in a bounded buffer until the seqs before them arrive.
///
/// Calling convention:
/// 1. At start, [`InboundOrder::set_cursor`] for every persisted cursor.
/// 2. Feed every pushed message to [`InboundOrder::on_message`], every sync page to
///    [`InboundOrder::on_sync_page`], every own `SendAck` to [`InboundOrder::on_own_ack`] and
///    every `ConversationSummary.last_seq` to [`InboundOrder::note_last_seq`]. Hand the
///    returned messages to the app in the order returned, then persist
///    [`InboundOrder::cursor`] of the conversations touched.
/// 3. After each call, ask [`InboundOrder::needs_sync`] for the conversation fed: when it says
///    `Some(from_seq)` and no sync of it is in flight, send `SyncRequest { from_seq }` and feed
///    the page back; repeat until it says `None`.
#[derive(Debug)]
pub struct InboundOrder {
    max_buffered: usize,
    convs: HashMap<String, ConvState>,
}

impl Default for InboundOrder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BUFFERED_PER_CONVERSATION)
    }
}

impl InboundOrder {
    /// Keeps at most `max_buffered` out-of-order entries per conversation; beyond that it
    /// forgets them and relies on sync.
    pub fn new(max_buffered: usize) -> Self {
        Self { max_buffered: max_buffered.max(1), convs: HashMap::new() }
    }

    /// The conversation's cursor: every seq at or below it has been seen. 0 when unknown.
    pub fn cursor(&self, conversation_id: &str) -> u64 {
        self.convs.get(conversation_id).map_or(0, |c| c.cursor)
    }

    /// Sets the cursor (e.g. from persistence). Buffered entries at or below it are dropped;
    /// entries now contiguous are dropped too unless released by the next call that releases.
    pub fn set_cursor(&mut self, conversation_id: &str, seq: u64) {
        let conv = self.conv(conversation_id);
        conv.cursor = seq;
        conv.known_last = conv.known_last.max(seq);
        conv.buffer.retain(|&first, slot| match slot {
            Slot::Missing(last) => *last > seq,
            _ => first > seq,
        });
    }

    /// Every conversation with its cursor.
    pub fn cursors(&self) -> impl Iterator<Item = (&str, u64)> {
        self.convs.iter().map(|(id, c)| (id.as_str(), c.cursor))
    }

    /// Number of out-of-order entries buffered for the conversation.
    pub fn buffered(&self, conversation_id: &str) -> usize {
        self.convs.get(conversation_id).map_or(0, |c| c.buffer.len())
    }

    /// A pushed (or otherwise received) message. Returns the messages now deliverable in seq
    /// order: empty for a duplicate (seq at or below the cursor, or already buffered) and for a
    /// message ahead of a gap (then [`InboundOrder::needs_sync`] says where to sync from).
    pub fn on_message(&mut self, msg: v1::Message) -> Vec<v1::Message> {
        let max = self.max_buffered;
        let seq = msg.seq;
        let conv = self.conv(&msg.conversation_id);
        let mut out = Vec::new();
        if seq == 0 {
            return out;
        }
        conv.put(seq, seq, Slot::Message(Box::new(msg)), Some(max));
        conv.release(&mut out);
        out
    }

    /// This device's own send was acknowledged at `seq`: the app has it (from the ack), so it is
    /// seen but never released as a message. If seqs before it are still unseen, it waits for
    /// them (and [`InboundOrder::needs_sync`] reports the gap). Returns messages it unblocked.
    pub fn on_own_ack(&mut self, conversation_id: &str, seq: u64) -> Vec<v1::Message> {
        let conv = self.conv(conversation_id);
        let mut out = Vec::new();
        if seq == 0 {
            return out;
        }
        // An own ack is kept even over the bound (there are at most as many as unacked sends):
        // forgetting it would make a later sync release the message again.
        conv.put(seq, seq, Slot::Own, None);
        conv.release(&mut out);
        out
    }

    /// The conversation's latest seq as the server reported it (e.g. `ConversationSummary`):
    /// a cursor below it means a sync is needed.
    pub fn note_last_seq(&mut self, conversation_id: &str, last_seq: u64) {
        let conv = self.conv(conversation_id);
        conv.known_last = conv.known_last.max(last_seq);
    }

    /// A sync page, assumed to have been requested from `needs_sync`'s `from_seq` (pages that
    /// start elsewhere are fine too: everything is keyed by seq). Applies its messages and its
    /// `missing` ranges (treated as seen). Returns the messages now deliverable in seq order.
    pub fn on_sync_page(&mut self, page: &v1::SyncPage) -> Vec<v1::Message> {
        let max = self.max_buffered;
        let conv = self.conv(&page.conversation_id);
        let before = conv.cursor;
        let mut out = Vec::new();
        // Ranges first so that a message inside a (bogus) overlapping range still wins when it
        // is contiguous; each put is followed by a release so nothing piles up in the buffer.
        let mut items: Vec<(u64, u64, Slot)> = Vec::with_capacity(page.messages.len());
        for r in &page.missing {
            if r.first > 0 && r.last >= r.first {
                items.push((r.first, r.last, Slot::Missing(r.last)));
            }
        }
        for m in &page.messages {
            if m.seq > 0
                && (m.conversation_id.is_empty() || m.conversation_id == page.conversation_id)
            {
                let mut m = m.clone();
                m.conversation_id.clone_from(&page.conversation_id);
                items.push((m.seq, m.seq, Slot::Message(Box::new(m))));
            }
        }
        items.sort_by_key(|(first, _, slot)| (*first, matches!(slot, Slot::Missing(_))));
        for (first, last, slot) in items {
            conv.put(first, last, slot, Some(max));
            conv.release(&mut out);
        }
        conv.known_last =
            conv.known_last.max(page.last_seq).max(page.next_from_seq.saturating_sub(1));
        if !page.has_more && conv.cursor == before && conv.buffer.is_empty() {
            // Nothing more on the server from where we asked and nothing held past a hole: what
            // said there was more (a list, an ack) is stale. Stop asking.
            conv.known_last = conv.cursor;
        }
        out
    }

    /// Gives up on the hole after the cursor: moves the cursor to just before the first buffered
    /// entry and releases from there. For a driver whose syncs keep making no progress while
    /// messages wait past the hole (a server that neither stores nor reports those seqs).
    /// Returns the released messages.
    pub fn skip_gap(&mut self, conversation_id: &str) -> Vec<v1::Message> {
        let conv = self.conv(conversation_id);
        let mut out = Vec::new();
        if let Some(&first) = conv.buffer.keys().next() {
            conv.cursor = conv.cursor.max(first.saturating_sub(1));
            conv.release(&mut out);
        }
        conv.known_last = conv.cursor.max(conv.buffered_last().unwrap_or(0));
        out
    }

    /// Where to sync the conversation from, when seqs between the cursor and the latest known
    /// seq are unseen; `None` when nothing is known to be missing.
    pub fn needs_sync(&self, conversation_id: &str) -> Option<u64> {
        let conv = self.convs.get(conversation_id)?;
        // Lazy: `cursor + 1` overflows when the cursor is u64::MAX (and then nothing is missing).
        (conv.known_last > conv.cursor).then(|| conv.cursor + 1)
    }

    /// Every conversation that needs a sync, with its `from_seq`.
    pub fn gaps(&self) -> Vec<(String, u64)> {
        self.convs
            .iter()
            .filter(|(_, c)| c.known_last > c.cursor)
            .map(|(id, c)| (id.clone(), c.cursor + 1))
            .collect()
    }

    fn conv(&mut self, conversation_id: &str) -> &mut ConvState {
        self.convs.entry(conversation_id.to_owned()).or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// Heartbeat

/// What the driver must do when a heartbeat deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Nothing yet.
    None,
    /// Send a Ping (then call [`Heartbeat::on_sent`]).
    Ping,
    /// The server has been silent too long: drop the connection and reconnect.
    Reconnect,
}

/// The heartbeat schedule of one logged-in connection.
///
/// Calling convention: create it from `LoginOk` with [`Heartbeat::from_login_ok`] at login time;
/// call [`Heartbeat::on_sent`] after every frame written and [`Heartbeat::on_received`] after
/// every frame read; arm a timer for [`Heartbeat::next_deadline`] and, when it fires, call
/// [`Heartbeat::poll`] and carry out its action. Re-read the deadline after every call.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: Option<Duration>,
    silence_timeout: Option<Duration>,
    last_tx: Instant,
    last_rx: Instant,
}

impl Heartbeat {
    /// Ping after `interval` without sending; give up after `silence_timeout` without receiving.
    /// A zero duration disables that rule.
    pub fn new(now: Instant, interval: Duration, silence_timeout: Duration) -> Self {
        Self {
            interval: (!interval.is_zero()).then_some(interval),
            silence_timeout: (!silence_timeout.is_zero()).then_some(silence_timeout),
            last_tx: now,
            last_rx: now,
        }
    }

    /// The schedule the server asked for: ping every `heartbeat_interval_ms`; consider the
    /// server gone after `idle_timeout_ms` of silence (or three intervals when the server sent
    /// no idle timeout). Answers to our pings keep a healthy connection from going silent.
    pub fn from_login_ok(now: Instant, ok: &v1::LoginOk) -> Self {
        let interval = Duration::from_millis(u64::from(ok.heartbeat_interval_ms));
        let silence = if ok.idle_timeout_ms > 0 {
            Duration::from_millis(u64::from(ok.idle_timeout_ms))
        } else {
            interval * 3
        };
        Self::new(now, interval, silence)
    }

    /// A frame was written at `now`.
    pub fn on_sent(&mut self, now: Instant) {
        self.last_tx = self.last_tx.max(now);
    }

    /// A frame was read at `now`.
    pub fn on_received(&mut self, now: Instant) {
        self.last_rx = self.last_rx.max(now);
    }

    /// When to send the next Ping if nothing else is sent before; `None` when disabled.
    pub fn ping_deadline(&self) -> Option<Instant> {
        self.interval.map(|i| self.last_tx + i)
    }

    /// When to give up on a silent server; `None` when disabled.
    pub fn silence_deadline(&self) -> Option<Instant> {
        self.silence_timeout.map(|t| self.last_rx + t)
    }

    /// The earlier of the two deadlines.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.ping_deadline(), self.silence_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What to do at `now`. Reconnect wins over Ping.
    pub fn poll(&self, now: Instant) -> HeartbeatAction {
        if self.silence_deadline().is_some_and(|d| now >= d) {
            HeartbeatAction::Reconnect
        } else if self.ping_deadline().is_some_and(|d| now >= d) {
            HeartbeatAction::Ping
        } else {
            HeartbeatAction::None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backoff

/// Reconnect delays: exponential growth from `min` to `max`, with full jitter.
///
/// Calling convention: before each reconnect attempt, sleep for [`Backoff::next_delay`] (pass a
/// fresh random `u64`); after a successful login, [`Backoff::reset`]. Attempt `n` (from 0)
/// draws uniformly from `[min, min(max, min * 2^n)]`, so the first retry comes after `min` and
/// many clients that lost the same server spread their returns out.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// 100 ms to 30 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Delays between `min` and `max` (`max` is raised to `min` if lower).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), attempt: 0 }
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt, drawn with `random`; counts the attempt.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let span = ceiling.saturating_sub(self.min).as_micros();
        let span = u64::try_from(span).unwrap_or(u64::MAX);
        let jitter = if span == 0 { 0 } else { random % (span.saturating_add(1)) };
        self.min + Duration::from_micros(jitter)
    }

    /// Attempts made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the first delay (after a successful login).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(conv: &str, seq: u64) -> v1::Message {
        v1::Message {
            conversation_id: conv.to_owned(),
            seq,
            sender_user_id: "bob".to_owned(),
            client_msg_id: format!("m{seq}"),
            body: format!("body {seq}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn seqs(v: &[v1::Message]) -> Vec<u64> {
        v.iter().map(|m| m.seq).collect()
    }

    fn page(
        conv: &str,
        msgs: &[u64],
        missing: &[(u64, u64)],
        next: u64,
        more: bool,
    ) -> v1::SyncPage {
        v1::SyncPage {
            conversation_id: conv.to_owned(),
            messages: msgs.iter().map(|&s| msg(conv, s)).collect(),
            missing: missing.iter().map(|&(first, last)| v1::SeqRange { first, last }).collect(),
            next_from_seq: next,
            has_more: more,
            last_seq: next.saturating_sub(1),
        }
    }

    #[test]
    fn outbox_keeps_insertion_order_and_removes_on_ack() {
        let mut o = Outbox::new(10);
        for id in ["c", "a", "b"] {
            assert_eq!(o.insert(id.to_owned(), id.to_uppercase()), Ok(None));
        }
        assert_eq!(o.insert("a".to_owned(), "again".to_owned()), Ok(Some("again".to_owned())));
        assert_eq!(o.ids(), ["c", "a", "b"]);
        assert_eq!(o.remove("a").as_deref(), Some("A"));
        assert_eq!(o.remove("a"), None);
        let resend: Vec<_> = o.iter().map(|(id, item)| (id.to_owned(), item.clone())).collect();
        assert_eq!(resend, [("c".to_owned(), "C".to_owned()), ("b".to_owned(), "B".to_owned())]);
        assert_eq!(o.len(), 2);
        assert!(o.contains("b") && !o.contains("a"));
    }

    #[test]
    fn outbox_is_bounded() {
        let mut o = Outbox::new(2);
        o.insert("1".to_owned(), ()).unwrap();
        o.insert("2".to_owned(), ()).unwrap();
        assert_eq!(o.insert("3".to_owned(), ()), Err(OutboxFull { capacity: 2 }));
        o.remove("1");
        assert_eq!(o.insert("3".to_owned(), ()), Ok(None));
        assert_eq!(o.ids(), ["2", "3"]);
    }

    #[test]
    fn in_order_messages_pass_and_duplicates_drop() {
        let mut io = InboundOrder::default();
        assert_eq!(seqs(&io.on_message(msg("c", 1))), [1]);
        assert_eq!(seqs(&io.on_message(msg("c", 2))), [2]);
        assert!(io.on_message(msg("c", 2)).is_empty());
        assert!(io.on_message(msg("c", 1)).is_empty());
        assert_eq!(io.cursor("c"), 2);
        assert_eq!(io.needs_sync("c"), None);
        // Conversations are independent.
        assert_eq!(seqs(&io.on_message(msg("d", 1))), [1]);
    }

    #[test]
    fn gap_then_sync_releases_in_order() {
        let mut io = InboundOrder::default();
        io.set_cursor("c", 3);
        assert!(io.on_message(msg("c", 6)).is_empty());
        assert!(io.on_message(msg("c", 7)).is_empty());
        assert!(io.on_message(msg("c", 7)).is_empty(), "duplicate of a buffered message");
        assert_eq!(io.needs_sync("c"), Some(4));
        assert_eq!(io.buffered("c"), 2);
        // The page overlaps what is buffered: no duplicates come out.
        let out = io.on_sync_page(&page("c", &[4, 5, 6, 7], &[], 8, false));
        assert_eq!(seqs(&out), [4, 5, 6, 7]);
        assert_eq!(io.cursor("c"), 7);
        assert_eq!(io.needs_sync("c"), None);
        assert_eq!(io.buffered("c"), 0);
    }

    #[test]
    fn push_filling_the_gap_releases_buffered() {
        let mut io = InboundOrder::default();
        assert!(io.on_message(msg("c", 2)).is_empty());
        assert!(io.on_message(msg("c", 3)).is_empty());
        assert_eq!(io.needs_sync("c"), Some(1));
        assert_eq!(seqs(&io.on_message(msg("c", 1))), [1, 2, 3]);
        assert_eq!(io.needs_sync("c"), None);
    }

    #[test]
    fn missing_ranges_count_as_seen() {
        let mut io = InboundOrder::default();
        assert!(io.on_message(msg("c", 9)).is_empty());
        let out = io.on_sync_page(&page("c", &[1, 2, 5], &[(3, 4), (6, 8)], 9, true));
        assert_eq!(seqs(&out), [1, 2, 5, 9]);
        assert_eq!(io.cursor("c"), 9);
        // The next page ends the sync.
        let out = io.on_sync_page(&page("c", &[10], &[], 11, false));
        assert_eq!(seqs(&out), [10]);
        assert_eq!(io.needs_sync("c"), None);
    }

    #[test]
    fn missing_range_ahead_of_cursor_is_buffered() {
        let mut io = InboundOrder::default();
        // A page that starts past a gap (e.g. fetched by someone else) only buffers.
        let out = io.on_sync_page(&page("c", &[5], &[(3, 4)], 6, true));
        assert!(out.is_empty());
        assert_eq!(io.needs_sync("c"), Some(1));
        assert_eq!(seqs(&io.on_sync_page(&page("c", &[1, 2], &[], 3, true))), [1, 2, 5]);
    }

    #[test]
    fn paged_sync_follows_needs_sync() {
        let mut io = InboundOrder::default();
        io.note_last_seq("c", 5);
        let mut got = Vec::new();
        let mut rounds = 0;
        while let Some(from) = io.needs_sync("c") {
            rounds += 1;
            assert!(rounds < 10, "sync never converged");
            let to = (from + 1).min(5);
            let msgs: Vec<u64> = (from..=to).collect();
            got.extend(seqs(&io.on_sync_page(&page("c", &msgs, &[], to + 1, to < 5))));
        }
        assert_eq!(got, [1, 2, 3, 4, 5]);
        assert_eq!(rounds, 3);
    }

    #[test]
    fn own_ack_next_in_line_advances_cursor() {
        let mut io = InboundOrder::default();
        io.set_cursor("c", 4);
        assert!(io.on_own_ack("c", 5).is_empty());
        assert_eq!(io.cursor("c"), 5);
        assert_eq!(io.needs_sync("c"), None);
        // A later push of the same seq (e.g. via sync) is a duplicate.
        assert!(io.on_message(msg("c", 5)).is_empty());
        // A duplicate ack below the cursor changes nothing.
        assert!(io.on_own_ack("c", 3).is_empty());
        assert_eq!(io.cursor("c"), 5);
    }

    #[test]
    fn own_ack_past_a_gap_waits_and_asks_for_sync() {
        let mut io = InboundOrder::default();
        io.set_cursor("c", 2);
        assert!(io.on_own_ack("c", 4).is_empty());
        assert_eq!(io.cursor("c"), 2, "seq 3 is still unseen");
        assert_eq!(io.needs_sync("c"), Some(3));
        assert!(io.on_message(msg("c", 5)).is_empty());
        // Sync returns 3, our own 4 (not released again) and 5 (already buffered).
        let out = io.on_sync_page(&page("c", &[3, 4, 5], &[], 6, false));
        assert_eq!(seqs(&out), [3, 5]);
        assert_eq!(io.cursor("c"), 5);
        assert_eq!(io.needs_sync("c"), None);
    }

    /// A copy of this device's own send arrived (pushed to a new connection, or synced)
    /// behind a gap, then its ack: the app has it from the ack, so once the gap fills the copy
    /// must not be released as a message too.
    #[test]
    fn an_own_ack_replaces_its_buffered_copy() {
        let mut io = InboundOrder::default();
        io.set_cursor("c", 1);
        assert!(io.on_message(msg("c", 3)).is_empty(), "behind the gap at 2");
        assert!(io.on_own_ack("c", 3).is_empty());
        assert_eq!(seqs(&io.on_message(msg("c", 2))), [2], "3 is own: seen, not released");
        assert_eq!(io.cursor("c"), 3);
        assert!(io.on_message(msg("c", 3)).is_empty(), "and later copies are duplicates");
    }

    #[test]
    fn own_ack_unblocks_buffered_messages() {
        let mut io = InboundOrder::default();
        io.set_cursor("c", 1);
        assert!(io.on_message(msg("c", 3)).is_empty());
        assert_eq!(io.needs_sync("c"), Some(2));
        assert_eq!(seqs(&io.on_own_ack("c", 2)), [3]);
        assert_eq!(io.needs_sync("c"), None);
    }

    #[test]
    fn buffer_is_bounded_and_sync_recovers() {
        let mut io = InboundOrder::new(3);
        for seq in 2..=10 {
            assert!(io.on_message(msg("c", seq)).is_empty());
        }
        assert_eq!(io.buffered("c"), 3);
        assert_eq!(io.needs_sync("c"), Some(1));
        let all: Vec<u64> = (1..=10).collect();
        assert_eq!(seqs(&io.on_sync_page(&page("c", &all, &[], 11, false))), all);
        assert_eq!(io.needs_sync("c"), None);
    }

    #[test]
    fn set_cursor_drops_buffered_below_it() {
        let mut io = InboundOrder::default();
        assert!(io.on_message(msg("c", 3)).is_empty());
        assert!(io.on_message(msg("c", 6)).is_empty());
        io.set_cursor("c", 4);
        assert_eq!(io.buffered("c"), 1);
        assert_eq!(seqs(&io.on_message(msg("c", 5))), [5, 6]);
        let cursors: Vec<_> = io.cursors().collect();
        assert_eq!(cursors, [("c", 6)]);
    }

    #[test]
    fn a_sync_that_makes_no_progress_stops_asking_unless_something_waits() {
        let mut io = InboundOrder::default();
        io.note_last_seq("c", 3);
        assert_eq!(io.needs_sync("c"), Some(1));
        // The server says there is nothing from 1 on (the list was stale).
        assert!(io.on_sync_page(&page("c", &[], &[], 1, false)).is_empty());
        assert_eq!(io.needs_sync("c"), None);
        assert_eq!(io.gaps(), Vec::<(String, u64)>::new());
        // A pushed message past the hole is evidence: the gap stays until it is filled...
        assert!(io.on_message(msg("c", 3)).is_empty());
        assert!(io.on_sync_page(&page("c", &[], &[], 1, false)).is_empty());
        assert_eq!(io.needs_sync("c"), Some(1));
        assert_eq!(io.gaps(), [("c".to_owned(), 1)]);
        // ...or the driver gives up on it.
        assert_eq!(seqs(&io.skip_gap("c")), [3]);
        assert_eq!(io.needs_sync("c"), None);
        assert_eq!(io.cursor("c"), 3);
    }

    #[test]
    fn seqs_at_the_top_of_the_range_do_not_overflow() {
        // Found by the `client_session` fuzz target: a missing range up to u64::MAX (from a
        // buggy or hostile server) moves the cursor to the top; `cursor + 1` then overflowed in
        // release() (a buffered message past the range) and in needs_sync().
        let mut io = InboundOrder::default();
        assert!(io.on_message(msg("c", 10)).is_empty());
        assert!(io.on_sync_page(&page("c", &[], &[(1, u64::MAX)], 0, false)).is_empty());
        assert_eq!(io.cursor("c"), u64::MAX);
        assert_eq!(io.buffered("c"), 0);
        assert_eq!(io.needs_sync("c"), None);
        assert!(io.on_message(msg("c", u64::MAX)).is_empty());
        assert!(io.on_own_ack("c", u64::MAX).is_empty());
        assert!(io.skip_gap("c").is_empty());
        assert_eq!(io.gaps(), Vec::<(String, u64)>::new());
    }

    #[test]
    fn heartbeat_pings_when_idle_and_gives_up_on_silence() {
        let t0 = Instant::now();
        let ok = v1::LoginOk {
            heartbeat_interval_ms: 1000,
            idle_timeout_ms: 3000,
            ..Default::default()
        };
        let mut hb = Heartbeat::from_login_ok(t0, &ok);
        assert_eq!(hb.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(hb.poll(t0 + Duration::from_millis(999)), HeartbeatAction::None);
        assert_eq!(hb.poll(t0 + Duration::from_secs(1)), HeartbeatAction::Ping);
        hb.on_sent(t0 + Duration::from_millis(500));
        assert_eq!(hb.ping_deadline(), Some(t0 + Duration::from_millis(1500)));
        assert_eq!(hb.poll(t0 + Duration::from_secs(1)), HeartbeatAction::None);
        assert_eq!(hb.silence_deadline(), Some(t0 + Duration::from_secs(3)));
        hb.on_received(t0 + Duration::from_secs(2));
        assert_eq!(hb.silence_deadline(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(hb.poll(t0 + Duration::from_secs(5)), HeartbeatAction::Reconnect);
    }

    #[test]
    fn heartbeat_defaults_silence_to_three_intervals_and_zero_disables() {
        let t0 = Instant::now();
        let ok = v1::LoginOk { heartbeat_interval_ms: 1000, ..Default::default() };
        let hb = Heartbeat::from_login_ok(t0, &ok);
        assert_eq!(hb.silence_deadline(), Some(t0 + Duration::from_secs(3)));
        let off = Heartbeat::new(t0, Duration::ZERO, Duration::ZERO);
        assert_eq!(off.next_deadline(), None);
        assert_eq!(off.poll(t0 + Duration::from_secs(3600)), HeartbeatAction::None);
    }

    #[test]
    fn backoff_grows_caps_jitters_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(u64::MAX), Duration::from_millis(100));
        // Attempt 1: [100 ms, 200 ms].
        assert_eq!(b.ceiling(), Duration::from_millis(200));
        assert_eq!(b.clone().next_delay(0), Duration::from_millis(100));
        assert_eq!(b.clone().next_delay(100_000), Duration::from_millis(200));
        assert_eq!(b.next_delay(50_000), Duration::from_millis(150));
        for _ in 0..40 {
            let d = b.next_delay(fastish(b.attempts()));
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_secs(30), "{d:?}");
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        assert_eq!(b.clone().next_delay(29_900_000), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(12345), Duration::from_millis(100));
    }

    /// A cheap deterministic spread of values for the jitter input.
    fn fastish(n: u32) -> u64 {
        u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}
