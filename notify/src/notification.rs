//! What the caller hands the notifier, what goes out after coalescing, and the text it shows.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::config::ContentConfig;
use crate::rules::{Mention, PushFacts};

/// One committed message for one offline (or unacknowledged) member device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The member to notify.
    pub user_id: String,
    /// Their device.
    pub device_id: String,
    /// Where that device receives pushes.
    pub target: Target,
    /// The conversation the message is in.
    pub conversation_id: String,
    /// The message's sequence number in the conversation.
    pub seq: u64,
    /// Who sent it.
    pub sender_user_id: String,
    /// How it mentions the member.
    pub mention: Mention,
    /// The member muted the conversation (see [`crate::rules`]).
    pub muted: bool,
    /// A group conversation (else 1:1).
    pub is_group: bool,
    /// Title and text to show, used only with `content.include_preview`; the caller may leave
    /// it out whenever previews are off.
    pub preview: Option<Preview>,
}

impl Notification {
    /// The facts the mute and mention rule looks at.
    pub fn facts(&self) -> PushFacts {
        PushFacts {
            muted: self.muted,
            mention: self.mention,
            own_message: self.sender_user_id == self.user_id,
        }
    }
}

/// Title and text of a message, for previews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// E.g. the sender's display name, or "Sender in Group".
    pub title: String,
    /// The message text.
    pub body: String,
}

/// A device's push address, as the device registered it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Apple Push Notification service.
    Apns {
        /// The device token (hex).
        token: String,
        /// The app's bundle id (`apns-topic`).
        topic: String,
        /// A development build's token (the sandbox environment).
        sandbox: bool,
    },
    /// Firebase Cloud Messaging (HTTP v1).
    Fcm {
        /// The registration token.
        token: String,
    },
    /// The operator's webhook.
    Webhook {
        /// Whatever the operator's service gave the device.
        token: String,
    },
}

impl Target {
    /// Which provider serves it.
    pub fn provider(&self) -> Provider {
        match self {
            Target::Apns { .. } => Provider::Apns,
            Target::Fcm { .. } => Provider::Fcm,
            Target::Webhook { .. } => Provider::Webhook,
        }
    }

    /// The device token.
    pub fn token(&self) -> &str {
        match self {
            Target::Apns { token, .. } | Target::Fcm { token } | Target::Webhook { token } => token,
        }
    }
}

/// Tokens are credentials of a sort: logs show their first characters only.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short: String = self.token().chars().take(8).collect();
        match self {
            Target::Apns { topic, sandbox, .. } => f
                .debug_struct("Apns")
                .field("token", &format_args!("{short}…"))
                .field("topic", topic)
                .field("sandbox", sandbox)
                .finish(),
            Target::Fcm { .. } => {
                f.debug_struct("Fcm").field("token", &format_args!("{short}…")).finish()
            }
            Target::Webhook { .. } => {
                f.debug_struct("Webhook").field("token", &format_args!("{short}…")).finish()
            }
        }
    }
}

/// A push service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
    /// The operator's webhook.
    Webhook,
}

impl Provider {
    /// Every provider, in metric order.
    pub const ALL: [Provider; 3] = [Provider::Apns, Provider::Fcm, Provider::Webhook];

    /// Its name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Apns => "apns",
            Provider::Fcm => "fcm",
            Provider::Webhook => "webhook",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// What goes out after coalescing: the latest notification of a burst and how many messages
/// the burst held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The burst's latest notification (its target and seq are used).
    pub latest: Notification,
    /// Messages merged into this push (1: no merge).
    pub count: u32,
    /// The loudest mention of the burst.
    pub mention: Mention,
}

impl Push {
    /// A push for one notification.
    pub fn single(n: Notification) -> Self {
        let mention = n.mention;
        Self { latest: n, count: 1, mention }
    }

    /// The id under which providers replace an older notification of the same conversation
    /// (APNs `apns-collapse-id` and `thread-id`, FCM `collapse_key` and `tag`): `c` and 32 hex
    /// digits of SHA-256 of the conversation id, since APNs allows 64 bytes and conversation
    /// ids can be longer.
    pub fn collapse_id(&self) -> String {
        collapse_id(&self.latest.conversation_id)
    }
}

/// See [`Push::collapse_id`].
pub fn collapse_id(conversation_id: &str) -> String {
    let digest = Sha256::digest(conversation_id.as_bytes());
    let mut out = String::with_capacity(33);
    out.push('c');
    out.push_str(&crate::hex(&digest[..16]));
    out
}

/// The visible text of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// Empty: none.
    pub title: String,
    /// Never empty.
    pub body: String,
}

impl Content {
    /// The text `push` shows under `config`. With previews off (the default) no message text
    /// is used: "New message", or "N new messages" for a merged burst.
    pub fn render(push: &Push, config: &ContentConfig) -> Content {
        let count_text = match push.count {
            0 | 1 => "New message".to_owned(),
            n => format!("{n} new messages"),
        };
        match (&push.latest.preview, config.include_preview) {
            (Some(p), true) => {
                let mut body: String = p.body.chars().take(config.max_preview_chars).collect();
                if body.len() < p.body.len() {
                    body.push('…');
                }
                if body.is_empty() {
                    body = count_text;
                } else if push.count > 1 {
                    body = format!("{body} (+{} more)", push.count - 1);
                }
                Content { title: p.title.clone(), body }
            }
            _ => Content { title: config.title.clone(), body: count_text },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(conversation: &str, seq: u64) -> Notification {
        Notification {
            user_id: "bob".into(),
            device_id: "phone".into(),
            target: Target::Fcm { token: "tok".into() },
            conversation_id: conversation.into(),
            seq,
            sender_user_id: "alice".into(),
            mention: Mention::None,
            muted: false,
            is_group: false,
            preview: Some(Preview { title: "Alice".into(), body: "secret plans".into() }),
        }
    }

    #[test]
    fn no_message_text_leaves_by_default() {
        let config = ContentConfig::default();
        let mut push = Push::single(sample("dm:alice:bob", 1));
        assert_eq!(
            Content::render(&push, &config),
            Content { title: "".into(), body: "New message".into() }
        );
        push.count = 3;
        assert_eq!(Content::render(&push, &config).body, "3 new messages");
    }

    #[test]
    fn previews_when_configured_are_cut_to_length() {
        let config =
            ContentConfig { include_preview: true, max_preview_chars: 6, ..Default::default() };
        let mut push = Push::single(sample("dm:alice:bob", 1));
        assert_eq!(
            Content::render(&push, &config),
            Content { title: "Alice".into(), body: "secret…".into() }
        );
        push.count = 2;
        assert_eq!(Content::render(&push, &config).body, "secret… (+1 more)");
        push.latest.preview = None;
        assert_eq!(Content::render(&push, &config).body, "2 new messages");
    }

    #[test]
    fn collapse_ids_fit_apns_and_differ_per_conversation() {
        let long = format!("dm:{}:{}", "a".repeat(128), "b".repeat(128));
        let id = collapse_id(&long);
        assert_eq!(id.len(), 33);
        assert!(id.len() <= 64);
        assert_ne!(collapse_id("g:1"), collapse_id("g:2"));
        assert_eq!(collapse_id("g:1"), collapse_id("g:1"));
    }

    #[test]
    fn debug_hides_tokens() {
        let t =
            Target::Apns { token: "0123456789abcdef".into(), topic: "app".into(), sandbox: false };
        let text = format!("{t:?}");
        assert!(text.contains("01234567…") && !text.contains("89abcdef"), "{text}");
    }
}
