//! Fuzz target bodies of this crate, shared by cargo-fuzz (`fuzz/`) and the stable corpus replay
//! test (`tests/fuzz_corpus.rs`).
//!
//! Each function takes arbitrary bytes, drives one peer-reachable entry point and panics only
//! when an invariant breaks (that panic is the finding).

mod connection;
mod quic;

pub use connection::connection;
pub use quic::{
    FUZZ_QUIC_CERT_PEM, FUZZ_QUIC_KEY_PEM, FUZZ_SERVER_ADDR, MAX_TRANSMIT, client_initial,
    quic_datagram,
};
use tern_proto::ids::is_valid_id;
use tern_proto::session::server::{AuthError, Authenticator};

use crate::auth::{
    Audience, Claims, DEFAULT_LEEWAY_SECS, Ed25519Signer, MAX_EXP_SECS, MAX_TOKEN_BYTES, Rules,
    TokenKey, Verifier, VerifyKey,
};

/// The default HS256 secret of the `token` target's key set (kid `hs1`).
pub const FUZZ_KEY_SECRET: [u8; 32] = [0x42; 32];
/// The second HS256 secret of the key set (kid `hs2`).
pub const FUZZ_SECOND_KEY_SECRET: [u8; 32] = [0x44; 32];
/// The Ed25519 seed of the key set (kid `ed1`; the gateway holds only its public half).
pub const FUZZ_ED25519_SEED: [u8; 32] = [0x45; 32];
/// A different secret: nothing it signs may verify under the key set.
pub const FUZZ_OTHER_KEY_SECRET: [u8; 32] = [0x43; 32];
/// The issuer and audience the strict verifier requires.
pub const FUZZ_ISSUER: &str = "fuzz-issuer";
/// See [`FUZZ_ISSUER`].
pub const FUZZ_AUDIENCE: &str = "tern";
/// The clock the `token` target verifies at, Unix milliseconds.
pub const FUZZ_NOW_UNIX_MS: i64 = 1_700_000_000_000;
/// [`FUZZ_NOW_UNIX_MS`] in seconds.
pub const FUZZ_NOW_UNIX_SECS: i64 = FUZZ_NOW_UNIX_MS / 1000;
const LEEWAY_SECS: i64 = DEFAULT_LEEWAY_SECS as i64;

fn hs(secret: &[u8; 32], kid: Option<&str>) -> TokenKey {
    match TokenKey::from_secret(secret) {
        Ok(k) => k.with_kid(kid.map(str::to_owned)),
        Err(e) => panic!("a 32-byte secret is a valid key: {e}"),
    }
}

/// The default key (`hs1`) without a kid in the tokens it mints.
pub fn fuzz_key() -> TokenKey {
    hs(&FUZZ_KEY_SECRET, None)
}

/// The Ed25519 signer of the key set (kid `ed1`).
pub fn fuzz_ed25519() -> Ed25519Signer {
    Ed25519Signer::from_seed(&FUZZ_ED25519_SEED).with_kid(Some("ed1".into()))
}

fn key_set() -> Vec<VerifyKey> {
    vec![
        hs(&FUZZ_KEY_SECRET, Some("hs1")).into(),
        hs(&FUZZ_SECOND_KEY_SECRET, Some("hs2")).into(),
        fuzz_ed25519().verify_key(),
    ]
}

/// The `token` target's verifier without issuer or audience rules (default leeway).
pub fn fuzz_verifier() -> Verifier {
    verifier(Rules::default())
}

/// The same key set requiring `iss` [`FUZZ_ISSUER`] and `aud` [`FUZZ_AUDIENCE`].
pub fn fuzz_strict_verifier() -> Verifier {
    verifier(Rules {
        issuer: Some(FUZZ_ISSUER.into()),
        audience: Some(FUZZ_AUDIENCE.into()),
        ..Rules::default()
    })
}

fn verifier(rules: Rules) -> Verifier {
    match Verifier::new(key_set(), rules) {
        Ok(v) => v,
        Err(e) => panic!("the fuzz key set is valid: {e}"),
    }
}

