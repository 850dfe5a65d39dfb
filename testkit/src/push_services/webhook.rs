//! An imitation of an operator's push service receiving Tern's signed webhook, as Tern
//! documents it (`tern_notify::webhook`): `POST` to its path with `Content-Type:
//! application/json`, `X-Tern-Timestamp: <unix seconds>` within a tolerance of its clock, and
//! `X-Tern-Signature: v1=<hex HMAC-SHA256(secret, timestamp "." body)>` (several `v1=` values
//! comma-separated allowed). It verifies the signature on its own (ring's HMAC), not with
//! tern-notify's `verify`, so a wrong scheme on both sides cannot agree with itself. Unsigned,
//! stale or wrongly signed requests get 401, another path 404, a body that is not JSON 400.
//!
//! Passing against it shows Tern sends the shape it documents; it does not verify any real
//! operator's service.
//!
//! Plain HTTP/1.1 (or h2c) by default; with [`WebhookOptions::tls`], HTTPS offering `h2` and
//! `http/1.1`. Scripted [`Answer`]s (by the body's `token`) map to: `Ok` 204; `Unregistered`
//! 410; `BadDeviceToken` 400; `ServerError` 500; `Never` no answer.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Version};
use serde_json::Value;
use tokio::sync::mpsc;

use super::http::{Background, Handler, Incoming, Mode, Reply, TestCa, never, reply};
use super::{Answer, Events, PushServiceError, Script, unix_now};

/// The timestamp header.
pub const TIMESTAMP_HEADER: &str = "x-tern-timestamp";
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-tern-signature";

/// What a [`WebhookReceiver`] accepts.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// The path it serves (`/tern/push`).
    pub path: String,
    /// The shared secret.
    pub secret: Vec<u8>,
    /// How far the timestamp may be from the receiver's clock, in seconds.
    pub tolerance_secs: u64,
    /// HTTPS with this certificate; plain HTTP when `None`.
    pub tls: Option<TestCa>,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        Self {
            path: "/tern/push".into(),
            secret: b"operator-shared-secret".to_vec(),
            tolerance_secs: 300,
            tls: None,
        }
    }
}

/// One request the receiver got (also when it refused it).
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    /// The body's `token` (empty when it had none).
    pub token: String,
    /// The body parsed as JSON (`Value::Null` when it was not JSON).
    pub payload: Value,
    /// Whether the signature verified (and the timestamp was fresh).
    pub signed: bool,
    pub method: Method,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status answered; `None` for [`Answer::Never`].
    pub status: Option<u16>,
}

impl WebhookRequest {
    /// A header's text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An operator's webhook endpoint on loopback.
pub struct WebhookReceiver {
    script: Arc<Script>,
    events: Events<WebhookRequest>,
    base_url: String,
    url: String,
    ca: Option<TestCa>,
    _background: Background,
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver").field("url", &self.url).finish_non_exhaustive()
    }
}

impl WebhookReceiver {
    /// The receiver on a free loopback port.
    pub fn start(options: WebhookOptions) -> Result<Self, PushServiceError> {
        let background = Background::start("webhook-imitation")?;
        let script = Arc::new(Script::new());
        let (tx, events) = Events::channel("webhook request");
        let ca = options.tls.clone();
        let mode = if ca.is_some() { Mode::AnyTls } else { Mode::Plain };
        let path = options.path.clone();
        let (_, base_url) =
            background.serve(mode, ca.as_ref(), handler(options, script.clone(), tx))?;
        let url = format!("{base_url}{path}");
        Ok(Self { script, events, base_url, url, ca, _background: background })
    }

    /// The full URL to configure (`http://127.0.0.1:port/tern/push`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Scheme, host and port only.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The certificate it serves, under HTTPS.
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }
}

/// Whether the headers sign `body` under `secret` with a timestamp within `tolerance` of now.
fn signed(secret: &[u8], timestamp: &str, signature: &str, body: &[u8], tolerance: u64) -> bool {
    let Ok(ts) = timestamp.parse::<u64>() else { return false };
    if ts.abs_diff(unix_now()) > tolerance {
        return false;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let message = [timestamp.as_bytes(), b".", body].concat();
    signature
        .split(',')
        .filter_map(|s| s.trim().strip_prefix("v1="))
        .any(|hex| unhex(hex).is_some_and(|tag| ring::hmac::verify(&key, &message, &tag).is_ok()))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn handler(
    options: WebhookOptions,
    script: Arc<Script>,
    events: mpsc::UnboundedSender<WebhookRequest>,
) -> Handler {
    Arc::new(move |seen: Incoming| -> Reply {
        let payload: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        let token = payload["token"].as_str().unwrap_or_default().to_owned();
        let header = |name| seen.header(name).unwrap_or("");
        let signed = signed(
            &options.secret,
            header(TIMESTAMP_HEADER),
            header(SIGNATURE_HEADER),
            &seen.body,
            options.tolerance_secs,
        );
        let status = if seen.method != Method::POST || seen.uri.path() != options.path {
            Some(404)
        } else if header("content-type") != "application/json" || !signed {
            Some(401)
        } else if payload.is_null() {
            Some(400)
        } else {
            match script.next(&token) {
                Answer::Ok => Some(204),
                Answer::Unregistered => Some(410),
                Answer::BadDeviceToken => Some(400),
                Answer::ServerError => Some(500),
                Answer::Never => None,
            }
        };
        let _ = events.send(WebhookRequest {
            token,
            payload,
            signed,
            method: seen.method.clone(),
            version: seen.version,
            headers: seen.headers.clone(),
            body: seen.body.clone(),
            status,
        });
        match status {
            Some(status) => reply(status, ""),
            None => never(),
        }
    })
}

scripted_imitation!(WebhookReceiver, WebhookRequest, |this| this.script);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_checked_independently() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"k");
        let now = unix_now().to_string();
        let tag = ring::hmac::sign(&key, format!("{now}.body").as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert!(signed(b"k", &now, &format!("v1=00, v1={hex}"), b"body", 300));
        assert!(!signed(b"k", &now, &format!("v1={hex}"), b"other", 300));
        assert!(!signed(b"other", &now, &format!("v1={hex}"), b"body", 300));
        assert!(!signed(b"k", "100", &format!("v1={hex}"), b"body", 300), "stale");
    }
}
