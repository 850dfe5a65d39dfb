//! An imitation of FCM HTTP v1: `POST /v1/projects/{project}/messages:send` over HTTP/2 with
//! TLS, accepting exactly the documented request — a `Bearer` access token issued by its own
//! OAuth2 token endpoint (which checks the service account's RS256 JWT grant, see the
//! `oauth` module), `application/json`, and the documented v1 message schema (the parts Tern
//! may use: `token`, `notification`, string-only `data`, `android`, `apns`, ...) — and answering
//! with the documented error bodies (`error.status`, an `FcmError` detail with `errorCode`, a
//! `BadRequest` field violation naming the offending field).
//!
//! Passing against it shows Tern sends that documented shape; it does not verify the real
//! service (nothing here talks to Google).
//!
//! The token endpoint is plain HTTP, unlike Google's: the service account file names it as
//! `token_uri`, and gcp_auth trusts only the system's roots, not a test CA.
//!
//! Scripted [`Answer`]s map to: `Ok` 200 `{"name": "projects/p/messages/0:n"}`;
//! `Unregistered` 404 `NOT_FOUND` with `UNREGISTERED`; `BadDeviceToken` 400
//! `INVALID_ARGUMENT` on `message.token`; `ServerError` 500 `INTERNAL`; `Never` no answer.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, Method, Version};
use ring::signature::{KeyPair, RsaKeyPair};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::http::{Background, Handler, Incoming, Mode, Reply, TestCa, io, reply};
use super::oauth::{Google, token_endpoint};
use super::{Answer, Events, PushServiceError, Script};

/// An RSA-2048 key made for these imitations (see `fixtures/README.md`): it stands in for a
/// Google service account's key; it is trusted by nothing and protects nothing.
pub const TEST_SERVICE_ACCOUNT_KEY_PEM: &str =
    include_str!("fixtures/test-service-account-key.pem");

/// What an [`FcmImitation`] is.
#[derive(Debug, Clone)]
pub struct FcmOptions {
    /// The Firebase project (in the path and the service account file).
    pub project_id: String,
    /// The service account (the grant's `iss`).
    pub client_email: String,
    /// `expires_in` of the first access token; later ones get an hour.
    pub first_expires_in: u64,
    /// The certificate to serve; a fresh one when `None`.
    pub ca: Option<TestCa>,
}

impl Default for FcmOptions {
    fn default() -> Self {
        Self {
            project_id: "tern-test".into(),
            client_email: "tern-push@tern-test.iam.gserviceaccount.com".into(),
            first_expires_in: 3600,
            ca: None,
        }
    }
}

/// One request to messages:send (also when it was refused).
#[derive(Debug, Clone)]
pub struct FcmRequest {
    /// `message.token` (empty when the body had none).
    pub token: String,
    /// The `message` object (`Value::Null` when the body was not a v1 request).
    pub message: Value,
    /// The access token of the `Authorization` header.
    pub access_token: Option<String>,
    pub method: Method,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status answered; `None` for [`Answer::Never`].
    pub status: Option<u16>,
    /// The `errorCode` (`UNREGISTERED`, `INVALID_ARGUMENT`, ...) or `error.status` answered.
    pub error: Option<String>,
}

impl FcmRequest {
    /// A header's text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The FCM v1 send endpoint and its OAuth2 token endpoint on loopback.
pub struct FcmImitation {
    google: Arc<Google>,
    script: Arc<Script>,
    events: Events<FcmRequest>,
    ca: TestCa,
    project_id: String,
    base_url: String,
    token_uri: String,
    service_account_file: PathBuf,
    _dir: tempfile::TempDir,
    _background: Background,
}

impl std::fmt::Debug for FcmImitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmImitation")
            .field("base_url", &self.base_url)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl FcmImitation {
    /// Both endpoints on free loopback ports, and a service account file naming them.
    pub fn start(options: FcmOptions) -> Result<Self, PushServiceError> {
        use rustls::pki_types::PrivatePkcs8KeyDer;
        use rustls::pki_types::pem::PemObject;
        let setup = |what, detail: String| PushServiceError::Setup { what, detail };
        let der = PrivatePkcs8KeyDer::from_pem_slice(TEST_SERVICE_ACCOUNT_KEY_PEM.as_bytes())
            .map_err(|e| setup("read the service account key", e.to_string()))?;
        let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| setup("read the service account key", e.to_string()))?;
        let ca = match &options.ca {
            Some(ca) => ca.clone(),
            None => TestCa::new()?,
        };
        let google = Arc::new(Google {
            client_email: options.client_email.clone(),
            public_key: pair.public_key().as_ref().to_vec(),
            token_uri: OnceLock::new(),
            issued: Mutex::new(HashSet::new()),
            token_requests: AtomicUsize::new(0),
            next: AtomicU64::new(1),
            first_expires_in: options.first_expires_in,
        });
        let background = Background::start("fcm-imitation")?;
        let (_, oauth_url) = background.serve(Mode::Plain, None, token_endpoint(google.clone()))?;
        let token_uri = format!("{oauth_url}/token");
        let _ = google.token_uri.set(token_uri.clone());
        let script = Arc::new(Script::new());
        let (tx, events) = Events::channel("FCM request");
        let send = send_endpoint(google.clone(), script.clone(), options.project_id.clone(), tx);
        let (_, base_url) = background.serve(Mode::Http2Tls, Some(&ca), send)?;
        let dir = tempfile::tempdir().map_err(io("create the FCM imitation's directory"))?;
        let service_account_file = dir.path().join("service-account.json");
        let account = json!({
            "type": "service_account",
            "project_id": options.project_id,
            "private_key_id": "0123456789abcdef",
            "private_key": TEST_SERVICE_ACCOUNT_KEY_PEM,
            "client_email": options.client_email,
            "client_id": "100000000000000000001",
            "token_uri": token_uri,
        });
        std::fs::write(&service_account_file, account.to_string())
            .map_err(io("write the service account file"))?;
        Ok(Self {
            google,
            script,
            events,
            ca,
            project_id: options.project_id,
            base_url,
            token_uri,
            service_account_file,
            _dir: dir,
            _background: background,
        })
    }

