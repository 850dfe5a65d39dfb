//! The SDK's error type: the server's answer, the caller's mistake, or the transport's failure.

use tern_proto::v1::ErrorCode;

/// Why an SDK call failed.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The server answered the request with an Error frame.
    #[error("server error {code:?}: {message}")]
    Server {
        /// The protocol error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server refused the login (e.g. `BadToken`, `TokenExpired`).
    #[error("login refused ({code:?}): {message}")]
    Login {
        /// The protocol error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// No answer within the configured timeout.
    #[error("timed out")]
    Timeout,
    /// The client was closed (by [`crate::Client::close`], a duplicate-login kick or a refused
    /// re-login), or the connection dropped while this (non-send) request was in flight.
    #[error("the client or its connection is closed")]
    Closed,
    /// The outbox holds `capacity` unacknowledged sends already.
    #[error("the outbox is full ({capacity} unacknowledged sends)")]
    OutboxFull {
        /// Configured `max_outbox`.
        capacity: usize,
    },
    /// The caller passed something invalid (e.g. an empty or too long client_msg_id).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server answered with a frame that does not fit the request.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The persistence backend failed.
    #[error("persistence failed: {0}")]
    Persistence(std::io::Error),
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be encoded or decoded (e.g. a message larger than the frame limit).
    #[error(transparent)]
    Frame(#[from] tern_proto::FrameError),
}

impl SdkError {
    /// The error of a server Error frame.
    pub fn from_server(err: &tern_proto::v1::Error) -> Self {
        SdkError::Server { code: error_code(err.code), message: err.message.clone() }
    }

    /// Whether trying the same request again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SdkError::Server { code, .. } => is_retryable_code(*code),
            SdkError::Timeout | SdkError::Closed | SdkError::Io(_) => true,
            _ => false,
        }
    }
}

/// The error code of a raw protobuf value (unknown values read as `Unspecified`).
pub fn error_code(code: i32) -> ErrorCode {
    ErrorCode::try_from(code).unwrap_or(ErrorCode::Unspecified)
}

/// Server errors after which the same request (same client_msg_id) should be tried again.
pub(crate) fn is_retryable_code(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Internal | ErrorCode::Unavailable | ErrorCode::RateLimited)
}

/// Login errors after which logging in again with the same token cannot succeed.
pub(crate) fn is_final_login_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BadToken | ErrorCode::TokenExpired | ErrorCode::UnsupportedProtocolVersion
    )
}
