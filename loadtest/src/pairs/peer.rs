//! One `pairs` connection as a sans-IO state machine: [`Peer`], a sender or a receiver, fed the
//! bytes of each read and appending its frames to an output buffer the driver writes.
//!
//! Senders stamp each Send with its send time (in the body, and as the request id, so that an
//! ack is timed without a table) and ignore the ReceiptUpdate pushes they get. Receivers do what
//! the protocol asks of a real client (PROTOCOL.md section 11): one DELIVERED receipt per
//! received batch of Delivers (a batch is what one read returned), at most one in flight; when
//! its answer comes, the next one goes out for the highest seq seen, if that moved.
//!
//! A group member ([`Role::Member`], `--group-size`) is both: its state and frames are in
//! [`super::member`].

use tern_proto::v1::envelope::Body;
use tern_proto::v1::{Envelope, ErrorCode, ReceiptKind};
use tern_proto::{FrameDecoder, FrameError};

use super::member::{Member, Seat};
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
    /// The server refused the CreateGroup.
    #[error("group not created: {0}")]
    GroupRefused(String),
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
            PeerError::GroupRefused(_) => "group_refused",
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

impl Sender {
    fn new(conversation_id: String, body_bytes: usize, nonce: u32) -> Self {
        Self {
            enc: SendEncoder::new(conversation_id, body_bytes, nonce),
            in_flight: 0,
            sent: 0,
            acked: 0,
            last_request_id: 1,
        }
    }

    /// Sends go to `conversation_id` from now on.
    pub fn set_conversation(&mut self, conversation_id: &str) {
        self.enc.set_conversation(conversation_id);
    }

    /// The SendAck of request `id` (the send time + 1) arrived at `now_ns`.
    pub fn on_ack(&mut self, id: u64, duplicate: bool, now_ns: u64, tally: &mut Tally) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.acked += 1;
        tally.on_ack(id - 1, now_ns, duplicate);
    }

    /// A Send was refused with `code`.
    pub fn on_refused(&mut self, code: &str, tally: &mut Tally) {
        self.in_flight = self.in_flight.saturating_sub(1);
        Tally::bump(&mut tally.send_errors, code);
    }

    /// The next request id for a frame written at `now_ns` (the send time + 1, never 0,
    /// strictly increasing per connection).
    fn next_id(&mut self, now_ns: u64) -> u64 {
        self.last_request_id = (now_ns + 1).max(self.last_request_id + 1);
        self.last_request_id
    }
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
    /// `{prefix}g{g}m{j}` (`--group-size`): sends to its group, receives, sends receipts.
    Member(Box<Member>),
}

/// What the run shares with every peer.
#[derive(Debug, Clone, Copy)]
pub struct RunIds {
    /// This run's random nonce (in every body and client message id).
    pub nonce: u32,
    /// Whether receivers send DELIVERED receipts (`--no-receipts` turns them off).
    pub receipts: bool,
    /// Whether receivers and members register a (webhook) push token after login
    /// (`--register-push`): the server then plans an offline push for every message to them.
    pub register_push: bool,
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
        let s = Sender::new(conversation_id, body_bytes, run.nonce);
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
        if run.register_push {
            wire::register_push(pair, out)?;
        }
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

    /// The group member at `seat` logging in with `token` (its group's id comes later).
    pub fn member(
        seat: Seat,
        token: String,
        body_bytes: usize,
        run: RunIds,
        out: &mut Vec<u8>,
    ) -> Result<Self, PeerError> {
        wire::login(token, out)?;
        if run.register_push {
            wire::register_push(seat.index, out)?;
        }
        let m = Member::new(seat, run.nonce, Sender::new(String::new(), body_bytes, run.nonce));
        Ok(Self::new(seat.index, Role::Member(Box::new(m)), run))
    }

    /// The member state (`None` for a pair's peers).
    pub fn as_member(&self) -> Option<&Member> {
        match &self.role {
            Role::Member(m) => Some(&**m),
            _ => None,
        }
    }

