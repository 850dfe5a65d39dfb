//! Shared by the integration tests: the push services themselves are tern-testkit's imitations
//! (`tern_testkit::push_services`); here are the notifications and limits the tests use.
#![allow(dead_code)] // Each test file uses a part.

use std::time::Duration;

use tern_notify::{Mention, Notification, Target};
pub use tern_testkit::push_services::GUARD;
use tokio::sync::mpsc;

/// Waits for an event on a channel, failing the test after [`GUARD`].
pub async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(GUARD, rx.recv()).await.expect("an event within the guard").expect("open")
}

/// A notification for `user`/`device` at `target` in `conversation`.
pub fn notification(
    user: &str,
    device: &str,
    target: Target,
    conversation: &str,
    seq: u64,
) -> Notification {
    Notification {
        user_id: user.into(),
        device_id: device.into(),
        target,
        conversation_id: conversation.into(),
        seq,
        sender_user_id: "sender".into(),
        mention: Mention::None,
        muted: false,
        is_group: conversation.starts_with("g:"),
        preview: Some(tern_notify::Preview {
            title: "Sender".into(),
            body: "the secret text".into(),
        }),
    }
}

/// Limits for tests: quick backoff, short grace.
pub fn limits(
    concurrency: usize,
    queue: usize,
    attempts: u32,
    timeout: Duration,
) -> tern_notify::ProviderLimits {
    tern_notify::ProviderLimits {
        concurrency,
        queue_capacity: queue,
        request_timeout: timeout,
        connect_timeout: Duration::from_secs(5),
        max_attempts: attempts,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
    }
}
