//! One `pairs` connection as a sans-IO state machine: [`Peer`], a sender or a receiver, fed the
//! bytes of each read and appending its frames to an output buffer the driver writes.
//!
//! Senders stamp each Send with its send time (in the body, and as the request id, so that an
//! ack is timed without a table) and ignore the ReceiptUpdate pushes they get. Receivers do what
//! the protocol asks of a real client (PROTOCOL.md section 11): one DELIVERED receipt per
//! received batch of Delivers (a batch is what one read returned), at most one in flight; when
//! its answer comes, the next one goes out for the highest seq seen, if that moved.

use tern_proto::v1::envelope::Body;
use tern_proto::v1::{Envelope, ErrorCode};
use tern_proto::{FrameDecoder, FrameError};

use super::tally::Tally;
use super::wire::{self, SendEncoder, Stamp};

/// Message numbers a receiver keeps track of (its bitmap of seen messages is at most this many
/// bits: 32 MiB); a body claiming a higher one is counted as misrouted.
const MAX_MESSAGES_PER_PAIR: u64 = 1 << 28;

/// Why a connection ended, and whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The server sent bytes that are not a frame (its fault).
    #[error("bad frame from server: {0}")]
    Frame(#[from] FrameError),
    /// The server refused the Login.
    #[error("login rejected: {0}")]
    LoginRejected(String),
    /// The server sent Kick.
    #[error("kicked (reason {0})")]
    Kicked(i32),
    /// The server sent a fatal Error after login.
    #[error("fatal server error: {0}")]
    Fatal(String),
    /// The server closed the connection.
    #[error("closed by the server")]
    Closed,
    /// A socket call failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

impl PeerError {
    /// The failure kind counted in the report.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerError::Frame(_) => "protocol",
            PeerError::LoginRejected(_) => "login_rejected",
            PeerError::Kicked(_) => "kicked",
            PeerError::Fatal(_) => "server_error",
            PeerError::Closed => "closed",
            PeerError::Io(_) => "io",
        }
    }
}

/// A sender's state.
#[derive(Debug)]
pub struct Sender {
    enc: SendEncoder,
    /// Sends written and not answered yet.
    pub in_flight: usize,
    /// Sends written so far (the next message's number).
    pub sent: u64,
    /// Sends acked so far.
    pub acked: u64,
    last_request_id: u64,
}

/// A receiver's state.
#[derive(Debug)]
pub struct Receiver {
    conversation_id: String,
    /// Highest seq of a Deliver so far.
    highest_seq: u64,
    /// Seq of the last receipt sent.
    receipt_seq: u64,
    /// Request id of the receipt in flight.
    receipt_in_flight: Option<u64>,
    next_request_id: u64,
    /// Which message numbers of its pair arrived (bit k).
    seen: Vec<u64>,
    /// Distinct messages of its pair that arrived.
    pub delivered: u64,
}

/// The role of a connection.
#[derive(Debug)]
pub enum Role {
    /// `{prefix}s{i}`: sends to its receiver.
    Sender(Sender),
    /// `{prefix}r{i}`: receives and sends receipts.
    Receiver(Receiver),
}

/// What the run shares with every peer.
#[derive(Debug, Clone, Copy)]
pub struct RunIds {
    /// This run's random nonce (in every body and client message id).
    pub nonce: u32,
    /// Whether receivers send DELIVERED receipts (`--no-receipts` turns them off).
    pub receipts: bool,
}

/// What a fed batch changed that the driver acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fed {
    /// LoginOk arrived in this batch.
    pub logged_in: bool,
    /// Sends answered (acked or refused): window slots the driver may fill again.
    pub answered: usize,
}

/// One connection of a pair.
///
/// Calling convention: [`Peer::sender`] / [`Peer::receiver`] append the Login to `out`; feed
/// every read's bytes to [`Peer::feed`] (with the run clock, nanoseconds since the epoch) and
/// write what it appended to `out`; a sender's next message goes out with
/// [`Peer::send_next`]; [`Peer::ping`] when the connection was silent. Any `Err` ends it.
#[derive(Debug)]
pub struct Peer {
    /// Pair index.
    pub pair: usize,
    /// Sender or receiver state.
    pub role: Role,
    /// Whether LoginOk arrived.
    pub logged_in: bool,
    /// The heartbeat interval the server announced, ms.
    pub heartbeat_ms: u64,
    /// Run clock of the last frame appended to `out`.
    pub last_write_ns: u64,
    run: RunIds,
    decoder: FrameDecoder,
    /// The incomplete tail of a frame, kept between reads.
    pending: Vec<u8>,
}