/// Claims derived from fuzz input: `data[0]` is `exp` as `i8` minutes around
/// [`FUZZ_NOW_UNIX_SECS`] (`127` and `-128` stand for `i64::MAX` and `i64::MIN`); `data[1]` is
/// the flags byte (see [`token`]); `data[2]` as `i8` seconds from now is `nbf` and `iat` when
/// the flags ask for them; `sub` and `did` are the first two `.`-separated parts of the rest
/// (lossy UTF-8).
pub fn fuzz_claims(data: &[u8]) -> Claims {
    let byte = |i: usize| data.get(i).copied();
    let exp = match byte(0).map(|b| b as i8) {
        Some(i8::MAX) => i64::MAX,
        Some(i8::MIN) => i64::MIN,
        Some(m) => FUZZ_NOW_UNIX_SECS + i64::from(m) * 60,
        None => FUZZ_NOW_UNIX_SECS + 60,
    };
    let flags = byte(1).unwrap_or(0);
    let offset = FUZZ_NOW_UNIX_SECS + i64::from(byte(2).unwrap_or(0) as i8);
    let text = String::from_utf8_lossy(data.get(3..).unwrap_or_default());
    let mut parts = text.split('.');
    let sub = parts.next().unwrap_or_default().to_owned();
    let did = parts.next().unwrap_or_default().to_owned();
    let iss = match (flags >> 5) & 3 {
        1 => Some(FUZZ_ISSUER.to_owned()),
        2 => Some("other-issuer".to_owned()),
        _ => None,
    };
    let aud = match (flags >> 7, data.len() % 2) {
        (0, _) => None,
        (_, 0) => Some(Audience::One(FUZZ_AUDIENCE.into())),
        _ => Some(Audience::Many(vec!["x".into(), FUZZ_AUDIENCE.into()])),
    };
    Claims {
        sub,
        did,
        exp,
        nbf: (flags & 8 != 0).then_some(offset),
        iat: (flags & 16 != 0).then_some(offset),
        iss,
        aud,
    }
}

/// The token of `claims` made by signer `sel` (`flags & 7`): 0 `hs1` without kid, 1 `hs1`, 2
/// `hs2`, 4 `ed1`: accepted; 3 `hs2` without kid (checked with the default key), 5 `ed1`
/// without kid (alg of the default key differs), 6 `hs1` under an unknown kid, 7 another
/// secret under kid `hs1`: refused.
pub fn fuzz_mint(sel: u8, claims: &Claims) -> String {
    match sel & 7 {
        0 => hs(&FUZZ_KEY_SECRET, None).mint(claims),
        1 => hs(&FUZZ_KEY_SECRET, Some("hs1")).mint(claims),
        2 => hs(&FUZZ_SECOND_KEY_SECRET, Some("hs2")).mint(claims),
        3 => hs(&FUZZ_SECOND_KEY_SECRET, None).mint(claims),
        4 => fuzz_ed25519().mint(claims),
        5 => fuzz_ed25519().with_kid(None).mint(claims),
        6 => hs(&FUZZ_KEY_SECRET, Some("nope")).mint(claims),
        _ => hs(&FUZZ_OTHER_KEY_SECRET, Some("hs1")).mint(claims),
    }
}

/// What a verifier must answer for `claims` signed by signer `sel`: `None` = accepted,
/// `Some(true)` = BadToken, `Some(false)` = Expired.
fn expected(sel: u8, c: &Claims, strict: bool) -> Option<bool> {
    let now = FUZZ_NOW_UNIX_SECS;
    let in_range = |t: i64| (-MAX_EXP_SECS..=MAX_EXP_SECS).contains(&t);
    let bad = ![0, 1, 2, 4].contains(&(sel & 7))
        || !is_valid_id(&c.sub)
        || !is_valid_id(&c.did)
        || !in_range(c.exp)
        || !c.nbf.is_none_or(in_range)
        || !c.iat.is_none_or(in_range)
        || c.nbf.is_some_and(|t| t > now + LEEWAY_SECS)
        || c.iat.is_some_and(|t| t > now + LEEWAY_SECS)
        || (strict && c.iss.as_deref() != Some(FUZZ_ISSUER))
        || (strict && !c.aud.as_ref().is_some_and(|a| a.contains(FUZZ_AUDIENCE)));
    if bad {
        Some(true)
    } else if c.exp + LEEWAY_SECS <= now {
        Some(false)
    } else {
        None
    }
}

