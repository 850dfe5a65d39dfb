//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz bodies on stable,
//! and keeps the generated seed files in that corpus up to date.
//!
//! To (re)write the seeds after changing them here: `TERN_WRITE_CORPUS=1 cargo test -p
//! tern-proto --test fuzz_corpus`.

use std::path::PathBuf;

use prost::Message as _;
use tern_proto::fuzzing;
use tern_proto::link::v1 as link;
use tern_proto::v1::{self, envelope::Body};

/// A fuzz target: its name (directory under `fuzz/corpus/`) and its body.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 5] = [
    ("frame_decoder", fuzzing::frame_decoder),
    ("envelope", fuzzing::envelope),
    ("server_session", fuzzing::server_session),
    ("client_session", fuzzing::client_session),
    ("link_handshake", fuzzing::link_handshake),
];

/// Targets whose bodies live in other crates (and are replayed by those crates' own
/// `tests/fuzz_corpus.rs`).
const OTHER_CRATES_TARGETS: [&str; 7] = [
    "token",
    "gateway_connection",
    "quic_datagram",
    "http_request",
    "wal_record",
    "store_record",
    "push_answer",
];

fn corpus_dir(target: &str) -> PathBuf {
    tern_testkit::corpus::corpus_dir(env!("CARGO_MANIFEST_DIR"), target)
}

fn env(request_id: u64, body: Body) -> v1::Envelope {
    v1::Envelope { request_id, body: Some(body) }
}

fn login(token: &str, protocol_version: u32) -> v1::Envelope {
    env(
        1,
        Body::Login(v1::Login {
            token: token.into(),
            protocol_version,
            client_version: "seed/1".into(),
            ..Default::default()
        }),
    )
}

fn send() -> v1::Envelope {
    env(
        2,
        Body::Send(v1::Send {
            conversation_id: "dm:alice:bob".into(),
            client_msg_id: "m-1".into(),
            content_type: "text/plain".into(),
            body: b"hello".to_vec().into(),
            ..Default::default()
        }),
    )
}

fn group_event_message() -> v1::Message {
    let event = v1::GroupEvent {
        kind: v1::group_event::Kind::MembersAdded as i32,
        actor_user_id: "alice".into(),
        user_ids: vec!["bob".into(), "carol".into()],
        ..Default::default()
    };
    v1::Message {
        conversation_id: "g:team".into(),
        seq: 3,
        sender_user_id: "alice".into(),
        kind: v1::MessageKind::GroupEvent as i32,
        body: event.encode_to_vec().into(),
        ..Default::default()
    }
}

fn sync_page() -> v1::Envelope {
    env(
        5,
        Body::SyncPage(v1::SyncPage {
            conversation_id: "g:team".into(),
            messages: vec![group_event_message()],
            missing: vec![v1::SeqRange { first: 1, last: 2 }],
            next_from_seq: 4,
            has_more: false,
            last_seq: 3,
        }),
    )
}

fn refresh(token: &str) -> v1::Envelope {
    env(6, Body::RefreshToken(v1::RefreshToken { token: token.into() }))
}

