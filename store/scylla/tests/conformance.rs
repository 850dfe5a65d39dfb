//! Runs the conformance suite against a live ScyllaDB node when `TERN_SCYLLA_NODES` is set
//! (see build.rs); otherwise every live test is ignored with that reason, never passed.
//!
//! The group cases (`run_all_groups`) and the conversation-list cases (`run_all_flags`:
//! mentions, muted / pinned, `muted_among`) are run the same way.
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

/// Every group case this file runs, in the order of `tern_store_conformance::run_all_groups`.
const GROUP_CASES: &[&str] = &[
    "group_create_reads_back",
    "group_changes_compare_and_set",
    "group_sends_need_current_membership",
    "group_rows_follow_joins_roles_and_dissolution",
    "group_conversations_are_listed",
    "group_mentions_are_listed",
];

/// Every conversation-list case this file runs, in the order of
/// `tern_store_conformance::run_all_flags`.
const FLAG_CASES: &[&str] = &[
    "mentions_are_stored_and_listed",
    "flags_are_per_user_and_independent",
    "muted_among_nobody_muted",
    "muted_among_follows_mute_and_unmute",
    "muted_among_keeps_the_callers_order",
    "muted_among_unknown_users_and_unflagged_conversations",
    "muted_among_answers_thousands_in_one_call",
];
/// Every device case this file runs, in the order of `tern_store_conformance::run_all_devices`.
const DEVICE_CASES: &[&str] = &[
    "devices_check_in_and_list",
    "device_push_registrations_batch_read",
    "device_revoke_fences_tokens",
    "concurrent_device_writes_lose_nothing",
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
    ($generated:ident: $($case:ident),* $(,)?) => {
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
        const $generated: &[&str] = &[$(stringify!($case)),*];
    };
}

live_cases!(
    GENERATED:
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

live_cases!(
    GENERATED_GROUPS:
    group_create_reads_back,
    group_changes_compare_and_set,
    group_sends_need_current_membership,
    group_rows_follow_joins_roles_and_dissolution,
    group_conversations_are_listed,
    group_mentions_are_listed,
);

live_cases!(
    GENERATED_FLAGS:
    mentions_are_stored_and_listed,
    flags_are_per_user_and_independent,
    muted_among_nobody_muted,
    muted_among_follows_mute_and_unmute,
    muted_among_keeps_the_callers_order,
    muted_among_unknown_users_and_unflagged_conversations,
    muted_among_answers_thousands_in_one_call,
);

live_cases!(
    GENERATED_DEVICES:
    devices_check_in_and_list,
    device_push_registrations_batch_read,
    device_revoke_fences_tokens,
    concurrent_device_writes_lose_nothing,
);

/// The device cases in turn on one store, as `run_all_devices` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(scylla_live),
    ignore = "set TERN_SCYLLA_NODES=host:port to run against a ScyllaDB node"
)]
async fn run_all_devices_on_one_store() {
    let store = store().await;
    tern_store_conformance::run_all_devices(&store).await;
}

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

/// The group cases in turn on one store, as `run_all_groups` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(scylla_live),
    ignore = "set TERN_SCYLLA_NODES=host:port to run against a ScyllaDB node"
)]
async fn run_all_groups_on_one_store() {
    let store = store().await;
    tern_store_conformance::run_all_groups(&store).await;
}

/// The conversation-list cases in turn on one store, as `run_all_flags` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(scylla_live),
    ignore = "set TERN_SCYLLA_NODES=host:port to run against a ScyllaDB node"
)]
async fn run_all_flags_on_one_store() {
    let store = store().await;
    tern_store_conformance::run_all_flags(&store).await;
}

/// The case names `runner` (`run_all`, `run_all_groups` or `run_all_flags`) calls, read from the conformance
/// crate's source.
fn cases_of(runner: &str) -> Vec<String> {
    let src = include_str!("../../conformance/src/lib.rs");
    let head = format!("pub async fn {runner}(");
    let start = src.find(&head).unwrap_or_else(|| panic!("{runner} in the conformance crate"));
    let body = &src[start..];
    let body = &body[..body.find("\n}").expect("end of the runner")];
    body.lines()
        .filter_map(|l| l.trim().strip_suffix("(store).await;"))
        .map(str::to_owned)
        .collect()
}

/// Fails when the conformance crate gains (or renames) a case this file does not run.
#[test]
fn every_conformance_case_is_run_here() {
    let upstream = cases_of("run_all");
    assert!(upstream.len() >= 11, "could not parse run_all: {upstream:?}");
    assert_eq!(upstream, CASES, "update CASES and live_cases! in this file");
    assert_eq!(GENERATED, CASES, "live_cases! and CASES disagree");
    let groups = cases_of("run_all_groups");
    assert!(groups.len() >= 5, "could not parse run_all_groups: {groups:?}");
    assert_eq!(groups, GROUP_CASES, "update GROUP_CASES and live_cases! in this file");
    assert_eq!(GENERATED_GROUPS, GROUP_CASES, "live_cases! and GROUP_CASES disagree");
    let flags = cases_of("run_all_flags");
    assert!(flags.len() >= 2, "could not parse run_all_flags: {flags:?}");
    assert_eq!(flags, FLAG_CASES, "update FLAG_CASES and live_cases! in this file");
    assert_eq!(GENERATED_FLAGS, FLAG_CASES, "live_cases! and FLAG_CASES disagree");
    let devices = cases_of("run_all_devices");
    assert_eq!(devices, DEVICE_CASES, "update DEVICE_CASES and live_cases! in this file");
    assert_eq!(GENERATED_DEVICES, DEVICE_CASES, "live_cases! and DEVICE_CASES disagree");
    // The group and list cases are also exactly the ones their macros generate.
    let src = include_str!("../../conformance/src/lib.rs");
    for (mac, cases) in [
        ("group_conformance_tests", GROUP_CASES),
        ("flags_conformance_tests", FLAG_CASES),
        ("device_conformance_tests", DEVICE_CASES),
    ] {
        let start = src.find(&format!("macro_rules! {mac}")).expect("the macro");
        let body = &src[start..];
        let body = &body[..body.find("\n}").expect("end of the macro")];
        for case in cases {
            assert!(body.contains(&format!("{case},")), "{mac}! lacks {case}");
        }
    }
    // Every `pub async fn` case of the crate (and of its modules) is run here.
    let sources = [
        src,
        include_str!("../../conformance/src/group.rs"),
        include_str!("../../conformance/src/commit.rs"),
        include_str!("../../conformance/src/reuse.rs"),
        include_str!("../../conformance/src/flags.rs"),
        include_str!("../../conformance/src/device.rs"),
    ];
    for line in sources.iter().flat_map(|s| s.lines()) {
        if let Some(rest) = line.strip_prefix("pub async fn ") {
            let name = rest.split('(').next().unwrap_or_default();
            let runners = ["run_all", "run_all_groups", "run_all_flags", "run_all_devices"];
            if !runners.contains(&name) {
                assert!(
                    CASES.contains(&name)
                        || GROUP_CASES.contains(&name)
                        || FLAG_CASES.contains(&name)
                        || DEVICE_CASES.contains(&name),
                    "conformance case {name} is not run here"
                );
            }
        }
    }
}
