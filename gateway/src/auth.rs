//! Login tokens: compact JWTs (RFC 7519 / RFC 7515) signed with HS256 (a shared secret) or
//! EdDSA (Ed25519: gateways hold only the public key), so an operator's existing auth service
//! can mint them. Claims: `sub` = user id, `did` = device id, `exp` (required), `nbf`, `iat`,
//! `iss`, `aud` (optional) in Unix seconds; the exact rules are in docs/PROTOCOL.md "Tokens".
//!
//! - [`TokenKey`]: an HS256 key (verify and mint), with its key file.
//! - [`Ed25519Signer`] / [`VerifyKey::ed25519_public`]: an EdDSA key pair's halves.
//! - [`Verifier`]: the gateway's key set (selected by the header's `kid`) and claim rules.
//!
//! The code is our own (about 300 lines over the RustCrypto `hmac`/`sha2` and `ed25519-dalek`
//! primitives) rather than the `jsonwebtoken` crate: see docs/DEPLOYMENT.md "Tokens and keys".

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tern_proto::session::server::{AuthError, Authenticator, Identity, Verified};

mod verify;

pub use verify::{DEFAULT_LEEWAY_SECS, MAX_EXP_SECS, Rules, Verifier, VerifyKey};

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, in bytes (a larger one is refused before any parsing).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Shortest HS256 key accepted, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_KEY_BYTES: usize = 32;

/// The claims Tern reads from a token (others are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Device id.
    pub did: String,
    /// Expiry, Unix seconds (an integer).
    pub exp: i64,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issuer (checked against `auth.issuer` when configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience (must contain `auth.audience` when configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

impl Claims {
    /// Claims for `user` on `device`, issued at `now_unix_secs`, valid for `ttl_secs`.
    pub fn new(user: &str, device: &str, now_unix_secs: i64, ttl_secs: i64) -> Self {
        Self {
            sub: user.to_owned(),
            did: device.to_owned(),
            exp: now_unix_secs.saturating_add(ttl_secs),
            iat: Some(now_unix_secs),
            nbf: None,
            iss: None,
            aud: None,
        }
    }
}

/// The `aud` claim: one string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "tern"`.
    One(String),
    /// `"aud": ["tern", "other"]`.
    Many(Vec<String>),
}

impl Audience {
    /// Whether `name` is (one of) the audience.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Audience::One(a) => a == name,
            Audience::Many(all) => all.iter().any(|a| a == name),
        }
    }
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
    /// The key text is not a valid key.
    #[error("invalid key: {0}")]
    Invalid(String),
    /// The OS random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

/// An HS256 signing and verification key: the secret bytes, and the `kid` it is known by.
#[derive(Clone)]
pub struct TokenKey {
    secret: Vec<u8>,
    kid: Option<String>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey(kid {:?}, ..)", self.kid)
    }
}

impl TokenKey {
    /// A key from raw secret bytes (at least [`MIN_KEY_BYTES`]).
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyError::Invalid(format!(
                "HS256 key is {} bytes; it needs at least {MIN_KEY_BYTES}",
                secret.len()
            )));
        }
        Ok(Self { secret: secret.to_vec(), kid: None })
    }

    /// A key from its base64 text (standard or URL-safe alphabet, padding optional, surrounding
    /// whitespace ignored), the form used in config files and key files. The key is the
    /// decoded bytes (at least [`MIN_KEY_BYTES`]), not the text.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Self::from_secret(&decode_base64_text(text)?)
    }

    /// The same key known by `kid` (minted tokens carry it in their header).
    pub fn with_kid(mut self, kid: Option<String>) -> Self {
        self.kid = kid.filter(|k| !k.is_empty());
        self
    }

    /// The key's id, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// A fresh random 32-byte key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self { secret, kid: None })
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

    /// Signs `claims` into a compact JWT (header `{"alg":"HS256","typ":"JWT"}`, plus `kid`).
    pub fn mint(&self, claims: &Claims) -> String {
        mint_with("HS256", self.kid.as_deref(), claims, |input| {
            self.mac(input).finalize().into_bytes().to_vec()
        })
    }

    /// Mints a token for `user` on `device` valid for `ttl_secs` from `now_unix_secs`.
    pub fn mint_for(&self, user: &str, device: &str, now_unix_secs: i64, ttl_secs: i64) -> String {
        self.mint(&Claims::new(user, device, now_unix_secs, ttl_secs))
    }

    /// Verifies a token with this key alone under the default [`Rules`] (leeway
    /// [`DEFAULT_LEEWAY_SECS`], no issuer or audience), at `now_unix_ms`.
    pub fn verify(&self, token: &str, now_unix_ms: i64) -> Result<Claims, AuthError> {
        Verifier::from(self.clone()).verify_claims(token, now_unix_ms)
    }

    pub(crate) fn mac(&self, data: &[u8]) -> HmacSha256 {
        // ok: HMAC accepts keys of any length.
        let mut mac = HmacSha256::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!());
        mac.update(data);
        mac
    }
}