impl Peer {
    /// The sender of pair `pair` logging in with `token`.
    pub fn sender(
        pair: usize,
        token: String,
        conversation_id: String,
        body_bytes: usize,
        run: RunIds,
        out: &mut Vec<u8>,
    ) -> Result<Self, PeerError> {
        wire::login(token, out)?;
        let s = Sender {
            enc: SendEncoder::new(conversation_id, body_bytes, run.nonce),
            in_flight: 0,
            sent: 0,
            acked: 0,
            last_request_id: 1,
        };
        Ok(Self::new(pair, Role::Sender(s), run))
    }

    /// The receiver of pair `pair` logging in with `token`.
    pub fn receiver(
        pair: usize,
        token: String,
        conversation_id: String,
        run: RunIds,
        out: &mut Vec<u8>,
    ) -> Result<Self, PeerError> {
        wire::login(token, out)?;
        let r = Receiver {
            conversation_id,
            highest_seq: 0,
            receipt_seq: 0,
            receipt_in_flight: None,
            next_request_id: 2,
            seen: Vec::new(),
            delivered: 0,
        };
        Ok(Self::new(pair, Role::Receiver(r), run))
    }

    fn new(pair: usize, role: Role, run: RunIds) -> Self {
        Self {
            pair,
            role,
            logged_in: false,
            heartbeat_ms: 30_000,
            last_write_ns: 0,
            run,
            decoder: FrameDecoder::default(),
            pending: Vec::new(),
        }
    }

    /// The sender state (`None` for a receiver).
    pub fn as_sender(&self) -> Option<&Sender> {
        match &self.role {
            Role::Sender(s) => Some(s),
            Role::Receiver(_) => None,
        }
    }

    /// Distinct messages delivered (0 for a sender).
    pub fn delivered(&self) -> u64 {
        match &self.role {
            Role::Receiver(r) => r.delivered,
            Role::Sender(_) => 0,
        }
    }

    /// A receiver with no receipt in flight or owed (always true for a sender).
    pub fn receipts_settled(&self) -> bool {
        match &self.role {
            Role::Receiver(r) => {
                !self.run.receipts
                    || r.receipt_in_flight.is_none() && r.receipt_seq >= r.highest_seq
            }
            Role::Sender(_) => true,
        }
    }

    /// Appends the sender's next message, stamped `now_ns` (`lag_ns` behind its schedule).
    /// Does nothing on a receiver.
    pub fn send_next(
        &mut self,
        now_ns: u64,
        lag_ns: Option<u64>,
        tally: &mut Tally,
        out: &mut Vec<u8>,
    ) -> Result<(), PeerError> {
        let Role::Sender(s) = &mut self.role else { return Ok(()) };
        // The request id is the send time + 1 (never 0), strictly increasing per connection.
        let request_id = (now_ns + 1).max(s.last_request_id + 1);
        let sent_ns = request_id - 1;
        let stamp = Stamp { nonce: self.run.nonce, pair: self.pair as u32, k: s.sent, sent_ns };
        s.enc.encode(&stamp, request_id, out)?;
        s.last_request_id = request_id;
        s.sent += 1;
        s.in_flight += 1;
        self.last_write_ns = now_ns;
        tally.on_send(sent_ns, lag_ns);
        Ok(())
    }

    /// Appends a Ping.
    pub fn ping(
        &mut self,
        now_ns: u64,
        tally: &mut Tally,
        out: &mut Vec<u8>,
    ) -> Result<(), PeerError> {
        let id = match &mut self.role {
            Role::Sender(s) => {
                s.last_request_id = (now_ns + 1).max(s.last_request_id + 1);
                s.last_request_id
            }
            Role::Receiver(r) => {
                r.next_request_id += 1;
                r.next_request_id - 1
            }
        };
        wire::ping(id, out)?;
        self.last_write_ns = now_ns;
        tally.pings += 1;
        Ok(())
    }

    /// Feeds the bytes of one read that arrived at `now_ns`.
    pub fn feed(
        &mut self,
        data: &[u8],
        now_ns: u64,
        tally: &mut Tally,
        out: &mut Vec<u8>,
    ) -> Result<Fed, PeerError> {
        let mut fed = Fed::default();
        let mut delivers = false;
        if self.pending.is_empty() {
            let used = self.decode_all(data, now_ns, tally, &mut fed, &mut delivers)?;
            self.pending.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(data);
            let used = self.decode_all(&buf, now_ns, tally, &mut fed, &mut delivers)?;
            buf.drain(..used);
            self.pending = buf;
        }
        if delivers {
            self.maybe_receipt(now_ns, tally, out)?;
        }
        Ok(fed)
    }

