//! What the client tells the app ([`Event`]) and where a message goes ([`Target`]).

use tern_proto::v1;

/// Where a message is sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An existing conversation, by id (`dm:<a>:<b>` or `g:<id>`).
    Conversation(String),
    /// The 1:1 conversation with this user (the server derives its id).
    Peer(String),
}

/// Something that happened on the client's connection, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Logged in (first connect and every reconnect).
    Connected {
        /// The logged-in user.
        user_id: String,
        /// The logged-in device.
        device_id: String,
    },
    /// A message or event of a conversation: deduplicated and in seq order per conversation,
    /// whether it was pushed or fetched by sync. This device's own sends whose
    /// [`crate::Client::send`] returned the ack do not come back here; own sends whose caller
    /// stopped waiting (timeout, restart) do, once accepted.
    Message(v1::Message),
    /// A member's delivered/read watermarks moved.
    Receipt(v1::ReceiptUpdate),
    /// The connection dropped; the client reconnects by itself unless it stopped.
    Disconnected {
        /// Why, for logs.
        reason: String,
    },
    /// The server kicked this connection. After `DuplicateLogin`, `LoggedOut` (the user
    /// logged this device out: sign in again) or `DeviceReplaced` (a newer device of the same
    /// class logged in) the client stops (the event channel closes after this event); after `TokenExpired` it reconnects with a token from
    /// [`crate::ClientConfig::token_provider`], or stops when there is none; after any other
    /// reason it reconnects.
    Kicked {
        /// Why.
        reason: v1::KickReason,
    },
}
