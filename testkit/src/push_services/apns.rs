//! An imitation of Apple's APNs provider API: two HTTP/2-over-TLS endpoints (production and
//! sandbox) that accept exactly the request shape Apple documents — `POST /3/device/{token}`
//! over HTTP/2, only the documented `apns-*` headers, `apns-topic` the app's topic, a bearer
//! ES256 provider token whose header is `{alg, kid}` and claims exactly `{iss, iat}`, signed by
//! the key this imitation generated, at most an hour old, and an `aps` JSON payload of at most
//! 4 KiB — and refuse anything else with Apple's documented status and `reason`.
//!
//! Passing against it shows Tern sends that documented shape; it does not verify the real
//! service (nothing here talks to Apple).
//!
//! Scripted [`Answer`]s map to: `Ok` 200 with an `apns-id`; `Unregistered` 410
//! `{"reason":"Unregistered","timestamp":ms}`; `BadDeviceToken` 400; `ServerError` 500
//! `InternalServerError`; `Never` no answer. A token that is not hex is refused as
//! `BadDeviceToken` whatever the script says.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Version};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::http::{Background, Handler, Incoming, Mode, Reply, TestCa, io, jwt_parts, reply_with};
use super::{Answer, Events, PushServiceError, Script, lock, unix_now};

/// The headers Apple documents; any other is refused as `BadHeader`.
const KNOWN_HEADERS: [&str; 9] = [
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

/// What an [`ApnsImitation`] is, and what it accepts.
#[derive(Debug, Clone)]
pub struct ApnsOptions {
    /// The provider key's id (the JWT's `kid`).
    pub key_id: String,
    /// The team the key belongs to (the JWT's `iss`).
    pub team_id: String,
    /// The app's bundle id, the only `apns-topic` accepted.
    pub topic: String,
    /// The certificate to serve; a fresh one when `None`.
    pub ca: Option<TestCa>,
}

impl Default for ApnsOptions {
    fn default() -> Self {
        Self {
            key_id: "KEY1234567".into(),
            team_id: "TEAM123456".into(),
            topic: "chat.tern.app".into(),
            ca: None,
        }
    }
}

/// Which of Apple's two hosts got a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApnsEndpoint {
    /// `api.push.apple.com`.
    Production,
    /// `api.sandbox.push.apple.com`.
    Sandbox,
}

/// One request an [`ApnsImitation`] received (also when it refused it).
#[derive(Debug, Clone)]
pub struct ApnsRequest {
    pub endpoint: ApnsEndpoint,
    /// The device token of the path (empty when the path was not `/3/device/{token}`).
    pub token: String,
    pub method: Method,
    pub version: Version,
    pub headers: HeaderMap,
    /// The body parsed as JSON (`Value::Null` when it was not JSON).
    pub payload: Value,
    pub body: Bytes,
    /// The status answered; `None` for [`Answer::Never`].
    pub status: Option<u16>,
    /// Apple's `reason` in the answer, for refusals.
    pub reason: Option<String>,
}

impl ApnsRequest {
    /// A header's text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct Apple {
    options: ApnsOptions,
    public_key: Vec<u8>,
    script: Script,
    /// `Some("any")`: refuse the next valid provider token as expired, then that token
    /// whenever it comes back.
    expire: Mutex<Option<String>>,
    ids: AtomicU64,
}

/// Apple's production and sandbox endpoints on loopback, with a provider key of their own.
pub struct ApnsImitation {
    apple: Arc<Apple>,
    events: Events<ApnsRequest>,
    ca: TestCa,
    production_url: String,
    sandbox_url: String,
    key_file: PathBuf,
    _dir: tempfile::TempDir,
    _background: Background,
}

impl std::fmt::Debug for ApnsImitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsImitation")
            .field("production_url", &self.production_url)
            .field("sandbox_url", &self.sandbox_url)
            .finish_non_exhaustive()
    }
}

