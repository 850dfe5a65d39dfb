//! Tern's offline-push notifier: when a committed message is for a member device that is
//! offline (or has not acknowledged in time), the caller hands a [`Notification`] to the
//! [`Notifier`], which applies the mute and mention rule, coalesces bursts and pushes through
//! APNs, FCM HTTP v1 or a signed webhook — without ever blocking the message path.
//!
//! Pure parts (no I/O, no clock of their own):
//! - [`rules`]: the mute and mention rule ([`should_notify`]).
//! - [`coalesce`]: one push per (user, device, conversation) per window, with a count.
//! - [`retry`]: what an attempt's answer means ([`Outcome`]) and bounded backoff.
//! - [`notification`]: the input, the coalesced [`Push`], the text it shows ([`Content`]).
//! - [`apns`], [`fcm`], [`webhook`]: each provider's request shape and answer classification,
//!   beside the client that sends them (each module's doc says what it was verified against:
//!   local imitations of the services only).
//!
//! Running parts:
//! - [`notifier`]: [`Notifier::start`], the non-blocking [`NotifyHandle::enqueue`], the
//!   provider lanes and [`Notifier::shutdown`].
//! - `http`: the shared hyper 1 client (HTTP/2, rustls with ring).
//! - [`config`], [`error`], [`metrics`]; `fuzzing`: the body of the `push_answer` fuzz target.
//!
//! The `[notify]` configuration section is in this crate's `README.md` and `etc/tern.toml`.

pub mod apns;
pub mod coalesce;
pub mod config;
pub mod error;
pub mod fcm;
#[doc(hidden)]
pub mod fuzzing;
mod http;
pub mod metrics;
pub mod notification;
pub mod notifier;
pub mod retry;
pub mod rules;
pub mod webhook;

pub use config::{
    ApnsConfig, ContentConfig, FcmConfig, NotifyConfig, ProviderLimits, WebhookConfig,
};
pub use error::StartError;
pub use metrics::NotifyMetrics;
pub use notification::{Content, Notification, Preview, Provider, Push, Target};
pub use notifier::{Enqueued, InvalidToken, Notifier, NotifyHandle};
pub use retry::Outcome;
pub use rules::{Decision, Mention, PushFacts, should_notify};

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
