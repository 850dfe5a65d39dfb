//! Google's OAuth2 token endpoint as a service account uses it (RFC 7523 JWT bearer grant):
//! `POST /token` with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`,
//! the assertion an RS256 JWT (`{alg: RS256, typ: JWT}`) from the account's `client_email`, its
//! `aud` this endpoint, its `scope` including Firebase messaging, issued within five minutes
//! and valid at most an hour, signed by the account's key. It issues opaque access tokens that
//! the FCM imitation then requires; errors are OAuth's `{"error": "..."}` bodies.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use serde_json::json;

use super::http::{Handler, Incoming, Reply, form, jwt_parts, reply};
use super::{lock, unix_now};

/// The scope FCM HTTP v1 needs.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Google's side: the service account, the tokens issued.
pub(crate) struct Google {
    pub client_email: String,
    pub public_key: Vec<u8>,
    /// This endpoint's URL, the assertion's required `aud` (set once it listens).
    pub token_uri: OnceLock<String>,
    pub issued: Mutex<HashSet<String>>,
    pub token_requests: AtomicUsize,
    pub next: AtomicU64,
    /// `expires_in` of the first token issued (later ones: an hour).
    pub first_expires_in: u64,
}

impl Google {
    pub(crate) fn issued(&self, token: &str) -> bool {
        lock(&self.issued).contains(token)
    }
}

fn oauth_error(status: u16, error: &str) -> Reply {
    reply(status, json!({ "error": error }).to_string())
}

pub(crate) fn token_endpoint(g: Arc<Google>) -> Handler {
    Arc::new(move |seen: Incoming| {
        g.token_requests.fetch_add(1, Ordering::Relaxed);
        if seen.method != http::Method::POST
            || seen.uri.path() != "/token"
            || seen.header("content-type") != Some("application/x-www-form-urlencoded")
        {
            return oauth_error(400, "invalid_request");
        }
        let fields = form(&seen.body);
        let field = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if field("grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return oauth_error(400, "unsupported_grant_type");
        }
        let Some(jwt) = field("assertion").and_then(jwt_parts) else {
            return oauth_error(400, "invalid_grant");
        };
        let claims = &jwt.claims;
        let (iat, exp) = (claims["iat"].as_u64().unwrap_or(0), claims["exp"].as_u64().unwrap_or(0));
        let scopes: Vec<&str> = claims["scope"].as_str().unwrap_or("").split(' ').collect();
        let audience = g.token_uri.get().map(String::as_str).unwrap_or("");
        let valid = jwt.header == json!({ "alg": "RS256", "typ": "JWT" })
            && claims["iss"] == g.client_email.as_str()
            && claims["aud"] == audience
            && scopes.contains(&SCOPE)
            && iat.abs_diff(unix_now()) < 300
            && exp > iat
            && exp - iat <= 3600
            && UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &g.public_key)
                .verify(jwt.signed.as_bytes(), &jwt.signature)
                .is_ok();
        if !valid {
            return oauth_error(400, "invalid_grant");
        }
        let n = g.next.fetch_add(1, Ordering::Relaxed);
        let token = format!("ya29.test-{n}");
        lock(&g.issued).insert(token.clone());
        let expires_in = if n == 1 { g.first_expires_in } else { 3600 };
        let body =
            json!({ "access_token": token, "expires_in": expires_in, "token_type": "Bearer" });
        reply(200, body.to_string())
    })
}
