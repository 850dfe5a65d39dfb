//! APNs over HTTP/2 with token-based authentication: request shape, ES256 provider token and
//! answer classification (pure), and the client that sends them.
//!
//! **Why not the `a2` crate.** a2 0.10.0 (the newest release, checked in its source) hard-codes
//! the host: `Endpoint` is a closed enum {`Production`, `Sandbox`} turned into
//! `https://{host}/3/device/{token}`, so it cannot be pointed at a local test server (a pull
//! request adding `Endpoint::Custom`, reown-com/a2#93, is unreleased); its connector is fixed
//! to the webpki roots (the builder's `connector` is private), so it cannot trust a test CA
//! either; and it always pulls rustls 0.22 + hyper-rustls 0.26 (a second rustls beside the
//! workspace's 0.23), base64 0.21 and thiserror 1, with OpenSSL as its default feature. Its
//! JWT signer is private (`mod signer`), so not even that piece can be reused alone. The
//! nearest honest alternative is what this module does: the same request a2 builds (path,
//! `apns-*` headers, `aps` JSON), sent by our hyper HTTP/2 client over rustls with ring.
//!
//! **Why the JWT is hand-written.** An APNs provider token is three base64url parts and one
//! ES256 signature, which ring (already built) makes. `jsonwebtoken` 10+ no longer offers
//! ring: its `rust_crypto` backend would add 25 crates to this build (p256, p384, rsa,
//! crypto-bigint, a second base64, …), its other backend is aws-lc-rs (a C build).
//!
//! **Verified against:** a local HTTP/2 server that accepts exactly the request shape of
//! Apple's documentation ("Sending notification requests to APNs") and checks the token's
//! signature, `kid`, `iss` and `iat` (`tests/apns.rs`). Not verified against Apple's servers,
//! which cannot be reached from where this was built.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use serde_json::json;

use crate::config::ApnsConfig;
use crate::error::StartError;
use crate::http::{Answer, Client, is_transient, retry_after};
use crate::notification::{Content, Push, Target};
use crate::retry::Outcome;

/// A provider token is reused this long (Apple refuses tokens older than an hour and
/// throttles ones renewed more often than every 20 minutes).
pub const TOKEN_REFRESH: Duration = Duration::from_secs(50 * 60);

/// Longest device token accepted, in hex digits (Apple: tokens are of variable length; today
/// 64 digits).
pub const MAX_TOKEN_HEX: usize = 200;

/// Whether `token` can be an APNs device token: 1 to [`MAX_TOKEN_HEX`] hex digits. Anything
/// else is never sent (it would also not be a safe URL path segment).
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_HEX
        && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Signs provider tokens (JWT, ES256) with the `.p8` key and reuses each for
/// [`TOKEN_REFRESH`].
pub struct ProviderToken {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    key_id: String,
    team_id: String,
    /// The current token and when it was issued (unix seconds).
    cached: Mutex<Option<(String, u64)>>,
}

impl std::fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderToken").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl ProviderToken {
    /// From the PEM text of a `.p8` key (PKCS#8, P-256).
    pub fn from_pem(pem: &[u8], key_id: &str, team_id: &str) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|e| format!("PEM: {e}"))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| format!("not a PKCS#8 P-256 key: {e}"))?;
        Ok(Self {
            key,
            rng,
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            cached: Mutex::new(None),
        })
    }

    /// The token to send at `now` (unix seconds): the cached one while younger than
    /// [`TOKEN_REFRESH`], else a new one.
    pub fn get(&self, now: u64) -> Result<String, String> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, issued)) = cached.as_ref()
            && !needs_refresh(*issued, now)
        {
            return Ok(token.clone());
        }
        let token = self.sign(now)?;
        *cached = Some((token.clone(), now));
        Ok(token)
    }

    /// Forgets the cached token (after APNs answered `ExpiredProviderToken`).
    pub fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn sign(&self, iat: u64) -> Result<String, String> {
        let header = json!({ "alg": "ES256", "kid": self.key_id });
        let claims = json!({ "iss": self.team_id, "iat": iat });
        let mut jwt = URL_SAFE_NO_PAD.encode(header.to_string());
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = self.key.sign(&self.rng, jwt.as_bytes()).map_err(|e| format!("sign: {e}"))?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        Ok(jwt)
    }
}

