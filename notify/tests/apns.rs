//! APNs against a local HTTP/2 imitation that accepts exactly Apple's documented request shape
//! (POST /3/device/{token}, the apns-* headers, a bearer ES256 provider token with kid, iss and
//! iat, an `aps` JSON payload) and refuses anything else the way Apple documents it.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
};
use serde_json::{Value, json};
use tern_notify::notification::collapse_id;
use tern_notify::{
    ApnsConfig, Enqueued, InvalidToken, Mention, Notifier, NotifyConfig, Provider, Target,
};
use tokio::sync::mpsc;

const KEY_ID: &str = "KEY1234567";
const TEAM_ID: &str = "TEAM123456";
const TOPIC: &str = "chat.tern.app";

/// What Apple holds: the provider key's public half and the team it belongs to.
struct Apple {
    public_key: Vec<u8>,
    /// Answers by device token; unknown tokens get 200.
    answers: HashMap<String, (u16, &'static str)>,
    /// Provider tokens to refuse once as expired.
    expire_first: Mutex<Option<String>>,
}

fn refuse(status: u16, reason: &str) -> Reply {
    reply(status, json!({ "reason": reason }).to_string())
}

/// Checks one request against Apple's documented shape.
fn check(apple: &Apple, seen: &Seen) -> Result<(String, String), (u16, &'static str)> {
    if seen.version != http::Version::HTTP_2 {
        return Err((400, "BadProtocol"));
    }
    if seen.method != http::Method::POST {
        return Err((405, "MethodNotAllowed"));
    }
    let token = seen.uri.path().strip_prefix("/3/device/").ok_or((404, "BadPath"))?;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err((400, "BadDeviceToken"));
    }
    for name in seen.headers.keys() {
        let known = [
            "authorization",
            "content-type",
            "content-length",
            "apns-topic",
            "apns-push-type",
            "apns-priority",
            "apns-expiration",
            "apns-collapse-id",
            "apns-id",
        ];
        if !known.contains(&name.as_str()) {
            return Err((400, "BadHeader"));
        }
    }
    let header = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok());
    let jwt = header("authorization")
        .and_then(|a| a.strip_prefix("bearer "))
        .ok_or((403, "MissingProviderToken"))?;
    let (jwt_header, claims, signed, signature) =
        jwt_parts(jwt).ok_or((403, "InvalidProviderToken"))?;
    if jwt_header != json!({ "alg": "ES256", "kid": KEY_ID }) {
        return Err((403, "InvalidProviderToken"));
    }
    let iat = claims["iat"].as_u64().ok_or((403, "InvalidProviderToken"))?;
    if claims.as_object().map(|c| c.len()) != Some(2) || claims["iss"] != TEAM_ID {
        return Err((403, "InvalidProviderToken"));
    }
    if iat.abs_diff(unix_now()) > 3600 {
        return Err((403, "ExpiredProviderToken"));
    }
    ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &apple.public_key)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| (403, "InvalidProviderToken"))?;
    if header("apns-topic") != Some(TOPIC) {
        return Err((400, "BadTopic"));
    }
    if !matches!(header("apns-push-type"), Some("alert" | "background")) {
        return Err((400, "InvalidPushType"));
    }
    if !matches!(header("apns-priority"), None | Some("5" | "10" | "1")) {
        return Err((400, "BadPriority"));
    }
    if header("apns-expiration").is_some_and(|e| e.parse::<u64>().is_err()) {
        return Err((400, "BadExpirationDate"));
    }
    if header("apns-collapse-id").is_some_and(|c| c.len() > 64) {
        return Err((400, "BadCollapseId"));
    }
    if seen.body.len() > 4096 {
        return Err((413, "PayloadTooLarge"));
    }
    let body: Value = serde_json::from_slice(&seen.body).map_err(|_| (400, "BadPayload"))?;
    if !body["aps"]["alert"].is_object() && !body["aps"]["content-available"].is_number() {
        return Err((400, "PayloadEmpty"));
    }
    Ok((token.to_owned(), jwt.to_owned()))
}

