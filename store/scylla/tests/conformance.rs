//! Runs the conformance suite against a live ScyllaDB node when `TERN_SCYLLA_NODES` is set
//! (see build.rs); otherwise every live test is ignored with that reason, never passed.
//!
//! All cases share one keyspace (`TERN_SCYLLA_KEYSPACE`, default `tern_conformance`): the
//! cases use unique ids, so they can run concurrently on one persistent store.

use tern_store_scylla::{ScyllaConfig, ScyllaStore};

/// Every case this file runs, in the order of `tern_store_conformance::run_all`.
const CASES: &[&str] = &[
    "seqs_start_at_one",
    "batch_order_is_seq_order",
    "dedupe_across_calls",
    "dedupe_within_batch",
    "concurrent_appenders_get_unique_gap_free_seqs",
    "read_range_windows",
    "get_message_round_trips_every_field",
    "recall_marks_target_and_clears_body",
    "recall_resend_is_answered_by_dedupe",
    "one_client_msg_id_across_conversations_and_kinds",
    "watermarks_are_monotonic",
    "list_conversations_pages_in_id_order",
    "conversations_are_independent",
    "health_probe_round_trips",
    "commit_mixes_appends_and_watermarks",
    "commit_coalesces_watermarks",
];

/// A store on the configured node(s); the keyspace defaults to `tern_conformance`.
#[cfg_attr(not(scylla_live), allow(dead_code))]
async fn store() -> ScyllaStore {
    let mut cfg = ScyllaConfig::from_env().expect("TERN_SCYLLA_* configuration");
    if std::env::var_os(tern_store_scylla::config::ENV_KEYSPACE).is_none() {
        cfg.keyspace = "tern_conformance".to_owned();
    }
    ScyllaStore::connect(cfg).await.expect("connect to ScyllaDB")
}

macro_rules! live_cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(scylla_live),
                ignore = "set TERN_SCYLLA_NODES=host:port to run against a ScyllaDB node"
            )]
            async fn $case() {
                let store = store().await;
                tern_store_conformance::$case(&store).await;
            }
        )*

        /// The cases generated above, by name.
        const GENERATED: &[&str] = &[$(stringify!($case)),*];
    };
}

live_cases!(
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

/// The whole suite in turn on one store, as `run_all` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(scylla_live),
    ignore = "set TERN_SCYLLA_NODES=host:port to run against a ScyllaDB node"
)]
async fn run_all_on_one_store() {
    let store = store().await;
    tern_store_conformance::run_all(&store).await;
}

/// The case names `run_all` calls, read from the conformance crate's source.
fn run_all_cases() -> Vec<String> {
    let src = include_str!("../../conformance/src/lib.rs");
    let start = src.find("pub async fn run_all(").expect("run_all in the conformance crate");
    let body = &src[start..];
    let body = &body[..body.find("\n}").expect("end of run_all")];
    body.lines()
        .filter_map(|l| l.trim().strip_suffix("(store).await;"))
        .map(str::to_owned)
        .collect()
}

/// Fails when the conformance crate gains (or renames) a case this file does not run.
#[test]
fn every_conformance_case_is_run_here() {
    let upstream = run_all_cases();
    assert!(upstream.len() >= 11, "could not parse run_all: {upstream:?}");
    assert_eq!(upstream, CASES, "update CASES and live_cases! in this file");
    assert_eq!(GENERATED, CASES, "live_cases! and CASES disagree");
    // Every `pub async fn` case of the crate is in run_all too.
    let src = include_str!("../../conformance/src/lib.rs");
    for line in src.lines() {
        if let Some(rest) = line.strip_prefix("pub async fn ") {
            let name = rest.split('(').next().unwrap_or_default();
            if name != "run_all" && name != "run_all_groups" && name != "run_all_flags" {
                assert!(CASES.contains(&name), "conformance case {name} is not run here");
            }
        }
    }
}
