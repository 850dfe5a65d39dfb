//! FCM HTTP v1 against local imitations: an OAuth2 token endpoint that checks the service
//! account's RS256 JWT grant and issues access tokens, and an HTTP/2 messages:send endpoint
//! that accepts exactly the documented v1 request (path, a bearer token it issued, the JSON
//! schema) and answers with the documented error bodies.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ring::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Map, Value, json};
use tern_notify::notification::collapse_id;
use tern_notify::{Enqueued, FcmConfig, InvalidToken, Notifier, NotifyConfig, Provider, Target};
use tokio::sync::mpsc;

const PROJECT: &str = "tern-test";
const CLIENT_EMAIL: &str = "tern-push@tern-test.iam.gserviceaccount.com";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const KEY_PEM: &str = include_str!("fixtures/test-service-account-key.pem");

/// Google's side: the service account's public key, issued access tokens.
struct Google {
    public_key: Vec<u8>,
    token_uri: Mutex<String>,
    issued: Mutex<HashSet<String>>,
    token_requests: AtomicUsize,
    next: AtomicU64,
    /// `expires_in` of the first token issued (later ones: an hour).
    first_expires_in: u64,
}

fn google(first_expires_in: u64) -> Arc<Google> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(KEY_PEM.as_bytes()).expect("fixture key");
    let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("rsa key");
    Arc::new(Google {
        public_key: pair.public_key().as_ref().to_vec(),
        token_uri: Mutex::new(String::new()),
        issued: Mutex::new(HashSet::new()),
        token_requests: AtomicUsize::new(0),
        next: AtomicU64::new(1),
        first_expires_in,
    })
}

fn oauth_error(status: u16, error: &str) -> Reply {
    reply(status, json!({ "error": error }).to_string())
}

/// The token endpoint: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`.
fn token_endpoint(g: Arc<Google>) -> Handler {
    Arc::new(move |seen: Seen| {
        g.token_requests.fetch_add(1, Relaxed);
        let form_type = seen.headers.get("content-type").and_then(|v| v.to_str().ok());
        if seen.method != http::Method::POST
            || seen.uri.path() != "/token"
            || form_type != Some("application/x-www-form-urlencoded")
        {
            return oauth_error(400, "invalid_request");
        }
        let fields = form(&seen.body);
        let field = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if field("grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return oauth_error(400, "unsupported_grant_type");
        }
        let Some((header, claims, signed, signature)) = field("assertion").and_then(jwt_parts)
        else {
            return oauth_error(400, "invalid_grant");
        };
        let now = unix_now();
        let (iat, exp) = (claims["iat"].as_u64().unwrap_or(0), claims["exp"].as_u64().unwrap_or(0));
        let scopes: Vec<&str> = claims["scope"].as_str().unwrap_or("").split(' ').collect();
        let valid = header == json!({ "alg": "RS256", "typ": "JWT" })
            && claims["iss"] == CLIENT_EMAIL
            && claims["aud"] == g.token_uri.lock().unwrap().as_str()
            && scopes.contains(&SCOPE)
            && iat.abs_diff(now) < 300
            && exp > iat
            && exp - iat <= 3600
            && UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &g.public_key)
                .verify(signed.as_bytes(), &signature)
                .is_ok();
        if !valid {
            return oauth_error(400, "invalid_grant");
        }
        let n = g.next.fetch_add(1, Relaxed);
        let token = format!("ya29.test-{n}");
        g.issued.lock().unwrap().insert(token.clone());
        let expires_in = if n == 1 { g.first_expires_in } else { 3600 };
        reply(
            200,
            json!({ "access_token": token, "expires_in": expires_in, "token_type": "Bearer" })
                .to_string(),
        )
    })
}