/// Whether a token issued at `issued` must be renewed at `now` (also when the clock went
/// back).
pub fn needs_refresh(issued: u64, now: u64) -> bool {
    now < issued || now - issued >= TOKEN_REFRESH.as_secs()
}

/// The JSON body: an alert, grouped (`thread-id`) per conversation, marked mutable so that an
/// app's notification service extension may fetch and show the message itself; Tern's ids in
/// `tern`.
pub fn payload(push: &Push, content: &Content) -> serde_json::Value {
    let mut alert = serde_json::Map::new();
    if !content.title.is_empty() {
        alert.insert("title".into(), content.title.clone().into());
    }
    alert.insert("body".into(), content.body.clone().into());
    let n = &push.latest;
    json!({
        "aps": {
            "alert": alert,
            "sound": "default",
            "thread-id": push.collapse_id(),
            "mutable-content": 1,
        },
        "tern": {
            "conversation_id": n.conversation_id,
            "seq": n.seq,
            "count": push.count,
            "mention": push.mention.as_str(),
            "is_group": n.is_group,
        },
    })
}

/// The request for `push` at `base_url`: `POST /3/device/{token}` with the `apns-*` headers.
/// `Err` when the target is not a valid APNs target.
pub fn request(
    base_url: &str,
    push: &Push,
    content: &Content,
    provider_token: &str,
    expiration_unix: u64,
) -> Result<Request<Full<Bytes>>, Outcome> {
    let Target::Apns { token, topic, .. } = &push.latest.target else {
        return Err(Outcome::Failed { reason: "not an APNs target".into() });
    };
    if !is_valid_token(token) {
        return Err(Outcome::InvalidToken { reason: "malformed device token".into() });
    }
    let Ok(topic) = HeaderValue::from_str(topic) else {
        return Err(Outcome::Failed { reason: "topic is not a valid header value".into() });
    };
    let body = payload(push, content).to_string();
    Request::post(format!("{}/3/device/{token}", base_url.trim_end_matches('/')))
        .header("authorization", format!("bearer {provider_token}"))
        .header("apns-topic", topic)
        .header("apns-push-type", "alert")
        .header("apns-priority", "10")
        .header("apns-expiration", expiration_unix.to_string())
        .header("apns-collapse-id", push.collapse_id())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Outcome::Failed { reason: format!("request: {e}") })
}

/// What an APNs answer means, and whether the provider token must be renewed first.
pub fn classify(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> (Outcome, bool) {
    #[derive(Deserialize)]
    struct ErrorBody {
        reason: Option<String>,
    }
    if status == StatusCode::OK {
        return (Outcome::Delivered, false);
    }
    let reason = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.reason)
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    let with_status = format!("{} {reason}", status.as_u16());
    match (status.as_u16(), reason.as_str()) {
        (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
            (Outcome::InvalidToken { reason: with_status }, false)
        }
        (403, "ExpiredProviderToken") => {
            (Outcome::Retryable { reason: with_status, retry_after: None }, true)
        }
        _ if is_transient(status) => {
            (Outcome::Retryable { reason: with_status, retry_after: retry_after(headers) }, false)
        }
        _ => (Outcome::Failed { reason: with_status }, false),
    }
}

/// Sends pushes to APNs.
#[derive(Debug)]
pub(crate) struct ApnsClient {
    client: Client,
    token: ProviderToken,
    production_url: String,
    sandbox_url: String,
    topic: String,
    ttl: Duration,
}

