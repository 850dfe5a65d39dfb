//! The backend-independent conformance suite: every [`Store`] backend must pass every case.
//!
//! Each case is a `pub async fn` taking `&dyn Store` that panics (assert!) on a violation. Cases
//! use fresh, process- and time-unique conversation and user ids, so they can share one store
//! (even a persistent one such as Redis) and run concurrently.
//!
//! A backend's test file generates one `#[tokio::test]` per case with
//! [`conformance_tests!`](crate::conformance_tests!)
//! (the caller needs `tokio` with the `macros` and `rt-multi-thread` features):
//!
//! ```text
//! struct Setup { _dir: tempfile::TempDir, store: EmbeddedStore }
//! impl tern_store_conformance::Fixture for Setup {
//!     fn store(&self) -> &dyn tern_store::Store { &self.store }
//! }
//! async fn setup() -> Setup { /* open a fresh store */ }
//! tern_store_conformance::conformance_tests!(setup);
//! ```
//!
//! or calls [`run_all`] from a single test.
//!
//! This is test code shipped as a library crate: it panics on purpose (assert!, expect) so a
//! failing case names the broken guarantee.

use std::collections::BTreeSet;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tern_proto::v1;

use tern_store::{Appended, NewMessage, Store, WatermarkUpdate, Watermarks};

mod commit;
mod device;
mod flags;
mod group;
mod muted;
mod reuse;
pub use commit::{commit_coalesces_watermarks, commit_mixes_appends_and_watermarks};
pub use device::{
    concurrent_device_writes_lose_nothing, device_push_registrations_batch_read,
    device_revoke_fences_tokens, devices_check_in_and_list,
};
pub use flags::{flags_are_per_user_and_independent, mentions_are_stored_and_listed};
pub use group::{
    group_changes_compare_and_set, group_conversations_are_listed, group_create_reads_back,
    group_mentions_are_listed, group_rows_follow_joins_roles_and_dissolution,
    group_sends_need_current_membership,
};
pub use muted::{
    muted_among_answers_thousands_in_one_call, muted_among_follows_mute_and_unmute,
    muted_among_keeps_the_callers_order, muted_among_nobody_muted,
    muted_among_unknown_users_and_unflagged_conversations,
};
pub use reuse::{
    one_client_msg_id_across_conversations_and_kinds, recall_resend_is_answered_by_dedupe,
};

/// What a backend's setup function returns: owns the store (and whatever must outlive it, such
/// as a temporary directory or a child process).
pub trait Fixture {
    /// The store under test.
    fn store(&self) -> &dyn Store;
}

/// Generates one `#[tokio::test]` per conformance case. `$setup` is the path of an
/// `async fn() -> impl Fixture`, called once per test.
#[macro_export]
macro_rules! conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@cases $setup;
            seqs_start_at_one,
            batch_order_is_seq_order,
            dedupe_across_calls,
            dedupe_within_batch,
            concurrent_appenders_get_unique_gap_free_seqs,
            read_range_windows,
            get_message_round_trips_every_field,
            recall_marks_target_and_clears_body,
            recall_resend_is_answered_by_dedupe,
            one_client_msg_id_across_conversations_and_kinds,
            watermarks_are_monotonic,
            list_conversations_pages_in_id_order,
            conversations_are_independent,
            health_probe_round_trips,
            commit_mixes_appends_and_watermarks,
            commit_coalesces_watermarks,
        );
    };
    (@cases $setup:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $setup().await;
                $crate::$case($crate::Fixture::store(&fixture)).await;
            }
        )*
    };
}

/// Runs every case in turn on one store (the same list as
/// [`conformance_tests!`](crate::conformance_tests!)).
pub async fn run_all(store: &dyn Store) {
    seqs_start_at_one(store).await;
    batch_order_is_seq_order(store).await;
    dedupe_across_calls(store).await;
    dedupe_within_batch(store).await;
    concurrent_appenders_get_unique_gap_free_seqs(store).await;
    read_range_windows(store).await;
    get_message_round_trips_every_field(store).await;
    recall_marks_target_and_clears_body(store).await;
    recall_resend_is_answered_by_dedupe(store).await;
    one_client_msg_id_across_conversations_and_kinds(store).await;
    watermarks_are_monotonic(store).await;
    list_conversations_pages_in_id_order(store).await;
    conversations_are_independent(store).await;
    health_probe_round_trips(store).await;
    commit_mixes_appends_and_watermarks(store).await;
    commit_coalesces_watermarks(store).await;
}

