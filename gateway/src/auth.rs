//! Login tokens: JWT with HS256 (RFC 7519 / RFC 7515), so an operator's existing auth service can
//! mint tokens with the shared key. Claims: `sub` = user id, `did` = device id, `exp` and `iat`
//! in Unix seconds.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tern_proto::ids::is_valid_id;
use tern_proto::session::server::{AuthError, Authenticator, Identity};

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, in bytes (a larger one is refused before any parsing).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Shortest HS256 key accepted, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_KEY_BYTES: usize = 32;

/// The claims Tern reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Device id.
    pub did: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    #[serde(default)]
    pub iat: i64,
}

/// Why a key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The key is too short or not valid base64.
    #[error("invalid HS256 key: {0}")]
    Invalid(String),
    /// The OS random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

/// An HS256 signing and verification key.
#[derive(Clone)]
pub struct TokenKey {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key from raw secret bytes (at least [`MIN_KEY_BYTES`]).
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyError::Invalid(format!(
                "key is {} bytes; HS256 needs at least {MIN_KEY_BYTES}",
                secret.len()
            )));
        }
        Ok(Self { secret: secret.to_vec() })
    }

    /// A key from its base64 text (standard or URL-safe alphabet, padding optional), the form
    /// used in config files and key files.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim().trim_end_matches('=');
        let bytes = B64
            .decode(text.replace('+', "-").replace('/', "_"))
            .map_err(|e| KeyError::Invalid(format!("not base64: {e}")))?;
        Self::from_secret(&bytes)
    }

    /// A fresh random 32-byte key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self { secret })
    }

    /// The key as URL-safe base64 text.
    pub fn to_base64(&self) -> String {
        B64.encode(&self.secret)
    }

    /// Loads the key from `path`, or creates it there (mode 0600) with a fresh random key when
    /// the file does not exist. Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((Self::from_base64(&text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = match opts.open(path) {
                    Ok(f) => f,
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let text = std::fs::read_to_string(path).map_err(io)?;
                        return Ok((Self::from_base64(&text)?, false));
                    }
                    Err(e) => return Err(io(e)),
                };
                f.write_all(format!("{}\n", key.to_base64()).as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok((key, true))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Signs `claims` into a compact JWT.
    pub fn mint(&self, claims: &Claims) -> String {
        let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        // ok: serializing a struct of strings and integers cannot fail.
        let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let sig = B64.encode(self.mac(signing_input.as_bytes()).finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    /// Mints a token for `user` on `device` valid for `ttl_secs` from `now_unix_secs`.
    pub fn mint_for(&self, user: &str, device: &str, now_unix_secs: i64, ttl_secs: i64) -> String {
        self.mint(&Claims {
            sub: user.to_owned(),
            did: device.to_owned(),
            iat: now_unix_secs,
            exp: now_unix_secs.saturating_add(ttl_secs),
        })
    }

    /// Verifies a token's signature and claims at `now_unix_ms`.
    pub fn verify(&self, token: &str, now_unix_ms: i64) -> Result<Claims, AuthError> {
        let bad = |m: &str| AuthError::BadToken(m.to_owned());
        if token.len() > MAX_TOKEN_BYTES {
            return Err(bad("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a compact JWT (three dot-separated parts)"));
        };
        let header: Header = decode_json(h).ok_or_else(|| bad("unreadable header"))?;
        if header.alg != "HS256" {
            return Err(bad("unsupported alg (only HS256)"));
        }
        let sig = B64.decode(s).map_err(|_| bad("signature is not base64url"))?;
        let signing_input_len = h.len() + 1 + p.len();
        self.mac(&token.as_bytes()[..signing_input_len])
            .verify_slice(&sig)
            .map_err(|_| bad("signature mismatch"))?;
        let claims: Claims = decode_json(p).ok_or_else(|| bad("unreadable claims"))?;
        if !is_valid_id(&claims.sub) {
            return Err(bad("sub is not a valid user id"));
        }
        if !is_valid_id(&claims.did) {
            return Err(bad("did is not a valid device id"));
        }
        if claims.exp.saturating_mul(1000) <= now_unix_ms {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        // ok: HMAC accepts keys of any length.
        let mut mac = HmacSha256::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!());
        mac.update(data);
        mac
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Option<T> {
    serde_json::from_slice(&B64.decode(part).ok()?).ok()
}

impl Authenticator for TokenKey {
    fn authenticate(&self, token: &str, now_unix_ms: i64) -> Result<Identity, AuthError> {
        let claims = self.verify(token, now_unix_ms)?;
        Ok(Identity { user_id: claims.sub, device_id: claims.did })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::from_secret(&[7u8; 32]).unwrap()
    }

    #[test]
    fn mint_then_verify() {
        let t = key().mint_for("alice", "phone", 1_000, 60);
        let c = key().verify(&t, 1_000_000).unwrap();
        assert_eq!((c.sub.as_str(), c.did.as_str(), c.exp), ("alice", "phone", 1_060));
    }

    #[test]
    fn expired_and_tampered_and_wrong_key_are_refused() {
        let t = key().mint_for("alice", "phone", 1_000, 60);
        assert_eq!(key().verify(&t, 1_060_000), Err(AuthError::Expired));
        let other = TokenKey::from_secret(&[8u8; 32]).unwrap();
        assert!(matches!(other.verify(&t, 0), Err(AuthError::BadToken(_))));
        // Swap the claims for bob's while keeping alice's signature.
        let bob = key().mint_for("bob", "phone", 1_000, 60);
        let forged: Vec<&str> = t.split('.').collect();
        let bob_parts: Vec<&str> = bob.split('.').collect();
        let forged = format!("{}.{}.{}", forged[0], bob_parts[1], forged[2]);
        assert!(matches!(key().verify(&forged, 0), Err(AuthError::BadToken(_))));
        for junk in ["", "a.b", "a.b.c.d", "....", &"x".repeat(MAX_TOKEN_BYTES + 1)] {
            assert!(matches!(key().verify(junk, 0), Err(AuthError::BadToken(_))), "{junk:?}");
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = B64.encode(br#"{"sub":"alice","did":"d","exp":99999999999}"#);
        let t = format!("{header}.{payload}.");
        assert!(matches!(key().verify(&t, 0), Err(AuthError::BadToken(_))));
    }

    #[test]
    fn key_file_is_created_once_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("tern-key-{}", std::process::id()));
        let path = dir.join("jwt.key");
        let _ = std::fs::remove_file(&path);
        let (k1, created) = TokenKey::load_or_create(&path).unwrap();
        assert!(created);
        let (k2, created) = TokenKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.to_base64(), k2.to_base64());
        assert!(TokenKey::from_base64("c2hvcnQ").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
