//! Replays the committed fuzz corpus of the `push_answer` target (`fuzz/corpus/push_answer/`)
//! through its body on stable, and keeps the generated seed files in it up to date.
//!
//! To (re)write the seeds after changing them here: `TERN_WRITE_CORPUS=1 cargo test -p
//! tern-notify --test fuzz_corpus`.

use std::path::PathBuf;

use tern_notify::fuzzing;

const TARGET: &str = "push_answer";

fn corpus_dir() -> PathBuf {
    tern_testkit::corpus::corpus_dir(env!("CARGO_MANIFEST_DIR"), TARGET)
}

/// `status`, header lines and a body in the target's layout.
fn answer(status: u16, headers: &[&str], body: &str) -> Vec<u8> {
    let mut out = (status - 100).to_be_bytes().to_vec();
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(body.as_bytes());
    out
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let fcm_error = |status: u16, code: &str, extra: &str| {
        format!(
            r#"{{"error":{{"code":{status},"message":"m","status":"S","details":[{{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"{code}"}}{extra}]}}}}"#
        )
    };
    let violation = r#",{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"message.token","description":"bad"}]}"#;
    vec![
        ("seed-ok", answer(200, &["apns-id: 1f2e3d4c-0000-4000-8000-000000000000"], "")),
        (
            "seed-apns-unregistered",
            answer(410, &[], r#"{"reason":"Unregistered","timestamp":1700000000000}"#),
        ),
        ("seed-apns-bad-token", answer(400, &[], r#"{"reason":"BadDeviceToken"}"#)),
        ("seed-apns-expired-jwt", answer(403, &[], r#"{"reason":"ExpiredProviderToken"}"#)),
        (
            "seed-apns-too-many",
            answer(429, &["retry-after: 30"], r#"{"reason":"TooManyRequests"}"#),
        ),
        (
            "seed-fcm-unregistered",
            answer(404, &["content-type: application/json"], &fcm_error(404, "UNREGISTERED", "")),
        ),
        (
            "seed-fcm-invalid-token",
            answer(400, &[], &fcm_error(400, "INVALID_ARGUMENT", violation)),
        ),
        (
            "seed-fcm-unavailable",
            answer(
                503,
                &["retry-after: Wed, 21 Oct 2015 07:28:00 GMT"],
                &fcm_error(503, "UNAVAILABLE", ""),
            ),
        ),
        ("seed-webhook-gone", answer(410, &[], "")),
        (
            "seed-junk-body",
            answer(500, &["retry-after: 99999999999999999999"], "{\"error\":[1,2,{"),
        ),
        ("seed-no-headers", vec![0x01, 0x2c]),
    ]
}

#[test]
fn seed_corpus_is_committed_and_up_to_date() {
    tern_testkit::corpus::check_seeds(
        seeds().into_iter().map(|(name, bytes)| (corpus_dir().join(name), bytes)),
    );
}

#[test]
fn replay_push_answer_corpus() {
    tern_testkit::corpus::replay(&corpus_dir(), TARGET, fuzzing::push_answer);
}