    fn decode_all(
        &mut self,
        buf: &[u8],
        now_ns: u64,
        tally: &mut Tally,
        fed: &mut Fed,
        delivers: &mut bool,
    ) -> Result<usize, PeerError> {
        let mut used = 0;
        // Bounded: every iteration consumes at least the 4-byte prefix.
        while let Some((env, n)) = self.decoder.decode_slice(&buf[used..])? {
            used += n;
            self.on_frame(env, now_ns, tally, fed, delivers)?;
        }
        Ok(used)
    }

    fn on_frame(
        &mut self,
        env: Envelope,
        now_ns: u64,
        tally: &mut Tally,
        fed: &mut Fed,
        delivers: &mut bool,
    ) -> Result<(), PeerError> {
        let id = env.request_id;
        let Some(body) = env.body else {
            Tally::bump(&mut tally.other_frames, "empty");
            return Ok(());
        };
        if !self.logged_in {
            return match body {
                Body::LoginOk(ok) => {
                    self.logged_in = true;
                    fed.logged_in = true;
                    if ok.heartbeat_interval_ms > 0 {
                        self.heartbeat_ms = u64::from(ok.heartbeat_interval_ms);
                    }
                    Ok(())
                }
                Body::Error(e) => Err(PeerError::LoginRejected(error_text(&e))),
                Body::Kick(k) => Err(PeerError::Kicked(k.reason)),
                other => {
                    Tally::bump(&mut tally.other_frames, &frame_name(&other));
                    Ok(())
                }
            };
        }
        match (&mut self.role, body) {
            (_, Body::Kick(k)) => return Err(PeerError::Kicked(k.reason)),
            (_, Body::Error(e)) if e.fatal => return Err(PeerError::Fatal(error_text(&e))),
            (_, Body::Pong(_)) => tally.pongs += 1,
            (Role::Sender(s), Body::SendAck(ack)) if id != 0 => {
                s.in_flight = s.in_flight.saturating_sub(1);
                s.acked += 1;
                fed.answered += 1;
                tally.on_ack(id - 1, now_ns, ack.duplicate);
            }
            (Role::Sender(s), Body::Error(e)) if id != 0 => {
                s.in_flight = s.in_flight.saturating_sub(1);
                fed.answered += 1;
                Tally::bump(&mut tally.send_errors, code_name(e.code()));
            }
            (Role::Sender(_), Body::ReceiptUpdate(_)) if id == 0 => tally.receipt_pushes += 1,
            (Role::Receiver(r), Body::Deliver(d)) => {
                let Some(m) = d.message else {
                    Tally::bump(&mut tally.other_frames, "Deliver without message");
                    return Ok(());
                };
                r.highest_seq = r.highest_seq.max(m.seq);
                *delivers = true;
                match wire::parse_body(&m.body) {
                    Some(st) if st.nonce != self.run.nonce => tally.foreign_deliveries += 1,
                    Some(st) if st.pair as usize != self.pair || st.k >= MAX_MESSAGES_PER_PAIR => {
                        tally.misrouted_deliveries += 1
                    }
                    Some(st) => {
                        if r.first_copy(st.k) {
                            r.delivered += 1;
                            tally.on_deliver(st.sent_ns, now_ns);
                        } else {
                            tally.duplicate_deliveries += 1;
                        }
                    }
                    None => tally.foreign_deliveries += 1,
                }
            }
            (Role::Receiver(r), Body::ReceiptUpdate(_)) if Some(id) == r.receipt_in_flight => {
                r.receipt_in_flight = None;
                tally.receipt_answers += 1;
                *delivers = true;
            }
            (Role::Receiver(r), Body::Error(e)) if Some(id) == r.receipt_in_flight => {
                r.receipt_in_flight = None;
                Tally::bump(&mut tally.receipt_errors, code_name(e.code()));
            }
            (_, other) => Tally::bump(&mut tally.other_frames, &frame_name(&other)),
        }
        Ok(())
    }

