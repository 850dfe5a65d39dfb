//! Dispatch's error type: each variant is the client's fault or the server's, and maps to one
//! protocol error code.

use tern_proto::session::server::error as error_frame;
use tern_proto::v1::{Envelope, ErrorCode};
use tern_store::StoreError;
use thiserror::Error;

/// Why a request failed.
#[derive(Debug, Error)]
pub enum DispatchError {
    /// Client's fault: the user is not a member of the conversation.
    #[error("not a member of this conversation")]
    NotAMember,
    /// Client's fault: malformed or unknown conversation id.
    #[error("unknown conversation")]
    UnknownConversation,
    /// Client's fault: a field is missing or out of range.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Client's fault: the recall window has passed.
    #[error("the recall window has passed")]
    RecallWindowPassed,
    /// Client's fault: only the sender may recall a message.
    #[error("only the sender may recall a message")]
    NotSender,
    /// Client's fault: no message with that seq.
    #[error("no such message")]
    UnknownMessage,
    /// Client's fault: the message is already recalled (by another recall request).
    #[error("the message is already recalled")]
    AlreadyRecalled,
    /// Client's fault: this sender's client_msg_id already names another request (another
    /// conversation, kind or recall target).
    #[error("client_msg_id already used for another request ({0})")]
    ClientMsgIdReused(&'static str),
    /// Client's fault: the caller's role does not allow the request.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Client's fault: the group would pass its maximum size.
    #[error("the group would exceed its maximum of {0} members")]
    GroupFull(u32),
    /// A group change lost a race with another change (compare and set): read again and
    /// recompute. Retried inside dispatch; a client sees UNAVAILABLE only if it keeps losing.
    #[error("the group changed meanwhile")]
    GroupChanged,
    /// Client's fault: the device was logged out (LogoutDevice) after its token was issued.
    #[error("this device was logged out; sign in again for a new token")]
    LoggedOut,
    /// Not implemented by this server version.
    #[error("{0} is not implemented by this server yet")]
    Unimplemented(&'static str),
    /// Server's fault, retryable: overloaded or shutting down.
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// Server's fault: storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DispatchError {
    /// The error for a write the store refused.
    pub fn refused(r: tern_store::Refusal) -> Self {
        match r {
            tern_store::Refusal::NotAMember => DispatchError::NotAMember,
            tern_store::Refusal::NoSuchGroup => DispatchError::UnknownConversation,
            tern_store::Refusal::VersionConflict { .. } => DispatchError::GroupChanged,
        }
    }

    /// The protocol error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            DispatchError::NotAMember => ErrorCode::NotAMember,
            DispatchError::UnknownConversation => ErrorCode::UnknownConversation,
            DispatchError::Invalid(_) => ErrorCode::InvalidRequest,
            DispatchError::RecallWindowPassed => ErrorCode::RecallWindowPassed,
            DispatchError::NotSender => ErrorCode::NotSender,
            DispatchError::UnknownMessage => ErrorCode::UnknownMessage,
            DispatchError::AlreadyRecalled => ErrorCode::AlreadyRecalled,
            DispatchError::ClientMsgIdReused(_) => ErrorCode::ClientMsgIdReused,
            DispatchError::Forbidden(_) => ErrorCode::Forbidden,
            DispatchError::GroupFull(_) => ErrorCode::GroupFull,
            DispatchError::LoggedOut => ErrorCode::BadToken,
            DispatchError::Unimplemented(_) => ErrorCode::Unimplemented,
            DispatchError::Unavailable(_)
            | DispatchError::GroupChanged
            | DispatchError::Store(StoreError::Unavailable(_)) => ErrorCode::Unavailable,
            DispatchError::Store(_) => ErrorCode::Internal,
        }
    }

    /// The Error frame answering request `request_id` (never fatal: the connection stays).
    pub fn to_frame(&self, request_id: u64) -> Envelope {
        error_frame(request_id, self.code(), &self.to_string(), false)
    }
}