fn fcm_error(
    status: u16,
    code: &str,
    error_code: Option<&str>,
    field: Option<&str>,
    message: &str,
) -> Reply {
    let mut details = Vec::new();
    if let Some(e) = error_code {
        details.push(json!({ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": e }));
    }
    if let Some(f) = field {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{ "field": f, "description": message }],
        }));
    }
    let body = json!({ "error": { "code": status, "message": message, "status": code, "details": details } });
    reply(status, body.to_string())
}

fn only_keys(v: &Value, allowed: &[&str]) -> bool {
    v.as_object().is_some_and(|o| o.keys().all(|k| allowed.contains(&k.as_str())))
}

fn all_strings(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.values().all(Value::is_string))
}

/// The v1 message schema (the parts Tern may use); `Err` names the offending field.
fn check_message(body: &Value) -> Result<&Map<String, Value>, &'static str> {
    if !only_keys(body, &["message", "validate_only"]) {
        return Err("");
    }
    let m = body["message"].as_object().ok_or("message")?;
    let allowed =
        ["token", "notification", "data", "android", "apns", "webpush", "fcm_options", "name"];
    if !only_keys(&body["message"], &allowed) {
        return Err("message");
    }
    if !m.get("token").is_some_and(Value::is_string) {
        return Err("message.token");
    }
    if let Some(n) = m.get("notification")
        && !(only_keys(n, &["title", "body", "image"]) && all_strings(n))
    {
        return Err("message.notification");
    }
    if let Some(d) = m.get("data")
        && !all_strings(d)
    {
        return Err("message.data");
    }
    if let Some(a) = m.get("android") {
        let allowed = [
            "collapse_key",
            "priority",
            "ttl",
            "restricted_package_name",
            "data",
            "notification",
            "fcm_options",
            "direct_boot_ok",
        ];
        if !only_keys(a, &allowed)
            || !matches!(a.get("priority").and_then(Value::as_str), None | Some("normal" | "high"))
        {
            return Err("message.android");
        }
        let ttl_ok = a.get("ttl").and_then(Value::as_str).is_none_or(|t| {
            t.strip_suffix('s').is_some_and(|n| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            })
        });
        if !ttl_ok {
            return Err("message.android.ttl");
        }
        if a.get("notification").is_some_and(|n| {
            !only_keys(
                n,
                &["title", "body", "icon", "color", "sound", "tag", "click_action", "channel_id"],
            )
        }) {
            return Err("message.android.notification");
        }
    }
    if let Some(a) = m.get("apns")
        && (!only_keys(a, &["headers", "payload", "fcm_options"])
            || a.get("headers").is_some_and(|h| !all_strings(h))
            || a.get("payload").is_some_and(|p| !p["aps"].is_object()))
    {
        return Err("message.apns");
    }
    Ok(m)
}

