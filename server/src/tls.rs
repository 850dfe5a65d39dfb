//! The server's TLS identity (`[tls]`): the certificate chain and key QUIC (and TLS on TCP)
//! present to clients. From `tls.cert_file` / `tls.key_file` (PEM) when set; otherwise from
//! `<data_dir>/tls/`, where the first start writes a self-signed certificate for `tls.names`
//! (like the token key) and says so with its SHA-256 fingerprint, which clients can pin.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// A certificate chain, its key, and the leaf's fingerprint.
#[derive(Debug)]
pub struct TlsIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate (DER), as lowercase hex pairs joined by `:`.
    pub fingerprint: String,
    /// Whether this start generated it.
    pub generated: bool,
}

/// SHA-256 of a certificate's DER, as `ab:cd:…` (what `tern chat --pin` and the SDK take).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// `--ca` / `--pin` of the client commands (`tern chat`, `tern bench`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrustArgs {
    /// For tls:// and quic:// addresses: trust the CA (or self-signed certificate) in this
    /// PEM file. Default: the server's own certificate when it is in the data directory
    /// (`tls.cert_file`, or the generated one), else the system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// For tls:// and quic:// addresses: accept exactly the certificate with this SHA-256
    /// fingerprint (as `tern serve` logs it).
    #[arg(long, value_name = "SHA256", conflicts_with = "ca")]
    pub pin: Option<String>,
}

impl TrustArgs {
    /// What the client trusts (see the flags).
    pub fn trust(&self, cfg: &Config) -> tern_sdk::Trust {
        match (&self.pin, &self.ca) {
            (Some(pin), _) => tern_sdk::Trust::Pinned(pin.clone()),
            (None, Some(ca)) => tern_sdk::Trust::CaFile(ca.clone()),
            (None, None) => {
                let own = cfg.tls_cert_file();
                match own.try_exists() {
                    Ok(true) => tern_sdk::Trust::CaFile(own),
                    _ => tern_sdk::Trust::SystemRoots,
                }
            }
        }
    }
}

impl Config {
    /// Where the certificate chain (PEM) is.
    pub fn tls_cert_file(&self) -> PathBuf {
        match self.tls.cert_file.as_str() {
            "" => self.server.data_dir.join("tls").join("cert.pem"),
            f => PathBuf::from(f),
        }
    }

    /// Where the private key (PEM) is.
    pub fn tls_key_file(&self) -> PathBuf {
        match self.tls.key_file.as_str() {
            "" => self.server.data_dir.join("tls").join("key.pem"),
            f => PathBuf::from(f),
        }
    }

    /// The TLS identity: the configured files, or the generated self-signed pair in the data
    /// directory (created at the first start when neither file is configured, and again if it
    /// was damaged).
    pub fn tls_identity(&self) -> anyhow::Result<TlsIdentity> {
        let configured = !self.tls.cert_file.is_empty() || !self.tls.key_file.is_empty();
        if configured && (self.tls.cert_file.is_empty() || self.tls.key_file.is_empty()) {
            bail!("tls.cert_file and tls.key_file go together: set both, or neither");
        }
        let (cert, key) = (self.tls_cert_file(), self.tls_key_file());
        if configured {
            return load_pair(&cert, &key, false);
        }
        if cert.try_exists().unwrap_or(false) {
            match load_pair(&cert, &key, false) {
                Ok(id) => return Ok(id),
                // Our own generated pair, damaged (a power cut on a disk that lost its
                // writes): a new one is as good, and the only way to start.
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "the generated TLS pair is unreadable; generating a new one")
                }
            }
        }
        generate(&self.tls.names, &cert, &key)?;
        load_pair(&cert, &key, true)
    }
}

/// Reads a PEM certificate chain and key.
fn load_pair(cert: &Path, key: &Path, generated: bool) -> anyhow::Result<TlsIdentity> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing TLS certificate {}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        bail!("no certificate in {}", cert.display());
    };
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading TLS key {}", key.display()))?;
    let fingerprint = fingerprint(leaf);
    Ok(TlsIdentity { chain, key: private, fingerprint, generated })
}

