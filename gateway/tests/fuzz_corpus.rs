//! Replays the committed fuzz corpus of this crate's targets (`fuzz/corpus/<target>/`) through
//! the fuzz bodies on stable, and keeps the generated seed files in that corpus up to date.
//!
//! To (re)write the seeds after changing them here: `TERN_WRITE_CORPUS=1 cargo test -p
//! tern-gateway --test fuzz_corpus`.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use tern_gateway::auth::{Claims, MAX_TOKEN_BYTES, TokenKey};
use tern_gateway::fuzzing::{self, FUZZ_NOW_UNIX_SECS, FUZZ_OTHER_KEY_SECRET};

/// A fuzz target: its name (directory under `fuzz/corpus/`) and its body.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 1] = [("token", fuzzing::token)];

fn corpus_dir(target: &str) -> PathBuf {
    tern_testkit::corpus::corpus_dir(env!("CARGO_MANIFEST_DIR"), target)
}

fn claims(sub: &str, did: &str, exp: i64) -> Claims {
    Claims { sub: sub.into(), did: did.into(), exp, iat: FUZZ_NOW_UNIX_SECS - 10 }
}

/// A token with a hand-written header and payload JSON and signature text.
fn raw_token(header: &str, payload: &str, sig: &str) -> String {
    format!("{}.{}.{sig}", B64.encode(header), B64.encode(payload))
}

/// The generated seeds: (target, file name, bytes).
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let key = fuzzing::fuzz_key();
    let valid = key.mint(&claims("alice", "phone", FUZZ_NOW_UNIX_SECS + 3600));
    let sig = valid.rsplit('.').next().unwrap_or_default().to_owned();
    let other = match TokenKey::from_secret(&FUZZ_OTHER_KEY_SECRET) {
        Ok(k) => k,
        Err(e) => panic!("{e}"),
    };
    let long = key.mint(&claims(&"a".repeat(MAX_TOKEN_BYTES), "phone", FUZZ_NOW_UNIX_SECS + 60));
    assert!(long.len() > MAX_TOKEN_BYTES);
    let mut non_utf8 = valid.clone().into_bytes();
    non_utf8.insert(5, 0xFF);
    vec![
        ("token", "seed-valid", valid.clone().into_bytes()),
        (
            "token",
            "seed-expired",
            key.mint(&claims("alice", "phone", FUZZ_NOW_UNIX_SECS - 60)).into_bytes(),
        ),
        (
            "token",
            "seed-expires-now",
            key.mint(&claims("bob", "laptop", FUZZ_NOW_UNIX_SECS)).into_bytes(),
        ),
        (
            "token",
            "seed-alg-none",
            raw_token(
                r#"{"alg":"none","typ":"JWT"}"#,
                r#"{"sub":"alice","did":"phone","exp":99999999999}"#,
                "",
            )
            .into_bytes(),
        ),
        (
            "token",
            "seed-alg-hs512",
            raw_token(r#"{"alg":"HS512"}"#, r#"{"sub":"a","did":"b","exp":99999999999}"#, &sig)
                .into_bytes(),
        ),
        ("token", "seed-wrong-key", other.mint(&claims("alice", "phone", i64::MAX)).into_bytes()),
        (
            "token",
            "seed-invalid-ids",
            key.mint(&claims("a b", "", FUZZ_NOW_UNIX_SECS + 60)).into_bytes(),
        ),
        ("token", "seed-too-long", long.into_bytes()),
        ("token", "seed-garbage", vec![0xFF, 0x00, b'.', 0x80, b'.', b'.', 0xC3]),
        ("token", "seed-four-parts", format!("{valid}.{sig}").into_bytes()),
        ("token", "seed-non-utf8", non_utf8),
        (
            "token",
            "seed-bad-base64-header",
            format!("ey!J*.{}", valid.split_once('.').map_or("", |(_, rest)| rest)).into_bytes(),
        ),
        ("token", "seed-padded-signature", format!("{valid}=").into_bytes()),
        (
            "token",
            "seed-standard-alphabet-signature",
            format!("{}+/", &valid[..valid.len() - 2]).into_bytes(),
        ),
        (
            "token",
            "seed-claims-not-json",
            raw_token(r#"{"alg":"HS256"}"#, "sub=alice", &sig).into_bytes(),
        ),
    ]
}

#[test]
fn seed_corpus_is_committed_and_up_to_date() {
    tern_testkit::corpus::check_seeds(
        seeds().into_iter().map(|(target, name, bytes)| (corpus_dir(target).join(name), bytes)),
    );
}

fn replay(target: &str, body: fn(&[u8])) {
    tern_testkit::corpus::replay(&corpus_dir(target), target, body);
}

#[test]
fn replay_token_corpus() {
    replay(TARGETS[0].0, TARGETS[0].1);
}

#[test]
fn seeds_hit_the_outcomes_they_are_named_for() {
    use tern_proto::session::server::AuthError;
    let key = fuzzing::fuzz_key();
    let now = fuzzing::FUZZ_NOW_UNIX_MS;
    for (_, name, bytes) in seeds() {
        let text = String::from_utf8_lossy(&bytes);
        let got = key.verify(&text, now);
        match name {
            "seed-valid" => assert!(got.is_ok(), "{name}: {got:?}"),
            "seed-expired" | "seed-expires-now" => {
                assert_eq!(got, Err(AuthError::Expired), "{name}");
            }
            _ => assert!(matches!(got, Err(AuthError::BadToken(_))), "{name}: {got:?}"),
        }
    }
}
