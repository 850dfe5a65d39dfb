//! A group member of `pairs --group-size M` (sans-IO, inside [`super::peer::Peer`]): it sends
//! its share of the messages to its group like a sender, receives every other member's
//! messages, and sends receipts like a real client in a group chat (PROTOCOL.md section 11):
//! per kind (DELIVERED, and READ unless `--no-read`: the chat is open, so everything delivered
//! is also read) at most one in flight, at most one per `--receipt-interval`, and only when the
//! highest seq seen is above what it last sent. ReceiptUpdate pushes (the other members'
//! receipts) are counted, not acted on; group events (CREATED) are counted and ignored.
//!
//! Request ids: Sends use the send time + 1 (as a pair's sender, below 2^62); the CreateGroup
//! and the receipts count up from [`OWN_IDS`], so an answer is never mistaken for the other.

use tern_proto::v1::envelope::Body;
use tern_proto::v1::{MessageKind, ReceiptKind};

use super::peer::{PeerError, Sender, code_name, error_text, frame_name};
use super::tally::Tally;
use super::wire;

/// The first request id of a member's own requests (CreateGroup, receipts).
pub const OWN_IDS: u64 = 1 << 62;

/// Message numbers a member keeps track of per other member (bitmap bits).
const MAX_MESSAGES_PER_MEMBER: u64 = 1 << 24;

/// Where a member sits: its group and its place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    /// Global member index (the stamp's `pair`): `group * size + j`.
    pub index: usize,
    /// Members per group.
    pub size: usize,
    /// Minimum time between two receipts of one kind, ns (0: one per received batch).
    pub receipt_interval_ns: u64,
    /// Whether READ receipts follow the DELIVERED ones.
    pub read: bool,
}

impl Seat {
    /// The global index of the group's first member.
    pub fn base(&self) -> usize {
        self.index - self.index % self.size
    }
}

/// One kind of receipt: what was sent, what is in flight, when the last one went.
#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    sent_seq: u64,
    in_flight: Option<u64>,
    last_sent_ns: Option<u64>,
}

impl Mark {
    fn settled(&self, highest: u64) -> bool {
        self.in_flight.is_none() && self.sent_seq >= highest
    }
}

/// A member's state.
#[derive(Debug)]
pub struct Member {
    /// The sending half (the pair sender's state).
    pub send: Sender,
    seat: Seat,
    nonce: u32,
    /// The group's conversation id (empty until the group exists).
    conversation_id: String,
    /// Request id of the CreateGroup in flight (the group's first member only).
    creating: Option<u64>,
    next_request_id: u64,
    highest_seq: u64,
    delivered_mark: Mark,
    read_mark: Mark,
    /// Per member of the group (by place), which of its messages arrived (bit k).
    seen: Vec<Vec<u64>>,
    /// Distinct messages of other members that arrived.
    pub delivered: u64,
}

impl Member {
    /// A member at `seat` of run `nonce` with its sending half.
    pub fn new(seat: Seat, nonce: u32, send: Sender) -> Self {
        Self {
            send,
            seat,
            nonce,
            conversation_id: String::new(),
            creating: None,
            next_request_id: OWN_IDS,
            highest_seq: 0,
            delivered_mark: Mark::default(),
            read_mark: Mark::default(),
            seen: vec![Vec::new(); seat.size],
            delivered: 0,
        }
    }

    /// Its seat.
    pub fn seat(&self) -> Seat {
        self.seat
    }

    /// The group's conversation id, once known.
    pub fn conversation(&self) -> Option<&str> {
        (!self.conversation_id.is_empty()).then_some(self.conversation_id.as_str())
    }

    /// The group is `conversation_id`: sends and receipts go there.
    pub fn set_conversation(&mut self, conversation_id: &str) {
        self.conversation_id.clear();
        self.conversation_id.push_str(conversation_id);
        self.send.set_conversation(conversation_id);
    }

    /// Appends the CreateGroup of `members` (the other members' user ids).
    pub fn create_group(
        &mut self,
        name: String,
        members: Vec<String>,
        client_request_id: String,
        out: &mut Vec<u8>,
    ) -> Result<(), PeerError> {
        let id = self.own_id();
        wire::create_group(name, members, client_request_id, id, out)?;
        self.creating = Some(id);
        Ok(())
    }

    fn own_id(&mut self) -> u64 {
        self.next_request_id += 1;
        self.next_request_id - 1
    }

    /// No receipt in flight or owed.
    pub fn receipts_settled(&self, receipts: bool) -> bool {
        !receipts
            || self.delivered_mark.settled(self.highest_seq)
                && (!self.seat.read || self.read_mark.settled(self.highest_seq))
    }

