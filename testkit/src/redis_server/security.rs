//! Password, ACL users and TLS for a test [`RedisServer`](super::RedisServer): the
//! command-line arguments, and a CA plus server certificate generated with rcgen.

use std::io;
use std::path::{Path, PathBuf};

use super::{TestkitError, io_error};

/// Access control and TLS of a test server ([`RedisServer::start_secured`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisSecurity {
    /// `requirepass`: the password of the `default` user.
    pub requirepass: Option<String>,
    /// ACL users, one rule each as in a `user` config line, e.g. `"tern on >pw ~* +@all"`.
    pub acl_users: Vec<String>,
    /// Serve TLS only (`--port 0 --tls-port PORT`, no client certificates) with these files.
    pub tls: Option<RedisTls>,
}

/// The PEM files of a TLS test server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTls {
    /// The server's certificate (for 127.0.0.1 and localhost), signed by the CA.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// The CA certificate clients must trust.
    pub ca_file: PathBuf,
}

impl RedisTls {
    /// Generates a fresh CA and a server certificate for `127.0.0.1` / `localhost` signed by
    /// it (ECDSA P-256, rcgen) into `dir`: `ca.pem`, `server.pem`, `server.key`.
    pub fn generate(dir: &Path) -> Result<Self, TestkitError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let err = |e: rcgen::Error| TestkitError::Io {
            what: "generate a test certificate".into(),
            source: io::Error::other(e.to_string()),
        };
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "tern test CA");
        let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().map_err(err)?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, "tern test redis");
        let cert = params.signed_by(&key, &issuer).map_err(err)?;
        let tls = Self {
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
            ca_file: dir.join("ca.pem"),
        };
        let write = |path: &Path, label: &str, der: &[u8]| {
            std::fs::write(path, pem(label, der)).map_err(io_error(format!("write {path:?}")))
        };
        write(&tls.ca_file, "CERTIFICATE", ca_cert.der())?;
        write(&tls.cert_file, "CERTIFICATE", cert.der())?;
        write(&tls.key_file, "PRIVATE KEY", &key.serialize_der())?;
        Ok(tls)
    }
}

/// DER as PEM text.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl RedisSecurity {
    /// The command-line arguments: the listening port(s), then access control and TLS.
    pub(super) fn args(&self, port: u16) -> Vec<String> {
        let mut args = Vec::new();
        match &self.tls {
            None => args.extend(["--port".to_owned(), port.to_string()]),
            Some(tls) => {
                args.extend(["--port", "0"].map(str::to_owned));
                args.extend(["--tls-port".to_owned(), port.to_string()]);
                for (flag, path) in [
                    ("--tls-cert-file", &tls.cert_file),
                    ("--tls-key-file", &tls.key_file),
                    ("--tls-ca-cert-file", &tls.ca_file),
                ] {
                    args.extend([flag.to_owned(), path.display().to_string()]);
                }
                args.extend(["--tls-auth-clients", "no"].map(str::to_owned));
            }
        }
        if let Some(pw) = &self.requirepass {
            args.extend(["--requirepass".to_owned(), pw.clone()]);
        }
        for rule in &self.acl_users {
            args.push("--user".to_owned());
            args.extend(rule.split_whitespace().map(str::to_owned));
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::redis_server::{RedisOptions, RedisServer};
    use crate::resp::{self, Reply};

    #[test]
    fn a_password_server_refuses_unauthenticated_commands() {
        let security = RedisSecurity {
            requirepass: Some("s3cret".into()),
            acl_users: vec!["tern on >pw2 ~* +@all".into()],
            tls: None,
        };
        let server = RedisServer::start_secured(RedisOptions::without_aof(), security).unwrap();
        match server.command(&[b"PING"]).unwrap() {
            Reply::Error(e) => assert!(e.starts_with("NOAUTH"), "{e}"),
            other => panic!("PING without AUTH: {other:?}"),
        }
        assert_eq!(
            server.url_with_auth("tern", "pw2"),
            format!("redis://tern:pw2@127.0.0.1:{}/", server.port())
        );
    }

    #[test]
    fn a_tls_server_takes_only_tls() {
        let dir = tempfile::tempdir().unwrap();
        let tls = RedisTls::generate(dir.path()).unwrap();
        let security = RedisSecurity { tls: Some(tls), ..RedisSecurity::default() };
        let server = RedisServer::start_secured(RedisOptions::without_aof(), security).unwrap();
        assert_eq!(server.url(), format!("rediss://127.0.0.1:{}/", server.port()));
        // Plain RESP on the TLS port gets no PONG.
        assert!(
            !matches!(resp::ping(server.addr(), Duration::from_secs(2)), Ok(l) if l == "+PONG")
        );
    }
}