/// Generates one `#[tokio::test]` per group case (as [`conformance_tests!`]): the group cases
/// are a list of their own while not every backend stores groups yet.
#[macro_export]
macro_rules! group_conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@cases $setup;
            group_create_reads_back,
            group_changes_compare_and_set,
            group_sends_need_current_membership,
            group_rows_follow_joins_roles_and_dissolution,
            group_conversations_are_listed,
            group_mentions_are_listed,
        );
    };
}

/// Generates one `#[tokio::test]` per conversation-list case (mentions, flags, and the
/// notifier's read of them, `muted_among`).
#[macro_export]
macro_rules! flags_conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@cases $setup;
            mentions_are_stored_and_listed,
            flags_are_per_user_and_independent,
            muted_among_nobody_muted,
            muted_among_follows_mute_and_unmute,
            muted_among_keeps_the_callers_order,
            muted_among_unknown_users_and_unflagged_conversations,
            muted_among_answers_thousands_in_one_call,
        );
    };
}

/// Generates one `#[tokio::test]` per device case (check-ins, push registrations, logout
/// fence).
#[macro_export]
macro_rules! device_conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@cases $setup;
            devices_check_in_and_list,
            device_push_registrations_batch_read,
            device_revoke_fences_tokens,
            concurrent_device_writes_lose_nothing,
        );
    };
}

/// Runs every device case in turn on one store.
pub async fn run_all_devices(store: &dyn Store) {
    devices_check_in_and_list(store).await;
    device_push_registrations_batch_read(store).await;
    device_revoke_fences_tokens(store).await;
    concurrent_device_writes_lose_nothing(store).await;
}

/// Runs every conversation-list case in turn on one store.
pub async fn run_all_flags(store: &dyn Store) {
    mentions_are_stored_and_listed(store).await;
    flags_are_per_user_and_independent(store).await;
    muted_among_nobody_muted(store).await;
    muted_among_follows_mute_and_unmute(store).await;
    muted_among_keeps_the_callers_order(store).await;
    muted_among_unknown_users_and_unflagged_conversations(store).await;
    muted_among_answers_thousands_in_one_call(store).await;
}

/// Runs every group case in turn on one store.
pub async fn run_all_groups(store: &dyn Store) {
    group_create_reads_back(store).await;
    group_changes_compare_and_set(store).await;
    group_sends_need_current_membership(store).await;
    group_rows_follow_joins_roles_and_dissolution(store).await;
    group_conversations_are_listed(store).await;
    group_mentions_are_listed(store).await;
}

/// An id no other case, test process or earlier run uses.
pub(crate) fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// A normal text message from `sender` (who is the only member unless changed).
pub(crate) fn message(
    conversation_id: &str,
    sender: &str,
    client_msg_id: &str,
    body: &str,
) -> NewMessage {
    NewMessage {
        mention_user_ids: Vec::new(),
        mention_all: false,
        conversation_id: conversation_id.to_owned(),
        members: vec![sender.to_owned()],
        sender_user_id: sender.to_owned(),
        sender_device_id: "dev-1".to_owned(),
        client_msg_id: client_msg_id.to_owned(),
        kind: v1::MessageKind::Normal,
        content_type: "text/plain".to_owned(),
        body: Bytes::from(body.to_owned()),
        recalled_seq: 0,
        server_time_ms: 1_700_000_000_000,
    }
}

async fn append(store: &dyn Store, batch: Vec<NewMessage>) -> Vec<Appended> {
    let n = batch.len();
    let out = store.append(batch).await.expect("append");
    assert_eq!(out.len(), n, "one outcome per message");
    out
}

async fn append_one(store: &dyn Store, m: NewMessage) -> Appended {
    append(store, vec![m]).await.remove(0)
}