    /// Handles one frame after login (Kick, fatal errors and Pongs are the caller's); whether
    /// receipts may be due now.
    pub fn on_frame(
        &mut self,
        id: u64,
        body: Body,
        now_ns: u64,
        tally: &mut Tally,
        answered: &mut usize,
    ) -> Result<bool, PeerError> {
        let own = id >= OWN_IDS;
        match body {
            Body::SendAck(ack) if id != 0 && !own => {
                self.send.on_ack(id, ack.duplicate, now_ns, tally);
                *answered += 1;
            }
            Body::Error(e) if id != 0 && Some(id) == self.creating => {
                return Err(PeerError::GroupRefused(error_text(&e)));
            }
            Body::Error(e) if id != 0 && !own => {
                self.send.on_refused(code_name(e.code()), tally);
                *answered += 1;
            }
            Body::GroupInfo(g) if Some(id) == self.creating => {
                self.creating = None;
                self.set_conversation(&g.conversation_id);
            }
            Body::Deliver(d) => {
                let Some(m) = d.message else {
                    Tally::bump(&mut tally.other_frames, "Deliver without message");
                    return Ok(false);
                };
                if m.kind() == MessageKind::GroupEvent {
                    tally.group_events += 1;
                    return Ok(false);
                }
                self.highest_seq = self.highest_seq.max(m.seq);
                self.on_message(&m.body, now_ns, tally);
                return Ok(true);
            }
            Body::ReceiptUpdate(_) if id == 0 => tally.on_receipt_push(),
            Body::ReceiptUpdate(_) if self.answer(id) => {
                tally.receipt_answers += 1;
                return Ok(true);
            }
            Body::Error(e) if self.answer(id) => {
                Tally::bump(&mut tally.receipt_errors, code_name(e.code()));
            }
            other => Tally::bump(&mut tally.other_frames, &frame_name(&other)),
        }
        Ok(false)
    }

    /// Clears the receipt in flight with request id `id`; whether there was one.
    fn answer(&mut self, id: u64) -> bool {
        for mark in [&mut self.delivered_mark, &mut self.read_mark] {
            if mark.in_flight == Some(id) {
                mark.in_flight = None;
                return true;
            }
        }
        false
    }

    fn on_message(&mut self, body: &[u8], now_ns: u64, tally: &mut Tally) {
        let Some(st) = wire::parse_body(body) else {
            tally.foreign_deliveries += 1;
            return;
        };
        let from = st.pair as usize;
        if st.nonce != self.nonce {
            tally.foreign_deliveries += 1;
        } else if from == self.seat.index {
            Tally::bump(&mut tally.other_frames, "own message");
        } else if from < self.seat.base()
            || from >= self.seat.base() + self.seat.size
            || st.k >= MAX_MESSAGES_PER_MEMBER
        {
            tally.misrouted_deliveries += 1;
        } else if self.first_copy(from - self.seat.base(), st.k) {
            self.delivered += 1;
            tally.on_group_deliver(st.pair, st.k, st.sent_ns, now_ns);
        } else {
            tally.duplicate_deliveries += 1;
        }
    }

    fn first_copy(&mut self, place: usize, k: u64) -> bool {
        let Some(seen) = self.seen.get_mut(place) else { return false };
        let (word, bit) = ((k / 64) as usize, 1u64 << (k % 64));
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        let new = seen[word] & bit == 0;
        seen[word] |= bit;
        new
    }

