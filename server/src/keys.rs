//! Token keys from the `[auth]` configuration: the gateway's [`Verifier`] (default HS256 key,
//! `auth.keys`, claim rules), the HS256 key `tern token` and `tern chat` mint with, and the
//! duplicate-login policy.

use std::path::PathBuf;

use anyhow::{Context, bail};
use tern_gateway::TokenKey;
use tern_gateway::auth::{Rules, Verifier, VerifyKey};
use tern_gateway::config::DuplicateLogin;

use crate::config::{AuthKey, Config};

impl Config {
    /// Where the HS256 key file is.
    pub fn key_file(&self) -> PathBuf {
        if self.auth.key_file.is_empty() {
            self.server.data_dir.join("jwt.key")
        } else {
            PathBuf::from(&self.auth.key_file)
        }
    }

    /// Whether an HS256 default key is in use: always, unless `auth.keys` is set and both
    /// `auth.hs256_key` and `auth.key_file` are empty (an EdDSA-only gateway, say).
    pub fn has_hs256_key(&self) -> bool {
        let a = &self.auth;
        a.keys.is_empty() || !a.hs256_key.is_empty() || !a.key_file.is_empty()
    }

    /// The HS256 key with its `kid` (`auth.key_id`): `auth.hs256_key`, or the key file
    /// (created with a random key at first use).
    pub fn token_key(&self) -> anyhow::Result<TokenKey> {
        if !self.has_hs256_key() {
            bail!(
                "no HS256 key is configured (auth.keys only, auth.hs256_key and auth.key_file \
                 empty): mint with the auth service's key, e.g. `tern token --ed25519-key FILE`"
            );
        }
        let kid = Some(self.auth.key_id.clone());
        if !self.auth.hs256_key.is_empty() {
            let key = TokenKey::from_base64(&self.auth.hs256_key).context("auth.hs256_key")?;
            return Ok(key.with_kid(kid));
        }
        let path = self.key_file();
        let (key, created) = TokenKey::load_or_create(&path)?;
        if created {
            tracing::info!(path = %path.display(), "generated a new token signing key");
        }
        Ok(key.with_kid(kid))
    }

    /// The key `tern token` and `tern chat --user` sign with: `auth.hs256_key`, or the key
    /// file, which must exist already. Never creates one: a key made up here would sign tokens
    /// no server accepts (only the server creates its key file, at first start).
    pub fn existing_token_key(&self) -> anyhow::Result<TokenKey> {
        let path = self.key_file();
        if self.has_hs256_key()
            && self.auth.hs256_key.is_empty()
            && !path.try_exists().unwrap_or(true)
        {
            bail!(
                "no token signing key at {}: tokens must be signed with the key of the server \
                 they are for, and only the server creates it (`tern serve` writes \
                 <data_dir>/jwt.key at its first start). Run this in the server's directory, or \
                 point at its key with --data-dir DIR or -c CONFIG (auth.key_file or \
                 auth.hs256_key), or pass a token with --token",
                path.display()
            );
        }
        self.token_key()
    }

    /// The gateway's token verifier: the HS256 key first (when in use), then `auth.keys` in
    /// order; `auth.issuer`, `auth.audience` and `auth.leeway_secs` as the claim rules.
    pub fn verifier(&self) -> anyhow::Result<Verifier> {
        let mut keys = Vec::new();
        if self.has_hs256_key() {
            keys.push(VerifyKey::from(self.token_key()?));
        }
        for (i, k) in self.auth.keys.iter().enumerate() {
            keys.push(auth_key(k).with_context(|| format!("auth.keys[{i}] (id {:?})", k.id))?);
        }
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let rules = Rules {
            issuer: opt(&self.auth.issuer),
            audience: opt(&self.auth.audience),
            leeway_secs: self.auth.leeway_secs,
        };
        Verifier::new(keys, rules).context("auth keys")
    }

    /// `auth.duplicate_login` parsed.
    pub fn duplicate_login(&self) -> anyhow::Result<DuplicateLogin> {
        match self.auth.duplicate_login.as_str() {
            "newest_wins" => Ok(DuplicateLogin::NewestWins),
            "oldest_wins" => Ok(DuplicateLogin::OldestWins),
            other => {
                bail!("auth.duplicate_login must be newest_wins or oldest_wins, not {other:?}")
            }
        }
    }
}

