//! FCM HTTP v1: message shape and answer classification (pure), and the client that sends
//! them with a service account's OAuth2 access token.
//!
//! The legacy FCM API is shut down; this speaks only `POST
//! {base_url}/v1/projects/{project_id}/messages:send` with `Authorization: Bearer <token>`.
//! Access tokens come from [`gcp_auth`] (a well-kept crate of the field, ring-based): it
//! signs the RS256 JWT grant with the service account's key, posts it to the key file's
//! `token_uri` (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`) and caches the
//! token until 20 s before it expires.
//!
//! **Verified against:** a local HTTP/2 server that accepts exactly the documented v1 request
//! (path, bearer token it issued from its own token endpoint after checking the JWT grant's
//! RS256 signature and claims, JSON schema) and answers with the documented error bodies
//! (`tests/fcm.rs`). Not verified against Google's servers, which cannot be reached from where
//! this was built.

use std::sync::Arc;

use bytes::Bytes;
use gcp_auth::{CustomServiceAccount, TokenProvider};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::json;

use crate::config::FcmConfig;
use crate::error::StartError;
use crate::http::{Answer, Client, is_transient, retry_after};
use crate::notification::{Content, Push, Target};
use crate::retry::Outcome;

/// The OAuth2 scope for sending messages.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Longest registration token accepted, in bytes (FCM's are about 160 today).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Whether `token` can be a registration token: 1 to [`MAX_TOKEN_BYTES`] visible ASCII.
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && token.bytes().all(|b| b.is_ascii_graphic())
}

/// The v1 `{"message": …}` body. Data values are strings, as v1 requires.
pub fn body(push: &Push, content: &Content, ttl_secs: u64) -> serde_json::Value {
    let n = &push.latest;
    let collapse = push.collapse_id();
    let mut notification = serde_json::Map::new();
    if !content.title.is_empty() {
        notification.insert("title".into(), content.title.clone().into());
    }
    notification.insert("body".into(), content.body.clone().into());
    json!({
        "message": {
            "token": n.target.token(),
            "notification": notification,
            "data": {
                "conversation_id": n.conversation_id,
                "seq": n.seq.to_string(),
                "count": push.count.to_string(),
                "mention": push.mention.as_str(),
                "is_group": n.is_group.to_string(),
            },
            "android": {
                "collapse_key": collapse,
                "priority": "high",
                "ttl": format!("{ttl_secs}s"),
                "notification": { "tag": collapse },
            },
            "apns": {
                "headers": { "apns-collapse-id": collapse },
                "payload": { "aps": { "thread-id": collapse } },
            },
        }
    })
}