async fn all_messages(store: &dyn Store, conversation_id: &str) -> Vec<v1::Message> {
    store.read_range(conversation_id, 1, 10_000).await.expect("read_range").messages
}

fn seqs(messages: &[v1::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// Polls all futures concurrently on the current task; outputs in input order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future completed")).collect()
}

/// An empty conversation has last_seq 0; seqs start at 1 and increase by one per append.
pub async fn seqs_start_at_one(store: &dyn Store) {
    let conv = unique("c-start");
    let user = unique("u-start");
    assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 0);
    for (i, expected) in (1..=3u64).enumerate() {
        let a = append_one(store, message(&conv, &user, &format!("m{i}"), "hi")).await;
        assert_eq!(a.seq, expected);
        assert_eq!(a.conversation_id, conv);
        assert!(!a.duplicate);
        assert_eq!(store.last_seq(&conv).await.expect("last_seq"), expected);
    }
    assert_eq!(seqs(&all_messages(store, &conv).await), vec![1, 2, 3]);
}

/// Seqs are assigned in batch order and outcomes come back in batch order.
pub async fn batch_order_is_seq_order(store: &dyn Store) {
    let conv = unique("c-batch");
    let user = unique("u-batch");
    append_one(store, message(&conv, &user, "first", "first")).await;
    let batch: Vec<_> =
        (0..5).map(|i| message(&conv, &user, &format!("b{i}"), &format!("body {i}"))).collect();
    let out = append(store, batch).await;
    assert_eq!(out.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![2, 3, 4, 5, 6]);
    assert!(out.iter().all(|a| !a.duplicate && a.conversation_id == conv));
    let stored = all_messages(store, &conv).await;
    assert_eq!(seqs(&stored), vec![1, 2, 3, 4, 5, 6]);
    for (i, m) in stored[1..].iter().enumerate() {
        assert_eq!(m.client_msg_id, format!("b{i}"));
        assert_eq!(m.body, format!("body {i}").into_bytes());
    }
}

/// Appending (sender, client_msg_id) again returns the original outcome and stores nothing.
pub async fn dedupe_across_calls(store: &dyn Store) {
    let conv = unique("c-dedupe");
    let other_conv = unique("c-dedupe-other");
    let user = unique("u-dedupe");
    let other_user = unique("u-dedupe-other");
    let mut m = message(&conv, &user, "cm-1", "original");
    m.server_time_ms = 1_000;
    let original = append_one(store, m.clone()).await;
    assert_eq!(
        original,
        Appended {
            conversation_id: conv.clone(),
            seq: 1,
            server_time_ms: 1_000,
            duplicate: false,
            group_version: 0,
        }
    );

    // Resent later, with another body and time, even aimed at another conversation.
    let mut resend = m.clone();
    resend.server_time_ms = 2_000;
    resend.body = Bytes::from_static(b"changed");
    let dup = append_one(store, resend.clone()).await;
    assert_eq!(dup, Appended { duplicate: true, ..original.clone() });
    resend.conversation_id = other_conv.clone();
    let dup = append_one(store, resend).await;
    assert_eq!(dup, Appended { duplicate: true, ..original.clone() });
    assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 1);
    assert_eq!(store.last_seq(&other_conv).await.expect("last_seq"), 0);
    let stored = all_messages(store, &conv).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].body, b"original".to_vec());
    assert_eq!(stored[0].server_time_ms, 1_000);

    // The same client_msg_id from another sender is a different message.
    let theirs = append_one(store, message(&conv, &other_user, "cm-1", "theirs")).await;
    assert!(!theirs.duplicate);
    assert_eq!(theirs.seq, 2);
}

