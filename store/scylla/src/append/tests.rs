//! Unit tests of the append decisions (pure functions, no node needed).
use tern_proto::v1;

use super::*;

const GRACE: i64 = 20_000;
/// The digest of the request that made the test claims.
const D: i64 = 0x5eed;

fn claim(seq: u64, claimed_at_ms: i64, allocated_at_ms: i64) -> Claim {
    Claim {
        conversation_id: "c".into(),
        owner: "o".into(),
        claimed_at_ms,
        seq,
        server_time_ms: 5,
        allocated_at_ms,
        request_digest: Some(D),
        group_version: 0,
    }
}

fn send(conversation_id: &str, body: &str) -> NewMessage {
    NewMessage {
        mention_user_ids: Vec::new(),
        mention_all: false,
        conversation_id: conversation_id.into(),
        members: vec!["alice".into(), "bob".into()],
        sender_user_id: "alice".into(),
        sender_device_id: "phone".into(),
        client_msg_id: "k".into(),
        kind: v1::MessageKind::Normal,
        content_type: "text/plain".into(),
        body: bytes::Bytes::from(body.to_owned()),
        recalled_seq: 0,
        server_time_ms: 5,
    }
}

fn recall(conversation_id: &str, target: u64) -> NewMessage {
    NewMessage {
        kind: v1::MessageKind::Recall,
        content_type: String::new(),
        body: bytes::Bytes::new(),
        recalled_seq: target,
        ..send(conversation_id, "")
    }
}

#[test]
fn a_different_request_never_completes_anothers_claim() {
    // A Send claimed the key and bound seq 7 in its conversation; its write is in flight.
    let c = claim(7, 1_000, 2_000);
    // The very request completes it before the fence...
    assert_eq!(judge(&c, false, 2_000, GRACE, D), Verdict::Complete);
    // ...any other waits (a Recall reusing the id, the same kind elsewhere, other content),
    // so it never writes its own kind, body or recall target at the claim's seq.
    for other in [D ^ 1, D.wrapping_add(1), i64::MIN] {
        assert_eq!(judge(&c, false, 2_000, GRACE, other), Verdict::Wait);
        assert_eq!(judge(&c, false, 2_000 + GRACE / 2 - 1, GRACE, other), Verdict::Wait);
        // Stored: the original's outcome (dispatch refuses the reuse).
        assert_eq!(judge(&c, true, 2_000, GRACE, other), Verdict::Duplicate);
        // Abandoned (a hole, nothing stored, nothing acked): it may take the key over.
        assert_eq!(judge(&c, false, 2_000 + GRACE, GRACE, other), Verdict::TakeOver);
    }
    // A claim row from before the digest column: nobody completes it.
    let old = Claim { request_digest: None, ..c };
    assert_eq!(judge(&old, false, 2_000, GRACE, D), Verdict::Wait);
}

#[test]
fn digest_tells_requests_apart_and_resends_alike() {
    let a = send("dm:alice:bob", "hi");
    assert_eq!(request_digest(&a), request_digest(&a.clone()));
    // Members, device and time are not what the request stores at its seq.
    let resend = NewMessage {
        sender_device_id: "laptop".into(),
        server_time_ms: 99,
        members: vec![],
        ..a.clone()
    };
    assert_eq!(request_digest(&a), request_digest(&resend));
    let others = [
        send("dm:alice:carol", "hi"),
        send("dm:alice:bob", "hi!"),
        NewMessage { content_type: "text/html".into(), ..a.clone() },
        recall("dm:alice:bob", 0),
        recall("dm:alice:bob", 1),
        recall("dm:alice:carol", 1),
        // Length prefixes: moving bytes between fields changes the digest.
        NewMessage { content_type: "text/plainh".into(), body: "i".into(), ..a.clone() },
    ];
    let mut digests: Vec<i64> = others.iter().map(request_digest).collect();
    digests.push(request_digest(&a));
    let n = digests.len();
    digests.sort_unstable();
    digests.dedup();
    assert_eq!(digests.len(), n, "every different request has its own digest");
}

