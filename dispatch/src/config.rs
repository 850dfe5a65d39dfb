//! Dispatch settings.

use std::time::Duration;

/// Dispatch settings. Defaults suit a development server.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// How long after sending a sender may recall a message. Default 2 minutes.
    pub recall_window: Duration,
    /// Most messages appended in one durable write (group commit). Larger batches share one
    /// fsync among more sends; each batch's messages wait for the whole batch. Default 512.
    pub max_commit_batch: usize,
    /// Longest a group commit waits for more requests after its first one, and only when the
    /// recent arrival rate predicts company within it (`batching`): the most latency batching
    /// adds. Under load it saves fsyncs (CPU); at low load nothing waits. Zero: never wait.
    /// Default 250 µs.
    pub commit_delay: Duration,
    /// Sends waiting for the pipeline; past it sends are refused with UNAVAILABLE (the client
    /// retries with the same client_msg_id). Bounds memory at about this many messages.
    /// Default 65536.
    pub pipeline_queue: usize,
    /// Sync page size when the client asks for 0. Default 100.
    pub default_page: u32,
    /// Largest sync or conversation-list page. Default 500.
    pub max_page: u32,
    /// Largest content_type, in bytes. Default 128.
    pub max_content_type_bytes: usize,
    /// Largest message body, in bytes. It must leave room for the message's other fields in a
    /// Deliver frame under the gateway's max frame size. Default 62 KiB (64 KiB frames).
    pub max_body_bytes: usize,
    /// Most encoded bytes of messages in one sync page (a page always holds at least one
    /// message). Keeps pages under the clients' max frame size. Default 60 KiB.
    pub max_page_bytes: usize,
    /// Most members a new group may have. Default 10,000.
    pub max_group_members: u32,
    /// Largest group whose receipts are pushed to every member and listed by GetReceipts;
    /// larger groups keep each member's watermarks (unread counts) without read-by lists.
    /// Default 100.
    pub receipt_push_max_members: u32,
    /// Most member rows the membership cache holds over all groups (about 100 B each).
    /// Default 1,000,000.
    pub group_cache_rows: usize,
    /// How many devices of each class a user may have connected at once
    /// ([`crate::devices::DevicePolicy`]).
    pub devices: crate::devices::DevicePolicy,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            recall_window: Duration::from_secs(120),
            max_commit_batch: 512,
            commit_delay: Duration::from_micros(250),
            pipeline_queue: 65536,
            default_page: 100,
            max_page: 500,
            max_content_type_bytes: 128,
            max_body_bytes: 62 * 1024,
            max_page_bytes: 60 * 1024,
            max_group_members: 10_000,
            receipt_push_max_members: 100,
            group_cache_rows: 1_000_000,
            devices: crate::devices::DevicePolicy::default(),
        }
    }
}

impl DispatchConfig {
    /// Sets the body and page limits to fit frames of `max_frame_bytes`.
    pub fn fit_frames(mut self, max_frame_bytes: usize) -> Self {
        self.max_body_bytes = max_frame_bytes.saturating_sub(2048).max(256);
        self.max_page_bytes = max_frame_bytes.saturating_sub(4096).max(512);
        self
    }

    /// A client's requested page size, defaulted and capped.
    pub fn page(&self, requested: u32) -> u32 {
        match requested {
            0 => self.default_page,
            n => n.min(self.max_page),
        }
    }
}
