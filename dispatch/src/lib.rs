//! Tern's dispatch: turns client requests into durable, ordered conversation state and pushes.
//!
//! - [`Dispatcher`] ([`dispatcher`]): routes one request to its handler and returns the answer.
//! - [`pipeline`]: group commit: sends wait in one queue, are appended to the store in batches
//!   (one durable write per batch), then acknowledged and pushed in sequence order.
//! - One module per request kind, each returning a reply frame and never touching a socket:
//!   [`send`], [`recall`], [`receipt`], [`sync`], [`conversations`], [`group`].
//! - [`devices`]: device check-in at login, the device list, logout, push registrations,
//!   the per-class login policy; [`devices::Sessions`] (who is connected, kicks).
//! - [`membership`]: who may use a conversation.
//! - [`offline`]: offline push: notifications for devices that are not connected (or do not
//!   acknowledge in time), handed to the notifier (`tern-notify`).
//! - [`push`]: the [`Pusher`] trait through which deliveries reach connections.
//! - [`link`]: the worker's side of gateway links (distributed mode).
//! - [`route`]: the distributed-mode [`Pusher`]: Redis presence lookup, one Push per gateway.
//! - [`batching`]: when a group commit waits for company (never at low load).
//! - [`config`], [`error`], [`metrics`].
//!
//! Dispatch is stateless apart from the store: any worker can serve any request.

pub mod batching;
pub mod config;
pub mod conversations;
pub mod devices;
pub mod dispatcher;
pub mod error;
pub mod group;
pub mod link;
pub mod membership;
pub mod metrics;
pub mod offline;
pub mod pipeline;
pub mod push;
pub mod recall;
pub mod receipt;
pub mod route;
pub mod send;
pub mod sync;

pub use config::DispatchConfig;
pub use dispatcher::{BoxFuture, Dispatcher, Origin};
pub use error::DispatchError;
pub use pipeline::Reply;
pub use push::{ConnRef, Pusher};
