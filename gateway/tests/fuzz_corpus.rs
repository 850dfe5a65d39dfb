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

const TARGETS: [Target; 3] = [
    ("token", fuzzing::token),
    ("gateway_connection", fuzzing::connection),
    ("quic_datagram", fuzzing::quic_datagram),
];

fn corpus_dir(target: &str) -> PathBuf {
    tern_testkit::corpus::corpus_dir(env!("CARGO_MANIFEST_DIR"), target)
}

fn claims(sub: &str, did: &str, exp: i64) -> Claims {
    Claims { iat: Some(FUZZ_NOW_UNIX_SECS - 10), ..Claims::new(sub, did, 0, exp) }
}

/// A token with a hand-written header and payload JSON and signature text.
fn raw_token(header: &str, payload: &str, sig: &str) -> String {
    format!("{}.{}.{sig}", B64.encode(header), B64.encode(payload))
}

/// A token with hand-written header and payload JSON, correctly signed with `key` (HS256).
fn signed_raw(header: &str, payload: &str, key: &TokenKey) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
    // Sign by minting a token with the same signing input: reuse `mint` through a raw MAC.
    let sig = {
        use hmac::{KeyInit, Mac};
        let secret = match B64.decode(key.to_base64()) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        mac.update(input.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    };
    format!("{input}.{sig}")
}

