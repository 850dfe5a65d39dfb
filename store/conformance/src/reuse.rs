//! Conformance cases about one (sender, client_msg_id): a recall's resend answered by dedupe,
//! and one id appended as different requests at once.

use tern_proto::v1;
use tern_store::{Appended, Store};

use crate::{all_messages, append, append_one, join_all, message, recall, seqs, unique};

/// A resend of a recall whose target is now recalled is answered by dedupe (the original
/// event, nothing written), and `client_msg_id_known` tells a known id (what dispatch asks
/// before refusing a recall of a recalled message) from an unknown one.
pub async fn recall_resend_is_answered_by_dedupe(store: &dyn Store) {
    let conv = unique("c-recall-again");
    let user = unique("u-recall-again");
    let other_user = unique("u-recall-again-other");
    append_one(store, message(&conv, &user, "m1", "oops")).await;
    let known = |id: &'static str| {
        let user = user.clone();
        async move { store.client_msg_id_known(&user, id).await.expect("client_msg_id_known") }
    };
    assert!(known("m1").await, "a stored send's id is known");
    assert!(!known("r1").await, "an id never appended is unknown");
    let ev = append_one(store, recall(&conv, &user, "r1", 1)).await;
    assert!(!ev.duplicate);
    assert!(known("r1").await, "a stored recall's id is known");
    assert!(
        !store.client_msg_id_known(&other_user, "r1").await.expect("client_msg_id_known"),
        "ids are per sender"
    );
    let target = store.get_message(&conv, 1).await.expect("get_message").expect("stored");
    assert!(target.recalled);
    let again = append_one(store, recall(&conv, &user, "r1", 1)).await;
    assert_eq!(again, Appended { duplicate: true, ..ev.clone() });
    assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 2, "the resend wrote nothing");
    assert_eq!(seqs(&all_messages(store, &conv).await), vec![1, 2]);
}

/// One (sender, client_msg_id) appended at once as four different requests - a Send and a
/// Recall into each of two conversations - concurrently and within one batch: exactly one is
/// stored, every other gets the winner's outcome (`duplicate`), and nothing of a loser is
/// written anywhere: no second message, no recall of a message the winner did not recall, no
/// loser's kind or body at the winner's seq.
pub async fn one_client_msg_id_across_conversations_and_kinds(store: &dyn Store) {
    for round in 0..6 {
        let (a, b) = (unique("c-reuse-a"), unique("c-reuse-b"));
        let user = unique("u-reuse");
        let peer = unique("u-reuse-peer");
        // One earlier message in each conversation, the recall target (seq 1).
        for conv in [&a, &b] {
            let mut m = message(conv, &user, &unique("first"), "first");
            m.members.push(peer.clone());
            assert_eq!(append_one(store, m).await.seq, 1);
        }
        let k = unique("k");
        let requests = vec![
            message(&a, &user, &k, "send into a"),
            recall(&b, &user, &k, 1),
            recall(&a, &user, &k, 1),
            message(&b, &user, &k, "send into b"),
        ];
        let outcomes = if round % 2 == 0 {
            let calls = requests.iter().cloned().map(|m| append_one(store, m)).collect();
            join_all(calls).await
        } else {
            append(store, requests.clone()).await
        };
        let winners: Vec<usize> = (0..4).filter(|&i| !outcomes[i].duplicate).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one stored: {outcomes:?}");
        let w = winners[0];
        let won = &requests[w];
        for o in &outcomes {
            assert_eq!(
                (&o.conversation_id, o.seq, o.server_time_ms),
                (&won.conversation_id, 2, won.server_time_ms),
                "round {round}: every outcome names the one stored request"
            );
        }
        let stored = store
            .get_message(&won.conversation_id, 2)
            .await
            .expect("get_message")
            .expect("the winner is stored");
        assert_eq!(
            (stored.kind, stored.recalled_seq, stored.body.to_vec()),
            (won.kind as i32, won.recalled_seq, won.body.to_vec()),
            "round {round}: the winner's own request is what is stored"
        );
        for conv in [&a, &b] {
            let msgs = all_messages(store, conv).await;
            let expected = if *conv == won.conversation_id { vec![1, 2] } else { vec![1] };
            assert_eq!(seqs(&msgs), expected, "round {round}: {conv}: no second message");
            assert_eq!(store.last_seq(conv).await.expect("last_seq"), expected.len() as u64);
            let recalled = *conv == won.conversation_id && won.kind == v1::MessageKind::Recall;
            assert_eq!(
                msgs[0].recalled, recalled,
                "round {round}: {conv}: seq 1 recalled only by a winning recall there"
            );
        }
    }
}
