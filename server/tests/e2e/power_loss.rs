//! Accepted means durable, against a power cut rather than a process kill: `tern serve` runs
//! with its data directory on testkit's LazyFs, which keeps every write not yet fsynced in
//! memory and drops it when the power is cut under load. Every acked message must be there
//! after the restart; and the same run must lose acked messages when the server does not
//! fsync (`store.fsync = false`) or the disk ignores its fsyncs, which shows that the test
//! can fail.

use crate::common;

use common::power::{Scenario, When, run};
use tern_testkit::lazyfs::{Cut, FsyncMode, LazyFsOptions};

/// Prints what a run saw (for the test log and for reports).
fn report(name: &str, outcome: &common::power::Outcome) {
    eprintln!(
        "{name}: {} acks, at the cut {:?}, restart {}, check {}, {} ms",
        outcome.acked.len(),
        outcome.at_cut,
        if outcome.restart.is_ok() { "ok" } else { "FAILED" },
        match &outcome.check {
            Ok(()) => "every ack served".to_owned(),
            Err(loss) => loss.to_string(),
        },
        outcome.millis
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_a_power_cut_inside_a_commit() {
    // The cut replaces the first (then the second) fsync after 200 acks: the writes it was to
    // make durable are lost, and nothing acked may be.
    for nth in [1, 2] {
        let scenario = Scenario { when: When::AtFsync(nth), ..Scenario::default() };
        let Some(outcome) = run(scenario).await else { return };
        report(&format!("fsync, cut at fsync {nth}"), &outcome);
        outcome.assert_cut_inside_a_commit();
        outcome.assert_durable();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_a_torn_commit() {
    // Part of what the interrupted commit wrote reaches the disk: the first half in write order
    // (a torn tail), or a random half of its pages (a disk that reorders). The server must
    // start on it and serve every acked message.
    let cases = [
        (1, Cut::KeepPercent(50)),
        (2, Cut::KeepPercent(50)),
        (1, Cut::RandomPages { seed: 7 }),
        (2, Cut::RandomPages { seed: 8 }),
    ];
    for (nth, cut) in cases {
        let scenario = Scenario { cut, when: When::AtFsync(nth), ..Scenario::default() };
        let Some(outcome) = run(scenario).await else { return };
        report(&format!("fsync, {cut:?} at fsync {nth}"), &outcome);
        outcome.assert_cut_inside_a_commit();
        outcome.assert_durable();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fsync_acked_messages_are_lost() {
    // No fsync at all after startup, so every ack since rests on memory: the cut must lose
    // them (all of them, as soon as one ack came). With redb the commits do not even reach the
    // file (a non-durable redb commit stays in its memory); with a log written without
    // fdatasync they reach the page cache, which the cut drops. Either way the loss is
    // certain, not a matter of timing.
    let scenario =
        Scenario { set: vec!["store.fsync=false".into()], when: When::Now, ..Scenario::default() };
    let Some(outcome) = run(scenario).await else { return };
    report("store.fsync=false, cut now", &outcome);
    assert!(outcome.restart.is_ok(), "{:?}", outcome.restart);
    let loss = outcome.check.as_ref().expect_err("no fsync, yet every acked message survived");
    assert!(!loss.missing.is_empty(), "{loss}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_ignores_fsync_loses_acked_messages() {
    // The server fsyncs as it should, but the disk only pretends: the checker must see it.
    // This one shows that the filesystem, not the server's memory, is what loses the data.
    let scenario = Scenario {
        fs: LazyFsOptions { fsync: FsyncMode::Ignore, ..LazyFsOptions::default() },
        ..Scenario::default()
    };
    let Some(outcome) = run(scenario).await else { return };
    report("fsyncs ignored by the disk, cut at the next fsync", &outcome);
    assert!(outcome.restart.is_ok(), "{:?}", outcome.restart);
    let loss = outcome.check.as_ref().expect_err("fsyncs ignored, yet every ack survived");
    assert!(!loss.missing.is_empty(), "{loss}");
}