impl ApnsImitation {
    /// Both endpoints on free loopback ports, and a fresh P-256 provider key written as a
    /// `.p8` file ([`ApnsImitation::key_file`]).
    pub fn start(options: ApnsOptions) -> Result<Self, PushServiceError> {
        let ca = match &options.ca {
            Some(ca) => ca.clone(),
            None => TestCa::new()?,
        };
        let dir = tempfile::tempdir().map_err(io("create the APNs imitation's directory"))?;
        let (key_file, public_key) = provider_key(dir.path(), &options.key_id)?;
        let apple = Arc::new(Apple {
            options,
            public_key,
            script: Script::new(),
            expire: Mutex::new(None),
            ids: AtomicU64::new(1),
        });
        let (tx, events) = Events::channel("APNs request");
        let background = Background::start("apns-imitation")?;
        let serve = |endpoint| {
            background.serve(
                Mode::Http2Tls,
                Some(&ca),
                handler(apple.clone(), endpoint, tx.clone()),
            )
        };
        let (_, production_url) = serve(ApnsEndpoint::Production)?;
        let (_, sandbox_url) = serve(ApnsEndpoint::Sandbox)?;
        Ok(Self {
            apple,
            events,
            ca,
            production_url,
            sandbox_url,
            key_file,
            _dir: dir,
            _background: background,
        })
    }

    /// The production endpoint's base URL (`https://127.0.0.1:port`).
    pub fn production_url(&self) -> &str {
        &self.production_url
    }

    /// The sandbox endpoint's base URL.
    pub fn sandbox_url(&self) -> &str {
        &self.sandbox_url
    }

    /// The provider key (PKCS#8 PEM, as Apple's `AuthKey_<kid>.p8`).
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    pub fn key_id(&self) -> &str {
        &self.apple.options.key_id
    }

    pub fn team_id(&self) -> &str {
        &self.apple.options.team_id
    }

    pub fn topic(&self) -> &str {
        &self.apple.options.topic
    }

    /// The certificate both endpoints serve.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Refuses the next valid provider token as `403 ExpiredProviderToken`, and again each
    /// time it comes back, as Apple does with a token older than an hour.
    pub fn expire_next_provider_token(&self) {
        *lock(&self.apple.expire) = Some("any".to_owned());
    }
}

/// A fresh `.p8`-style key in `dir`: its file and its public key.
fn provider_key(dir: &Path, key_id: &str) -> Result<(PathBuf, Vec<u8>), PushServiceError> {
    use base64::Engine;
    let setup = |what| {
        move |e: ring::error::Unspecified| PushServiceError::Setup { what, detail: e.to_string() }
    };
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(setup("generate the APNs provider key"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| PushServiceError::Setup {
            what: "read the APNs provider key",
            detail: e.to_string(),
        })?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let path = dir.join(format!("AuthKey_{key_id}.p8"));
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
    std::fs::write(&path, pem).map_err(io("write the APNs provider key"))?;
    Ok((path, pair.public_key().as_ref().to_vec()))
}

type Refusal = (u16, &'static str);

/// Checks one request against Apple's documented shape; `Ok` carries the provider token.
fn check<'a>(apple: &Apple, seen: &'a Incoming, token: &str) -> Result<&'a str, Refusal> {
    if seen.version != Version::HTTP_2 {
        return Err((400, "BadProtocol"));
    }
    if seen.method != Method::POST {
        return Err((405, "MethodNotAllowed"));
    }
    if !seen.uri.path().starts_with("/3/device/") {
        return Err((404, "BadPath"));
    }
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err((400, "BadDeviceToken"));
    }
    if seen.headers.keys().any(|name| !KNOWN_HEADERS.contains(&name.as_str())) {
        return Err((400, "BadHeader"));
    }
    let jwt = seen
        .header("authorization")
        .and_then(|a| a.strip_prefix("bearer "))
        .ok_or((403, "MissingProviderToken"))?;
    let parts = jwt_parts(jwt).ok_or((403, "InvalidProviderToken"))?;
    let o = &apple.options;
    if parts.header != json!({ "alg": "ES256", "kid": o.key_id }) {
        return Err((403, "InvalidProviderToken"));
    }
    let iat = parts.claims["iat"].as_u64().ok_or((403, "InvalidProviderToken"))?;
    if parts.claims.as_object().map(|c| c.len()) != Some(2)
        || parts.claims["iss"] != o.team_id.as_str()
    {
        return Err((403, "InvalidProviderToken"));
    }
    if iat.abs_diff(unix_now()) > 3600 {
        return Err((403, "ExpiredProviderToken"));
    }
    ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &apple.public_key)
        .verify(parts.signed.as_bytes(), &parts.signature)
        .map_err(|_| (403, "InvalidProviderToken"))?;
    if seen.header("apns-topic") != Some(o.topic.as_str()) {
        return Err((400, "BadTopic"));
    }
    if !matches!(seen.header("apns-push-type"), Some("alert" | "background")) {
        return Err((400, "InvalidPushType"));
    }
    if !matches!(seen.header("apns-priority"), None | Some("5" | "10" | "1")) {
        return Err((400, "BadPriority"));
    }
    if seen.header("apns-expiration").is_some_and(|e| e.parse::<u64>().is_err()) {
        return Err((400, "BadExpirationDate"));
    }
    if seen.header("apns-collapse-id").is_some_and(|c| c.len() > 64) {
        return Err((400, "BadCollapseId"));
    }
    if seen.body.len() > 4096 {
        return Err((413, "PayloadTooLarge"));
    }
    let body: Value = serde_json::from_slice(&seen.body).map_err(|_| (400, "BadPayload"))?;
    if !body["aps"]["alert"].is_object() && !body["aps"]["content-available"].is_number() {
        return Err((400, "PayloadEmpty"));
    }
    Ok(jwt)
}