    /// A receiver with no receipt in flight sends one for the highest seq seen, if it moved.
    fn maybe_receipt(
        &mut self,
        now_ns: u64,
        tally: &mut Tally,
        out: &mut Vec<u8>,
    ) -> Result<(), PeerError> {
        let Role::Receiver(r) = &mut self.role else { return Ok(()) };
        if !self.run.receipts || r.receipt_in_flight.is_some() || r.highest_seq <= r.receipt_seq {
            return Ok(());
        }
        let id = r.next_request_id;
        wire::receipt(&r.conversation_id, r.highest_seq, id, out)?;
        r.next_request_id += 1;
        r.receipt_in_flight = Some(id);
        r.receipt_seq = r.highest_seq;
        self.last_write_ns = now_ns;
        tally.on_receipt_sent();
        Ok(())
    }
}

impl Receiver {
    /// Marks message `k` seen; whether it was new.
    fn first_copy(&mut self, k: u64) -> bool {
        let (word, bit) = ((k / 64) as usize, 1u64 << (k % 64));
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        let new = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        new
    }
}

/// A frame's kind for the report (`SyncHint`, `Error NOT_A_MEMBER`...).
fn frame_name(body: &Body) -> String {
    match body {
        Body::Error(e) => return format!("Error {}", code_name(e.code())),
        Body::SyncHint(h) => return format!("SyncHint {}", h.reason),
        _ => {}
    }
    let text = format!("{body:?}");
    text.split('(').next().unwrap_or("?").to_owned()
}

fn error_text(e: &tern_proto::v1::Error) -> String {
    format!("{}: {}", code_name(e.code()), e.message)
}

