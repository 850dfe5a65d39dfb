//! Who gets a push: the mute and mention rule, one pure function.
//!
//! The rule, in order:
//! 1. A member's own message (sent from another of their devices) never notifies them.
//! 2. A conversation that is not muted notifies.
//! 3. A muted conversation notifies only when the member is mentioned by name (`@user`), or by
//!    `@all` while `all_mention_overrides_mute` is on (the default).
//!
//! Whether the device is offline (or has not acknowledged in time) is the caller's decision:
//! it only hands the notifier notifications for such devices.

use serde::{Deserialize, Serialize};

/// How a message mentions the member a notification is for.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Mention {
    /// Not mentioned.
    #[default]
    None,
    /// `@all` (everyone in the group).
    All,
    /// `@user`: this member by name.
    User,
}

impl Mention {
    /// The stronger of two mentions (a merged burst is as loud as its loudest message).
    pub fn merge(self, other: Mention) -> Mention {
        self.max(other)
    }

    /// Its name in payloads and metrics: `none`, `all`, `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mention::None => "none",
            Mention::All => "all",
            Mention::User => "user",
        }
    }
}

/// What the rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send a push.
    Notify,
    /// The conversation is muted and the mention (if any) does not override it.
    Muted,
    /// The member sent the message themselves.
    OwnMessage,
}

/// The facts the rule looks at for one member and one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushFacts {
    /// The member muted the conversation.
    pub muted: bool,
    /// How the message mentions the member.
    pub mention: Mention,
    /// The member is the message's sender.
    pub own_message: bool,
}

/// The rule of this module's doc; `all_overrides_mute` is the `@all` switch.
pub fn decide(facts: PushFacts, all_overrides_mute: bool) -> Decision {
    if facts.own_message {
        return Decision::OwnMessage;
    }
    if !facts.muted {
        return Decision::Notify;
    }
    match facts.mention {
        Mention::User => Decision::Notify,
        Mention::All if all_overrides_mute => Decision::Notify,
        Mention::All | Mention::None => Decision::Muted,
    }
}

/// Whether [`decide`] says to notify.
pub fn should_notify(facts: PushFacts, all_overrides_mute: bool) -> bool {
    decide(facts, all_overrides_mute) == Decision::Notify
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(muted: bool, mention: Mention, own_message: bool) -> PushFacts {
        PushFacts { muted, mention, own_message }
    }

    #[test]
    fn the_whole_truth_table() {
        use Decision::*;
        use Mention::{All, User};
        let none = Mention::None;
        let cases = [
            // muted, mention, own, @all overrides → decision
            (false, none, false, true, Notify),
            (false, All, false, true, Notify),
            (false, User, false, false, Notify),
            (true, none, false, true, Muted),
            (true, User, false, false, Notify),
            (true, User, false, true, Notify),
            (true, All, false, true, Notify),
            (true, All, false, false, Muted),
            (false, none, true, true, OwnMessage),
            (true, User, true, true, OwnMessage),
        ];
        for (muted, mention, own, all, want) in cases {
            assert_eq!(decide(facts(muted, mention, own), all), want, "{muted} {mention:?} {own}");
            assert_eq!(should_notify(facts(muted, mention, own), all), want == Notify);
        }
    }

    #[test]
    fn a_merge_keeps_the_loudest_mention() {
        assert_eq!(Mention::None.merge(Mention::All), Mention::All);
        assert_eq!(Mention::User.merge(Mention::All), Mention::User);
        assert_eq!(Mention::None.merge(Mention::None), Mention::None);
    }
}
