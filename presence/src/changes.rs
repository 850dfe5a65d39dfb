//! The presence change feed, for caches of presence (the dispatch router's).
//!
//! Every presence write (a batch of logins, a removal, a refresh) also increments the counter
//! `{prefix}pgen` and publishes, in the same script or pipeline, on channel `{prefix}pchanges`
//! the message `"{epoch} {gen} {user} {user} ..."`: which users' entries may have changed, with
//! the counter's new value. `{prefix}pepoch` names the counter's lifetime: it is set (to the
//! server's clock) whenever the counter starts over, so a Redis that lost its data (a restart
//! without persistence, FLUSHALL) is a new epoch and caches start from scratch.
//!
//! A cache that applied every message up to the [`Mark`] read *after* an event saw every
//! presence write made before it: [`Presence::change_mark`] is the barrier. (User ids never
//! contain a space.)

use std::pin::Pin;

use futures_core::Stream;

use crate::{Presence, PresenceError};

/// Increments the counter (starting a new epoch when it starts over) and publishes the change
/// of the users in `users` (a Lua table of ids). Appended to every presence-writing script;
/// needs `gen_key`, `epoch_key` and `channel` as locals.
pub(crate) const ANNOUNCE: &str = r#"
local function announce(users, gen_key, epoch_key, channel)
  local g = redis.call('INCR', gen_key)
  local e = redis.call('GET', epoch_key)
  if (not e) or g == 1 then
    local t = redis.call('TIME')
    e = t[1] .. t[2]
    redis.call('SET', epoch_key, e)
  end
  redis.call('PUBLISH', channel, e .. ' ' .. g .. ' ' .. table.concat(users, ' '))
end
"#;

/// A point of the change feed: its epoch and the counter (`pgen`) within it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mark {
    /// The counter's lifetime ("" before any write: there is no feed yet).
    pub epoch: String,
    /// The counter's value.
    pub count: u64,
}

/// One message of the feed: users whose presence may have changed as of `mark`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The counter's value after this change.
    pub mark: Mark,
    /// The users concerned.
    pub users: Vec<String>,
}

impl Change {
    /// Parses a feed message (`None`: not one).
    pub fn parse(payload: &str) -> Option<Change> {
        let mut parts = payload.split(' ');
        let epoch = parts.next().filter(|e| !e.is_empty())?.to_owned();
        let count = parts.next()?.parse().ok()?;
        let users = parts.filter(|u| !u.is_empty()).map(str::to_owned).collect();
        Some(Change { mark: Mark { epoch, count }, users })
    }
}

/// A subscription to the feed ([`Presence::subscribe_changes`]).
pub struct ChangeStream {
    stream: redis::aio::PubSubStream,
}

impl ChangeStream {
    /// The next change; `None` when the subscription ended (the connection dropped: every
    /// message from then on is lost, so a cache must start over when it resubscribes).
    pub async fn next(&mut self) -> Option<Change> {
        loop {
            let msg = std::future::poll_fn(|cx| Pin::new(&mut self.stream).poll_next(cx)).await?;
            match std::str::from_utf8(msg.get_payload_bytes()).ok().and_then(Change::parse) {
                Some(change) => return Some(change),
                None => tracing::warn!("presence change feed: a malformed message, skipped"),
            }
        }
    }
}

impl Presence {
    pub(crate) fn gen_key(&self) -> String {
        format!("{}pgen", self.cfg.key_prefix)
    }

    pub(crate) fn epoch_key(&self) -> String {
        format!("{}pepoch", self.cfg.key_prefix)
    }

    pub(crate) fn channel(&self) -> String {
        format!("{}pchanges", self.cfg.key_prefix)
    }

    /// The feed's current mark, one round trip (epoch "" when nothing was ever written).
    pub async fn change_mark(&self) -> Result<Mark, PresenceError> {
        let mut conn = self.conn();
        let (count, epoch): (Option<u64>, Option<String>) = self
            .bounded(
                redis::cmd("MGET").arg(self.gen_key()).arg(self.epoch_key()).query_async(&mut conn),
            )
            .await?;
        Ok(Mark { epoch: epoch.unwrap_or_default(), count: count.unwrap_or(0) })
    }

    /// Subscribes to the feed on a connection of its own.
    pub async fn subscribe_changes(&self) -> Result<ChangeStream, PresenceError> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(self.channel()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = self.bounded(connect).await?;
        Ok(ChangeStream { stream: pubsub.into_on_message() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_feed_messages_and_refuses_others() {
        let c = Change::parse("1700000000123 42 alice bob").unwrap();
        assert_eq!(c.mark, Mark { epoch: "1700000000123".into(), count: 42 });
        assert_eq!(c.users, ["alice", "bob"]);
        assert_eq!(Change::parse("e 7 ").unwrap().users, Vec::<String>::new());
        assert_eq!(Change::parse(""), None);
        assert_eq!(Change::parse("e x alice"), None);
        assert_eq!(Change::parse(" 1 alice"), None);
    }
}