/// `ERROR_CODE_RATE_LIMITED` → `RATE_LIMITED`.
pub fn code_name(code: ErrorCode) -> &'static str {
    let name = code.as_str_name();
    name.strip_prefix("ERROR_CODE_").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairs::tally::Window;
    use tern_proto::v1::{Deliver, Kick, LoginOk, Message, ReceiptUpdate, SendAck};
    use tern_proto::{DEFAULT_MAX_FRAME_BYTES, encode_to_bytes};

    const RUN: RunIds = RunIds { nonce: 9, receipts: true };

    fn frame(request_id: u64, body: Body) -> Vec<u8> {
        let env = Envelope { request_id, body: Some(body) };
        encode_to_bytes(&env, DEFAULT_MAX_FRAME_BYTES).map(|b| b.to_vec()).unwrap_or_default()
    }

    fn deliver(seq: u64, nonce: u32, pair: u32, k: u64) -> Vec<u8> {
        let mut body = Vec::new();
        wire::write_body(&Stamp { nonce, pair, k, sent_ns: 100 }, 64, &mut body);
        let message = Message {
            conversation_id: "dm:a:b".into(),
            seq,
            body: body.into(),
            ..Message::default()
        };
        frame(0, Body::Deliver(Deliver { message: Some(message) }))
    }

    /// The frames in `out` (drained).
    fn frames(out: &mut Vec<u8>) -> Vec<Envelope> {
        let (dec, mut at, mut v) = (FrameDecoder::default(), 0, Vec::new());
        while let Ok(Some((env, n))) = dec.decode_slice(&out[at..]) {
            at += n;
            v.push(env);
        }
        assert_eq!(at, out.len());
        out.clear();
        v
    }

    fn receipt_of(env: &Envelope) -> Option<(u64, u64)> {
        match &env.body {
            Some(Body::Receipt(r)) => Some((env.request_id, r.seq)),
            _ => None,
        }
    }

    fn logged_in(peer: &mut Peer, tally: &mut Tally, out: &mut Vec<u8>) {
        let ok =
            frame(1, Body::LoginOk(LoginOk { heartbeat_interval_ms: 500, ..LoginOk::default() }));
        let fed = peer.feed(&ok, 0, tally, out).unwrap_or_else(|e| panic!("login: {e}"));
        assert!(fed.logged_in && peer.logged_in);
        assert_eq!(peer.heartbeat_ms, 500);
    }

    #[test]
    fn a_receiver_sends_one_receipt_per_batch_and_one_in_flight() {
        let mut tally = Tally::new(Window { start_ns: 0, end_ns: u64::MAX });
        let mut out = Vec::new();
        let mut r = Peer::receiver(2, "tok".into(), "dm:a:b".into(), RUN, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(frames(&mut out)[0].body, Some(Body::Login(_))));
        logged_in(&mut r, &mut tally, &mut out);

        // One batch of three, the last split off: one receipt, for the highest seq.
        let mut batch = [deliver(1, 9, 2, 0), deliver(2, 9, 2, 1), deliver(3, 9, 2, 2)].concat();
        let tail = batch.split_off(batch.len() - 5);
        assert!(r.feed(&batch, 1_000, &mut tally, &mut out).is_ok());
        let sent = frames(&mut out);
        assert_eq!(sent.iter().filter_map(receipt_of).collect::<Vec<_>>(), vec![(2, 2)]);
        // The split tail and a duplicate arrive while the receipt is in flight: none more.
        assert!(r.feed(&[tail, deliver(3, 9, 2, 2)].concat(), 2_000, &mut tally, &mut out).is_ok());
        assert!(out.is_empty());
        assert!(!r.receipts_settled());
        // Its answer: the next receipt goes out, for the highest seq seen.
        let answer = frame(
            2,
            Body::ReceiptUpdate(ReceiptUpdate { delivered_seq: 2, ..ReceiptUpdate::default() }),
        );
        assert!(r.feed(&answer, 3_000, &mut tally, &mut out).is_ok());
        assert_eq!(
            frames(&mut out).iter().filter_map(receipt_of).collect::<Vec<_>>(),
            vec![(3, 3)]
        );
        let answer = frame(
            3,
            Body::ReceiptUpdate(ReceiptUpdate { delivered_seq: 3, ..ReceiptUpdate::default() }),
        );
        assert!(r.feed(&answer, 4_000, &mut tally, &mut out).is_ok());
        assert!(out.is_empty() && r.receipts_settled());

        // Other runs' and other pairs' messages are counted apart.
        assert!(
            r.feed(
                &[deliver(4, 8, 2, 0), deliver(5, 9, 1, 0)].concat(),
                5_000,
                &mut tally,
                &mut out
            )
            .is_ok()
        );
        assert_eq!(r.delivered(), 3);
        assert_eq!((tally.delivered, tally.duplicate_deliveries), (3, 1));
        assert_eq!((tally.foreign_deliveries, tally.misrouted_deliveries), (1, 1));
        assert_eq!((tally.receipts_sent, tally.receipt_answers), (3, 2));
        assert_eq!(tally.deliver_us, vec![0, 0, 1]);
    }

    #[test]
    fn a_sender_times_acks_by_request_id_and_counts_refusals_and_pushes() {
        let mut tally = Tally::new(Window { start_ns: 0, end_ns: u64::MAX });
        let mut out = Vec::new();
        let mut s = Peer::sender(0, "tok".into(), "dm:a:b".into(), 64, RUN, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        frames(&mut out);
        logged_in(&mut s, &mut tally, &mut out);
        for now in [5_000, 5_000] {
            assert!(s.send_next(now, Some(0), &mut tally, &mut out).is_ok());
        }
        let ids: Vec<u64> = frames(&mut out).iter().map(|e| e.request_id).collect();
        assert_eq!(ids, vec![5_001, 5_002]);
        assert_eq!(s.as_sender().map(|x| (x.sent, x.in_flight)), Some((2, 2)));

        let ack = frame(5_001, Body::SendAck(SendAck { seq: 1, ..SendAck::default() }));
        let refused = frame(
            5_002,
            Body::Error(tern_proto::v1::Error {
                code: ErrorCode::RateLimited as i32,
                ..tern_proto::v1::Error::default()
            }),
        );
        let push = frame(0, Body::ReceiptUpdate(ReceiptUpdate::default()));
        let fed = s.feed(&[ack, refused, push].concat(), 2_005_000, &mut tally, &mut out);
        assert_eq!(fed.ok(), Some(Fed { logged_in: false, answered: 2 }));
        assert_eq!(s.as_sender().map(|x| (x.acked, x.in_flight)), Some((1, 0)));
        assert_eq!(tally.ack_us, vec![2_000]);
        assert_eq!(tally.send_errors.get("RATE_LIMITED"), Some(&1));
        assert_eq!(tally.receipt_pushes, 1);

        let kick = frame(0, Body::Kick(Kick { reason: 2, message: String::new() }));
        assert!(matches!(s.feed(&kick, 0, &mut tally, &mut out), Err(PeerError::Kicked(2))));
    }

    #[test]
    fn a_refused_login_fails_the_connection() {
        let mut tally = Tally::new(Window { start_ns: 0, end_ns: 1 });
        let mut out = Vec::new();
        let mut s = Peer::sender(0, "tok".into(), "dm:a:b".into(), 64, RUN, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let err =
            frame(1, Body::Error(tern_proto::v1::Error { fatal: true, ..Default::default() }));
        let e = s.feed(&err, 0, &mut tally, &mut out).err();
        assert_eq!(e.map(|e| e.kind()), Some("login_rejected"));
    }
}