/// messages:send. Answers by token: `unregistered-*` 404 UNREGISTERED, `malformed-*` 400
/// INVALID_ARGUMENT on message.token, `fail-*` 500, anything else 200.
fn send_endpoint(g: Arc<Google>) -> Handler {
    Arc::new(move |seen: Seen| {
        if seen.version != http::Version::HTTP_2 {
            return fcm_error(
                400,
                "INVALID_ARGUMENT",
                None,
                None,
                "HTTP/2 expected by this imitation",
            );
        }
        if seen.method != http::Method::POST
            || seen.uri.path() != format!("/v1/projects/{PROJECT}/messages:send")
        {
            return fcm_error(404, "NOT_FOUND", None, None, "Requested entity was not found.");
        }
        let bearer = seen
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|a| a.strip_prefix("Bearer "));
        if !bearer.is_some_and(|t| g.issued.lock().unwrap().contains(t)) {
            return fcm_error(
                401,
                "UNAUTHENTICATED",
                None,
                None,
                "Request had invalid authentication credentials.",
            );
        }
        if !seen
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/json"))
        {
            return fcm_error(
                400,
                "INVALID_ARGUMENT",
                None,
                None,
                "Invalid JSON payload received.",
            );
        }
        let Ok(body) = serde_json::from_slice::<Value>(&seen.body) else {
            return fcm_error(
                400,
                "INVALID_ARGUMENT",
                None,
                None,
                "Invalid JSON payload received.",
            );
        };
        let message = match check_message(&body) {
            Ok(m) => m,
            Err(field) => {
                return fcm_error(
                    400,
                    "INVALID_ARGUMENT",
                    Some("INVALID_ARGUMENT"),
                    Some(field),
                    "Invalid JSON payload received.",
                );
            }
        };
        let token = message["token"].as_str().unwrap_or_default();
        if token.starts_with("unregistered-") {
            fcm_error(
                404,
                "NOT_FOUND",
                Some("UNREGISTERED"),
                None,
                "Requested entity was not found.",
            )
        } else if token.starts_with("malformed-") {
            fcm_error(
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
                Some("message.token"),
                "The registration token is not a valid FCM registration token",
            )
        } else if token.starts_with("fail-") {
            fcm_error(500, "INTERNAL", Some("INTERNAL"), None, "Internal error encountered.")
        } else {
            reply(200, json!({ "name": format!("projects/{PROJECT}/messages/0:{}", g.next.load(Relaxed)) }).to_string())
        }
    })
}

struct World {
    _tls: TestTls,
    google: Arc<Google>,
    _token_server: Server,
    fcm: Server,
    invalid: mpsc::UnboundedReceiver<InvalidToken>,
    notifier: Notifier,
}

async fn world(first_expires_in: u64) -> World {
    let tls = TestTls::new();
    let g = google(first_expires_in);
    // The token endpoint is plain HTTP: gcp_auth trusts only the system's roots.
    let token_server = Server::start(None, Mode::Plain, token_endpoint(g.clone())).await;
    let token_uri = format!("{}/token", token_server.url());
    *g.token_uri.lock().unwrap() = token_uri.clone();
    let fcm = Server::start(Some(&tls), Mode::Http2Tls, send_endpoint(g.clone())).await;
    let key_file = tls.dir.path().join("service-account.json");
    let account = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef",
        "private_key": KEY_PEM,
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
    });
    std::fs::write(&key_file, account.to_string()).unwrap();
    let config = NotifyConfig {
        ca_file: Some(tls.ca_file.clone()),
        fcm: Some(FcmConfig {
            service_account_file: key_file,
            project_id: String::new(),
            base_url: fcm.url(),
            limits: limits(4, 100, 2, Duration::from_secs(10)),
        }),
        ..Default::default()
    };
    let (tx, invalid) = mpsc::unbounded_channel();
    let notifier = Notifier::start(config, move |t| {
        let _ = tx.send(t);
    })
    .expect("start");
    World { _tls: tls, google: g, _token_server: token_server, fcm, invalid, notifier }
}

fn fcm(token: &str) -> Target {
    Target::Fcm { token: token.into() }
}