/// A duplicate later in the same batch is caught too, and does not consume a seq.
pub async fn dedupe_within_batch(store: &dyn Store) {
    let conv = unique("c-dedupe-batch");
    let user = unique("u-dedupe-batch");
    let mut a = message(&conv, &user, "a", "a");
    a.server_time_ms = 10;
    let mut b = message(&conv, &user, "b", "b");
    b.server_time_ms = 11;
    let mut a_again = message(&conv, &user, "a", "a again");
    a_again.server_time_ms = 12;
    let mut c = message(&conv, &user, "c", "c");
    c.server_time_ms = 13;
    let out = append(store, vec![a, b, a_again, c]).await;
    assert_eq!(
        out.iter().map(|x| (x.seq, x.server_time_ms, x.duplicate)).collect::<Vec<_>>(),
        vec![(1, 10, false), (2, 11, false), (1, 10, true), (3, 13, false)]
    );
    assert!(out.iter().all(|x| x.conversation_id == conv));
    let stored = all_messages(store, &conv).await;
    assert_eq!(seqs(&stored), vec![1, 2, 3]);
    assert_eq!(stored[0].body, b"a".to_vec());
    assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 3);
}

/// 8 concurrent writers x 50 appends to one conversation: unique, gap-free seqs, each writer's
/// own seqs increasing, and the stored message at each seq is the one its ack named.
pub async fn concurrent_appenders_get_unique_gap_free_seqs(store: &dyn Store) {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 50;
    let conv = unique("c-concurrent");
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let conv = conv.clone();
            let user = unique(&format!("u-concurrent-{w}"));
            async move {
                let mut acks = Vec::with_capacity(PER_WRITER);
                for i in 0..PER_WRITER {
                    let cmid = format!("w{w}-{i}");
                    let a = append_one(store, message(&conv, &user, &cmid, &cmid)).await;
                    assert!(!a.duplicate);
                    acks.push((a.seq, cmid));
                }
                acks
            }
        })
        .collect();
    let results = join_all(writers).await;
    let mut all = Vec::new();
    for acks in results {
        assert!(acks.windows(2).all(|w| w[0].0 < w[1].0), "one writer's seqs increase");
        all.extend(acks);
    }
    let total = (WRITERS * PER_WRITER) as u64;
    let unique_seqs: BTreeSet<u64> = all.iter().map(|(s, _)| *s).collect();
    assert_eq!(unique_seqs.len(), all.len(), "no seq given twice");
    assert_eq!(unique_seqs, (1..=total).collect::<BTreeSet<_>>(), "no gap");
    assert_eq!(store.last_seq(&conv).await.expect("last_seq"), total);
    let stored = all_messages(store, &conv).await;
    assert_eq!(seqs(&stored), (1..=total).collect::<Vec<_>>());
    all.sort();
    for ((seq, cmid), m) in all.iter().zip(&stored) {
        assert_eq!(m.seq, *seq);
        assert_eq!(&m.client_msg_id, cmid);
    }
}

/// read_range returns exactly the stored seqs of the window, in order, with last_seq.
pub async fn read_range_windows(store: &dyn Store) {
    let conv = unique("c-range");
    let user = unique("u-range");
    let batch: Vec<_> =
        (1..=10).map(|i| message(&conv, &user, &format!("m{i}"), &format!("{i}"))).collect();
    append(store, batch).await;
    let cases: [(u64, u32, Vec<u64>); 7] = [
        (1, 3, vec![1, 2, 3]),
        (4, 3, vec![4, 5, 6]),
        (8, 100, vec![8, 9, 10]),
        (10, 1, vec![10]),
        (11, 5, vec![]),
        (0, 2, vec![1]),
        (5, 0, vec![]),
    ];
    for (from, window, expected) in cases {
        let r = store.read_range(&conv, from, window).await.expect("read_range");
        assert_eq!(seqs(&r.messages), expected, "from {from} window {window}");
        assert_eq!(r.last_seq, 10);
        for m in &r.messages {
            assert_eq!(m.conversation_id, conv);
            assert_eq!(m.body, m.seq.to_string().into_bytes());
        }
    }
    let far =
        store.read_range(&conv, u64::MAX - 1, u32::MAX).await.expect("read_range near u64::MAX");
    assert!(far.messages.is_empty());
    let unknown = store
        .read_range(&unique("c-range-none"), 1, 10)
        .await
        .expect("read_range of unknown conversation");
    assert!(unknown.messages.is_empty());
    assert_eq!(unknown.last_seq, 0);
}