/// Fuzz input for part 2 of the body: exp byte, flags byte, offset byte, "sub.did".
fn part2(exp_minutes: i8, flags: u8, offset_secs: i8, ids: &str) -> Vec<u8> {
    let mut v = vec![exp_minutes as u8, flags, offset_secs as u8];
    v.extend_from_slice(ids.as_bytes());
    v
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
    let second = match TokenKey::from_secret(&fuzzing::FUZZ_SECOND_KEY_SECRET) {
        Ok(k) => k.with_kid(Some("hs2".into())),
        Err(e) => panic!("{e}"),
    };
    let ed = fuzzing::fuzz_ed25519();
    let long = key.mint(&claims(&"a".repeat(MAX_TOKEN_BYTES), "phone", FUZZ_NOW_UNIX_SECS + 60));
    assert!(long.len() > MAX_TOKEN_BYTES);
    let mut non_utf8 = valid.clone().into_bytes();
    non_utf8.insert(5, 0xFF);
    let hs = r#"{"alg":"HS256"}"#;
    let payload = |extra: &str| {
        format!(r#"{{"sub":"alice","did":"phone","exp":{}{extra}}}"#, FUZZ_NOW_UNIX_SECS + 600)
    };
    // HS256 keyed with the Ed25519 public key's base64 text: the classic alg confusion.
    let confused = match TokenKey::from_secret(ed.public_base64().as_bytes()) {
        Ok(k) => k.with_kid(Some("ed1".into())),
        Err(e) => panic!("{e}"),
    };
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
            // exp + the 30 s leeway is now: just expired.
            key.mint(&claims("bob", "laptop", FUZZ_NOW_UNIX_SECS - 30)).into_bytes(),
        ),
        (
            "token",
            "seed-within-leeway",
            key.mint(&claims("bob", "laptop", FUZZ_NOW_UNIX_SECS - 29)).into_bytes(),
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
        // Key set: kid selection, EdDSA, alg confusion.
        (
            "token",
            "seed-kid-second-key",
            second.mint(&claims("alice", "phone", FUZZ_NOW_UNIX_SECS + 600)).into_bytes(),
        ),
        (
            "token",
            "seed-second-key-without-kid",
            second
                .clone()
                .with_kid(None)
                .mint(&claims("alice", "phone", FUZZ_NOW_UNIX_SECS + 600))
                .into_bytes(),
        ),
        (
            "token",
            "seed-unknown-kid",
            key.clone()
                .with_kid(Some("k9".into()))
                .mint(&claims("alice", "phone", FUZZ_NOW_UNIX_SECS + 600))
                .into_bytes(),
        ),
        (
            "token",
            "seed-eddsa",
            ed.mint(&claims("alice", "phone", FUZZ_NOW_UNIX_SECS + 600)).into_bytes(),
        ),
        (
            "token",
            "seed-eddsa-without-kid",
            ed.clone()
                .with_kid(None)
                .mint(&claims("alice", "phone", FUZZ_NOW_UNIX_SECS + 600))
                .into_bytes(),
        ),
        (
            "token",
            "seed-alg-confusion",
            confused.mint(&claims("alice", "phone", FUZZ_NOW_UNIX_SECS + 600)).into_bytes(),
        ),
        // Claims: nbf, iat, number forms, crit.
        (
            "token",
            "seed-nbf-future",
            signed_raw(hs, &payload(&format!(r#","nbf":{}"#, FUZZ_NOW_UNIX_SECS + 31)), &key)
                .into_bytes(),
        ),
        (
            "token",
            "seed-iat-future",
            signed_raw(hs, &payload(&format!(r#","iat":{}"#, FUZZ_NOW_UNIX_SECS + 31)), &key)
                .into_bytes(),
        ),
        (
            "token",
            "seed-exp-float",
            signed_raw(hs, r#"{"sub":"alice","did":"phone","exp":1700000600.5}"#, &key)
                .into_bytes(),
        ),
        (
            "token",
            "seed-exp-huge",
            signed_raw(hs, r#"{"sub":"alice","did":"phone","exp":9223372036854775807}"#, &key)
                .into_bytes(),
        ),
        (
            "token",
            "seed-crit",
            signed_raw(r#"{"alg":"HS256","crit":["x"]}"#, &payload(""), &key).into_bytes(),
        ),
        (
            "token",
            "seed-iss-aud",
            signed_raw(hs, &payload(r#","iss":"fuzz-issuer","aud":["x","tern"]"#), &key)
                .into_bytes(),
        ),
        // Part 2 inputs: exp minutes, flags (signer, nbf, iat, iss, aud), offset, ids.
        ("token", "seed-mint-eddsa-strict", part2(10, 4 | (1 << 5) | 0x80, -5, "alice.phone")),
        ("token", "seed-mint-nbf-iat-future", part2(10, 1 | 8 | 16, 40, "alice.phone")),
        ("token", "seed-mint-wrong-issuer", part2(10, 2 | (2 << 5) | 0x80, 0, "bob.tablet")),
        ("token", "seed-mint-refused-signers", part2(10, 7, 0, "alice.phone")),
    ]
    .into_iter()
    .chain(connection_seeds())
    .chain(quic_seeds())
    .collect()
}

/// `gateway_connection` scripts: the policy byte, then (op, argument) pairs (see
/// `tern_gateway::fuzzing::connection`: 0 raw read, 1 Login, 2 Ping, 3 Send, 4 push, 5 batch,
/// 6 sink room, 7 writable, 8 answer, 9 presence answer, 10 kick, 11 time, 12 switches).
fn connection_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let t = "gateway_connection";
    vec![
        (
            t,
            "seed-login-ping-idle-timeout",
            vec![
                0, 1, 0, 2, 0, 11, 255, 11, 255, 11, 255, 11, 255, 11, 255, 11, 255, 11, 255, 11,
                255,
            ],
        ),
        (t, "seed-presence-wait-answered", vec![0, 12, 1, 1, 0, 2, 0, 9, 0, 2, 0, 11, 60]),
        (t, "seed-presence-wait-timeout", vec![0, 12, 1, 1, 0, 11, 50, 2, 0, 9, 0]),
        (
            t,
            "seed-inflight-pause",
            vec![0, 1, 0, 3, 0, 3, 0, 3, 0, 3, 0, 8, 0, 3, 0, 8, 0, 8, 0, 8, 0],
        ),
        (
            t,
            "seed-slow-consumer",
            vec![0, 1, 0, 6, 1, 4, 100, 4, 100, 4, 100, 6, 255, 7, 0, 11, 20],
        ),
        (t, "seed-batch-past-frame-cap", vec![0, 1, 0, 6, 1, 5, 5, 5, 5, 6, 255, 7, 0]),
        (t, "seed-duplicate-login-kick", vec![0, 1, 0, 10, 0, 2, 0, 11, 20]),
        (t, "seed-oldest-wins-refused", vec![1, 12, 2, 1, 0]),
        (t, "seed-shutdown-unread-then-eof", vec![0, 1, 0, 6, 0, 4, 10, 10, 1, 12, 0, 11, 255]),
        (t, "seed-login-timeout", vec![0, 11, 255]),
        (t, "seed-bad-frame", vec![0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0, 1]),
        (t, "seed-broken-sink", vec![0, 1, 0, 12, 3, 2, 0]),
        (t, "seed-answer-after-kick", vec![0, 1, 0, 3, 0, 10, 0, 8, 0]),
    ]
}

/// One `quic_datagram` record: `time` steps (`2·time³` ms) pass, then `datagram` arrives from
/// source `source` (0..8).
fn record(source: u8, time: u8, datagram: &[u8]) -> Vec<u8> {
    let len = u16::try_from(datagram.len()).unwrap_or(u16::MAX);
    let mut r = vec![(time << 3) | (source & 7)];
    r.extend_from_slice(&len.to_le_bytes());
    r.extend_from_slice(datagram);
    r
}

/// A `quic_datagram` input: the limits byte (retry bits 0-1, max - 2 bits 2-3, per source
/// bits 4-5), then the records.
fn quic_input(limits: u8, records: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![limits];
    records.iter().for_each(|r| v.extend_from_slice(r));
    v
}

/// Deterministic junk (a 64-bit LCG).
fn junk(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// `quic_datagram` inputs: a real client Initial (from one source, from all of them, under a
/// Retry-always limit, left to time out, truncated), short-header packets for this endpoint and
/// another, an unknown version, and junk.
fn quic_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let t = "quic_datagram";
    let initial = fuzzing::client_initial(0);
    // retry 3, max 5, 3 per source.
    let roomy = 0x3f;
    let mut short = vec![0x40, 0, 9, 9, 9, 9, 9, 9, 9];
    short.extend_from_slice(&junk(40, 1));
    let mut short_other = short.clone();
    short_other[1] = 1;
    // Large: the stateless reset answering it is sized at random below it, often over 1200.
    let mut short_large = short.clone();
    short_large.extend_from_slice(&junk(3000, 2));
    let mut unknown_version = vec![0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8, 1, 2, 3, 4, 5, 6, 7, 8, 8];
    unknown_version.extend_from_slice(&[7; 8]);
    unknown_version.resize(1200, 0);
    // Eight clients (eight connection IDs), one from each source.
    let every_source: Vec<Vec<u8>> =
        (0..8).map(|s| record(s, s % 3, &fuzzing::client_initial(s))).collect();
    // Four clients from one source address (two ports, and mapped into IPv6), then one from
    // another.
    let one_source: Vec<Vec<u8>> = [0, 1, 3, 0, 2]
        .iter()
        .zip(1..)
        .map(|(&source, n)| record(source, 0, &fuzzing::client_initial(n)))
        .collect();
    vec![
        (t, "seed-client-initial", quic_input(roomy, &[record(0, 0, &initial)])),
        // retry 0: the Initial gets a Retry.
        (t, "seed-client-initial-retry", quic_input(0x3c, &[record(0, 0, &initial)])),
        // retry 1, max 3, 1 per source: Retries, per-source and total refusals.
        (t, "seed-client-initial-every-source", quic_input(0x15, &every_source)),
        // retry 3, max 5, 2 per source.
        (t, "seed-client-initial-one-source", quic_input(0x2f, &one_source)),
        (
            t,
            "seed-client-initial-timeout",
            quic_input(
                roomy,
                &[
                    record(0, 0, &initial),
                    record(1, 10, &initial),
                    record(0, 31, &[]),
                    record(1, 31, &[]),
                ],
            ),
        ),
        (t, "seed-client-initial-truncated", quic_input(roomy, &[record(2, 0, &initial[..100])])),
        (
            t,
            "seed-short-header",
            quic_input(roomy, &[record(2, 0, &short), record(3, 1, &short_other)]),
        ),
        (t, "seed-short-header-large", quic_input(roomy, &[record(2, 0, &short_large)])),
        (t, "seed-unknown-version", quic_input(roomy, &[record(4, 0, &unknown_version)])),
        (t, "seed-junk", junk(700, 42)),
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
fn replay_gateway_connection_corpus() {
    replay(TARGETS[1].0, TARGETS[1].1);
}

#[test]
fn replay_quic_datagram_corpus() {
    replay(TARGETS[2].0, TARGETS[2].1);
}

/// A valid token without iss and aud.
fn key_for_strict_check() -> String {
    fuzzing::fuzz_key().mint(&claims("alice", "phone", FUZZ_NOW_UNIX_SECS + 600))
}

#[test]
fn seeds_hit_the_outcomes_they_are_named_for() {
    use tern_proto::session::server::AuthError;
    let key = fuzzing::fuzz_verifier();
    let now = fuzzing::FUZZ_NOW_UNIX_MS;
    for (_, name, bytes) in seeds().into_iter().filter(|(target, _, _)| *target == "token") {
        let text = String::from_utf8_lossy(&bytes);
        let got = key.verify_claims(&text, now);
        match name {
            "seed-valid"
            | "seed-within-leeway"
            | "seed-kid-second-key"
            | "seed-eddsa"
            | "seed-iss-aud" => assert!(got.is_ok(), "{name}: {got:?}"),
            "seed-expired" | "seed-expires-now" => {
                assert_eq!(got, Err(AuthError::Expired), "{name}");
            }
            n if n.starts_with("seed-mint-") => {}
            _ => assert!(matches!(got, Err(AuthError::BadToken(_))), "{name}: {got:?}"),
        }
        if name == "seed-iss-aud" {
            assert!(fuzzing::fuzz_strict_verifier().verify_claims(&text, now).is_ok());
            let plain = key_for_strict_check();
            assert!(fuzzing::fuzz_strict_verifier().verify_claims(&plain, now).is_err());
        }
    }
}