/// What to answer: a status and Apple's reason, or nothing.
fn decide(apple: &Apple, seen: &Incoming, token: &str) -> Option<(u16, Option<&'static str>)> {
    let jwt = match check(apple, seen, token) {
        Err((status, reason)) => return Some((status, Some(reason))),
        Ok(jwt) => jwt,
    };
    {
        let mut expire = lock(&apple.expire);
        if expire.as_deref() == Some("any") || expire.as_deref() == Some(jwt) {
            *expire = Some(jwt.to_owned());
            return Some((403, Some("ExpiredProviderToken")));
        }
    }
    match apple.script.next(token) {
        Answer::Ok => Some((200, None)),
        Answer::Unregistered => Some((410, Some("Unregistered"))),
        Answer::BadDeviceToken => Some((400, Some("BadDeviceToken"))),
        Answer::ServerError => Some((500, Some("InternalServerError"))),
        Answer::Never => None,
    }
}

fn handler(
    apple: Arc<Apple>,
    endpoint: ApnsEndpoint,
    events: mpsc::UnboundedSender<ApnsRequest>,
) -> Handler {
    Arc::new(move |seen: Incoming| -> Reply {
        let token = seen.uri.path().strip_prefix("/3/device/").unwrap_or("").to_owned();
        let decision = decide(&apple, &seen, &token);
        let apns_id = seen.header("apns-id").map(str::to_owned).unwrap_or_else(|| {
            let n = apple.ids.fetch_add(1, Ordering::Relaxed);
            format!("00000000-0000-4000-8000-{n:012X}")
        });
        let _ = events.send(ApnsRequest {
            endpoint,
            token,
            method: seen.method.clone(),
            version: seen.version,
            headers: seen.headers.clone(),
            payload: serde_json::from_slice(&seen.body).unwrap_or(Value::Null),
            body: seen.body.clone(),
            status: decision.map(|(status, _)| status),
            reason: decision.and_then(|(_, reason)| reason.map(str::to_owned)),
        });
        let headers = [("apns-id", apns_id)];
        match decision {
            None => super::http::never(),
            Some((200, _)) => reply_with(200, &headers, ""),
            Some((410, Some(reason))) => {
                let ms = unix_now().saturating_mul(1000);
                reply_with(410, &headers, json!({ "reason": reason, "timestamp": ms }).to_string())
            }
            Some((status, reason)) => {
                reply_with(status, &headers, json!({ "reason": reason }).to_string())
            }
        }
    })
}

scripted_imitation!(ApnsImitation, ApnsRequest, |this| this.apple.script);