impl ApnsClient {
    pub(crate) fn new(
        config: &ApnsConfig,
        client: Client,
        ttl: Duration,
    ) -> Result<Self, StartError> {
        if config.key_id.is_empty() || config.team_id.is_empty() {
            return Err(StartError::Config("apns: key_id and team_id are required".into()));
        }
        let path: &Path = &config.key_file;
        let pem = std::fs::read(path).map_err(|source| StartError::Read {
            what: "apns key_file",
            path: path.into(),
            source,
        })?;
        let token = ProviderToken::from_pem(&pem, &config.key_id, &config.team_id)
            .map_err(|reason| StartError::ApnsKey { path: path.into(), reason })?;
        Ok(Self {
            client,
            token,
            production_url: config.production_url.clone(),
            sandbox_url: config.sandbox_url.clone(),
            topic: config.topic.clone(),
            ttl,
        })
    }

    pub(crate) async fn send(&self, push: &Push, content: &Content) -> Outcome {
        // A registration without a topic gets the configured one.
        let defaulted;
        let push = match &push.latest.target {
            Target::Apns { token, topic, sandbox }
                if topic.is_empty() && !self.topic.is_empty() =>
            {
                let mut p = push.clone();
                p.latest.target = Target::Apns {
                    token: token.clone(),
                    topic: self.topic.clone(),
                    sandbox: *sandbox,
                };
                defaulted = p;
                &defaulted
            }
            _ => push,
        };
        let sandbox = matches!(push.latest.target, Target::Apns { sandbox: true, .. });
        let base = if sandbox { &self.sandbox_url } else { &self.production_url };
        let now = unix_now();
        let provider_token = match self.token.get(now) {
            Ok(t) => t,
            Err(reason) => return Outcome::Failed { reason },
        };
        let request = match request(base, push, content, &provider_token, now + self.ttl.as_secs())
        {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        match crate::http::send(&self.client, request).await {
            Err(reason) => Outcome::Retryable { reason, retry_after: None },
            Ok(Answer { status, headers, body }) => {
                let (outcome, renew) = classify(status, &headers, &body);
                if renew {
                    self.token.invalidate();
                }
                outcome
            }
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::tests::sample;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, KeyPair, UnparsedPublicKey};

    fn apns_push() -> Push {
        let mut n = sample("g:team", 42);
        n.target =
            Target::Apns { token: "ab".repeat(32), topic: "chat.tern.app".into(), sandbox: false };
        n.is_group = true;
        Push { count: 3, ..Push::single(n) }
    }

    fn test_key() -> (Vec<u8>, Vec<u8>) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        (pem.into_bytes(), key.public_key().as_ref().to_vec())
    }

    #[test]
    fn provider_tokens_are_es256_jwts_with_kid_iss_iat_and_are_reused_for_50_minutes() {
        let (pem, public) = test_key();
        let t = ProviderToken::from_pem(&pem, "KEYID12345", "TEAMID1234").unwrap();
        let jwt = t.get(1_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap();
        let header: serde_json::Value = serde_json::from_slice(&decode(parts[0])).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&decode(parts[1])).unwrap();
        assert_eq!(header, json!({"alg": "ES256", "kid": "KEYID12345"}));
        assert_eq!(claims, json!({"iss": "TEAMID1234", "iat": 1_000_000}));
        let signed = format!("{}.{}", parts[0], parts[1]);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public)
            .verify(signed.as_bytes(), &decode(parts[2]))
            .unwrap();
        assert_eq!(t.get(1_000_000 + 2_999).unwrap(), jwt);
        assert_ne!(t.get(1_000_000 + 3_000).unwrap(), jwt);
        let current = t.get(1_003_000).unwrap();
        t.invalidate();
        assert_ne!(t.get(1_003_000).unwrap(), current, "a new signature after invalidate");
        assert!(needs_refresh(100, 99), "clock went back");
    }