/// The request for `push`. `Err` when the target is not a valid FCM target.
pub fn request(
    base_url: &str,
    project_id: &str,
    access_token: &str,
    push: &Push,
    content: &Content,
    ttl_secs: u64,
) -> Result<Request<Full<Bytes>>, Outcome> {
    let Target::Fcm { token } = &push.latest.target else {
        return Err(Outcome::Failed { reason: "not an FCM target".into() });
    };
    if !is_valid_token(token) {
        return Err(Outcome::InvalidToken { reason: "malformed registration token".into() });
    }
    let url = format!("{}/v1/projects/{project_id}/messages:send", base_url.trim_end_matches('/'));
    Request::post(url)
        .header("authorization", format!("Bearer {access_token}"))
        .header("content-type", "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from(body(push, content, ttl_secs).to_string())))
        .map_err(|e| Outcome::Failed { reason: format!("request: {e}") })
}

/// What a v1 answer means. The token is reported invalid on `UNREGISTERED` (404),
/// `SENDER_ID_MISMATCH` (403, the token belongs to another project), and `INVALID_ARGUMENT`
/// (400) only when the error names the token (a field violation on `message.token`, or a
/// message about the registration token): other invalid arguments are our bug, not the
/// device's.
pub fn classify(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Outcome {
    #[derive(Deserialize, Default)]
    struct Envelope {
        #[serde(default)]
        error: ErrorStatus,
    }
    #[derive(Deserialize, Default)]
    struct ErrorStatus {
        #[serde(default)]
        message: String,
        #[serde(default)]
        status: String,
        #[serde(default)]
        details: Vec<Detail>,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Detail {
        #[serde(default)]
        error_code: String,
        #[serde(default)]
        field_violations: Vec<FieldViolation>,
    }
    #[derive(Deserialize, Default)]
    struct FieldViolation {
        #[serde(default)]
        field: String,
    }
    if status.is_success() {
        return Outcome::Delivered;
    }
    let e = serde_json::from_slice::<Envelope>(body).unwrap_or_default().error;
    let code = e.details.iter().map(|d| d.error_code.as_str()).find(|c| !c.is_empty());
    let code = code.unwrap_or(&e.status);
    let reason = [status.as_u16().to_string(), code.to_owned(), e.message.clone()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let names_token =
        e.details.iter().flat_map(|d| &d.field_violations).any(|v| v.field == "message.token")
            || e.message.to_ascii_lowercase().contains("registration token");
    match code {
        "UNREGISTERED" | "SENDER_ID_MISMATCH" => Outcome::InvalidToken { reason },
        "INVALID_ARGUMENT" if names_token => Outcome::InvalidToken { reason },
        _ if is_transient(status) => {
            Outcome::Retryable { reason, retry_after: retry_after(headers) }
        }
        _ => Outcome::Failed { reason },
    }
}

/// Sends pushes to FCM.
pub(crate) struct FcmClient {
    client: Client,
    auth: Arc<CustomServiceAccount>,
    base_url: String,
    project_id: String,
    ttl_secs: u64,
}

impl std::fmt::Debug for FcmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmClient").field("project_id", &self.project_id).finish_non_exhaustive()
    }
}

impl FcmClient {
    pub(crate) fn new(
        config: &FcmConfig,
        client: Client,
        ttl_secs: u64,
    ) -> Result<Self, StartError> {
        let path = &config.service_account_file;
        // Read it ourselves for a clear error naming the file, then let gcp_auth parse it.
        let json = std::fs::read_to_string(path).map_err(|source| StartError::Read {
            what: "fcm service_account_file",
            path: path.clone(),
            source,
        })?;
        let auth = CustomServiceAccount::from_json(&json).map_err(StartError::FcmCredentials)?;
        let project_id = match (config.project_id.as_str(), auth.project_id()) {
            ("", Some(id)) => id.to_owned(),
            ("", None) => {
                return Err(StartError::Config(
                    "fcm: project_id is neither configured nor in the key file".into(),
                ));
            }
            (id, _) => id.to_owned(),
        };
        let path_safe = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
        if !project_id.bytes().all(path_safe) {
            return Err(StartError::Config(format!("fcm: project_id {project_id:?} is malformed")));
        }
        Ok(Self {
            client,
            auth: Arc::new(auth),
            base_url: config.base_url.clone(),
            project_id,
            ttl_secs,
        })
    }

    pub(crate) async fn send(&self, push: &Push, content: &Content) -> Outcome {
        if !is_valid_token(push.latest.target.token()) {
            return Outcome::InvalidToken { reason: "malformed registration token".into() };
        }
        let access = match self.auth.token(&[SCOPE]).await {
            Ok(t) => t,
            Err(e) => {
                return Outcome::Retryable {
                    reason: format!("access token: {e}"),
                    retry_after: None,
                };
            }
        };
        let request = match request(
            &self.base_url,
            &self.project_id,
            access.as_str(),
            push,
            content,
            self.ttl_secs,
        ) {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        match crate::http::send(&self.client, request).await {
            Err(reason) => Outcome::Retryable { reason, retry_after: None },
            Ok(Answer { status, headers, body }) => classify(status, &headers, &body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::tests::sample;

    #[test]
    fn the_body_follows_the_v1_schema() {
        let mut push = Push::single(sample("dm:alice:bob", 7));
        push.count = 2;
        let content = Content { title: String::new(), body: "2 new messages".into() };
        let b = body(&push, &content, 3600);
        let c = push.collapse_id();
        assert_eq!(
            b,
            json!({"message": {
                "token": "tok",
                "notification": {"body": "2 new messages"},
                "data": {"conversation_id": "dm:alice:bob", "seq": "7", "count": "2", "mention": "none", "is_group": "false"},
                "android": {"collapse_key": c, "priority": "high", "ttl": "3600s", "notification": {"tag": c}},
                "apns": {"headers": {"apns-collapse-id": c}, "payload": {"aps": {"thread-id": c}}},
            }})
        );
        let r =
            request("https://fcm.googleapis.com/", "proj-1", "AT", &push, &content, 60).unwrap();
        assert_eq!(r.uri(), "https://fcm.googleapis.com/v1/projects/proj-1/messages:send");
        assert_eq!(r.headers()["authorization"], "Bearer AT");
    }

    #[test]
    fn malformed_tokens_are_never_sent() {
        let content = Content { title: String::new(), body: "x".into() };
        for bad in ["", "a b", "a\"b\n"] {
            let mut push = Push::single(sample("g:1", 1));
            push.latest.target = Target::Fcm { token: bad.into() };
            assert!(matches!(
                request("https://h", "p", "t", &push, &content, 1),
                Err(Outcome::InvalidToken { .. })
            ));
        }
    }

    fn error(code: u16, status: &str, details: serde_json::Value, message: &str) -> Outcome {
        let body = json!({"error": {"code": code, "message": message, "status": status, "details": details}});
        classify(
            StatusCode::from_u16(code).unwrap(),
            &http::HeaderMap::new(),
            body.to_string().as_bytes(),
        )
    }

    #[test]
    fn answers_are_classified_as_the_v1_docs_describe() {
        let fcm = |c: &str| json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c}]);
        assert_eq!(
            classify(
                StatusCode::OK,
                &http::HeaderMap::new(),
                br#"{"name":"projects/p/messages/1"}"#
            ),
            Outcome::Delivered
        );
        assert!(matches!(
            error(404, "NOT_FOUND", fcm("UNREGISTERED"), "Requested entity was not found."),
            Outcome::InvalidToken { .. }
        ));
        assert!(matches!(
            error(403, "PERMISSION_DENIED", fcm("SENDER_ID_MISMATCH"), ""),
            Outcome::InvalidToken { .. }
        ));
        let token_violation = json!([
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"},
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]},
        ]);
        assert!(matches!(
            error(
                400,
                "INVALID_ARGUMENT",
                token_violation,
                "The registration token is not a valid FCM registration token"
            ),
            Outcome::InvalidToken { .. }
        ));
        assert!(matches!(
            error(
                400,
                "INVALID_ARGUMENT",
                fcm("INVALID_ARGUMENT"),
                "Invalid JSON payload received."
            ),
            Outcome::Failed { .. }
        ));
        assert!(matches!(
            error(429, "RESOURCE_EXHAUSTED", fcm("QUOTA_EXCEEDED"), ""),
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            error(503, "UNAVAILABLE", fcm("UNAVAILABLE"), ""),
            Outcome::Retryable { .. }
        ));
        assert!(matches!(error(401, "UNAUTHENTICATED", json!([]), ""), Outcome::Failed { .. }));
        // A 404 that does not say UNREGISTERED (e.g. a wrong project id) is not the device's fault.
        assert!(matches!(
            error(404, "NOT_FOUND", json!([]), "Requested entity was not found."),
            Outcome::Failed { .. }
        ));
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", "4".parse().unwrap());
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &h, b"not json"),
            Outcome::Retryable {
                reason: "503".into(),
                retry_after: Some(std::time::Duration::from_secs(4))
            }
        );
    }
}
