//! Why the notifier could not start: always the operator's configuration or files.
//!
//! Delivery failures are not errors of the caller: they are classified per attempt
//! ([`crate::retry::Outcome`]) and end in metrics and logs, never on the message path.

use std::io;
use std::path::PathBuf;

/// Why [`crate::Notifier::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is missing or malformed.
    #[error("notify config: {0}")]
    Config(String),
    /// A configured file could not be read.
    #[error("read {what} {path:?}: {source}")]
    Read {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The APNs `.p8` key is not a PKCS#8 P-256 key.
    #[error("APNs key {path:?}: {reason}")]
    ApnsKey {
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The FCM service-account file was refused.
    #[error("FCM service account: {0}")]
    FcmCredentials(#[source] gcp_auth::Error),
    /// The TLS client configuration could not be built.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Called outside a tokio runtime.
    #[error("the notifier must be started inside a tokio runtime")]
    NoRuntime,
}