    #[test]
    fn a_bad_key_is_refused() {
        assert!(ProviderToken::from_pem(b"nonsense", "k", "t").is_err());
        let rsa = tern_testkit::push_services::fcm::TEST_SERVICE_ACCOUNT_KEY_PEM.as_bytes();
        assert!(ProviderToken::from_pem(rsa, "k", "t").unwrap_err().contains("P-256"));
    }

    #[test]
    fn the_request_has_apples_shape_and_no_message_text() {
        let push = apns_push();
        let content = Content { title: String::new(), body: "3 new messages".into() };
        let r =
            request("https://api.push.apple.com/", &push, &content, "JWT", 1_700_000_000).unwrap();
        assert_eq!(r.method(), http::Method::POST);
        assert_eq!(
            r.uri().to_string(),
            format!("https://api.push.apple.com/3/device/{}", "ab".repeat(32))
        );
        let h = r.headers();
        assert_eq!(h["authorization"], "bearer JWT");
        assert_eq!(h["apns-topic"], "chat.tern.app");
        assert_eq!(h["apns-push-type"], "alert");
        assert_eq!(h["apns-priority"], "10");
        assert_eq!(h["apns-expiration"], "1700000000");
        assert_eq!(h["apns-collapse-id"], push.collapse_id().as_str());
        let body = payload(&push, &content);
        assert_eq!(body["aps"]["alert"], json!({"body": "3 new messages"}));
        assert_eq!(body["aps"]["thread-id"], push.collapse_id());
        assert_eq!(
            body["tern"],
            json!({"conversation_id": "g:team", "seq": 42, "count": 3, "mention": "none", "is_group": true})
        );
        assert!(!body.to_string().contains("secret plans"));
    }

    #[test]
    fn malformed_tokens_and_topics_are_never_sent() {
        let content = Content { title: String::new(), body: "x".into() };
        for bad in ["", "zz", "ab/../x", &"a".repeat(MAX_TOKEN_HEX + 1)] {
            let mut push = apns_push();
            push.latest.target =
                Target::Apns { token: bad.into(), topic: "t".into(), sandbox: false };
            assert!(
                matches!(
                    request("https://h", &push, &content, "j", 0),
                    Err(Outcome::InvalidToken { .. })
                ),
                "{bad:?}"
            );
        }
        let mut push = apns_push();
        push.latest.target =
            Target::Apns { token: "ab".into(), topic: "a\nb".into(), sandbox: false };
        assert!(matches!(
            request("https://h", &push, &content, "j", 0),
            Err(Outcome::Failed { .. })
        ));
    }

    #[test]
    fn answers_are_classified_as_apple_documents_them() {
        let h = http::HeaderMap::new();
        let c = |status: u16, reason: &str| {
            let body = format!(r#"{{"reason":"{reason}"}}"#);
            classify(StatusCode::from_u16(status).unwrap(), &h, body.as_bytes())
        };
        assert_eq!(classify(StatusCode::OK, &h, b""), (Outcome::Delivered, false));
        assert!(matches!(c(410, "Unregistered"), (Outcome::InvalidToken { .. }, false)));
        assert!(matches!(c(400, "BadDeviceToken"), (Outcome::InvalidToken { .. }, false)));
        assert!(matches!(c(400, "DeviceTokenNotForTopic"), (Outcome::InvalidToken { .. }, false)));
        assert!(matches!(c(400, "BadTopic"), (Outcome::Failed { .. }, false)));
        assert!(matches!(c(403, "ExpiredProviderToken"), (Outcome::Retryable { .. }, true)));
        assert!(matches!(c(403, "InvalidProviderToken"), (Outcome::Failed { .. }, false)));
        assert!(matches!(c(429, "TooManyRequests"), (Outcome::Retryable { .. }, false)));
        assert!(matches!(c(503, "ServiceUnavailable"), (Outcome::Retryable { .. }, false)));
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, &h, b"<html>"),
            (Outcome::Retryable { .. }, false)
        ));
    }
}
