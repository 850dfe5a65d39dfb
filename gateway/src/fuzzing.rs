//! Fuzz target bodies of this crate, shared by cargo-fuzz (`fuzz/`) and the stable corpus replay
//! test (`tests/fuzz_corpus.rs`).
//!
//! Each function takes arbitrary bytes, drives one peer-reachable entry point and panics only
//! when an invariant breaks (that panic is the finding).

use tern_proto::ids::is_valid_id;
use tern_proto::session::server::{AuthError, Authenticator};

use crate::auth::{Claims, MAX_TOKEN_BYTES, TokenKey};

/// The HS256 secret the `token` target verifies with.
pub const FUZZ_KEY_SECRET: [u8; 32] = [0x42; 32];
/// A different secret: nothing signed with [`FUZZ_KEY_SECRET`] may verify under it.
pub const FUZZ_OTHER_KEY_SECRET: [u8; 32] = [0x43; 32];
/// The clock the `token` target verifies at, Unix milliseconds.
pub const FUZZ_NOW_UNIX_MS: i64 = 1_700_000_000_000;
/// [`FUZZ_NOW_UNIX_MS`] in seconds.
pub const FUZZ_NOW_UNIX_SECS: i64 = FUZZ_NOW_UNIX_MS / 1000;

/// The key the `token` target verifies with.
pub fn fuzz_key() -> TokenKey {
    key_from(&FUZZ_KEY_SECRET)
}

fn key_from(secret: &[u8; 32]) -> TokenKey {
    match TokenKey::from_secret(secret) {
        Ok(k) => k,
        Err(e) => panic!("a 32-byte secret is a valid key: {e}"),
    }
}

/// Claims derived from fuzz input: `exp` from the first byte as `i8` (minutes around
/// [`FUZZ_NOW_UNIX_SECS`]; `127` and `-128` stand for `i64::MAX` and `i64::MIN`), `iat` from the
/// length, `sub` and `did` from the first two `.`-separated parts of the rest (lossy UTF-8).
pub fn fuzz_claims(data: &[u8]) -> Claims {
    let (exp, rest) = match data.split_first() {
        Some((&b, rest)) => {
            let exp = match b as i8 {
                i8::MAX => i64::MAX,
                i8::MIN => i64::MIN,
                m => FUZZ_NOW_UNIX_SECS + i64::from(m) * 60,
            };
            (exp, rest)
        }
        None => (FUZZ_NOW_UNIX_SECS + 60, data),
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('.');
    let sub = parts.next().unwrap_or_default().to_owned();
    let did = parts.next().unwrap_or_default().to_owned();
    Claims { sub, did, exp, iat: i64::try_from(data.len()).unwrap_or(i64::MAX) }
}

/// JWT verification as a peer reaches it at login.
///
/// 1. `data` as (lossy UTF-8) token text is verified with [`fuzz_key`] at [`FUZZ_NOW_UNIX_MS`]:
///    no panic; `Authenticator::authenticate` agrees with `verify`; whatever verifies has valid
///    ids and an unexpired `exp`, does not verify under another key, and re-mints to a token
///    that verifies to the same claims.
/// 2. [`fuzz_claims`] of `data` are minted and verified: the result is exactly what the claims
///    call for (valid ids and unexpired: the same claims back; valid ids but expired:
///    `Expired`; otherwise `BadToken`); and every change of one byte of the signature part, and
///    of one data-chosen byte elsewhere, is refused.
pub fn token(data: &[u8]) {
    let key = fuzz_key();
    let text = String::from_utf8_lossy(data);
    let verified = key.verify(&text, FUZZ_NOW_UNIX_MS);
    let authenticated = key.authenticate(&text, FUZZ_NOW_UNIX_MS);
    match (&verified, &authenticated) {
        (Ok(c), Ok(id)) => {
            assert_eq!((&c.sub, &c.did), (&id.user_id, &id.device_id), "authenticate differs");
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "authenticate differs from verify"),
        other => panic!("authenticate differs from verify: {other:?}"),
    }
    if let Ok(claims) = &verified {
        assert!(text.len() <= MAX_TOKEN_BYTES, "a token over the limit verified");
        assert!(is_valid_id(&claims.sub) && is_valid_id(&claims.did), "invalid ids: {claims:?}");
        assert!(claims.exp.saturating_mul(1000) > FUZZ_NOW_UNIX_MS, "expired: {claims:?}");
        assert!(
            key_from(&FUZZ_OTHER_KEY_SECRET).verify(&text, FUZZ_NOW_UNIX_MS).is_err(),
            "verified under another key"
        );
        assert_eq!(key.verify(&key.mint(claims), FUZZ_NOW_UNIX_MS).as_ref(), Ok(claims));
    }

    let claims = fuzz_claims(data);
    let minted = key.mint(&claims);
    let got = key.verify(&minted, FUZZ_NOW_UNIX_MS);
    let valid_ids = is_valid_id(&claims.sub) && is_valid_id(&claims.did);
    if !valid_ids {
        assert!(matches!(got, Err(AuthError::BadToken(_))), "invalid ids: {claims:?} {got:?}");
        return;
    }
    if claims.exp.saturating_mul(1000) <= FUZZ_NOW_UNIX_MS {
        assert_eq!(got, Err(AuthError::Expired), "{claims:?}");
    } else {
        assert_eq!(got.as_ref(), Ok(&claims), "mint/verify round trip");
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
        let result = key.verify(&tampered, FUZZ_NOW_UNIX_MS);
        assert!(
            matches!(result, Err(AuthError::BadToken(_))),
            "byte {pos} changed to {:?} was not refused: {tampered} -> {result:?}",
            char::from(replacement)
        );
    }
}
