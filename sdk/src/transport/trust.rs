//! Which server certificates the client accepts over TLS and QUIC ([`Trust`]), as a rustls
//! configuration: TLS 1.3, ALPN `tern/1`, session resumption and early data on.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::dial::ALPN;
use crate::error::SdkError;

/// Which server certificates to accept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Trust {
    /// Certificates that chain to the system's root CAs and name the host (the default).
    #[default]
    SystemRoots,
    /// Certificates that chain to the CA (or self-signed certificate) in this PEM file.
    CaFile(PathBuf),
    /// Certificates that chain to the CA in this PEM text.
    CaPem(String),
    /// Exactly the certificate whose SHA-256 (of its DER) is this: 64 hex digits, optionally
    /// separated by `:` (what `tern serve` logs for its generated certificate). No name or
    /// chain check: the pin is the identity.
    Pinned(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for `trust`.
pub(crate) fn tls_config(trust: &Trust) -> Result<rustls::ClientConfig, SdkError> {
    let invalid = |what: String| SdkError::InvalidArgument(what);
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid(format!("TLS: {e}")))?;
    let roots = |certs: Vec<CertificateDer<'static>>| {
        let mut store = rustls::RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(invalid("no usable CA certificate".into()));
        }
        Ok(store)
    };
    let mut cfg = match trust {
        Trust::SystemRoots => {
            let found = rustls_native_certs::load_native_certs();
            builder.with_root_certificates(roots(found.certs)?).with_no_client_auth()
        }
        Trust::CaFile(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid(format!("CA file {}: {e}", path.display())))?;
            builder.with_root_certificates(roots(certs)?).with_no_client_auth()
        }
        Trust::CaPem(text) => {
            let certs = CertificateDer::pem_slice_iter(text.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(format!("CA PEM: {e}")))?;
            builder.with_root_certificates(roots(certs)?).with_no_client_auth()
        }
        Trust::Pinned(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned::new(fp)?))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_early_data = true;
    Ok(cfg)
}

/// Accepts exactly one certificate, by its SHA-256; checks the handshake signature with it.
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn new(fingerprint: &str) -> Result<Self, SdkError> {
        let hex: String = fingerprint.chars().filter(|c| *c != ':').collect();
        let bad = || {
            SdkError::InvalidArgument(format!(
                "pinned fingerprint {fingerprint:?}: want 64 hex digits"
            ))
        };
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut sha256 = [0u8; 32];
        for (i, b) in sha256.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self { sha256, provider: provider() })
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        match digest.as_ref() == self.sha256 {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 only (the configuration offers nothing else).
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_64_hex_digits_with_or_without_colons() {
        let hex = "ab".repeat(32);
        assert!(Pinned::new(&hex).is_ok());
        let colons: Vec<&str> = (0..32).map(|_| "AB").collect();
        assert_eq!(Pinned::new(&colons.join(":")).unwrap().sha256, [0xab; 32]);
        assert!(Pinned::new("abcd").is_err());
        assert!(Pinned::new(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "no pem here").unwrap();
        assert!(tls_config(&Trust::CaFile(path)).is_err());
        assert!(tls_config(&Trust::CaPem(String::new())).is_err());
        assert!(tls_config(&Trust::Pinned("ab".repeat(32))).is_ok());
    }
}