fn handler(apple: Arc<Apple>) -> Handler {
    Arc::new(move |seen: Seen| match check(&apple, &seen) {
        Err((status, reason)) => refuse(status, reason),
        Ok((token, jwt)) => {
            let mut expire = apple.expire_first.lock().unwrap();
            if expire.as_deref() == Some("any") || expire.as_deref() == Some(jwt.as_str()) {
                *expire = Some(jwt);
                return refuse(403, "ExpiredProviderToken");
            }
            drop(expire);
            match apple.answers.get(&token) {
                Some(&(status, reason)) => refuse(status, reason),
                None => reply(200, ""),
            }
        }
    })
}

/// A fresh `.p8`-style key: its PEM file and its public key.
fn provider_key(tls: &TestTls) -> (std::path::PathBuf, Vec<u8>) {
    use base64::Engine;
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let path = tls.dir.path().join("AuthKey.p8");
    std::fs::write(
        &path,
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    (path, pair.public_key().as_ref().to_vec())
}

struct World {
    tls: TestTls,
    production: Server,
    sandbox: Server,
    invalid: mpsc::UnboundedReceiver<InvalidToken>,
    notifier: Notifier,
}

async fn world(answers: &[(&str, u16, &'static str)], team_id: &str, expire_first: bool) -> World {
    let tls = TestTls::new();
    let (key_file, public_key) = provider_key(&tls);
    let apple = Arc::new(Apple {
        public_key,
        answers: answers.iter().map(|(t, s, r)| (t.to_string(), (*s, *r))).collect(),
        expire_first: Mutex::new(expire_first.then(|| "any".to_owned())),
    });
    let production = Server::start(Some(&tls), Mode::Http2Tls, handler(apple.clone())).await;
    let sandbox = Server::start(Some(&tls), Mode::Http2Tls, handler(apple)).await;
    let config = NotifyConfig {
        ca_file: Some(tls.ca_file.clone()),
        apns: Some(ApnsConfig {
            key_file,
            key_id: KEY_ID.into(),
            team_id: team_id.into(),
            production_url: production.url(),
            sandbox_url: sandbox.url(),
            limits: limits(4, 100, 3, Duration::from_secs(10)),
        }),
        ..Default::default()
    };
    let (tx, invalid) = mpsc::unbounded_channel();
    let notifier = Notifier::start(config, move |t| {
        let _ = tx.send(t);
    })
    .expect("start");
    World { tls, production, sandbox, invalid, notifier }
}

fn apns(token: &str, sandbox: bool) -> Target {
    Target::Apns { token: token.into(), topic: TOPIC.into(), sandbox }
}

fn json_of(seen: &Seen) -> Value {
    serde_json::from_slice(&seen.body).expect("json body")
}

#[tokio::test]
async fn the_right_device_gets_the_right_payload() {
    let mut w = world(&[], TEAM_ID, false).await;
    let (a, b, c) = ("aa".repeat(32), "bb".repeat(32), "cc".repeat(32));
    let n = &w.notifier;
    assert_eq!(
        n.enqueue(notification("bob", "phone", apns(&a, false), "g:1", 10)),
        Enqueued::Queued
    );
    assert_eq!(n.enqueue(notification("bob", "ipad", apns(&b, true), "g:1", 10)), Enqueued::Queued);
    let mut mentioned = notification("carol", "phone", apns(&c, false), "dm:carol:sender", 3);
    (mentioned.muted, mentioned.mention) = (true, Mention::User);
    assert_eq!(n.enqueue(mentioned.clone()), Enqueued::Queued);
    mentioned.mention = Mention::None;
    mentioned.seq = 4;
    assert_eq!(n.enqueue(mentioned), Enqueued::Muted);

    let mut production = [w.production.next().await, w.production.next().await];
    production.sort_by_key(|s| s.uri.path().to_owned());
    let sandbox = w.sandbox.next().await;
    let expect = |seen: &Seen, token: &str, conversation: &str, seq: u64, mention: &str| {
        assert_eq!(seen.uri.path(), format!("/3/device/{token}"));
        assert_eq!(seen.headers["apns-collapse-id"], collapse_id(conversation).as_str());
        let body = json_of(seen);
        assert_eq!(body["aps"]["alert"], json!({ "body": "New message" }));
        assert_eq!(body["aps"]["thread-id"], collapse_id(conversation));
        assert_eq!(body["tern"]["conversation_id"], conversation);
        assert_eq!(body["tern"]["seq"], seq);
        assert_eq!(body["tern"]["count"], 1);
        assert_eq!(body["tern"]["mention"], mention);
        let text = String::from_utf8_lossy(&seen.body);
        assert!(!text.contains("secret") && !text.contains("Sender"), "no message text: {text}");
    };
    expect(&production[0], &a, "g:1", 10, "none");
    expect(&production[1], &c, "dm:carol:sender", 3, "user");
    expect(&sandbox, &b, "g:1", 10, "none");

    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    let m = metrics.provider(Provider::Apns);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!((m.sent.load(Relaxed), m.failed.load(Relaxed)), (3, 0));
    assert_eq!(metrics.suppressed_muted.load(Relaxed), 1);
    assert!(w.invalid.try_recv().is_err());
    drop(w.tls);
}

#[tokio::test]
async fn a_token_reported_invalid_is_unregistered_exactly_once() {
    let (gone, bad) = ("dd".repeat(32), "ee".repeat(32));
    let mut w =
        world(&[(&gone, 410, "Unregistered"), (&bad, 400, "BadDeviceToken")], TEAM_ID, false).await;
    for i in 0..5 {
        // Distinct conversations: nothing merges, every one is a separate push.
        let conversation = format!("g:{i}");
        w.notifier.enqueue(notification("dan", "old-phone", apns(&gone, false), &conversation, 1));
        w.notifier.enqueue(notification("eve", "tablet", apns(&bad, true), &conversation, 1));
    }
    let mut reported = [recv(&mut w.invalid).await, recv(&mut w.invalid).await];
    reported.sort_by(|x, y| x.user_id.cmp(&y.user_id));
    assert_eq!(
        (reported[0].user_id.as_str(), reported[0].device_id.as_str()),
        ("dan", "old-phone")
    );
    assert_eq!((reported[0].token.as_str(), reported[0].provider), (gone.as_str(), Provider::Apns));
    assert!(reported[0].reason.contains("Unregistered"), "{}", reported[0].reason);
    assert_eq!((reported[1].user_id.as_str(), reported[1].token.as_str()), ("eve", bad.as_str()));

    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    assert!(w.invalid.try_recv().is_err(), "each token reported once");
    use std::sync::atomic::Ordering::Relaxed;
    let m = metrics.provider(Provider::Apns);
    assert_eq!(m.invalid_tokens.load(Relaxed), 2);
    let mut requests = 0;
    while w.production.seen.try_recv().is_ok() {
        requests += 1;
    }
    while w.sandbox.seen.try_recv().is_ok() {
        requests += 1;
    }
    // Each push either reached Apple (and was refused) or was dropped as already invalid.
    assert_eq!(requests + m.dropped_invalid.load(Relaxed), 10);
    assert_eq!((m.sent.load(Relaxed), m.failed.load(Relaxed)), (0, 0));
}

#[tokio::test]
async fn the_imitation_refuses_a_provider_token_of_another_team() {
    let mut w = world(&[], "OTHERTEAM1", false).await;
    w.notifier.enqueue(notification("bob", "phone", apns(&"aa".repeat(32), false), "g:1", 1));
    let seen = w.production.next().await;
    assert!(seen.headers.contains_key("authorization"));
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    use std::sync::atomic::Ordering::Relaxed;
    let m = metrics.provider(Provider::Apns);
    assert_eq!((m.sent.load(Relaxed), m.failed.load(Relaxed), m.retries.load(Relaxed)), (0, 1, 0));
    assert!(w.invalid.try_recv().is_err(), "our credentials are not the device's fault");
}

#[tokio::test]
async fn an_expired_provider_token_is_renewed_and_the_push_retried() {
    let mut w = world(&[], TEAM_ID, true).await;
    w.notifier.enqueue(notification("bob", "phone", apns(&"aa".repeat(32), false), "g:1", 1));
    let first = w.production.next().await;
    let second = w.production.next().await;
    assert_ne!(first.headers["authorization"], second.headers["authorization"], "a new token");
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    use std::sync::atomic::Ordering::Relaxed;
    let m = metrics.provider(Provider::Apns);
    assert_eq!((m.sent.load(Relaxed), m.retries.load(Relaxed)), (1, 1));
}