    /// The send endpoint's base URL (`https://127.0.0.1:port`, the notifier's `base_url`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The token endpoint (`http://127.0.0.1:port/token`).
    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    /// A service account JSON key file whose `token_uri` is this imitation's.
    pub fn service_account_file(&self) -> &Path {
        &self.service_account_file
    }

    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// The certificate the send endpoint serves.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Requests the token endpoint got so far (valid or not).
    pub fn token_requests(&self) -> usize {
        self.google.token_requests.load(Ordering::Relaxed)
    }
}

/// An answer: status, `error.status`, the FcmError `errorCode`, the violated field, message.
struct Refusal {
    status: u16,
    code: &'static str,
    error_code: Option<&'static str>,
    field: Option<&'static str>,
    message: &'static str,
}

const fn refusal(status: u16, code: &'static str, message: &'static str) -> Refusal {
    Refusal { status, code, error_code: None, field: None, message }
}

fn error_reply(r: &Refusal) -> Reply {
    let mut details = Vec::new();
    if let Some(e) = r.error_code {
        details.push(json!({
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": e,
        }));
    }
    if let Some(f) = r.field {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{ "field": f, "description": r.message }],
        }));
    }
    let body = json!({
        "error": { "code": r.status, "message": r.message, "status": r.code, "details": details },
    });
    reply(r.status, body.to_string())
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
        check_android(a)?;
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

fn check_android(a: &Value) -> Result<(), &'static str> {
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
        t.strip_suffix('s')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
    });
    if !ttl_ok {
        return Err("message.android.ttl");
    }
    let notification_keys =
        ["title", "body", "icon", "color", "sound", "tag", "click_action", "channel_id"];
    if a.get("notification").is_some_and(|n| !only_keys(n, &notification_keys)) {
        return Err("message.android.notification");
    }
    Ok(())
}

const INVALID_JSON: Refusal = refusal(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");

/// Checks one request; `Ok` carries the message.
fn check<'a>(
    g: &Google,
    project: &str,
    seen: &Incoming,
    body: &'a Value,
) -> Result<&'a Map<String, Value>, Refusal> {
    if seen.version != Version::HTTP_2 {
        return Err(refusal(400, "INVALID_ARGUMENT", "HTTP/2 expected by this imitation"));
    }
    if seen.method != Method::POST
        || seen.uri.path() != format!("/v1/projects/{project}/messages:send")
    {
        return Err(refusal(404, "NOT_FOUND", "Requested entity was not found."));
    }
    let bearer = seen.header("authorization").and_then(|a| a.strip_prefix("Bearer "));
    if !bearer.is_some_and(|t| g.issued(t)) {
        return Err(refusal(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        ));
    }
    if !seen.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
        return Err(INVALID_JSON);
    }
    if body.is_null() {
        return Err(INVALID_JSON);
    }
    check_message(body).map_err(|field| Refusal {
        error_code: Some("INVALID_ARGUMENT"),
        field: Some(field),
        ..INVALID_JSON
    })
}

fn send_endpoint(
    g: Arc<Google>,
    script: Arc<Script>,
    project: String,
    events: mpsc::UnboundedSender<FcmRequest>,
) -> Handler {
    let sent = AtomicU64::new(1);
    Arc::new(move |seen: Incoming| -> Reply {
        let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        let message = body.get("message").cloned().unwrap_or(Value::Null);
        let token = message["token"].as_str().unwrap_or_default().to_owned();
        let decision = match check(&g, &project, &seen, &body) {
            Err(refused) => Some(Err(refused)),
            Ok(_) => match script.next(&token) {
                Answer::Ok => Some(Ok(())),
                Answer::Unregistered => Some(Err(Refusal {
                    error_code: Some("UNREGISTERED"),
                    ..refusal(404, "NOT_FOUND", "Requested entity was not found.")
                })),
                Answer::BadDeviceToken => Some(Err(Refusal {
                    error_code: Some("INVALID_ARGUMENT"),
                    field: Some("message.token"),
                    ..refusal(
                        400,
                        "INVALID_ARGUMENT",
                        "The registration token is not a valid FCM registration token",
                    )
                })),
                Answer::ServerError => Some(Err(Refusal {
                    error_code: Some("INTERNAL"),
                    ..refusal(500, "INTERNAL", "Internal error encountered.")
                })),
                Answer::Never => None,
            },
        };
        let (status, error) = match &decision {
            None => (None, None),
            Some(Ok(())) => (Some(200), None),
            Some(Err(r)) => (Some(r.status), Some(r.error_code.unwrap_or(r.code).to_owned())),
        };
        let access_token =
            seen.header("authorization").and_then(|a| a.strip_prefix("Bearer ")).map(str::to_owned);
        let _ = events.send(FcmRequest {
            token,
            message,
            access_token,
            method: seen.method.clone(),
            version: seen.version,
            headers: seen.headers.clone(),
            body: seen.body.clone(),
            status,
            error,
        });
        match decision {
            None => super::http::never(),
            Some(Err(r)) => error_reply(&r),
            Some(Ok(())) => {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                let name = format!("projects/{project}/messages/0:{n}");
                reply(200, json!({ "name": name }).to_string())
            }
        }
    })
}

scripted_imitation!(FcmImitation, FcmRequest, |this| this.script);