/// get_message returns the stored message with every field of the NewMessage.
pub async fn get_message_round_trips_every_field(store: &dyn Store) {
    let conv = unique("c-get");
    let user = unique("u-get");
    let mut m = message(&conv, &user, "cm-get", "");
    m.sender_device_id = "phone-7".to_owned();
    m.kind = v1::MessageKind::GroupEvent;
    m.content_type = "application/x-tern-group-event".to_owned();
    m.body = Bytes::from_static(&[0, 1, 2, 255]);
    m.server_time_ms = 1_234_567;
    let a = append_one(store, m).await;
    let got = store.get_message(&conv, a.seq).await.expect("get_message").expect("stored");
    assert_eq!(
        got,
        v1::Message {
            mention_user_ids: Vec::new(),
            mention_all: false,
            conversation_id: conv.clone(),
            seq: 1,
            sender_user_id: user.clone(),
            sender_device_id: "phone-7".to_owned(),
            client_msg_id: "cm-get".to_owned(),
            server_time_ms: 1_234_567,
            kind: v1::MessageKind::GroupEvent as i32,
            content_type: "application/x-tern-group-event".to_owned(),
            body: vec![0, 1, 2, 255].into(),
            recalled_seq: 0,
            recalled: false,
        }
    );
    assert_eq!(store.get_message(&conv, 2).await.expect("get_message"), None);
    assert_eq!(store.get_message(&conv, 0).await.expect("get_message"), None);
    assert_eq!(store.get_message(&unique("c-get-none"), 1).await.expect("get_message"), None);
}

fn recall(conversation_id: &str, sender: &str, client_msg_id: &str, target: u64) -> NewMessage {
    NewMessage {
        kind: v1::MessageKind::Recall,
        content_type: String::new(),
        body: Bytes::new(),
        recalled_seq: target,
        ..message(conversation_id, sender, client_msg_id, "")
    }
}

/// A RECALL event gets its own seq, marks its target recalled and clears the target's body,
/// also when the target is earlier in the same batch.
pub async fn recall_marks_target_and_clears_body(store: &dyn Store) {
    let conv = unique("c-recall");
    let user = unique("u-recall");
    append(store, vec![message(&conv, &user, "m1", "secret"), message(&conv, &user, "m2", "keep")])
        .await;
    let ev = append_one(store, recall(&conv, &user, "r1", 1)).await;
    assert_eq!(ev.seq, 3);
    assert!(!ev.duplicate);

    let target =
        store.get_message(&conv, 1).await.expect("get_message").expect("target still stored");
    assert!(target.recalled);
    assert!(target.body.is_empty());
    assert_eq!(target.seq, 1);
    assert_eq!(target.client_msg_id, "m1");
    assert_eq!(target.kind, v1::MessageKind::Normal as i32);

    let untouched = store.get_message(&conv, 2).await.expect("get_message").expect("stored");
    assert!(!untouched.recalled);
    assert_eq!(untouched.body, b"keep".to_vec());

    let event =
        store.get_message(&conv, 3).await.expect("get_message").expect("recall event stored");
    assert_eq!(event.kind, v1::MessageKind::Recall as i32);
    assert_eq!(event.recalled_seq, 1);
    assert!(!event.recalled);

    // Target and recall in one batch.
    let out =
        append(store, vec![message(&conv, &user, "m4", "oops"), recall(&conv, &user, "r4", 4)])
            .await;
    assert_eq!(out.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![4, 5]);
    let stored = all_messages(store, &conv).await;
    assert_eq!(seqs(&stored), vec![1, 2, 3, 4, 5]);
    assert!(stored[3].recalled && stored[3].body.is_empty());
    assert_eq!(
        stored.iter().map(|m| m.recalled).collect::<Vec<_>>(),
        vec![true, false, false, true, false]
    );
}