#[tokio::test]
async fn the_right_device_gets_the_right_payload_with_one_cached_access_token() {
    let mut w = world(3600).await;
    let n = &w.notifier;
    assert_eq!(
        n.enqueue(notification("bob", "pixel", fcm("tok-bob-pixel"), "g:1", 5)),
        Enqueued::Queued
    );
    let first = w.fcm.next().await;
    for (user, token, conversation) in
        [("carol", "tok-carol", "g:1"), ("bob", "tok-bob-pixel", "g:2")]
    {
        n.enqueue(notification(user, "phone", fcm(token), conversation, 6));
    }
    let mut rest = [w.fcm.next().await, w.fcm.next().await];
    let message =
        |s: &Seen| serde_json::from_slice::<Value>(&s.body).expect("json")["message"].clone();
    rest.sort_by_key(|s| {
        (message(s)["token"].to_string(), message(s)["data"]["conversation_id"].to_string())
    });

    let m = message(&first);
    assert_eq!(m["token"], "tok-bob-pixel");
    assert_eq!(m["notification"], json!({ "body": "New message" }));
    assert_eq!(
        m["data"],
        json!({ "conversation_id": "g:1", "seq": "5", "count": "1", "mention": "none", "is_group": "true" })
    );
    assert_eq!(m["android"]["collapse_key"], collapse_id("g:1"));
    assert_eq!(m["android"]["notification"]["tag"], collapse_id("g:1"));
    assert_eq!(m["apns"]["headers"]["apns-collapse-id"], collapse_id("g:1"));
    assert!(!String::from_utf8_lossy(&first.body).contains("secret"));
    assert_eq!(
        (
            message(&rest[0])["token"].as_str(),
            message(&rest[0])["data"]["conversation_id"].as_str()
        ),
        (Some("tok-bob-pixel"), Some("g:2"))
    );
    assert_eq!(message(&rest[1])["token"], "tok-carol");

    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    assert_eq!(metrics.provider(Provider::Fcm).sent.load(Relaxed), 3);
    assert_eq!(w.google.token_requests.load(Relaxed), 1, "the access token is cached");
}

#[tokio::test]
async fn an_access_token_near_expiry_is_renewed() {
    // The first token expires in 10 s: within gcp_auth's 20 s margin, so it is renewed.
    let mut w = world(10).await;
    w.notifier.enqueue(notification("bob", "pixel", fcm("tok-1"), "g:1", 1));
    let first = w.fcm.next().await;
    w.notifier.enqueue(notification("bob", "pixel", fcm("tok-1"), "g:2", 1));
    let second = w.fcm.next().await;
    assert_eq!(first.headers["authorization"], "Bearer ya29.test-1");
    assert_eq!(second.headers["authorization"], "Bearer ya29.test-2");
    w.notifier.shutdown().await;
    assert_eq!(w.google.token_requests.load(Relaxed), 2);
}

#[tokio::test]
async fn a_token_reported_invalid_is_unregistered_exactly_once() {
    let mut w = world(3600).await;
    for i in 0..4 {
        let conversation = format!("g:{i}");
        w.notifier.enqueue(notification("dan", "old", fcm("unregistered-dan"), &conversation, 1));
        w.notifier.enqueue(notification("eve", "tab", fcm("malformed-eve"), &conversation, 1));
    }
    let mut reported = [recv(&mut w.invalid).await, recv(&mut w.invalid).await];
    reported.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    assert_eq!(
        (reported[0].token.as_str(), reported[0].device_id.as_str()),
        ("unregistered-dan", "old")
    );
    assert!(reported[0].reason.contains("UNREGISTERED"), "{}", reported[0].reason);
    assert_eq!(
        (reported[1].token.as_str(), reported[1].provider),
        ("malformed-eve", Provider::Fcm)
    );
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    assert!(w.invalid.try_recv().is_err(), "each token reported once");
    let m = metrics.provider(Provider::Fcm);
    assert_eq!(m.invalid_tokens.load(Relaxed), 2);
    let mut requests = 0;
    while w.fcm.seen.try_recv().is_ok() {
        requests += 1;
    }
    assert_eq!(requests + m.dropped_invalid.load(Relaxed), 8);
}

#[tokio::test]
async fn a_failing_fcm_is_retried_a_bounded_number_of_times() {
    let mut w = world(3600).await;
    w.notifier.enqueue(notification("bob", "pixel", fcm("fail-bob"), "g:1", 1));
    w.fcm.next().await;
    w.fcm.next().await;
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    let m = metrics.provider(Provider::Fcm);
    assert_eq!((m.retries.load(Relaxed), m.failed.load(Relaxed), m.sent.load(Relaxed)), (1, 1, 0));
    assert!(w.fcm.seen.try_recv().is_err(), "max_attempts = 2");
    assert!(w.invalid.try_recv().is_err());
}
