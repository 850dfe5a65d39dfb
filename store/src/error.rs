//! The storage layer's error type: failures of the backend, never of the caller's input.

use thiserror::Error;

/// A storage failure. Dispatch reports it to clients as INTERNAL or UNAVAILABLE; a client
/// retries with the same client_msg_id, so nothing is lost or duplicated.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The backend's disk or database failed.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt stored record: {0}")]
    Corrupt(String),
    /// The backend is unreachable or shutting down; retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// An [`append`](crate::Store::append) the store refused (a message to a group from a
    /// non-member): [`commit`](crate::Store::commit) reports these per write.
    #[error("refused: {0:?}")]
    Refused(crate::Refusal),
    /// This backend does not implement the operation (yet).
    #[error("this store backend does not support {0}")]
    Unsupported(&'static str),
}
