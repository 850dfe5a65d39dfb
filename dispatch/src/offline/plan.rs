//! Who gets a notification for one committed message, decided without I/O: from the
//! message's facts, the recipients' push registrations, which of their devices are connected
//! and who muted the conversation.
//!
//! - A device with a registration that is **not connected** is notified now.
//! - A connected one is **watched** ([`super::watch`]): notified only if its user has not
//!   acknowledged the message (delivered watermark) when the ack timeout ends. So is every
//!   device when it is unknown who is connected (presence unreachable): a watermark check
//!   later beats a burst of pushes to phones that may well be online.
//! - The sender is never notified (their other devices get the message as a Deliver).
//! - Mute and mention are facts on each [`Notification`]; the notifier's rule applies them.

use std::collections::HashSet;

use tern_notify::{Mention, Notification, Preview, Target};
use tern_store::{PushProvider, PushRegistration};

/// The facts of one committed message that its notifications need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Its conversation.
    pub conversation_id: String,
    /// Its seq.
    pub seq: u64,
    /// Who sent it.
    pub sender_user_id: String,
    /// Members it mentions by name.
    pub mention_user_ids: Vec<String>,
    /// It mentions everyone (`@all`, allowed to admins only).
    pub mention_all: bool,
    /// A group conversation.
    pub is_group: bool,
    /// Title and text for previews, when the operator turned previews on and the body is text.
    pub preview: Option<Preview>,
}

impl Alert {
    /// How the message mentions `user`.
    pub fn mention_of(&self, user: &str) -> Mention {
        if self.mention_user_ids.iter().any(|u| u == user) {
            Mention::User
        } else if self.mention_all {
            Mention::All
        } else {
            Mention::None
        }
    }
}

/// The preview of a message: its sender as the title and its body when it is UTF-8 text of a
/// `text/*` content type (or none given); other content shows no preview.
pub fn preview(sender: &str, content_type: &str, body: &[u8]) -> Option<Preview> {
    let texty = content_type.is_empty() || content_type.starts_with("text/");
    let body = std::str::from_utf8(body).ok().filter(|_| texty)?;
    Some(Preview { title: sender.to_owned(), body: body.to_owned() })
}

/// Where a registration's pushes go, or `None` for one the notifier cannot serve.
pub fn target(reg: &PushRegistration) -> Option<Target> {
    match reg.provider {
        PushProvider::Apns => Some(Target::Apns {
            token: reg.token.clone(),
            topic: reg.app_id.clone(),
            sandbox: reg.sandbox,
        }),
        PushProvider::Fcm => Some(Target::Fcm { token: reg.token.clone() }),
        PushProvider::Webhook => Some(Target::Webhook { token: reg.token.clone() }),
        PushProvider::Unspecified => None,
    }
}

/// One device with a push registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Its user.
    pub user_id: String,
    /// The device.
    pub device_id: String,
    /// Its registration.
    pub push: PushRegistration,
}

/// What to do for one message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Planned {
    /// Notify now: the device is not connected.
    pub now: Vec<Notification>,
    /// Notify if still unacknowledged after the ack timeout: the device is connected (or it is
    /// unknown whether it is).
    pub watch: Vec<Notification>,
}

/// Plans the notifications of `alert` for the `registered` devices of its recipients.
/// `online`: the connected (user, device) pairs, `None` when unknown. `muted`: the users who
/// muted the conversation.
pub fn plan(
    alert: &Alert,
    registered: &[Registered],
    online: Option<&HashSet<(String, String)>>,
    muted: &HashSet<String>,
) -> Planned {
    let mut out = Planned::default();
    for r in registered {
        if r.user_id == alert.sender_user_id {
            continue;
        }
        let Some(target) = target(&r.push) else { continue };
        let n = Notification {
            user_id: r.user_id.clone(),
            device_id: r.device_id.clone(),
            target,
            conversation_id: alert.conversation_id.clone(),
            seq: alert.seq,
            sender_user_id: alert.sender_user_id.clone(),
            mention: alert.mention_of(&r.user_id),
            muted: muted.contains(&r.user_id),
            is_group: alert.is_group,
            preview: alert.preview.clone(),
        };
        let connected = match online {
            Some(set) => set.contains(&(r.user_id.clone(), r.device_id.clone())),
            None => true,
        };
        if connected { out.watch.push(n) } else { out.now.push(n) }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            conversation_id: "g:team".into(),
            seq: 7,
            sender_user_id: "alice".into(),
            mention_user_ids: vec!["carol".into()],
            mention_all: false,
            is_group: true,
            preview: None,
        }
    }

    fn reg(user: &str, device: &str, provider: PushProvider) -> Registered {
        Registered {
            user_id: user.into(),
            device_id: device.into(),
            push: PushRegistration {
                provider,
                token: format!("tok-{user}-{device}"),
                app_id: "com.example.app".into(),
                sandbox: true,
                registered_ms: 1,
            },
        }
    }

    fn who(ns: &[Notification]) -> Vec<(&str, &str)> {
        ns.iter().map(|n| (n.user_id.as_str(), n.device_id.as_str())).collect()
    }

    #[test]
    fn offline_devices_now_connected_ones_watched_sender_never() {
        let registered = [
            reg("alice", "phone", PushProvider::Apns),
            reg("bob", "phone", PushProvider::Apns),
            reg("bob", "tablet", PushProvider::Fcm),
            reg("carol", "phone", PushProvider::Webhook),
        ];
        let online: HashSet<_> = [("bob".to_string(), "tablet".to_string())].into();
        let out = plan(&alert(), &registered, Some(&online), &HashSet::new());
        assert_eq!(who(&out.now), [("bob", "phone"), ("carol", "phone")]);
        assert_eq!(who(&out.watch), [("bob", "tablet")]);
        assert_eq!(out.now[1].mention, Mention::User, "carol is mentioned by name");
        assert_eq!(out.now[0].mention, Mention::None);
        assert_eq!(
            out.now[0].target,
            Target::Apns {
                token: "tok-bob-phone".into(),
                topic: "com.example.app".into(),
                sandbox: true
            }
        );
        assert_eq!(out.watch[0].target, Target::Fcm { token: "tok-bob-tablet".into() });
    }

    #[test]
    fn unknown_presence_watches_everyone_and_mutes_are_carried() {
        let registered =
            [reg("bob", "phone", PushProvider::Apns), reg("dave", "phone", PushProvider::Fcm)];
        let muted: HashSet<String> = ["dave".to_string()].into();
        let mut a = alert();
        a.mention_all = true;
        let out = plan(&a, &registered, None, &muted);
        assert!(out.now.is_empty());
        assert_eq!(who(&out.watch), [("bob", "phone"), ("dave", "phone")]);
        assert!(!out.watch[0].muted && out.watch[1].muted);
        assert_eq!(out.watch[1].mention, Mention::All);
    }

    #[test]
    fn unusable_registrations_are_skipped() {
        let registered = [reg("bob", "phone", PushProvider::Unspecified)];
        let out = plan(&alert(), &registered, Some(&HashSet::new()), &HashSet::new());
        assert_eq!(out, Planned::default());
    }

    #[test]
    fn previews_only_for_text() {
        let p = preview("alice", "text/plain", b"hi bob").unwrap();
        assert_eq!((p.title.as_str(), p.body.as_str()), ("alice", "hi bob"));
        assert!(preview("alice", "", b"plain").is_some());
        assert!(preview("alice", "image/png", b"\x89PNG").is_none());
        assert!(preview("alice", "text/plain", b"\xff\xfe").is_none());
    }
}