impl Authenticator for TokenKey {
    fn authenticate(&self, token: &str, now_unix_ms: i64) -> Result<Identity, AuthError> {
        let claims = self.verify(token, now_unix_ms)?;
        Ok(Identity { user_id: claims.sub, device_id: claims.did })
    }

    fn verify(&self, token: &str, now_unix_ms: i64) -> Result<Verified, AuthError> {
        Authenticator::verify(&Verifier::from(self.clone()), token, now_unix_ms)
    }
}

/// An Ed25519 private key that mints EdDSA tokens (for `tern token` and auth services; a
/// gateway needs only [`Ed25519Signer::verify_key`]).
#[derive(Clone)]
pub struct Ed25519Signer {
    key: ed25519_dalek::SigningKey,
    kid: Option<String>,
}

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ed25519Signer(kid {:?}, ..)", self.kid)
    }
}

/// DER prefix of a PKCS#8 Ed25519 private key (RFC 8410), before the 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER prefix of an SPKI Ed25519 public key (RFC 8410), before the 32 key bytes.
pub(crate) const SPKI_ED25519_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

impl Ed25519Signer {
    /// A signer from a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self { key: ed25519_dalek::SigningKey::from_bytes(seed), kid: None }
    }

    /// A signer from text: a PEM `PRIVATE KEY` (PKCS#8, as `openssl genpkey -algorithm
    /// ed25519` writes), or the base64 of the 32-byte seed.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let seed = key_bytes(text, "PRIVATE KEY", &PKCS8_ED25519_PREFIX)?;
        Ok(Self::from_seed(&seed))
    }

    /// The same key known by `kid`.
    pub fn with_kid(mut self, kid: Option<String>) -> Self {
        self.kid = kid.filter(|k| !k.is_empty());
        self
    }

    /// The public half, as a gateway's verification key (with the same `kid`).
    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey::ed25519(self.key.verifying_key()).with_id(self.kid.clone())
    }

    /// The public key as base64 text (what `auth.keys[].key` takes).
    pub fn public_base64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().as_bytes())
    }

    /// Signs `claims` into a compact JWT (header `{"alg":"EdDSA","typ":"JWT"}`, plus `kid`).
    pub fn mint(&self, claims: &Claims) -> String {
        use ed25519_dalek::Signer as _;
        mint_with("EdDSA", self.kid.as_deref(), claims, |input| {
            self.key.sign(input).to_bytes().to_vec()
        })
    }

    /// Mints a token for `user` on `device` valid for `ttl_secs` from `now_unix_secs`.
    pub fn mint_for(&self, user: &str, device: &str, now_unix_secs: i64, ttl_secs: i64) -> String {
        self.mint(&Claims::new(user, device, now_unix_secs, ttl_secs))
    }
}

#[derive(Serialize)]
struct MintHeader<'a> {
    alg: &'a str,
    typ: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

fn mint_with(
    alg: &str,
    kid: Option<&str>,
    claims: &Claims,
    sign: impl Fn(&[u8]) -> Vec<u8>,
) -> String {
    let header = MintHeader { alg, typ: "JWT", kid };
    // ok: serializing structs of strings and integers cannot fail.
    let header = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
    let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let sig = B64.encode(sign(signing_input.as_bytes()));
    format!("{signing_input}.{sig}")
}

/// Decodes base64 key text: standard or URL-safe alphabet, padding optional, surrounding
/// whitespace ignored.
pub(crate) fn decode_base64_text(text: &str) -> Result<Vec<u8>, KeyError> {
    let text = text.trim().trim_end_matches('=');
    B64.decode(text.replace('+', "-").replace('/', "_"))
        .map_err(|e| KeyError::Invalid(format!("not base64: {e}")))
}

