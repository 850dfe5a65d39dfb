//! Errors of the frame codec. Every variant is the peer's fault except `Oversized` on encode,
//! which is the caller's.

use thiserror::Error;

/// Why bytes could not be turned into a frame, or a frame into bytes.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The length prefix announces a frame larger than the configured maximum. Nothing was
    /// allocated for it; the connection must be closed (the stream cannot be resynchronised).
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Length the prefix announced.
        len: u64,
        /// Configured maximum.
        max: usize,
    },
    /// The frame's bytes are not a valid protobuf `Envelope`.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The caller tried to encode a frame larger than the maximum.
    #[error("refusing to encode a frame of {len} bytes (maximum {max})")]
    Oversized {
        /// Encoded length of the envelope.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
}

impl FrameError {
    /// The protocol error code a server reports for this error.
    pub fn code(&self) -> crate::v1::ErrorCode {
        match self {
            FrameError::TooLarge { .. } | FrameError::Oversized { .. } => {
                crate::v1::ErrorCode::FrameTooLarge
            }
            FrameError::Malformed(_) => crate::v1::ErrorCode::MalformedFrame,
        }
    }
}