/// Watermarks only move forward; read raises delivered; UNSPECIFIED changes nothing; each
/// update says whether it moved anything (seq 0, the same seq again and a lower one do not);
/// the conversation's list is by user id and holds only users with receipts.
pub async fn watermarks_are_monotonic(store: &dyn Store) {
    use v1::ReceiptKind::{Delivered, Read, Unspecified};
    let conv = unique("c-wm");
    let base = unique("u-wm");
    let (alice, bob) = (format!("{base}-a"), format!("{base}-b"));
    let wm = |delivered, read| Watermarks { delivered, read };
    let steps = [
        (Delivered, 0, wm(0, 0), false),
        (Read, 0, wm(0, 0), false),
        (Delivered, 5, wm(5, 0), true),
        (Delivered, 5, wm(5, 0), false),
        (Delivered, 3, wm(5, 0), false),
        (Read, 2, wm(5, 2), true),
        (Read, 2, wm(5, 2), false),
        (Read, 1, wm(5, 2), false),
        (Read, 5, wm(5, 5), true),
        (Delivered, 5, wm(5, 5), false),
        (Read, 7, wm(7, 7), true),
        (Delivered, 6, wm(7, 7), false),
        (Unspecified, 100, wm(7, 7), false),
        (Delivered, 9, wm(9, 7), true),
    ];
    assert!(store.watermarks(&conv).await.expect("watermarks").is_empty());
    for (kind, seq, watermarks, moved) in steps {
        let got = store.set_watermark(&conv, &bob, kind, seq).await.expect("set_watermark");
        assert_eq!(got, WatermarkUpdate { watermarks, moved }, "{kind:?} {seq}");
    }
    let got = store.set_watermark(&conv, &alice, Read, 4).await.expect("set_watermark");
    assert_eq!(got, WatermarkUpdate { watermarks: wm(4, 4), moved: true });
    assert_eq!(
        store.watermarks(&conv).await.expect("watermarks"),
        vec![(alice.clone(), wm(4, 4)), (bob.clone(), wm(9, 7))]
    );
    // Another conversation's receipts are separate.
    let other = unique("c-wm-other");
    assert!(store.watermarks(&other).await.expect("watermarks").is_empty());
    assert_eq!(
        store.set_watermark(&other, &bob, Unspecified, 3).await.expect("set_watermark"),
        WatermarkUpdate { watermarks: wm(0, 0), moved: false }
    );
}

/// A user's conversations come back in id order, paged by `after`, with last seq/time and
/// that user's own watermarks.
pub async fn list_conversations_pages_in_id_order(store: &dyn Store) {
    let base = unique("c-list");
    let user = unique("u-list");
    let peer = unique("u-list-peer");
    let outsider = unique("u-list-outsider");
    let ids: Vec<String> =
        ["a", "b", "c", "d", "e"].iter().map(|s| format!("{base}-{s}")).collect();
    // Written out of id order, with several messages in some.
    for (n, idx) in [3usize, 0, 4, 1, 2, 1, 4].into_iter().enumerate() {
        let mut m = message(&ids[idx], &peer, &format!("m{n}"), "x");
        m.members = vec![user.clone(), peer.clone()];
        m.server_time_ms = 100 + n as i64;
        append_one(store, m).await;
    }
    store.set_watermark(&ids[1], &user, v1::ReceiptKind::Read, 2).await.expect("set_watermark");
    store
        .set_watermark(&ids[1], &peer, v1::ReceiptKind::Delivered, 1)
        .await
        .expect("set_watermark");

    let page1 = store.list_conversations(&user, "", 2).await.expect("list_conversations");
    let page2 = store
        .list_conversations(&user, &page1[1].conversation_id, 2)
        .await
        .expect("list_conversations");
    let page3 = store
        .list_conversations(&user, &page2[1].conversation_id, 2)
        .await
        .expect("list_conversations");
    let page4 = store
        .list_conversations(&user, &page3[0].conversation_id, 2)
        .await
        .expect("list_conversations");
    assert_eq!(page1.len(), 2);
    assert_eq!(page2.len(), 2);
    assert_eq!(page3.len(), 1);
    assert!(page4.is_empty());
    let all: Vec<_> = page1.into_iter().chain(page2).chain(page3).collect();
    assert_eq!(all.iter().map(|e| e.conversation_id.clone()).collect::<Vec<_>>(), ids);
    // (last_seq, last_time_ms) per conversation a..e.
    assert_eq!(
        all.iter().map(|e| (e.last_seq, e.last_time_ms)).collect::<Vec<_>>(),
        vec![(1, 101), (2, 105), (1, 104), (1, 100), (2, 106)]
    );
    assert_eq!(all[1].watermarks, Watermarks { delivered: 2, read: 2 });
    assert!(
        all.iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .all(|(_, e)| e.watermarks == Watermarks::default())
    );
    let peers = store.list_conversations(&peer, &ids[0], 1).await.expect("list_conversations");
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].conversation_id, ids[1]);
    assert_eq!(peers[0].watermarks, Watermarks { delivered: 1, read: 0 });
    assert!(store.list_conversations(&user, "", 0).await.expect("list_conversations").is_empty());
    assert!(
        store.list_conversations(&outsider, "", 100).await.expect("list_conversations").is_empty()
    );
}

