//! Tern client SDK: one logged-in connection kept up in the background, with reconnect and
//! backoff, an outbox that resends unacknowledged messages with the same id, and incoming
//! messages deduplicated, ordered per conversation and caught up by sync.
//!
//! - [`config`]: [`ClientConfig`], a plain struct with defaults.
//! - [`client`]: [`Client`], the cheap cloneable handle (send, recall, receipts, sync, list).
//! - `devices` (methods on [`Client`]): the user's device list, logging a device out, push
//!   registration.
//! - [`event`]: [`Event`]s the client emits and [`Target`]s messages go to.
//! - [`persist`]: the [`Persistence`] trait (cursors and outbox) and [`MemoryPersistence`].
//! - [`file_persistence`]: [`FilePersistence`], the trait in one small JSON file (atomic
//!   rewrites), for apps that keep their cursors and outbox across restarts.
//! - [`error`]: the one error type, [`SdkError`].
//! - [`token`]: [`TokenProvider`], where fresh login tokens come from.
//!
//! **Tokens.** The server closes a connection with Kick TOKEN_EXPIRED when its token's `exp`
//! (plus the server's leeway) passes. Refresh ahead of that with [`Client::refresh_token`]
//! (no reconnect; [`Client::token_expires_at_ms`] says when the current token ends), e.g. at
//! 80 % of its lifetime. Set [`ClientConfig::token_provider`] so that a client whose token
//! did run out gets a fresh one from the app instead of reconnecting with the dead one;
//! without a provider such a client stops (see [`Event::Kicked`]).
//! - `connection` (private): the background task driving `tern_proto::session::client`.
//! - `transport` (private): one framed TCP connection and the login handshake.
//!
//! Connecting, draining events, sending (this example is compiled by the unit test
//! `crate_doc_example_compiles`: the workspace runs no doc tests):
//!
//! ```rust
//! use std::sync::Arc;
//!
//! use bytes::Bytes;
//! use tern_sdk::{Client, ClientConfig, Event, MemoryPersistence, Target};
//!
//! # async fn run() -> Result<(), tern_sdk::SdkError> {
//! let cfg = ClientConfig::new("127.0.0.1:7400", "<token for alice>");
//! let (client, mut events) = Client::connect(cfg, Arc::new(MemoryPersistence::new())).await?;
//!
//! // Drain events in a task of their own while the app makes requests.
//! tokio::spawn(async move {
//!     while let Some(event) = events.recv().await {
//!         match event {
//!             Event::Message(m) => println!("{} #{}: {:?}", m.conversation_id, m.seq, m.body),
//!             other => println!("{other:?}"),
//!         }
//!     }
//! });
//!
//! let ack = client
//!     .send(Target::Peer("bob".into()), "text/plain", Bytes::from_static(b"hi bob"))
//!     .await?;
//! client.mark_read(&ack.conversation_id, ack.seq).await?;
//! client.close().await;
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod config;
mod connection;
mod connector;
mod devices;
pub mod error;
pub mod event;
pub mod file_persistence;
mod groups;
pub mod persist;
pub mod token;
mod transport;

pub use client::{Client, new_client_msg_id};
pub use config::ClientConfig;
pub use connector::{Connected, Connector};
pub use error::SdkError;
pub use event::{Event, Target};
pub use file_persistence::{FilePersistence, FilePersistenceError};
pub use persist::{MemoryPersistence, PendingSend, Persistence};
pub use tern_proto;
pub use token::TokenProvider;
pub use transport::{Scheme, Trust};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use crate::{Client, ClientConfig, Event, MemoryPersistence, Target};

    /// The crate doc's example, word for word but for the `tern_sdk::` paths.
    async fn run() -> Result<(), crate::SdkError> {
        let cfg = ClientConfig::new("127.0.0.1:7400", "<token for alice>");
        let (client, mut events) = Client::connect(cfg, Arc::new(MemoryPersistence::new())).await?;

        // Drain events in a task of their own while the app makes requests.
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Message(m) => println!("{} #{}: {:?}", m.conversation_id, m.seq, m.body),
                    other => println!("{other:?}"),
                }
            }
        });

        let ack = client
            .send(Target::Peer("bob".into()), "text/plain", Bytes::from_static(b"hi bob"))
            .await?;
        client.mark_read(&ack.conversation_id, ack.seq).await?;
        client.close().await;
        Ok(())
    }

    #[test]
    fn crate_doc_example_compiles() {
        // Not run: it needs a server. Building this test is the check.
        let _ = run;
    }
}