/// JWT verification as a peer reaches it at login and with RefreshToken.
///
/// 1. `data` as (lossy UTF-8) token text is verified by the key set (`hs1` default, `hs2`,
///    Ed25519 `ed1`) at [`FUZZ_NOW_UNIX_MS`]: no panic; `Authenticator::authenticate` and
///    `verify` agree with `verify_claims`; whatever verifies has valid ids, an `exp` within
///    range and unexpired (with the leeway), `nbf`/`iat` not in the future, and does not
///    verify under a key set of other keys; its claims re-minted verify to the same claims.
/// 2. [`fuzz_claims`] of `data` are minted by [`fuzz_mint`] (`data[1] & 7`) and verified by the
///    lax and the strict (issuer and audience) verifier: each result is exactly what the claims
///    and signer call for; every change of one byte of the signature part, and of one
///    data-chosen byte elsewhere, is refused.
pub fn token(data: &[u8]) {
    let lax = fuzz_verifier();
    let now = FUZZ_NOW_UNIX_MS;
    let text = String::from_utf8_lossy(data);
    let verified = lax.verify_claims(&text, now);
    let authenticated = lax.authenticate(&text, now);
    let full = Authenticator::verify(&lax, &text, now);
    match (&verified, &authenticated, &full) {
        (Ok(c), Ok(id), Ok(v)) => {
            assert_eq!((&c.sub, &c.did), (&id.user_id, &id.device_id), "authenticate differs");
            assert_eq!(&v.identity, id, "verify differs");
            assert_eq!(v.expires_at_ms, Some(c.exp * 1000));
        }
        (Err(a), Err(b), Err(c)) => assert!(a == b && b == c, "{a:?} {b:?} {c:?}"),
        other => panic!("authenticate / verify differ from verify_claims: {other:?}"),
    }
    if let Ok(claims) = &verified {
        assert!(text.len() <= MAX_TOKEN_BYTES, "a token over the limit verified");
        assert!(is_valid_id(&claims.sub) && is_valid_id(&claims.did), "invalid ids: {claims:?}");
        assert!(claims.exp <= MAX_EXP_SECS, "exp out of range: {claims:?}");
        assert!((claims.exp + LEEWAY_SECS) * 1000 > now, "expired: {claims:?}");
        let future = |t: Option<i64>| t.is_some_and(|t| t > FUZZ_NOW_UNIX_SECS + LEEWAY_SECS);
        assert!(!future(claims.nbf) && !future(claims.iat), "not valid yet: {claims:?}");
        let others = vec![
            hs(&FUZZ_OTHER_KEY_SECRET, Some("hs1")).into(),
            hs(&FUZZ_OTHER_KEY_SECRET, Some("hs2")).into(),
            Ed25519Signer::from_seed(&FUZZ_OTHER_KEY_SECRET)
                .with_kid(Some("ed1".into()))
                .verify_key(),
        ];
        let others = match Verifier::new(others, Rules::default()) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert!(others.verify_claims(&text, now).is_err(), "verified under other keys");
        assert_eq!(lax.verify_claims(&fuzz_key().mint(claims), now).as_ref(), Ok(claims));
    }

    let claims = fuzz_claims(data);
    let sel = data.get(1).copied().unwrap_or(0);
    let minted = fuzz_mint(sel, &claims);
    for (verifier, strict) in [(&lax, false), (&fuzz_strict_verifier(), true)] {
        let got = verifier.verify_claims(&minted, now);
        match expected(sel, &claims, strict) {
            Some(true) => assert!(
                matches!(got, Err(AuthError::BadToken(_))),
                "must be refused (strict {strict}, signer {}): {claims:?} {got:?}",
                sel & 7
            ),
            Some(false) => assert_eq!(got, Err(AuthError::Expired), "{claims:?}"),
            None => assert_eq!(got.as_ref(), Ok(&claims), "mint/verify round trip"),
        }
    }

    // Tampering: a changed byte must never verify. Replacements come from base64url, the
    // separators, the standard alphabet and padding.
    const ALPHABET: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=. ";
    let sig_start = minted.rfind('.').map_or(0, |i| i + 1);
    let pick = |i: usize| ALPHABET[(i + data.len()) % ALPHABET.len()];
    let mut positions: Vec<usize> = (sig_start..minted.len()).collect();
    if let Some(&b) = data.last() {
        positions.push(usize::from(b) * minted.len() / 256);
    }
    for pos in positions {
        let mut bytes = minted.as_bytes().to_vec();
        let mut replacement = pick(pos);
        if replacement == bytes[pos] {
            replacement = if replacement == b'A' { b'B' } else { b'A' };
        }
        bytes[pos] = replacement;
        // All ASCII: the minted token is base64url and dots, the replacement is ASCII.
        let tampered = String::from_utf8_lossy(&bytes);
        let result = lax.verify_claims(&tampered, now);
        assert!(
            matches!(result, Err(AuthError::BadToken(_))),
            "byte {pos} changed to {:?} was not refused: {tampered} -> {result:?}",
            char::from(replacement)
        );
    }
}