fn framed(envs: &[v1::Envelope]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in envs {
        let bytes = e.encode_to_vec();
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// server_session op: a frame (opcode 0, 1-byte length, bytes).
fn op_frame(e: &v1::Envelope) -> Vec<u8> {
    let bytes = e.encode_to_vec();
    let mut out = vec![0, u8::try_from(bytes.len()).unwrap_or(u8::MAX)];
    out.extend_from_slice(&bytes);
    out
}

/// server_session op: `secs` (0..=63) seconds pass, then a tick.
fn op_wait(secs: u8) -> Vec<u8> {
    vec![1 + 4 * secs.min(63)]
}

const OP_TO_DEADLINE: u8 = 2;
const OP_TOO_LARGE: u8 = 3;

fn with_seed(seed: u8, stream: Vec<u8>) -> Vec<u8> {
    let mut out = vec![seed];
    out.extend(stream);
    out
}

/// client_session header: config byte (max_buffered `1 + (cfg & 7)`, outbox capacity
/// `1 + (cfg >> 3 & 7)`), heartbeat interval and silence (s), backoff byte.
fn cs_header(cfg: u8, hb_interval: u8, hb_silence: u8, backoff: u8) -> Vec<u8> {
    vec![cfg, hb_interval, hb_silence, backoff]
}

/// client_session op `kind` on conversation `c`.
fn cs_op(kind: u8, c: u8) -> u8 {
    (c << 3) | kind
}

/// client_session: a pushed message.
fn cs_msg(c: u8, seq: u8) -> Vec<u8> {
    vec![cs_op(0, c), seq]
}

/// client_session: an own SendAck.
fn cs_own(c: u8, seq: u8) -> Vec<u8> {
    vec![cs_op(1, c), seq]
}

/// client_session: a sync page (up to 7 messages, up to 3 missing ranges).
fn cs_page(c: u8, msgs: &[u8], missing: &[(u8, u8)], more: bool, last: u8, next: u8) -> Vec<u8> {
    let shape =
        (msgs.len().min(7) as u8) | ((missing.len().min(3) as u8) << 3) | (u8::from(more) << 5);
    let mut out = vec![cs_op(2, c), shape];
    out.extend_from_slice(msgs);
    for &(first, last) in missing {
        out.extend([first, last]);
    }
    out.extend([last, next]);
    out
}

/// client_session: `note_last_seq`.
fn cs_note(c: u8, seq: u8) -> Vec<u8> {
    vec![cs_op(3, c), seq]
}

/// client_session: `skip_gap`.
fn cs_skip(c: u8) -> Vec<u8> {
    vec![cs_op(4, c)]
}

/// client_session: outbox insert (`remove == false`) or remove of id `id` (0..8).
fn cs_outbox(id: u8, remove: bool) -> Vec<u8> {
    vec![5, (id << 1) | u8::from(remove)]
}

/// client_session: heartbeat: `secs` (0..64) pass, then `what` (0 sent, 1 received, 2 poll).
fn cs_heartbeat(secs: u8, what: u8) -> Vec<u8> {
    vec![6, (secs << 2) | what]
}

/// client_session: backoff `next_delay` (`b != 0`) or reset (`b == 0`).
fn cs_backoff(b: u8) -> Vec<u8> {
    vec![7, b]
}

/// link_handshake: the mode byte, then framed link frames.
fn lh(mode: u8, frames: &[link::LinkFrame]) -> Vec<u8> {
    let mut out = vec![mode];
    for f in frames {
        let bytes = f.encode_to_vec();
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

fn lf(body: link::link_frame::Body) -> link::LinkFrame {
    link::LinkFrame { id: 0, body: Some(body) }
}

fn link_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use link::link_frame::Body as L;
    let hello = |version, nonce: Vec<u8>| {
        lf(L::Hello(link::Hello { gateway_id: "G1".into(), version, nonce: nonce.into() }))
    };
    let hello_ok = |address: &str| {
        lf(L::HelloOk(link::HelloOk {
            worker_id: "W1".into(),
            nonce: vec![2; 32].into(),
            address: address.into(),
            proof: vec![0; 32].into(),
        }))
    };
    let proof = lf(L::HelloProof(link::HelloProof { proof: vec![0; 32].into() }));
    let request = link::LinkFrame { id: 7, body: Some(L::Request(link::Request::default())) };
    let refused = lf(L::Refused(link::Refused { reason: "bad proof".into() }));
    vec![
        ("link_handshake", "seed-honest-both-ways", lh(0b1111, &[])),
        (
            "link_handshake",
            "seed-honest-then-more",
            lh(0b1111, &[request.clone(), lf(L::Push(link::Push::default()))]),
        ),
        ("link_handshake", "seed-forged-gateway-proof", lh(0b0001, &[proof, request.clone()])),
        ("link_handshake", "seed-request-before-proof", lh(0b0001, &[request])),
        ("link_handshake", "seed-old-hello", lh(0, &[hello(1, Vec::new()), hello(2, vec![1; 31])])),
        (
            "link_handshake",
            "seed-relayed-or-forged-hello-ok",
            lh(0, &[hello_ok("10.0.0.9:7500"), hello_ok("127.0.0.1:7500")]),
        ),
        ("link_handshake", "seed-refused", lh(0b0100, &[refused])),
    ]
}

/// The generated seeds: (target, file name, bytes).
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let ping = env(3, Body::Ping(v1::Ping { client_time_ms: 1_700_000_000_000 }));
    let login_ok = login("ok:alice:phone", 1);
    vec![
        // frame_decoder: first byte drives the chunk sizes, the rest is the byte stream.
        ("frame_decoder", "seed-session", with_seed(0, framed(&[login_ok.clone(), ping.clone()]))),
        ("frame_decoder", "seed-messages", with_seed(77, framed(&[send(), sync_page()]))),
        ("frame_decoder", "seed-empty-envelope", with_seed(1, vec![0, 0, 0, 0])),
        ("frame_decoder", "seed-too-large", with_seed(9, vec![0xFF, 0xFF, 0xFF, 0xFF, 1, 2])),
        ("frame_decoder", "seed-just-over-max", with_seed(9, vec![0, 0, 2, 1])),
        ("frame_decoder", "seed-malformed", with_seed(200, vec![0, 0, 0, 2, 0x52, 0x05])),
        ("frame_decoder", "seed-truncated", with_seed(3, framed(&[send()])[..12].to_vec())),
        // envelope: raw protobuf bytes.
        ("envelope", "seed-login", login_ok.encode_to_vec()),
        ("envelope", "seed-send", send().encode_to_vec()),
        ("envelope", "seed-sync-page", sync_page().encode_to_vec()),
        (
            "envelope",
            "seed-deliver-group-event",
            env(0, Body::Deliver(v1::Deliver { message: Some(group_event_message()) }))
                .encode_to_vec(),
        ),
        ("envelope", "seed-message", group_event_message().encode_to_vec()),
        ("envelope", "seed-negative-enum", vec![0x72, 0x06, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]),
        ("envelope", "seed-unknown-field", vec![0x98, 0x06, 0x05, 0x08, 0x07]),
        ("envelope", "seed-garbage", vec![0xFF; 11]),
        // server_session: opcodes (see tern_proto::fuzzing::server_session).
        (
            "server_session",
            "seed-happy-path",
            [op_frame(&login_ok), op_wait(20), op_frame(&ping), op_frame(&send()), op_wait(63)]
                .concat(),
        ),
        (
            "server_session",
            "seed-idle-timeout",
            [op_frame(&login_ok), vec![OP_TO_DEADLINE], op_frame(&ping)].concat(),
        ),
        ("server_session", "seed-login-timeout", [op_wait(9), op_wait(1), op_wait(1)].concat()),
        (
            "server_session",
            "seed-frame-before-login",
            [op_frame(&ping), op_frame(&login_ok)].concat(),
        ),
        ("server_session", "seed-bad-token", op_frame(&login("nope", 1))),
        ("server_session", "seed-expired-token", op_frame(&login("expired", 1))),
        ("server_session", "seed-future-version", op_frame(&login("ok:a:b", 2))),
        (
            "server_session",
            "seed-second-login-and-server-frames",
            [
                op_frame(&login_ok),
                op_frame(&login_ok),
                op_frame(&v1::Envelope::default()),
                op_frame(&env(4, Body::Pong(v1::Pong::default()))),
                op_frame(&sync_page()),
            ]
            .concat(),
        ),
        (
            "server_session",
            "seed-decode-errors",
            [op_frame(&login_ok), vec![0, 2, 0x52, 0x05], vec![OP_TOO_LARGE]].concat(),
        ),
        (
            "server_session",
            "seed-token-refresh-then-expiry",
            [
                op_frame(&login("ok:alice:phone:30", 1)),
                op_wait(20),
                op_frame(&refresh("ok:alice:phone:90")),
                op_frame(&refresh("ok:bob:phone:600")),
                op_frame(&refresh("ok:alice:phone:10")),
                op_frame(&refresh("expired")),
                op_frame(&refresh("nope")),
                op_wait(50),
                op_frame(&ping),
                op_wait(25),
                vec![OP_TO_DEADLINE],
            ]
            .concat(),
        ),
        (
            "server_session",
            "seed-token-expires-under-a-frame",
            [op_frame(&login("ok:alice:phone:5", 1)), op_wait(6), op_frame(&ping)].concat(),
        ),
        // client_session: a header, then opcodes (see tern_proto::fuzzing::client_session).
        (
            "client_session",
            "seed-in-order-and-duplicates",
            [
                cs_header(7, 0, 0, 0),
                cs_msg(0, 1),
                cs_msg(0, 2),
                cs_msg(0, 2),
                cs_msg(0, 1),
                cs_msg(0, 3),
            ]
            .concat(),
        ),
        (
            "client_session",
            "seed-gap-then-sync",
            [
                cs_header(7, 0, 0, 0),
                cs_msg(0, 3),
                cs_msg(0, 5),
                cs_msg(0, 5),
                cs_page(0, &[1, 2, 3, 4, 5], &[], false, 5, 6),
            ]
            .concat(),
        ),
        (
            "client_session",
            "seed-missing-ranges",
            [
                cs_header(7, 0, 0, 0),
                cs_msg(1, 9),
                cs_page(1, &[1, 2, 5], &[(3, 4), (6, 8)], true, 9, 9),
                cs_page(1, &[10], &[], false, 10, 11),
            ]
            .concat(),
        ),
        (
            "client_session",
            "seed-own-acks",
            [
                cs_header(7, 0, 0, 0),
                cs_own(0, 2),
                cs_msg(0, 3),
                cs_own(0, 5),
                cs_msg(0, 1),
                cs_page(0, &[2, 3, 4, 5, 6], &[], false, 6, 7),
                cs_own(0, 4),
            ]
            .concat(),
        ),
        (
            "client_session",
            "seed-bounded-buffer",
            [
                cs_header(1, 0, 0, 0),
                (3..=10).flat_map(|s| cs_msg(2, s)).collect(),
                cs_own(2, 12),
                cs_own(2, 14),
                cs_page(2, &[1, 2, 3, 4, 5, 6, 7], &[], true, 14, 8),
                cs_page(2, &[8, 9, 10, 11, 13], &[], false, 14, 15),
            ]
            .concat(),
        ),
        (
            "client_session",
            "seed-stale-list-and-skip-gap",
            [
                cs_header(7, 0, 0, 0),
                cs_note(0, 3),
                cs_page(0, &[], &[], false, 0, 1),
                cs_msg(0, 3),
                cs_page(0, &[], &[], false, 0, 1),
                cs_skip(0),
                cs_msg(0, 4),
            ]
            .concat(),
        ),
        (
            "client_session",
            "seed-conversations-interleaved",
            [
                cs_header(2, 0, 0, 0),
                cs_msg(0, 2),
                cs_msg(1, 1),
                cs_msg(2, 4),
                cs_own(1, 2),
                cs_page(0, &[1], &[], false, 2, 3),
                cs_note(2, 6),
                cs_page(2, &[1, 2, 3, 5], &[(6, 6)], false, 6, 7),
            ]
            .concat(),
        ),
        (
            "client_session",
            "seed-outbox-heartbeat-backoff",
            [
                cs_header(0x10, 5, 0, 0x3A),
                cs_outbox(1, false),
                cs_outbox(2, false),
                cs_outbox(1, false),
                cs_outbox(3, false),
                cs_outbox(1, true),
                cs_outbox(3, false),
                cs_heartbeat(4, 2),
                cs_heartbeat(1, 2),
                cs_heartbeat(0, 0),
                cs_heartbeat(6, 1),
                cs_heartbeat(9, 2),
                cs_backoff(1),
                cs_backoff(200),
                cs_backoff(77),
                cs_backoff(0),
                cs_backoff(255),
            ]
            .concat(),
        ),
    ]
}

#[test]
fn seed_corpus_is_committed_and_up_to_date() {
    tern_testkit::corpus::check_seeds(
        seeds()
            .into_iter()
            .chain(link_seeds())
            .map(|(target, name, bytes)| (corpus_dir(target).join(name), bytes)),
    );
}

fn replay(target: &str, body: fn(&[u8])) {
    tern_testkit::corpus::replay(&corpus_dir(target), target, body);
}

#[test]
fn replay_frame_decoder_corpus() {
    replay(TARGETS[0].0, TARGETS[0].1);
}

#[test]
fn replay_envelope_corpus() {
    replay(TARGETS[1].0, TARGETS[1].1);
}

#[test]
fn replay_server_session_corpus() {
    replay(TARGETS[2].0, TARGETS[2].1);
}

#[test]
fn replay_client_session_corpus() {
    replay(TARGETS[3].0, TARGETS[3].1);
}

#[test]
fn replay_link_handshake_corpus() {
    replay(TARGETS[4].0, TARGETS[4].1);
}

#[test]
fn every_fuzz_target_has_a_replay() {
    // The cargo-fuzz targets in fuzz/fuzz_targets/ must match the bodies replayed here.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    let mut found: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
            .collect(),
        Err(e) => panic!("{} is missing: {e}", dir.display()),
    };
    found.sort();
    let mut expected: Vec<String> =
        TARGETS.iter().map(|(t, _)| *t).chain(OTHER_CRATES_TARGETS).map(str::to_owned).collect();
    expected.sort();
    assert_eq!(found, expected);
}
