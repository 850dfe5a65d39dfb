//! Token verification: the key set (selected by the header's `kid`), the signature (HS256 or
//! EdDSA), then the claim rules (ids, `exp`, `nbf`, `iat`, `iss`, `aud`, clock leeway).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::Mac;
use serde::Deserialize;
use tern_proto::ids::is_valid_id;
use tern_proto::session::server::{AuthError, Authenticator, Identity, Verified};

use super::{Claims, KeyError, MAX_TOKEN_BYTES, SPKI_ED25519_PREFIX, TokenKey, key_bytes};

/// Default clock-skew allowance, seconds (`auth.leeway_secs`).
pub const DEFAULT_LEEWAY_SECS: u32 = 30;
/// Largest `exp`, `nbf` or `iat` accepted: 9999-12-31T23:59:59Z. Larger values are refused
/// (BAD_TOKEN) rather than saturated.
pub const MAX_EXP_SECS: i64 = 253_402_300_799;

/// The claim rules beyond the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` must be it or an array containing it.
    pub audience: Option<String>,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`, seconds.
    pub leeway_secs: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Self { issuer: None, audience: None, leeway_secs: DEFAULT_LEEWAY_SECS }
    }
}

#[derive(Clone)]
enum KeyKind {
    Hs256(TokenKey),
    EdDsa(ed25519_dalek::VerifyingKey),
}

/// One verification key: HS256 secret or Ed25519 public key, and its `kid`.
#[derive(Clone)]
pub struct VerifyKey {
    id: Option<String>,
    kind: KeyKind,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyKey({} kid {:?})", self.alg(), self.id)
    }
}

impl From<TokenKey> for VerifyKey {
    fn from(key: TokenKey) -> Self {
        let id = key.kid.clone();
        Self { id, kind: KeyKind::Hs256(key) }
    }
}

impl VerifyKey {
    /// An Ed25519 public key.
    pub fn ed25519(key: ed25519_dalek::VerifyingKey) -> Self {
        Self { id: None, kind: KeyKind::EdDsa(key) }
    }

    /// An Ed25519 public key from text: a PEM `PUBLIC KEY` (SPKI, as `openssl pkey -pubout`
    /// writes), or the base64 of the 32 key bytes.
    pub fn ed25519_public(text: &str) -> Result<Self, KeyError> {
        let bytes = key_bytes(text, "PUBLIC KEY", &SPKI_ED25519_PREFIX)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|e| KeyError::Invalid(format!("not an Ed25519 public key: {e}")))?;
        Ok(Self::ed25519(key))
    }

    /// The same key known by `id` (`None` or "": no id).
    pub fn with_id(mut self, id: Option<String>) -> Self {
        self.id = id.filter(|k| !k.is_empty());
        if let KeyKind::Hs256(k) = &mut self.kind {
            k.kid = self.id.clone();
        }
        self
    }

    /// The key's id.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The JWS `alg` this key verifies: `HS256` or `EdDSA`.
    pub fn alg(&self) -> &'static str {
        match self.kind {
            KeyKind::Hs256(_) => "HS256",
            KeyKind::EdDsa(_) => "EdDSA",
        }
    }

    fn check(&self, signing_input: &[u8], sig: &[u8]) -> bool {
        match &self.kind {
            KeyKind::Hs256(k) => k.mac(signing_input).verify_slice(sig).is_ok(),
            KeyKind::EdDsa(k) => ed25519_dalek::Signature::from_slice(sig)
                .is_ok_and(|s| k.verify_strict(signing_input, &s).is_ok()),
        }
    }
}

/// The gateway's token verifier: a non-empty key set and the claim [`Rules`].
///
/// Key selection: a token whose header has `kid` is checked with the key of that id only
/// (unknown id: BAD_TOKEN); a token without `kid` with the first key (the default key). The
/// header's `alg` must be the selected key's algorithm. One signature check per token.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Vec<VerifyKey>,
    rules: Rules,
}

impl From<TokenKey> for Verifier {
    fn from(key: TokenKey) -> Self {
        Self { keys: vec![key.into()], rules: Rules::default() }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

impl Verifier {
    /// A verifier over `keys` (the first is the default key). Every key but the first needs an
    /// id, and ids are unique.
    pub fn new(keys: Vec<VerifyKey>, rules: Rules) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Invalid("no verification key".into()));
        }
        for (i, k) in keys.iter().enumerate() {
            match &k.id {
                None if i > 0 => {
                    return Err(KeyError::Invalid(format!(
                        "key {} ({}) needs an id: only the first key serves tokens without kid",
                        i + 1,
                        k.alg()
                    )));
                }
                Some(id) if keys[..i].iter().any(|o| o.id.as_deref() == Some(id)) => {
                    return Err(KeyError::Invalid(format!("two keys have the id {id:?}")));
                }
                _ => {}
            }
        }
        Ok(Self { keys, rules })
    }

    /// The keys, default first.
    pub fn keys(&self) -> &[VerifyKey] {
        &self.keys
    }

    /// The claim rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Verifies a token's signature and claims at `now_unix_ms`.
    pub fn verify_claims(&self, token: &str, now_unix_ms: i64) -> Result<Claims, AuthError> {
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
        if header.crit.is_some() {
            return Err(bad("crit header parameters are not supported"));
        }
        if header.alg != "HS256" && header.alg != "EdDSA" {
            return Err(bad("unsupported alg (HS256 and EdDSA only)"));
        }
        let key = match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.id.as_deref() == Some(kid.as_str()))
                .ok_or_else(|| bad("unknown kid"))?,
            // ok: `new` refuses an empty key set.
            None => self.keys.first().ok_or_else(|| bad("no key"))?,
        };
        if key.alg() != header.alg {
            return Err(bad("alg does not match the key"));
        }
        let sig = B64.decode(s).map_err(|_| bad("signature is not base64url"))?;
        let signing_input_len = h.len() + 1 + p.len();
        if !key.check(&token.as_bytes()[..signing_input_len], &sig) {
            return Err(bad("signature mismatch"));
        }
        let claims: Claims = decode_json(p).ok_or_else(|| {
            bad("unreadable claims (sub, did: strings; exp: integer; nbf, iat: integers)")
        })?;
        self.check_claims(&claims, now_unix_ms)?;
        Ok(claims)
    }

    fn check_claims(&self, c: &Claims, now_unix_ms: i64) -> Result<(), AuthError> {
        let bad = |m: &str| Err(AuthError::BadToken(m.to_owned()));
        if !is_valid_id(&c.sub) {
            return bad("sub is not a valid user id");
        }
        if !is_valid_id(&c.did) {
            return bad("did is not a valid device id");
        }
        let out_of_range = |t: i64| !(-MAX_EXP_SECS..=MAX_EXP_SECS).contains(&t);
        if out_of_range(c.exp) || c.nbf.is_some_and(out_of_range) || c.iat.is_some_and(out_of_range)
        {
            return bad("exp, nbf or iat out of range");
        }
        let leeway_ms = i64::from(self.rules.leeway_secs) * 1000;
        // Within range, seconds * 1000 and the additions below cannot overflow.
        if c.nbf.is_some_and(|nbf| nbf * 1000 > now_unix_ms.saturating_add(leeway_ms)) {
            return bad("token not valid yet (nbf)");
        }
        if c.iat.is_some_and(|iat| iat * 1000 > now_unix_ms.saturating_add(leeway_ms)) {
            return bad("token issued in the future (iat)");
        }
        if let Some(issuer) = &self.rules.issuer
            && c.iss.as_deref() != Some(issuer.as_str())
        {
            return bad("wrong issuer (iss)");
        }
        if let Some(audience) = &self.rules.audience
            && !c.aud.as_ref().is_some_and(|a| a.contains(audience))
        {
            return bad("wrong audience (aud)");
        }
        if c.exp * 1000 + leeway_ms <= now_unix_ms {
            return Err(AuthError::Expired);
        }
        Ok(())
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Option<T> {
    serde_json::from_slice(&B64.decode(part).ok()?).ok()
}

impl Authenticator for Verifier {
    fn authenticate(&self, token: &str, now_unix_ms: i64) -> Result<Identity, AuthError> {
        let claims = self.verify_claims(token, now_unix_ms)?;
        Ok(Identity { user_id: claims.sub, device_id: claims.did })
    }

    fn verify(&self, token: &str, now_unix_ms: i64) -> Result<Verified, AuthError> {
        let claims = self.verify_claims(token, now_unix_ms)?;
        Ok(Verified {
            identity: Identity { user_id: claims.sub, device_id: claims.did },
            // Within MAX_EXP_SECS: no overflow.
            expires_at_ms: Some(claims.exp * 1000),
            leeway_ms: i64::from(self.rules.leeway_secs) * 1000,
            // Within MAX_EXP_SECS: no overflow.
            issued_at_ms: claims.iat.map(|iat| iat * 1000),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Audience, Ed25519Signer};
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const NOW_MS: i64 = NOW * 1000;

    fn hs(byte: u8, kid: Option<&str>) -> TokenKey {
        TokenKey::from_secret(&[byte; 32]).unwrap().with_kid(kid.map(str::to_owned))
    }

    fn claims() -> Claims {
        Claims::new("alice", "phone", NOW, 600)
    }

    fn raw(header: &str, payload: &str, key: &TokenKey) -> String {
        let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let sig = B64.encode(key.mac(input.as_bytes()).finalize().into_bytes());
        format!("{input}.{sig}")
    }

    fn is_bad(r: Result<Claims, AuthError>, why: &str) {
        assert!(matches!(&r, Err(AuthError::BadToken(m)) if m.contains(why)), "{why}: {r:?}");
    }

    #[test]
    fn kid_selects_the_key_and_no_kid_means_the_first() {
        let (k1, k2) = (hs(1, Some("k1")), hs(2, Some("k2")));
        let ed = Ed25519Signer::from_seed(&[3; 32]).with_kid(Some("ed".into()));
        let keys = vec![k1.clone().into(), k2.clone().into(), ed.verify_key()];
        let v = Verifier::new(keys, Rules::default()).unwrap();
        for token in [k1.mint(&claims()), k2.mint(&claims()), ed.mint(&claims())] {
            assert!(v.verify_claims(&token, NOW_MS).is_ok(), "{token}");
        }
        // No kid: the first key only.
        assert!(v.verify_claims(&hs(1, None).mint(&claims()), NOW_MS).is_ok());
        is_bad(v.verify_claims(&hs(2, None).mint(&claims()), NOW_MS), "signature mismatch");
        // Unknown kid, and a known kid with another key's signature.
        is_bad(v.verify_claims(&hs(1, Some("k9")).mint(&claims()), NOW_MS), "unknown kid");
        is_bad(v.verify_claims(&hs(1, Some("k2")).mint(&claims()), NOW_MS), "signature mismatch");
        // HS256 header naming the Ed25519 key: alg confusion refused before any check.
        is_bad(v.verify_claims(&hs(1, Some("ed")).mint(&claims()), NOW_MS), "alg does not match");
    }

    #[test]
    fn key_set_rules() {
        assert!(Verifier::new(Vec::new(), Rules::default()).is_err());
        let two_without_id = vec![hs(1, None).into(), hs(2, None).into()];
        assert!(Verifier::new(two_without_id, Rules::default()).is_err());
        let same_id = vec![hs(1, Some("a")).into(), hs(2, Some("a")).into()];
        assert!(Verifier::new(same_id, Rules::default()).is_err());
    }

    #[test]
    fn nbf_iat_and_leeway() {
        let k = hs(1, None);
        let v = Verifier::from(k.clone());
        let at = |nbf: Option<i64>, iat: Option<i64>| {
            let c = Claims { nbf, iat, ..claims() };
            v.verify_claims(&k.mint(&c), NOW_MS)
        };
        assert!(at(Some(NOW + 30), None).is_ok(), "nbf within the 30 s leeway");
        is_bad(at(Some(NOW + 31), None), "nbf");
        assert!(at(None, Some(NOW + 30)).is_ok(), "iat within the leeway");
        is_bad(at(None, Some(NOW + 31)), "iat");
        is_bad(at(None, Some(MAX_EXP_SECS + 1)), "out of range");
        let strict =
            Verifier::new(vec![k.clone().into()], Rules { leeway_secs: 0, ..Rules::default() });
        let c = Claims { exp: NOW, ..claims() };
        assert_eq!(strict.unwrap().verify_claims(&k.mint(&c), NOW_MS), Err(AuthError::Expired));
        assert!(v.verify_claims(&k.mint(&c), NOW_MS).is_ok(), "exp now, within the leeway");
    }

    #[test]
    fn exp_must_be_an_integer_in_range_and_ids_are_required() {
        let k = hs(1, None);
        let v = Verifier::from(k.clone());
        let h = r#"{"alg":"HS256"}"#;
        for payload in [
            r#"{"sub":"alice","did":"phone","exp":1700000600.5}"#,
            r#"{"sub":"alice","did":"phone","exp":1.7e9}"#,
            r#"{"sub":"alice","did":"phone","exp":"1700000600"}"#,
            r#"{"sub":"alice","did":"phone","exp":99999999999999999999}"#,
            r#"{"sub":"alice","did":"phone"}"#,
            r#"{"did":"phone","exp":1700000600}"#,
            r#"{"sub":"alice","exp":1700000600}"#,
            r#"{"sub":"alice","did":"phone","exp":1700000600,"nbf":1.5}"#,
            r#"{"sub":"alice","did":"phone","exp":1700000600,"exp":1700000700}"#,
        ] {
            is_bad(v.verify_claims(&raw(h, payload, &k), NOW_MS), "unreadable claims");
        }
        let huge = r#"{"sub":"alice","did":"phone","exp":9223372036854775807}"#;
        is_bad(v.verify_claims(&raw(h, huge, &k), NOW_MS), "out of range");
        let ok = r#"{"sub":"alice","did":"phone","exp":1700000600,"jti":"x","scope":["a"]}"#;
        assert!(v.verify_claims(&raw(h, ok, &k), NOW_MS).is_ok(), "other claims are ignored");
        let crit = r#"{"alg":"HS256","crit":["exp"]}"#;
        is_bad(v.verify_claims(&raw(crit, ok, &k), NOW_MS), "crit");
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let k = hs(1, None);
        let rules = Rules {
            issuer: Some("https://auth.example".into()),
            audience: Some("tern".into()),
            ..Rules::default()
        };
        let v = Verifier::new(vec![k.clone().into()], rules).unwrap();
        let with = |iss: Option<&str>, aud: Option<Audience>| {
            let c = Claims { iss: iss.map(str::to_owned), aud, ..claims() };
            v.verify_claims(&k.mint(&c), NOW_MS)
        };
        let one = || Some(Audience::One("tern".into()));
        assert!(with(Some("https://auth.example"), one()).is_ok());
        let many = Some(Audience::Many(vec!["x".into(), "tern".into()]));
        assert!(with(Some("https://auth.example"), many).is_ok());
        is_bad(with(None, one()), "issuer");
        is_bad(with(Some("https://evil.example"), one()), "issuer");
        is_bad(with(Some("https://auth.example"), None), "audience");
        is_bad(with(Some("https://auth.example"), Some(Audience::One("x".into()))), "audience");
        // Not configured: iss and aud are not looked at.
        let lax = Verifier::from(k.clone());
        let c =
            Claims { iss: Some("any".into()), aud: Some(Audience::One("x".into())), ..claims() };
        assert!(lax.verify_claims(&k.mint(&c), NOW_MS).is_ok());
    }

    #[test]
    fn authenticator_reports_exp_and_leeway() {
        let k = hs(1, None);
        let v = Verifier::from(k.clone());
        let got = Authenticator::verify(&v, &k.mint(&claims()), NOW_MS).unwrap();
        assert_eq!(got.expires_at_ms, Some((NOW + 600) * 1000));
        assert_eq!(got.leeway_ms, 30_000);
        assert_eq!(got.identity.user_id, "alice");
    }

    #[test]
    fn eddsa_tampering_and_non_canonical_signatures_are_refused() {
        let ed = Ed25519Signer::from_seed(&[5; 32]);
        let v = Verifier::new(vec![ed.verify_key()], Rules::default()).unwrap();
        let t = ed.mint(&claims());
        assert!(v.verify_claims(&t, NOW_MS).is_ok());
        let other = Ed25519Signer::from_seed(&[6; 32]).mint(&claims());
        is_bad(v.verify_claims(&other, NOW_MS), "signature mismatch");
        let (input, _) = t.rsplit_once('.').unwrap();
        is_bad(v.verify_claims(&format!("{input}.{}", B64.encode([0u8; 64])), NOW_MS), "mismatch");
        is_bad(v.verify_claims(&format!("{input}.{}", B64.encode([0u8; 63])), NOW_MS), "mismatch");
        // An HS256 token while the only key is Ed25519 (the public key as an HMAC secret).
        is_bad(v.verify_claims(&hs(1, None).mint(&claims()), NOW_MS), "alg does not match");
    }
}