/// Writes a self-signed certificate for `names` (comma-separated DNS names and IP addresses)
/// and its key (mode 0600) at the given paths.
fn generate(names: &str, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let names: Vec<String> =
        names.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect();
    if names.is_empty() {
        bail!("tls.names is empty: the generated certificate needs at least one name");
    }
    let pair = rcgen::generate_simple_self_signed(names.clone())
        .with_context(|| format!("generating a self-signed certificate for {names:?}"))?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Some(dir) = key.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_private(key, pem("PRIVATE KEY", &pair.signing_key.serialize_der()).as_bytes())?;
    // The certificate last: its presence means the pair is complete. Written aside and renamed
    // into place, then the directory synced, so that a power cut leaves either no certificate
    // (the next start generates the pair again) or the whole pair, never a torn file.
    write_whole(cert, pem("CERTIFICATE", pair.cert.der()).as_bytes())?;
    tracing::info!(
        cert = %cert.display(),
        names = ?names,
        fingerprint = %fingerprint(pair.cert.der()),
        "generated a self-signed TLS certificate (clients: trust this file or pin the fingerprint)"
    );
    Ok(())
}

/// `der` as a PEM block with `label` (RFC 7468: base64 in lines of 64).
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes `bytes` to `path` durably and atomically: a synced temporary file renamed over it,
/// then the directory synced.
fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let ctx = || format!("writing {}", path.display());
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(ctx)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).with_context(ctx)?;
    std::fs::rename(&tmp, path).with_context(ctx)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(ctx)?;
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Makes the client TCP port speak TLS too, as `server.tls` says ("optional", "required",
/// "off"), with the `[tls]` identity.
pub fn bind(
    cfg: &Config,
    listeners: tern_gateway::Listeners,
) -> anyhow::Result<tern_gateway::Listeners> {
    let plaintext = match cfg.server.tls.as_str() {
        "off" => return Ok(listeners),
        "optional" => true,
        "required" => false,
        other => bail!("server.tls {other:?} is not \"optional\", \"required\" or \"off\""),
    };
    let id = cfg.tls_identity()?;
    let config = tern_gateway::tls::server_config(id.chain, id.key).context("TLS configuration")?;
    Ok(listeners.with_tls(Some(tern_gateway::tls::TlsListen { config, plaintext })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(dir: &Path, sets: &[String]) -> Config {
        let mut all = vec![format!("server.data_dir={}", dir.display())];
        all.extend_from_slice(sets);
        Config::load(None, Vec::new(), &all).unwrap()
    }

    #[test]
    fn the_first_start_generates_a_certificate_and_later_ones_reuse_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = load(dir.path(), &[]);
        let first = cfg.tls_identity().unwrap();
        assert!(first.generated);
        assert_eq!(first.chain.len(), 1);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        let again = cfg.tls_identity().unwrap();
        assert!(!again.generated);
        assert_eq!(again.fingerprint, first.fingerprint, "the same certificate");
        let mode = std::fs::metadata(cfg.tls_key_file()).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }

    /// A power cut on a disk that lost the writes leaves an empty or torn generated
    /// certificate: the next start generates a new pair instead of refusing to start.
    #[test]
    fn a_damaged_generated_pair_is_generated_again() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = load(dir.path(), &[]);
        let first = cfg.tls_identity().unwrap();
        std::fs::write(cfg.tls_cert_file(), "").unwrap();
        let again = cfg.tls_identity().unwrap();
        assert!(again.generated);
        assert_ne!(again.fingerprint, first.fingerprint);
        std::fs::write(cfg.tls_cert_file(), "-----BEGIN CERTIFICATE-----\nMII").unwrap();
        assert!(cfg.tls_identity().unwrap().generated);
        assert!(!cfg.tls_cert_file().with_extension("tmp").exists(), "no temporary file left");
    }

    #[test]
    fn configured_files_are_used_and_must_come_in_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        generate("chat.example.com", &cert, &key).unwrap();
        let sets = [
            format!("tls.cert_file={}", cert.display()),
            format!("tls.key_file={}", key.display()),
        ];
        let id = load(dir.path(), &sets).tls_identity().unwrap();
        assert!(!id.generated);
        assert!(!dir.path().join("tls").exists(), "nothing generated");
        let half = load(dir.path(), &sets[..1]).tls_identity().unwrap_err();
        assert!(half.to_string().contains("go together"), "{half}");
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(load(dir.path(), &sets).tls_identity().is_err());
    }
}
