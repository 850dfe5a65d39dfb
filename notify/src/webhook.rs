//! The signed webhook: a JSON POST to the operator's own push service.
//!
//! Each request carries
//! - `Content-Type: application/json`, the body of [`body`];
//! - `X-Tern-Timestamp: <unix seconds>`;
//! - `X-Tern-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
//!
//! **How to verify** (what [`verify`] does): take the raw body bytes as received, compute
//! HMAC-SHA256 with the shared secret over the timestamp header's text, a `.`, and the body;
//! compare its lowercase hex with the signature after `v1=` in constant time; and refuse
//! timestamps more than a few minutes from your clock (replays). Several `v1=` values may be
//! sent comma-separated in future during a secret rotation: accept when any matches.
//!
//! **Answers:** any 2xx is delivered; `410 Gone` means the token will never work again (Tern
//! reports it invalid, once); 408, 429 and 5xx are retried with backoff (`Retry-After` in
//! seconds is honoured); anything else is a failure and is not retried.
//!
//! Verified against a local HTTP/1.1 and HTTPS server in `tests/webhook.rs`.

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;
use sha2::Sha256;

use crate::http::{Answer, Client, is_transient, retry_after};
use crate::notification::{Content, Push};
use crate::retry::Outcome;

/// The timestamp header.
pub const TIMESTAMP_HEADER: &str = "x-tern-timestamp";
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-tern-signature";

/// `v1=` and the hex HMAC-SHA256 of `timestamp.body` under `secret`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp.to_string().as_bytes(), body).finalize().into_bytes();
    format!("v1={}", crate::hex(&tag))
}

fn mac(secret: &[u8], timestamp: &[u8], body: &[u8]) -> Hmac<Sha256> {
    // ok: HMAC takes keys of any length, so this never fails.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp);
    mac.update(b".");
    mac.update(body);
    mac
}

/// Whether a request's headers sign `body` under `secret` with a timestamp within
/// `tolerance_secs` of `now` (unix seconds). For operators' services (and Tern's tests).
pub fn verify(
    secret: &[u8],
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> bool {
    let Ok(ts) = timestamp_header.parse::<u64>() else { return false };
    if ts.abs_diff(now) > tolerance_secs {
        return false;
    }
    signature_header.split(',').filter_map(|s| s.trim().strip_prefix("v1=")).any(|hex| {
        let Some(tag) = unhex(hex) else { return false };
        mac(secret, timestamp_header.as_bytes(), body).verify_slice(&tag).is_ok()
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The JSON body for `push`. Message text only as [`Content`] allows.
pub fn body(push: &Push, content: &Content) -> serde_json::Value {
    let n = &push.latest;
    json!({
        "user_id": n.user_id,
        "device_id": n.device_id,
        "token": n.target.token(),
        "conversation_id": n.conversation_id,
        "seq": n.seq,
        "count": push.count,
        "sender_user_id": n.sender_user_id,
        "mention": push.mention.as_str(),
        "is_group": n.is_group,
        "title": content.title,
        "body": content.body,
        "collapse_key": push.collapse_id(),
    })
}

/// The signed request for `push` at `now` (unix seconds).
pub fn request(
    url: &str,
    secret: &[u8],
    push: &Push,
    content: &Content,
    now: u64,
) -> Result<Request<Full<Bytes>>, Outcome> {
    let body = body(push, content).to_string();
    Request::post(url)
        .header("content-type", "application/json")
        .header(TIMESTAMP_HEADER, now.to_string())
        .header(SIGNATURE_HEADER, sign(secret, now, body.as_bytes()))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Outcome::Failed { reason: format!("request: {e}") })
}

/// What the operator's service answered (see the module doc).
pub fn classify(status: StatusCode, headers: &http::HeaderMap) -> Outcome {
    let reason = format!("HTTP {}", status.as_u16());
    if status.is_success() {
        Outcome::Delivered
    } else if status == StatusCode::GONE {
        Outcome::InvalidToken { reason }
    } else if is_transient(status) {
        Outcome::Retryable { reason, retry_after: retry_after(headers) }
    } else {
        Outcome::Failed { reason }
    }
}

/// Sends pushes to the webhook.
pub(crate) struct WebhookClient {
    client: Client,
    url: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient").field("url", &self.url).finish_non_exhaustive()
    }
}

impl WebhookClient {
    pub(crate) fn new(client: Client, url: String, secret: Vec<u8>) -> Self {
        Self { client, url, secret }
    }

    pub(crate) async fn send(&self, push: &Push, content: &Content) -> Outcome {
        let now = crate::apns::unix_now();
        let request = match request(&self.url, &self.secret, push, content, now) {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        match crate::http::send(&self.client, request).await {
            Err(reason) => Outcome::Retryable { reason, retry_after: None },
            Ok(Answer { status, headers, .. }) => classify(status, &headers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::tests::sample;

    #[test]
    fn signatures_verify_and_anything_changed_does_not() {
        let body = br#"{"a":1}"#;
        let sig = sign(b"s3cret", 1_700_000_000, body);
        assert!(sig.starts_with("v1=") && sig.len() == 3 + 64);
        let ok = |secret: &[u8], ts: &str, sig: &str, body: &[u8], now| {
            verify(secret, ts, sig, body, now, 300)
        };
        assert!(ok(b"s3cret", "1700000000", &sig, body, 1_700_000_100));
        assert!(ok(b"s3cret", "1700000000", &format!("v1=00, {sig}"), body, 1_700_000_000));
        assert!(!ok(b"other", "1700000000", &sig, body, 1_700_000_000));
        assert!(!ok(b"s3cret", "1700000001", &sig, body, 1_700_000_000));
        assert!(!ok(b"s3cret", "1700000000", &sig, br#"{"a":2}"#, 1_700_000_000));
        assert!(!ok(b"s3cret", "1700000000", &sig, body, 1_700_000_301), "stale");
        assert!(!ok(b"s3cret", "x", &sig, body, 0));
        assert!(!ok(b"s3cret", "1700000000", "v1=zz", body, 1_700_000_000));
        assert!(!ok(b"s3cret", "1700000000", &sig[..10], body, 1_700_000_000));
    }

    #[test]
    fn a_known_vector() {
        // HMAC-SHA256(key="key", "1.{}"), computed independently with
        // `printf '1.{}' | openssl dgst -sha256 -hmac key`.
        assert_eq!(
            sign(b"key", 1, b"{}"),
            "v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
    }

    #[test]
    fn the_request_carries_the_signed_body() {
        let push = Push::single(sample("g:1", 9));
        let content = Content { title: String::new(), body: "New message".into() };
        let r = request("http://127.0.0.1:1/hook", b"k", &push, &content, 1234).unwrap();
        assert_eq!(r.headers()[TIMESTAMP_HEADER], "1234");
        let expected = body(&push, &content).to_string();
        assert_eq!(r.headers()[SIGNATURE_HEADER], sign(b"k", 1234, expected.as_bytes()).as_str());
        assert_eq!(body(&push, &content)["body"], "New message");
    }

    #[test]
    fn answers() {
        let h = http::HeaderMap::new();
        let c = |s: u16| classify(StatusCode::from_u16(s).unwrap(), &h);
        assert_eq!(c(204), Outcome::Delivered);
        assert!(matches!(c(410), Outcome::InvalidToken { .. }));
        assert!(matches!(c(503), Outcome::Retryable { .. }));
        assert!(matches!(c(404), Outcome::Failed { .. }));
    }
}