    /// The member state, mutable.
    pub fn as_member_mut(&mut self) -> Option<&mut Member> {
        match &mut self.role {
            Role::Member(m) => Some(&mut **m),
            _ => None,
        }
    }

    /// Appends the receipts a member owes and may send at `now_ns` (the receipt interval).
    pub fn tick(
        &mut self,
        now_ns: u64,
        tally: &mut Tally,
        out: &mut Vec<u8>,
    ) -> Result<bool, PeerError> {
        let Role::Member(m) = &mut self.role else { return Ok(false) };
        let wrote = m.maybe_receipts(self.run.receipts, now_ns, tally, out)?;
        if wrote {
            self.last_write_ns = now_ns;
        }
        Ok(wrote)
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

    /// The sender state (`None` for a receiver, and for a member whose group is not known).
    pub fn as_sender(&self) -> Option<&Sender> {
        match &self.role {
            Role::Sender(s) => Some(s),
            Role::Member(m) => m.conversation().map(|_| &m.send),
            Role::Receiver(_) => None,
        }
    }

    /// Distinct messages delivered (0 for a sender).
    pub fn delivered(&self) -> u64 {
        match &self.role {
            Role::Receiver(r) => r.delivered,
            Role::Member(m) => m.delivered,
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
            Role::Member(m) => m.receipts_settled(self.run.receipts),
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
        let s = match &mut self.role {
            Role::Sender(s) => s,
            Role::Member(m) if m.conversation().is_some() => &mut m.send,
            _ => return Ok(()),
        };
        let request_id = s.next_id(now_ns);
        let sent_ns = request_id - 1;
        let stamp = Stamp { nonce: self.run.nonce, pair: self.pair as u32, k: s.sent, sent_ns };
        s.enc.encode(&stamp, request_id, out)?;
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
            Role::Sender(s) => s.next_id(now_ns),
            Role::Member(m) => m.send.next_id(now_ns),
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
            (_, Body::Ok(_)) if id == wire::PUSH_REQUEST_ID => tally.push_registrations += 1,
            (Role::Member(m), body) => {
                *delivers |= m.on_frame(id, body, now_ns, tally, &mut fed.answered)?;
            }
            (Role::Sender(s), Body::SendAck(ack)) if id != 0 => {
                s.on_ack(id, ack.duplicate, now_ns, tally);
                fed.answered += 1;
            }
            (Role::Sender(s), Body::Error(e)) if id != 0 => {
                s.on_refused(code_name(e.code()), tally);
                fed.answered += 1;
            }
            (Role::Sender(_), Body::ReceiptUpdate(_)) if id == 0 => tally.on_receipt_push(),
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
        if matches!(self.role, Role::Member(_)) {
            return self.tick(now_ns, tally, out).map(|_| ());
        }
        let Role::Receiver(r) = &mut self.role else { return Ok(()) };
        if !self.run.receipts || r.receipt_in_flight.is_some() || r.highest_seq <= r.receipt_seq {
            return Ok(());
        }
        let id = r.next_request_id;
        wire::receipt(&r.conversation_id, ReceiptKind::Delivered, r.highest_seq, id, out)?;
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
pub fn frame_name(body: &Body) -> String {
    match body {
        Body::Error(e) => return format!("Error {}", code_name(e.code())),
        Body::SyncHint(h) => return format!("SyncHint {}", h.reason),
        _ => {}
    }
    let text = format!("{body:?}");
    text.split('(').next().unwrap_or("?").to_owned()
}

pub fn error_text(e: &tern_proto::v1::Error) -> String {
    format!("{}: {}", code_name(e.code()), e.message)
}

/// `ERROR_CODE_RATE_LIMITED` → `RATE_LIMITED`.
pub fn code_name(code: ErrorCode) -> &'static str {
    let name = code.as_str_name();
    name.strip_prefix("ERROR_CODE_").unwrap_or(name)
}

#[cfg(test)]
#[path = "peer_tests.rs"]
pub(crate) mod tests;