/// Conversations have their own seqs, messages and meta, even when one id is a prefix of
/// another and they are written in one batch.
pub async fn conversations_are_independent(store: &dyn Store) {
    let a = unique("c-indep");
    let b = format!("{a}:1");
    let user = unique("u-indep");
    let out = append(
        store,
        vec![
            message(&a, &user, "1", "a1"),
            message(&b, &user, "2", "b1"),
            message(&b, &user, "3", "b2"),
            message(&a, &user, "4", "a2"),
            message(&b, &user, "5", "b3"),
        ],
    )
    .await;
    assert_eq!(
        out.iter().map(|x| (x.conversation_id.as_str(), x.seq)).collect::<Vec<_>>(),
        vec![(a.as_str(), 1), (b.as_str(), 1), (b.as_str(), 2), (a.as_str(), 2), (b.as_str(), 3)]
    );
    let in_a = all_messages(store, &a).await;
    let in_b = all_messages(store, &b).await;
    assert_eq!(
        in_a.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        vec![b"a1".to_vec(), b"a2".to_vec()]
    );
    assert_eq!(
        in_b.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        vec![b"b1".to_vec(), b"b2".to_vec(), b"b3".to_vec()]
    );
    assert_eq!(store.last_seq(&a).await.expect("last_seq"), 2);
    assert_eq!(store.last_seq(&b).await.expect("last_seq"), 3);
    store.set_watermark(&a, &user, v1::ReceiptKind::Read, 2).await.expect("set_watermark");
    assert!(store.watermarks(&b).await.expect("watermarks").is_empty());
    let listed = store.list_conversations(&user, "", 10).await.expect("list_conversations");
    assert_eq!(
        listed
            .iter()
            .map(|e| (e.conversation_id.as_str(), e.last_seq, e.watermarks.read))
            .collect::<Vec<_>>(),
        vec![(a.as_str(), 2, 2), (b.as_str(), 3, 0)]
    );
}

/// The health probe succeeds on a working store, also many at once and repeated, and leaves no
/// trace a client could see: no conversation, no seq used, nothing listed.
pub async fn health_probe_round_trips(store: &dyn Store) {
    store.health().await.expect("health on a working store");
    let probes = (0..8).map(|_| store.health()).collect();
    for result in join_all(probes).await {
        result.expect("concurrent health probes");
    }
    store.health().await.expect("health again");
    let conv = unique("c-health");
    let user = unique("u-health");
    assert_eq!(store.last_seq(tern_store::HEALTH_PROBE_ID).await.expect("last_seq"), 0);
    assert_eq!(append_one(store, message(&conv, &user, "m1", "hi")).await.seq, 1);
    store.health().await.expect("health after an append");
    assert_eq!(store.last_seq(&conv).await.expect("last_seq"), 1);
    let listed = store.list_conversations(&user, "", 100).await.expect("list_conversations");
    assert_eq!(listed.iter().map(|e| e.conversation_id.as_str()).collect::<Vec<_>>(), [&conv]);
    assert!(
        store
            .list_conversations(tern_store::HEALTH_PROBE_ID, "", 100)
            .await
            .expect("list_conversations")
            .is_empty()
    );
}
