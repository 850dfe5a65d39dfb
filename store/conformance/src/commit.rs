//! Cases for [`Store::commit`]: appends and receipt watermarks in one group, bounded by the
//! conversation's last seq and coalesced per (conversation, user).

use tern_proto::v1::ReceiptKind::{Delivered, Read};
use tern_store::{Committed, Store, WatermarkUpdate, WatermarkWrite, Watermarks, Write};

use crate::{message, unique};

fn mark(conv: &str, user: &str, kind: tern_proto::v1::ReceiptKind, seq: u64) -> Write {
    Write::Watermark(WatermarkWrite {
        conversation_id: conv.to_owned(),
        user_id: user.to_owned(),
        kind,
        seq,
    })
}

fn appended_seq(c: &Committed) -> (u64, bool) {
    match c {
        Committed::Appended(a) => (a.seq, a.duplicate),
        other => panic!("expected an append outcome, got {other:?}"),
    }
}

/// Appends and watermark moves in one batch: outcomes in batch order; a watermark counts the
/// appends before it in the batch and is refused above them; a resend in the batch is a
/// duplicate; everything is readable afterwards.
pub async fn commit_mixes_appends_and_watermarks(store: &dyn Store) {
    let conv = unique("c-commit");
    let (alice, bob) = (unique("u-commit-a"), unique("u-commit-b"));
    let batch = vec![
        mark(&conv, &bob, Delivered, 1),
        Write::Append(message(&conv, &alice, "m1", "one")),
        mark(&conv, &bob, Delivered, 2),
        Write::Append(message(&conv, &alice, "m2", "two")),
        Write::Append(message(&conv, &alice, "m1", "one again")),
        mark(&conv, &alice, Read, 2),
    ];
    let out = store.commit(&batch).await.expect("commit");
    assert_eq!(out.len(), 6);
    assert_eq!(out[0], Committed::AboveLastSeq { last_seq: 0 });
    assert_eq!(appended_seq(&out[1]), (1, false));
    assert_eq!(out[2], Committed::AboveLastSeq { last_seq: 1 });
    assert_eq!(appended_seq(&out[3]), (2, false));
    assert_eq!(appended_seq(&out[4]), (1, true));
    let wm = |delivered, read| Watermarks { delivered, read };
    assert_eq!(out[5], Committed::Watermark(WatermarkUpdate { watermarks: wm(2, 2), moved: true }));
    assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 2);
    let range = store.read_range(&conv, 1, 10).await.expect("read_range");
    let bodies: Vec<&[u8]> = range.messages.iter().map(|m| m.body.as_ref()).collect();
    assert_eq!(bodies, vec![b"one".as_ref(), b"two".as_ref()]);
    assert_eq!(store.watermarks(&conv).await.expect("watermarks"), vec![(alice, wm(2, 2))]);
}

/// Several moves of one (conversation, user) in one batch: each outcome carries the final
/// watermarks, `moved` compares them with the state before the batch; a later batch that
/// moves nothing says so.
pub async fn commit_coalesces_watermarks(store: &dyn Store) {
    let conv = unique("c-coalesce");
    let (alice, bob) = (unique("u-coalesce-a"), unique("u-coalesce-b"));
    let appends: Vec<Write> =
        (0..5).map(|i| Write::Append(message(&conv, &alice, &format!("m{i}"), "x"))).collect();
    store.commit(&appends).await.expect("commit appends");
    let wm = |delivered, read| Watermarks { delivered, read };
    let out = store
        .commit(&[
            mark(&conv, &bob, Delivered, 2),
            mark(&conv, &bob, Delivered, 4),
            mark(&conv, &bob, Read, 3),
            mark(&conv, &bob, Delivered, 1),
        ])
        .await
        .expect("commit marks");
    let moved = Committed::Watermark(WatermarkUpdate { watermarks: wm(4, 3), moved: true });
    assert_eq!(out, vec![moved.clone(), moved.clone(), moved.clone(), moved]);
    assert_eq!(store.watermarks(&conv).await.expect("watermarks"), vec![(bob.clone(), wm(4, 3))]);
    let out = store
        .commit(&[mark(&conv, &bob, Delivered, 4), mark(&conv, &bob, Read, 2)])
        .await
        .expect("commit again");
    let still = Committed::Watermark(WatermarkUpdate { watermarks: wm(4, 3), moved: false });
    assert_eq!(out, vec![still.clone(), still]);
    // Another user's move in the same batch as an unmoved one is its own group.
    let out = store
        .commit(&[mark(&conv, &bob, Read, 1), mark(&conv, &alice, Delivered, 5)])
        .await
        .expect("commit two users");
    assert_eq!(
        out,
        vec![
            Committed::Watermark(WatermarkUpdate { watermarks: wm(4, 3), moved: false }),
            Committed::Watermark(WatermarkUpdate { watermarks: wm(5, 0), moved: true }),
        ]
    );
}