/// One `auth.keys` entry as a verification key.
fn auth_key(k: &AuthKey) -> anyhow::Result<VerifyKey> {
    if k.id.is_empty() {
        bail!("every auth.keys entry needs an id (the kid tokens name it by)");
    }
    let text = match (k.key.is_empty(), k.key_file.is_empty()) {
        (false, true) => k.key.clone(),
        (true, false) => std::fs::read_to_string(&k.key_file)
            .with_context(|| format!("reading key file {}", k.key_file))?,
        _ => bail!("give exactly one of key and key_file"),
    };
    let key = match k.alg.as_str() {
        "HS256" => VerifyKey::from(TokenKey::from_base64(&text)?),
        "EdDSA" => VerifyKey::ed25519_public(&text)?,
        other => bail!("alg must be HS256 or EdDSA, not {other:?}"),
    };
    Ok(key.with_id(Some(k.id.clone())))
}

#[cfg(test)]
mod tests {
    use tern_gateway::auth::{Claims, Ed25519Signer};

    use super::*;

    fn load_in(toml: &str) -> anyhow::Result<(Config, tempfile::TempDir)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tern.toml");
        std::fs::write(&path, toml)?;
        let data = format!("server.data_dir={}", dir.path().display());
        Ok((Config::load(Some(&path), Vec::new(), &[data])?, dir))
    }

    fn load(toml: &str) -> anyhow::Result<Config> {
        load_in(toml).map(|(cfg, _)| cfg)
    }

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn rotation_key_set_from_the_config_file() {
        let old = TokenKey::from_secret(&[1; 32]).unwrap();
        let new = TokenKey::from_secret(&[2; 32]).unwrap().with_kid(Some("2026-02".into()));
        let ed = Ed25519Signer::from_seed(&[3; 32]).with_kid(Some("ed-1".into()));
        let cfg = load(&format!(
            "[auth]\nhs256_key = \"{}\"\nkey_id = \"2026-01\"\nissuer = \"https://auth\"\n\
             [[auth.keys]]\nid = \"2026-02\"\nalg = \"HS256\"\nkey = \"{}\"\n\
             [[auth.keys]]\nid = \"ed-1\"\nalg = \"EdDSA\"\nkey = \"{}\"\n",
            old.to_base64(),
            new.to_base64(),
            ed.public_base64()
        ))
        .unwrap();
        let v = cfg.verifier().unwrap();
        let claims = Claims { iss: Some("https://auth".into()), ..Claims::new("a", "d", NOW, 60) };
        // Old tokens without kid (the default key), new ones by kid, EdDSA by kid.
        for t in [old.mint(&claims), new.mint(&claims), ed.mint(&claims)] {
            assert!(v.verify_claims(&t, NOW * 1000).is_ok(), "{t}");
        }
        let no_iss = Claims::new("a", "d", NOW, 60);
        assert!(v.verify_claims(&old.mint(&no_iss), NOW * 1000).is_err(), "issuer is checked");
        assert_eq!(cfg.token_key().unwrap().kid(), Some("2026-01"));
    }

    #[test]
    fn eddsa_only_gateway_has_no_hs256_key() {
        let ed = Ed25519Signer::from_seed(&[3; 32]).with_kid(Some("ed-1".into()));
        let (cfg, _dir) = load_in(&format!(
            "[[auth.keys]]\nid = \"ed-1\"\nalg = \"EdDSA\"\nkey = \"{}\"\n",
            ed.public_base64()
        ))
        .unwrap();
        assert!(!cfg.has_hs256_key());
        assert!(cfg.token_key().is_err());
        let v = cfg.verifier().unwrap();
        assert!(!cfg.key_file().exists(), "no key file is generated");
        assert_eq!(v.keys().len(), 1);
        let without_kid = ed.clone().with_kid(None);
        let claims = Claims::new("a", "d", NOW, 60);
        assert!(v.verify_claims(&without_kid.mint(&claims), NOW * 1000).is_ok(), "default key");
    }

    #[test]
    fn bad_auth_settings_are_refused() {
        assert!(load("[auth]\nduplicate_login = \"both\"\n").is_err());
        assert!(load("[auth]\nleeway_secs = 86400\n").is_err());
        let cfg = load("[[auth.keys]]\nid = \"\"\nalg = \"HS256\"\nkey = \"x\"\n").unwrap();
        assert!(cfg.verifier().is_err(), "an extra key needs an id");
        let cfg = load("[[auth.keys]]\nid = \"k\"\nalg = \"RS256\"\nkey = \"x\"\n").unwrap();
        assert!(cfg.verifier().is_err());
        let oldest = load("[auth]\nduplicate_login = \"oldest_wins\"\n").unwrap();
        assert_eq!(oldest.gateway_config().duplicate_login, DuplicateLogin::OldestWins);
    }
}
