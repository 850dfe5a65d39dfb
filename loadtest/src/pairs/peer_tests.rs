//! Sans-IO tests of a pair's sender and receiver.

use super::*;
use crate::pairs::tally::Window;
use tern_proto::v1::{Deliver, Kick, LoginOk, Message, ReceiptUpdate, SendAck};
use tern_proto::{DEFAULT_MAX_FRAME_BYTES, encode_to_bytes};

const RUN: RunIds = RunIds { nonce: 9, receipts: true, register_push: false };

/// One encoded frame (shared with the member tests).
pub(crate) fn frame(request_id: u64, body: Body) -> Vec<u8> {
    let env = Envelope { request_id, body: Some(body) };
    encode_to_bytes(&env, DEFAULT_MAX_FRAME_BYTES).map(|b| b.to_vec()).unwrap_or_default()
}

fn deliver(seq: u64, nonce: u32, pair: u32, k: u64) -> Vec<u8> {
    let mut body = Vec::new();
    wire::write_body(&Stamp { nonce, pair, k, sent_ns: 100 }, 64, &mut body);
    let message =
        Message { conversation_id: "dm:a:b".into(), seq, body: body.into(), ..Message::default() };
    frame(0, Body::Deliver(Deliver { message: Some(message) }))
}

/// The frames in `out` (drained).
pub(crate) fn frames(out: &mut Vec<u8>) -> Vec<Envelope> {
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
    let ok = frame(1, Body::LoginOk(LoginOk { heartbeat_interval_ms: 500, ..LoginOk::default() }));
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
    assert_eq!(frames(&mut out).iter().filter_map(receipt_of).collect::<Vec<_>>(), vec![(3, 3)]);
    let answer = frame(
        3,
        Body::ReceiptUpdate(ReceiptUpdate { delivered_seq: 3, ..ReceiptUpdate::default() }),
    );
    assert!(r.feed(&answer, 4_000, &mut tally, &mut out).is_ok());
    assert!(out.is_empty() && r.receipts_settled());

    // Other runs' and other pairs' messages are counted apart.
    assert!(
        r.feed(&[deliver(4, 8, 2, 0), deliver(5, 9, 1, 0)].concat(), 5_000, &mut tally, &mut out)
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
    let err = frame(1, Body::Error(tern_proto::v1::Error { fatal: true, ..Default::default() }));
    let e = s.feed(&err, 0, &mut tally, &mut out).err();
    assert_eq!(e.map(|e| e.kind()), Some("login_rejected"));
}