/// The 32 key bytes of Ed25519 key text: PEM with `label` and a DER body of `prefix` + 32
/// bytes, or base64 of the 32 bytes alone.
pub(crate) fn key_bytes(text: &str, label: &str, prefix: &[u8]) -> Result<[u8; 32], KeyError> {
    let bytes = if text.contains("-----BEGIN") {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let body = text
            .split_once(&begin)
            .and_then(|(_, rest)| rest.split_once(&end))
            .map(|(body, _)| body)
            .ok_or_else(|| KeyError::Invalid(format!("expected a PEM {label}")))?;
        let der = decode_base64_text(&body.split_whitespace().collect::<String>())?;
        der.strip_prefix(prefix)
            .ok_or_else(|| KeyError::Invalid(format!("the PEM {label} is not an Ed25519 key")))?
            .to_vec()
    } else {
        decode_base64_text(text)?
    };
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        KeyError::Invalid(format!("an Ed25519 key is 32 bytes, this one is {}", bytes.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::from_secret(&[7u8; 32]).unwrap()
    }

    const LEEWAY_MS: i64 = DEFAULT_LEEWAY_SECS as i64 * 1000;

    #[test]
    fn mint_then_verify() {
        let t = key().mint_for("alice", "phone", 1_000, 60);
        let c = key().verify(&t, 1_000_000).unwrap();
        assert_eq!((c.sub.as_str(), c.did.as_str(), c.exp), ("alice", "phone", 1_060));
        assert_eq!(c.iat, Some(1_000));
    }

    #[test]
    fn expired_and_tampered_and_wrong_key_are_refused() {
        let t = key().mint_for("alice", "phone", 1_000, 60);
        assert!(key().verify(&t, 1_060_000 + LEEWAY_MS - 1).is_ok(), "within the leeway");
        assert_eq!(key().verify(&t, 1_060_000 + LEEWAY_MS), Err(AuthError::Expired));
        let other = TokenKey::from_secret(&[8u8; 32]).unwrap();
        assert!(matches!(other.verify(&t, 1_000_000), Err(AuthError::BadToken(_))));
        // Swap the claims for bob's while keeping alice's signature.
        let bob = key().mint_for("bob", "phone", 1_000, 60);
        let forged: Vec<&str> = t.split('.').collect();
        let bob_parts: Vec<&str> = bob.split('.').collect();
        let forged = format!("{}.{}.{}", forged[0], bob_parts[1], forged[2]);
        assert!(matches!(key().verify(&forged, 1_000_000), Err(AuthError::BadToken(_))));
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

    #[test]
    fn hs256_key_text_is_base64_of_the_key_bytes() {
        // 32 bytes 0..32, in every accepted spelling of its base64.
        let bytes: Vec<u8> = (0u8..32).collect();
        let std_padded = STANDARD.encode(&bytes);
        assert!(std_padded.ends_with('='));
        let spellings = [
            std_padded.clone(),
            std_padded.trim_end_matches('=').to_owned(),
            B64.encode(&bytes),
            format!("  {std_padded}\n"),
        ];
        let reference = TokenKey::from_secret(&bytes).unwrap();
        let token = reference.mint_for("alice", "phone", 1_000, 60);
        for text in spellings {
            let k = TokenKey::from_base64(&text).unwrap();
            assert!(k.verify(&token, 1_000_000).is_ok(), "{text:?}");
        }
        // The text itself is not the key: HMAC with the text's bytes does not verify.
        let text_as_key = TokenKey::from_secret(std_padded.as_bytes()).unwrap();
        assert!(text_as_key.verify(&token, 1_000_000).is_err());
        // 31 bytes is too short.
        assert!(TokenKey::from_base64(&STANDARD.encode([1u8; 31])).is_err());
    }

    #[test]
    fn ed25519_keys_from_pem_and_base64() {
        // openssl genpkey -algorithm ed25519 / openssl pkey -pubout, RFC 8410 test vector.
        let private = "-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
            -----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\n\
            MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
            -----END PUBLIC KEY-----\n";
        let signer = Ed25519Signer::from_text(private).unwrap();
        let from_pem = VerifyKey::ed25519_public(public).unwrap();
        let from_b64 = VerifyKey::ed25519_public(&signer.public_base64()).unwrap();
        let token = signer.mint_for("alice", "phone", 1_000, 60);
        for vk in [from_pem, from_b64, signer.verify_key()] {
            let v = Verifier::new(vec![vk], Rules::default()).unwrap();
            assert_eq!(v.verify_claims(&token, 1_000_000).unwrap().sub, "alice");
        }
        let seed_b64 = STANDARD.encode([9u8; 32]);
        assert!(Ed25519Signer::from_text(&seed_b64).is_ok());
        assert!(Ed25519Signer::from_text(public).is_err(), "a public key is no private key");
        assert!(VerifyKey::ed25519_public(&STANDARD.encode([1u8; 31])).is_err());
    }
}
