//! Notifier settings: one plain struct per provider, serde with documented defaults.
//!
//! Durations are written as in `etc/tern.toml`: `"500ms"`, `"3s"`, `"2m"`, `"1h"`, `"1d"`.
//! The proposed `[notify]` section is in this crate's `README.md`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the notifier needs. A provider left out (`None`) is not used: notifications for
/// its targets are counted as `unconfigured` and dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Notifications waiting for the coalescer. `enqueue` never waits: past this many it drops
    /// the notification and counts it (`dropped{reason="queue_full"}`). About 300 B each.
    /// Default 10,000.
    pub queue_capacity: usize,
    /// After a notification for a (user, device, conversation) goes out, further ones within
    /// this window are merged and sent once when it ends, with their count. Zero: never merge.
    /// Default 3 s.
    #[serde(with = "duration")]
    pub coalesce_window: Duration,
    /// Most (user, device, conversation) windows open at once (about 400 B each). Past it new
    /// keys are sent at once without merging (`coalesce_untracked`). Default 100,000.
    pub max_coalesce_keys: usize,
    /// What a notification shows.
    pub content: ContentConfig,
    /// How long a provider keeps trying to deliver a notification to an offline device
    /// (`apns-expiration`, FCM `android.ttl`). Default 1 day.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Tokens remembered as invalid (reported once, later notifications to them dropped until
    /// `NotifyHandle::forget_invalid`). About 200 B each; the oldest is forgotten first; 0:
    /// none remembered, every refusal reported. Default 10,000.
    pub invalid_token_memory: usize,
    /// How long `shutdown` lets queued and in-flight pushes finish before abandoning them.
    /// Default 5 s.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// When a connected device is notified too (read by dispatch): if its user has not
    /// acknowledged a message (delivered watermark, PROTOCOL.md section 11) this long after
    /// it. A suspended phone app keeps its connection open for minutes; this is what wakes
    /// it. Zero: connected devices are never notified. Costs one watermark read per
    /// conversation when due. Default 10 s.
    #[serde(with = "duration")]
    pub ack_timeout: Duration,
    /// Most (conversation, user, device) watched for the ack timeout at once (about 400 B
    /// each); past it a connected device is not watched (counted). Default 100,000.
    pub max_watched: usize,
    /// How long dispatch caches a user's push registrations (read by dispatch). A change
    /// through another dispatch worker reaches pushes within this; the worker's own changes
    /// at once. Zero: read at every message. Default 10 s.
    #[serde(with = "duration")]
    pub registration_ttl: Duration,
    /// Most users whose registrations dispatch caches (about 200 B each plus the tokens).
    /// Default 100,000.
    pub registration_cache_users: usize,
    /// Extra trusted root certificates (PEM) for the providers' TLS, added to the system's
    /// roots; empty: none. Default "". (The FCM OAuth2 token endpoint is reached by `gcp_auth` with the
    /// system roots only.)
    pub ca_file: PathBuf,
    /// Apple Push Notification service. Default none.
    pub apns: Option<ApnsConfig>,
    /// Firebase Cloud Messaging, HTTP v1 API. Default none.
    pub fcm: Option<FcmConfig>,
    /// A signed webhook to the operator's own push service. Default none.
    pub webhook: Option<WebhookConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            coalesce_window: Duration::from_secs(3),
            max_coalesce_keys: 100_000,
            content: ContentConfig::default(),
            ttl: Duration::from_secs(86_400),
            invalid_token_memory: 10_000,
            shutdown_grace: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(10),
            max_watched: 100_000,
            registration_ttl: Duration::from_secs(10),
            registration_cache_users: 100_000,
            ca_file: PathBuf::new(),
            apns: None,
            fcm: None,
            webhook: None,
        }
    }
}

/// What leaves the server in a notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContentConfig {
    /// Show the sender's title and the message preview the caller supplies. Off by default:
    /// no message text leaves the server, the notification reads "New message" (or "3 new
    /// messages"). Conversation ids and sequence numbers are always sent (the app needs them
    /// to open the conversation); a 1:1 conversation id names its two users.
    pub include_preview: bool,
    /// Title when no preview is shown; empty: none. Default "" (the OS shows the app name).
    pub title: String,
    /// Longest preview body, in characters, when previews are on. Default 200.
    pub max_preview_chars: usize,
    /// Whether an `@all` mention reaches members who muted the conversation (an `@user`
    /// mention always does). Default true.
    pub all_mention_overrides_mute: bool,
}

impl Default for ContentConfig {
    fn default() -> Self {
        Self {
            include_preview: false,
            title: String::new(),
            max_preview_chars: 200,
            all_mention_overrides_mute: true,
        }
    }
}

