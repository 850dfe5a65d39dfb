//! The backend's error types: [`ConnectError`] at startup, [`OpError`] per operation (folded
//! into [`StoreError`] at the trait boundary).

use scylla::deserialize::DeserializationError;
use scylla::errors::{
    ExecutionError, IntoRowsResultError, MaybeFirstRowError, NewSessionError, PrepareError,
    RowsError, SchemaAgreementError,
};
use tern_store::StoreError;
use thiserror::Error;

use crate::config::ConfigError;
use crate::row::RowError;

/// [`ScyllaStore::connect`](crate::ScyllaStore::connect) failed.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The configuration is unusable (the operator's fault).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No session could be opened (nodes unreachable, authentication...).
    #[error("cannot connect to ScyllaDB: {0}")]
    Session(#[from] Box<NewSessionError>),
    /// A schema statement failed.
    #[error("schema statement `{statement}` failed: {source}")]
    Schema {
        /// The statement.
        statement: String,
        /// The driver's error.
        source: Box<ExecutionError>,
    },
    /// The nodes did not agree on the schema in time.
    #[error("schema agreement: {0}")]
    SchemaAgreement(#[from] Box<SchemaAgreementError>),
    /// A statement could not be prepared (schema and code disagree).
    #[error("prepare `{statement}`: {source}")]
    Prepare {
        /// The statement.
        statement: String,
        /// The driver's error.
        source: Box<PrepareError>,
    },
    /// The keyspace was created with another bucket size: stored messages would be
    /// unreachable with this one.
    #[error("keyspace uses bucket_size {stored}, config says {configured}")]
    BucketSizeMismatch {
        /// The keyspace's.
        stored: u64,
        /// The config's.
        configured: u64,
    },
    /// Recording or reading the settings row failed.
    #[error("settings: {0}")]
    Settings(#[from] OpError),
}

/// One operation's failure inside the backend.
#[derive(Debug, Error)]
pub enum OpError {
    /// The request failed or timed out (node down, overload, timeout): retry later.
    #[error(transparent)]
    Execution(Box<ExecutionError>),
    /// A result was not rows where rows were expected.
    #[error(transparent)]
    IntoRows(Box<IntoRowsResultError>),
    /// Result rows do not have the expected types.
    #[error(transparent)]
    Rows(Box<RowsError>),
    /// The first row could not be read.
    #[error(transparent)]
    FirstRow(Box<MaybeFirstRowError>),
    /// A row could not be deserialized.
    #[error(transparent)]
    Deserialize(Box<DeserializationError>),
    /// A stored row is inconsistent.
    #[error(transparent)]
    Row(#[from] RowError),
    /// Not implemented by this backend yet (conversation flags).
    #[error("the Scylla store does not support {0} yet")]
    Unsupported(&'static str),
    /// A lightweight transaction's result lacks `[applied]` or an expected column.
    #[error("unexpected LWT result: {0}")]
    LwtShape(String),
    /// The conversation's seqs passed i64::MAX.
    #[error("conversation {0}: seq space exhausted")]
    SeqOverflow(String),
    /// Too many writers raced for the conversation's next seq.
    #[error("conversation {conversation_id}: no seq after {attempts} compare-and-set attempts")]
    Contention {
        /// The conversation.
        conversation_id: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Another writer holds the dedupe claim of this (sender, client_msg_id) and has not
    /// finished yet; the client's resend will get the outcome.
    #[error("message ({sender}, {client_msg_id}) is being stored by another writer")]
    ClaimHeld {
        /// Sender.
        sender: String,
        /// Client message id.
        client_msg_id: String,
    },
    /// This writer's claim was taken over (it was slower than `settle_grace`), or its write
    /// fence passed: it stored nothing, its seq (if any) is a hole.
    #[error("message ({sender}, {client_msg_id}): claim lost or write fence passed")]
    ClaimLost {
        /// Sender.
        sender: String,
        /// Client message id.
        client_msg_id: String,
    },
    /// A task of the batch stopped unexpectedly.
    #[error("append task failed: {0}")]
    Task(String),
    /// The health probe read back something else than it wrote.
    #[error("{0}")]
    Probe(String),
}

/// `From<E>` for the boxed variants (boxed: the driver's errors are large).
macro_rules! boxed_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for OpError {
            fn from(e: $ty) -> Self {
                OpError::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    Execution(ExecutionError),
    IntoRows(IntoRowsResultError),
    Rows(RowsError),
    FirstRow(MaybeFirstRowError),
    Deserialize(DeserializationError),
);

impl From<OpError> for StoreError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Execution(_)
            | OpError::Contention { .. }
            | OpError::ClaimHeld { .. }
            | OpError::ClaimLost { .. }
            | OpError::Task(_) => StoreError::Unavailable(e.to_string()),
            OpError::Row(_) | OpError::SeqOverflow(_) => StoreError::Corrupt(e.to_string()),
            OpError::Unsupported(what) => StoreError::Unsupported(what),
            OpError::IntoRows(_)
            | OpError::Rows(_)
            | OpError::FirstRow(_)
            | OpError::Deserialize(_)
            | OpError::LwtShape(_)
            | OpError::Probe(_) => StoreError::Io(e.to_string()),
        }
    }
}