#[test]
fn bound_and_stored_is_a_duplicate_whatever_the_time() {
    for now in [0, 1_000, 10_000, 1_000_000] {
        assert_eq!(judge(&claim(7, 0, 0), true, now, GRACE, D), Verdict::Duplicate);
    }
}

#[test]
fn bound_unstored_is_completed_before_the_fence_only() {
    let c = claim(7, 1_000, 2_000);
    assert_eq!(judge(&c, false, 2_000, GRACE, D), Verdict::Complete);
    assert_eq!(judge(&c, false, 2_000 + GRACE / 2 - 1, GRACE, D), Verdict::Complete);
    // Between fence and grace: a write may still be in flight.
    assert_eq!(judge(&c, false, 2_000 + GRACE / 2, GRACE, D), Verdict::Wait);
    assert_eq!(judge(&c, false, 2_000 + GRACE - 1, GRACE, D), Verdict::Wait);
    // Settled as a hole: the resend gets a new seq.
    assert_eq!(judge(&c, false, 2_000 + GRACE, GRACE, D), Verdict::TakeOver);
}

#[test]
fn unbound_claims_are_taken_over_only_when_abandoned() {
    let c = claim(0, 1_000, 0);
    assert_eq!(judge(&c, false, 1_000, GRACE, D), Verdict::Wait);
    assert_eq!(judge(&c, false, 1_000 + GRACE - 1, GRACE, D), Verdict::Wait);
    assert_eq!(judge(&c, false, 1_000 + GRACE, GRACE, D), Verdict::TakeOver);
    // `stored` is irrelevant without a seq.
    assert_eq!(judge(&c, true, 1_000, GRACE, D), Verdict::Wait);
    // A far-future claim (clock skew) is not taken over early, and nothing overflows.
    assert_eq!(judge(&claim(0, i64::MAX, 0), false, 5, GRACE, D), Verdict::Wait);
}

#[test]
fn fence_is_half_the_grace() {
    assert_eq!(fence_ms(1_000, GRACE), 11_000);
    assert_eq!(fence_ms(i64::MAX, GRACE), i64::MAX);
}

#[test]
fn gaps_settle_by_later_allocations() {
    let now = 100_000;
    let fresh = now - 1;
    let old = now - GRACE;
    // No gap: nothing to hold back, whatever the times.
    assert_eq!(
        first_unsettled(1, 3, &[(1, fresh), (2, fresh), (3, fresh)], fresh, now, GRACE),
        None
    );
    // A gap at 2 with only fresh later allocations: in flight.
    assert_eq!(first_unsettled(1, 3, &[(1, old), (3, fresh)], fresh, now, GRACE), Some(2));
    // A later stored row is old: 2 is a hole.
    assert_eq!(first_unsettled(1, 4, &[(1, fresh), (3, old), (4, fresh)], fresh, now, GRACE), None);
    // The conversation's latest allocation is old: every gap is settled.
    assert_eq!(first_unsettled(1, 5, &[(3, fresh)], old, now, GRACE), None);
    // A fresh tail (allocated, not yet stored).
    assert_eq!(first_unsettled(1, 5, &[(1, old), (2, old), (3, old)], fresh, now, GRACE), Some(4));
    // An old row before the gap does not settle it.
    assert_eq!(first_unsettled(1, 5, &[(1, old), (3, fresh)], fresh, now, GRACE), Some(2));
    // Nothing stored at all in a fresh window.
    assert_eq!(first_unsettled(4, 6, &[], fresh, now, GRACE), Some(4));
    assert_eq!(first_unsettled(4, 6, &[], old, now, GRACE), None);
    // Window starting inside a settled run.
    assert_eq!(first_unsettled(2, 2, &[], old, now, GRACE), None);
}