/// Per-provider limits, the same keys under each provider's section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderLimits {
    /// Requests in flight at once (HTTP/2 streams for APNs and FCM); a push waiting to retry
    /// keeps its slot. Default 32.
    pub concurrency: usize,
    /// Pushes waiting for a free request slot; past it they are dropped and counted
    /// (`dropped{reason="provider_full"}`), so a slow provider never holds up the others.
    /// Default 1,000.
    pub queue_capacity: usize,
    /// Longest wait for one request's answer; then it counts as a retryable failure.
    /// Default 10 s.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Longest wait for a TCP connection. Default 5 s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Attempts per push, the first included, on timeouts, 429 and 5xx. Default 3.
    pub max_attempts: u32,
    /// Wait before the first retry, doubled after each (half of it random). Default 500 ms.
    #[serde(with = "duration")]
    pub backoff_base: Duration,
    /// Longest wait between attempts; a `Retry-After` asking for more gives up. Default 30 s.
    #[serde(with = "duration")]
    pub backoff_max: Duration,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        Self {
            concurrency: 32,
            queue_capacity: 1_000,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_attempts: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// `[notify.apns]`: token-based (JWT, ES256) authentication with a `.p8` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApnsConfig {
    /// The `.p8` signing key (PKCS#8 PEM) from the Apple developer account.
    pub key_file: PathBuf,
    /// Its 10-character key id (the JWT's `kid`).
    pub key_id: String,
    /// The 10-character team id (the JWT's `iss`).
    pub team_id: String,
    /// The `apns-topic` (the app's bundle id) for registrations that name none (their
    /// `app_id` empty). Default "": such registrations fail (counted).
    pub topic: String,
    /// Base URL for production device tokens. Default `https://api.push.apple.com`.
    pub production_url: String,
    /// Base URL for development (sandbox) device tokens.
    /// Default `https://api.sandbox.push.apple.com`.
    pub sandbox_url: String,
    /// Limits.
    pub limits: ProviderLimits,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        Self {
            key_file: PathBuf::new(),
            key_id: String::new(),
            team_id: String::new(),
            topic: String::new(),
            production_url: "https://api.push.apple.com".into(),
            sandbox_url: "https://api.sandbox.push.apple.com".into(),
            limits: ProviderLimits::default(),
        }
    }
}

/// `[notify.fcm]`: the FCM HTTP v1 API with a service account's OAuth2 access tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FcmConfig {
    /// The service account's JSON key file (its `token_uri` is where access tokens come from).
    pub service_account_file: PathBuf,
    /// The Firebase project id; empty: the key file's `project_id`. Default "".
    pub project_id: String,
    /// Base URL of the API. Default `https://fcm.googleapis.com`.
    pub base_url: String,
    /// Limits.
    pub limits: ProviderLimits,
}

impl Default for FcmConfig {
    fn default() -> Self {
        Self {
            service_account_file: PathBuf::new(),
            project_id: String::new(),
            base_url: "https://fcm.googleapis.com".into(),
            limits: ProviderLimits::default(),
        }
    }
}

/// `[notify.webhook]`: a JSON POST signed with HMAC-SHA256 (see [`crate::webhook`]).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST, `http://` or `https://`.
    pub url: String,
    /// The shared secret for `X-Tern-Signature`; empty: read from `secret_file`.
    pub secret: String,
    /// A file holding the secret (trailing whitespace trimmed), when `secret` is empty.
    pub secret_file: Option<PathBuf>,
    /// Limits.
    pub limits: ProviderLimits,
}

/// The secret stays out of logs.
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &if self.secret.is_empty() { "" } else { "<hidden>" })
            .field("secret_file", &self.secret_file)
            .field("limits", &self.limits)
            .finish()
    }
}

impl NotifyConfig {
    /// Whether any provider is configured (else offline push does not run).
    pub fn any_provider(&self) -> bool {
        self.apns.is_some() || self.fcm.is_some() || self.webhook.is_some()
    }
}

/// Durations as text: a whole number and a unit (`ms`, `s`, `m`, `h`, `d`).
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "bad duration {text:?}: a whole number and ms, s, m, h or d"
            ))
        })
    }

    /// Parses `"500ms"`, `"3s"`, `"2m"`, `"1h"`, `"1d"`.
    pub fn parse(text: &str) -> Option<Duration> {
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let (n, unit) = text.split_at(digits);
        let n: u64 = n.parse().ok()?;
        let ms = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        Some(Duration::from_millis(n.checked_mul(ms)?))
    }

    /// The largest unit that expresses `d` exactly.
    pub fn format(d: Duration) -> String {
        let ms = d.as_millis();
        for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if ms != 0 && ms.is_multiple_of(size) {
                return format!("{}{unit}", ms / size);
            }
        }
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (text, ms) in [("500ms", 500), ("3s", 3_000), ("2m", 120_000), ("1d", 86_400_000)] {
            assert_eq!(duration::parse(text), Some(Duration::from_millis(ms)));
            assert_eq!(duration::format(Duration::from_millis(ms)), text);
        }
        assert_eq!(duration::format(Duration::ZERO), "0ms");
        for bad in ["", "3", "s", "3 s", "-1s", "1.5s", "99999999999999999999d"] {
            assert_eq!(duration::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn readme_section_parses_to_the_defaults() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + readme[start..].find("```").expect("its end");
        #[derive(Deserialize)]
        struct Root {
            notify: NotifyConfig,
        }
        let root: Root = toml_from_str(&readme[start..end]);
        // The README shows every provider, commented values aside.
        let expected = NotifyConfig {
            apns: root.notify.apns.clone(),
            fcm: root.notify.fcm.clone(),
            webhook: root.notify.webhook.clone(),
            ..Default::default()
        };
        assert_eq!(root.notify, expected);
        let apns = root.notify.apns.expect("apns section");
        assert_eq!(apns.production_url, ApnsConfig::default().production_url);
        assert_eq!(apns.limits, ProviderLimits::default());
        let fcm = root.notify.fcm.expect("fcm section");
        assert_eq!(fcm.base_url, FcmConfig::default().base_url);
        assert_eq!(root.notify.webhook.expect("webhook section").limits, ProviderLimits::default());
    }

    fn toml_from_str<T: serde::de::DeserializeOwned>(text: &str) -> T {
        toml::from_str(text).expect("README toml parses")
    }
}