    /// Appends the receipts due at `now_ns`; whether it wrote any.
    pub fn maybe_receipts(
        &mut self,
        receipts: bool,
        now_ns: u64,
        tally: &mut Tally,
        out: &mut Vec<u8>,
    ) -> Result<bool, PeerError> {
        if !receipts || self.conversation_id.is_empty() {
            return Ok(false);
        }
        let mut wrote = false;
        for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
            if kind == ReceiptKind::Read && !self.seat.read {
                continue;
            }
            let (highest, interval) = (self.highest_seq, self.seat.receipt_interval_ns);
            let mark = if kind == ReceiptKind::Read { self.read_mark } else { self.delivered_mark };
            let spaced = mark.last_sent_ns.is_none_or(|t| now_ns.saturating_sub(t) >= interval);
            if mark.in_flight.is_some() || highest <= mark.sent_seq || !spaced {
                continue;
            }
            let id = self.own_id();
            wire::receipt(&self.conversation_id, kind, highest, id, out)?;
            let mark = Mark { sent_seq: highest, in_flight: Some(id), last_sent_ns: Some(now_ns) };
            if kind == ReceiptKind::Read {
                self.read_mark = mark;
                tally.read_receipts_sent += 1;
            } else {
                self.delivered_mark = mark;
            }
            tally.on_receipt_sent();
            wrote = true;
        }
        Ok(wrote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairs::peer::{Peer, RunIds};
    use crate::pairs::tally::Window;
    use crate::pairs::wire::Stamp;
    use tern_proto::v1::{Deliver, Envelope, GroupInfo, LoginOk, Message, ReceiptUpdate, SendAck};

    const RUN: RunIds = RunIds { nonce: 5, receipts: true, register_push: false };
    const SEC: u64 = 1_000_000_000;

    use crate::pairs::peer::tests::{frame, frames};

    /// A message of member `from` (number `k`) at `seq`, or a group event.
    fn deliver(seq: u64, nonce: u32, from: u32, k: u64, kind: MessageKind) -> Vec<u8> {
        let mut body = Vec::new();
        wire::write_body(&Stamp { nonce, pair: from, k, sent_ns: 100 }, 64, &mut body);
        let message = Message {
            conversation_id: "g:1".into(),
            seq,
            kind: kind as i32,
            body: body.into(),
            ..Message::default()
        };
        frame(0, Body::Deliver(Deliver { message: Some(message) }))
    }

    /// The receipts in `envs`: (request id, kind, seq).
    fn receipts(envs: &[Envelope]) -> Vec<(u64, ReceiptKind, u64)> {
        envs.iter()
            .filter_map(|e| match &e.body {
                Some(Body::Receipt(r)) => Some((e.request_id, r.kind(), r.seq)),
                _ => None,
            })
            .collect()
    }

    /// Member 1 of group 1 (global 4..8), logged in.
    fn member(read: bool, tally: &mut Tally, out: &mut Vec<u8>) -> Peer {
        let seat = Seat { index: 5, size: 4, receipt_interval_ns: SEC, read };
        let mut p =
            Peer::member(seat, "tok".into(), 64, RUN, out).unwrap_or_else(|e| panic!("{e}"));
        frames(out);
        let ok = frame(1, Body::LoginOk(LoginOk::default()));
        assert!(p.feed(&ok, 0, tally, out).is_ok_and(|f| f.logged_in));
        p
    }

    fn answer(id: u64) -> Vec<u8> {
        frame(id, Body::ReceiptUpdate(ReceiptUpdate::default()))
    }

    #[test]
    fn the_first_member_creates_the_group_and_then_sends_to_it() {
        let mut tally = Tally::new(Window { start_ns: 0, end_ns: u64::MAX });
        let mut out = Vec::new();
        let mut p = member(true, &mut tally, &mut out);
        assert!(p.as_sender().is_none(), "no group yet: nothing to send to");
        assert!(p.send_next(10, None, &mut tally, &mut out).is_ok() && out.is_empty());
        let m = p.as_member_mut().unwrap_or_else(|| panic!("not a member"));
        assert_eq!(m.seat().base(), 4);
        let others = vec!["a".to_owned(), "b".to_owned()];
        assert!(m.create_group("n".into(), others, "crid".into(), &mut out).is_ok());
        let sent = frames(&mut out);
        assert_eq!(sent[0].request_id, OWN_IDS);
        let Some(Body::CreateGroup(c)) = &sent[0].body else { panic!("not a CreateGroup") };
        assert_eq!((c.member_user_ids.len(), c.client_request_id.as_str()), (2, "crid"));

        // A group event before the answer is counted and ignored.
        let info = GroupInfo { conversation_id: "g:1".into(), ..GroupInfo::default() };
        let both =
            [deliver(1, 5, 0, 0, MessageKind::GroupEvent), frame(OWN_IDS, Body::GroupInfo(info))];
        assert!(p.feed(&both.concat(), 20, &mut tally, &mut out).is_ok());
        assert!(out.is_empty(), "no receipt for a group event");
        assert_eq!(tally.group_events, 1);
        assert_eq!(p.as_member().and_then(|m| m.conversation()), Some("g:1"));

        assert!(p.send_next(1_000, None, &mut tally, &mut out).is_ok());
        let sent = frames(&mut out);
        let Some(Body::Send(s)) = &sent[0].body else { panic!("not a Send") };
        assert_eq!(s.conversation_id, "g:1");
        assert_eq!(wire::parse_body(&s.body).map(|st| (st.pair, st.k)), Some((5, 0)));
        let ack = frame(sent[0].request_id, Body::SendAck(SendAck::default()));
        assert_eq!(p.feed(&ack, 3_000, &mut tally, &mut out).ok().map(|f| f.answered), Some(1));
        assert_eq!(p.as_sender().map(|s| (s.acked, s.in_flight)), Some((1, 0)));
        assert_eq!(tally.ack_us, vec![2]);

        // A refused CreateGroup ends the connection.
        let mut q = member(true, &mut tally, &mut out);
        let m = q.as_member_mut().unwrap_or_else(|| panic!("not a member"));
        assert!(m.create_group("n".into(), Vec::new(), "c".into(), &mut out).is_ok());
        let refused = frame(OWN_IDS, Body::Error(tern_proto::v1::Error::default()));
        let e = q.feed(&refused, 0, &mut tally, &mut out).err();
        assert_eq!(e.map(|e| e.kind()), Some("group_refused"));
    }

    #[test]
    fn a_member_receipts_per_kind_one_in_flight_and_one_per_interval() {
        let mut tally = Tally::new(Window { start_ns: 0, end_ns: u64::MAX });
        tally.fanout_expect = 3;
        let mut out = Vec::new();
        let mut p = member(true, &mut tally, &mut out);
        if let Some(m) = p.as_member_mut() {
            m.set_conversation("g:1");
        }
        let n = MessageKind::Normal;
        // One batch: messages of members 4 and 7; DELIVERED and READ for its highest seq.
        let batch = [deliver(2, 5, 4, 0, n), deliver(3, 5, 7, 0, n)].concat();
        assert!(p.feed(&batch, SEC, &mut tally, &mut out).is_ok());
        let (d1, r1) = (OWN_IDS, OWN_IDS + 1);
        assert_eq!(
            receipts(&frames(&mut out)),
            vec![(d1, ReceiptKind::Delivered, 3), (r1, ReceiptKind::Read, 3)]
        );
        // More while both are in flight: none; then the answers, still inside the interval:
        // none either; the tick after the interval sends both for the highest seq.
        assert!(p.feed(&deliver(4, 5, 4, 1, n), SEC + 10, &mut tally, &mut out).is_ok());
        let answers = [answer(d1), answer(r1)].concat();
        assert!(p.feed(&answers, SEC + 20, &mut tally, &mut out).is_ok());
        assert!(out.is_empty() && !p.receipts_settled());
        assert!(p.tick(SEC + SEC / 2, &mut tally, &mut out).is_ok_and(|w| !w));
        assert!(p.tick(2 * SEC, &mut tally, &mut out).is_ok_and(|w| w));
        let sent = receipts(&frames(&mut out));
        assert_eq!(
            sent.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
            vec![(ReceiptKind::Delivered, 4), (ReceiptKind::Read, 4)]
        );
        let answers = [answer(sent[0].0), answer(sent[1].0)].concat();
        assert!(p.feed(&answers, 2 * SEC + 1, &mut tally, &mut out).is_ok());
        assert!(p.receipts_settled());

        // Pushes are counted; own, other groups', other runs' and repeated messages apart.
        let odd = [
            frame(0, Body::ReceiptUpdate(ReceiptUpdate::default())),
            deliver(5, 5, 5, 0, n),
            deliver(6, 5, 8, 0, n),
            deliver(7, 9, 4, 0, n),
            deliver(8, 5, 4, 0, n),
        ];
        assert!(p.feed(&odd.concat(), 3 * SEC, &mut tally, &mut out).is_ok());
        assert_eq!(p.delivered(), 3);
        assert_eq!((tally.delivered, tally.duplicate_deliveries), (3, 1));
        assert_eq!((tally.misrouted_deliveries, tally.foreign_deliveries), (1, 1));
        assert_eq!(tally.other_frames.get("own message"), Some(&1));
        assert_eq!(tally.receipt_pushes, 1);
        // (Every Deliver moves the highest seq seen, also a foreign one: two more receipts.)
        let counts = (tally.receipts_sent, tally.read_receipts_sent, tally.receipt_answers);
        assert_eq!(counts, (6, 3, 4));
        // Three of its group's messages, each at one member of three so far.
        assert_eq!(tally.fanout.len(), 3);
    }

    #[test]
    fn without_read_and_without_an_interval_it_is_the_pairs_receiver_rule() {
        let mut tally = Tally::new(Window { start_ns: 0, end_ns: u64::MAX });
        let mut out = Vec::new();
        let mut p = member(false, &mut tally, &mut out);
        if let Some(m) = p.as_member_mut() {
            m.set_conversation("g:1");
            m.seat.receipt_interval_ns = 0;
        }
        let n = MessageKind::Normal;
        assert!(p.feed(&deliver(2, 5, 4, 0, n), 10, &mut tally, &mut out).is_ok());
        assert_eq!(receipts(&frames(&mut out)), vec![(OWN_IDS, ReceiptKind::Delivered, 2)]);
        assert!(p.feed(&deliver(3, 5, 4, 1, n), 20, &mut tally, &mut out).is_ok());
        assert!(out.is_empty());
        // Its answer lets the next one out at once.
        assert!(p.feed(&answer(OWN_IDS), 30, &mut tally, &mut out).is_ok());
        assert_eq!(receipts(&frames(&mut out)), vec![(OWN_IDS + 1, ReceiptKind::Delivered, 3)]);
        assert_eq!(tally.read_receipts_sent, 0);
    }
}
