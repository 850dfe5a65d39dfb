//! A user's conversation list on [`RedisStore`]: one ZRANGEBYLEX of `U:convs`, then one
//! atomic pipelined round trip for the page's entries, flags, receipts, mentions and (for a
//! group) member row and latest seq (costs: the crate doc, *Key layout*); and the notifier's
//! read of the same flags for many users of one conversation ([`RedisStore::muted_users`]).

use tern_store::{ConversationEntry, Watermarks};

use crate::error::RedisStoreError;
use crate::group::{is_group, parse_member};
use crate::keys::{FLAG_MUTED, FLAG_PINNED, MENTION_ALL, mention_field};
use crate::records::{parse_last, parse_watermarks};
use crate::store::RedisStore;

/// The flag bits of a `U:flags` field (`None`: no field, no flags); garbage is corrupt.
fn flag_bits(field: Option<&str>, key: impl FnOnce() -> String) -> Result<u8, RedisStoreError> {
    let Some(f) = field else { return Ok(0) };
    f.parse::<u8>()
        .ok()
        .filter(|b| *b <= FLAG_MUTED | FLAG_PINNED)
        .ok_or_else(|| RedisStoreError::Corrupt { key: key(), what: format!("flags {f:?}") })
}

impl RedisStore {
    /// [`tern_store::Store::muted_among`]: one pipeline of one `HGET U:flags C` per user (each
    /// user's flags live under their own tag), so one round trip of O(n) commands.
    pub(crate) async fn muted_users(
        &self,
        conversation_id: &str,
        user_ids: &[String],
    ) -> Result<Vec<String>, RedisStoreError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for u in user_ids {
            pipe.cmd("HGET").arg(self.keys.user_flags(u)).arg(conversation_id);
        }
        let fields: Vec<Option<String>> =
            self.run(|mut conn| async move { Ok(pipe.query_async(&mut conn).await?) }).await?;
        if fields.len() != user_ids.len() {
            return Err(RedisStoreError::Corrupt {
                key: self.keys.user_flags(&user_ids[0]),
                what: "pipeline answered the wrong number of values".into(),
            });
        }
        let mut out = Vec::new();
        for (user, field) in user_ids.iter().zip(fields) {
            let key = || format!("{} field {conversation_id}", self.keys.user_flags(user));
            if flag_bits(field.as_deref(), key)? & FLAG_MUTED != 0 {
                out.push(user.clone());
            }
        }
        Ok(out)
    }

    pub(crate) async fn conversations(
        &self,
        user_id: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<ConversationEntry>, RedisStoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let index = self.keys.user_conversations(user_id);
        let ids: Vec<String> = self
            .run(|mut conn| async move {
                Ok(redis::cmd("ZRANGEBYLEX")
                    .arg(&index)
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One atomic round trip: the index entries, the user's flags, their receipts and latest
        // mentions (own and all), and for each group their member row and the group's latest
        // seq (read diffusion: a current member's entry shows the group's latest message; a
        // former member's stays at their removal).
        let mention = mention_field(user_id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("HMGET").arg(self.keys.user_last(user_id)).arg(&ids[..]);
        pipe.cmd("HMGET").arg(self.keys.user_flags(user_id)).arg(&ids[..]);
        for id in &ids {
            pipe.cmd("HGET").arg(self.keys.receipts(id)).arg(user_id);
            pipe.cmd("HMGET").arg(self.keys.mentions(id)).arg(&mention).arg(MENTION_ALL);
            if is_group(id) {
                pipe.cmd("HGET").arg(self.keys.group_members(id)).arg(user_id);
                pipe.cmd("HMGET").arg(self.keys.meta(id)).arg("last_seq").arg("last_time_ms");
            }
        }
        let replies: Vec<redis::Value> =
            self.run(|mut conn| async move { Ok(pipe.query_async(&mut conn).await?) }).await?;
        let wrong = || RedisStoreError::Corrupt {
            key: self.keys.user_last(user_id),
            what: "pipeline answered the wrong number of values".into(),
        };
        let mut replies = replies.into_iter();
        let lasts: Vec<Option<String>> =
            redis::from_redis_value(replies.next().ok_or_else(wrong)?)?;
        let flags: Vec<Option<String>> =
            redis::from_redis_value(replies.next().ok_or_else(wrong)?)?;
        if lasts.len() != ids.len() || flags.len() != ids.len() {
            return Err(wrong());
        }
        let mut out = Vec::with_capacity(ids.len());
        for ((conversation_id, last), flags) in ids.into_iter().zip(lasts).zip(flags) {
            let receipt: Option<String> =
                redis::from_redis_value(replies.next().ok_or_else(wrong)?)?;
            let (own, all): (Option<u64>, Option<u64>) =
                redis::from_redis_value(replies.next().ok_or_else(wrong)?)?;
            let (mut last_seq, mut last_time_ms) =
                last.as_deref().and_then(parse_last).ok_or_else(|| RedisStoreError::Corrupt {
                    key: format!("{} field {conversation_id}", self.keys.user_last(user_id)),
                    what: format!("index entry {last:?}"),
                })?;
            if is_group(&conversation_id) {
                let row: Option<String> =
                    redis::from_redis_value(replies.next().ok_or_else(wrong)?)?;
                let meta: (Option<u64>, Option<i64>) =
                    redis::from_redis_value(replies.next().ok_or_else(wrong)?)?;
                let current = match &row {
                    None => false,
                    Some(r) => parse_member(user_id, r)
                        .ok_or_else(|| RedisStoreError::Corrupt {
                            key: format!(
                                "{} field {user_id}",
                                self.keys.group_members(&conversation_id)
                            ),
                            what: format!("member row {r:?}"),
                        })?
                        .is_current(),
                };
                if current && let (Some(seq), Some(time)) = meta {
                    (last_seq, last_time_ms) = (seq, time);
                }
            }
            let watermarks = match receipt {
                None => Watermarks::default(),
                Some(r) => parse_watermarks(&r)
                    .ok_or_else(|| self.corrupt_receipt(&conversation_id, user_id, &r))?,
            };
            let key = || format!("{} field {conversation_id}", self.keys.user_flags(user_id));
            let bits = flag_bits(flags.as_deref(), key)?;
            out.push(ConversationEntry {
                conversation_id,
                last_seq,
                last_time_ms,
                watermarks,
                // Capped at the entry's last seq, as in the embedded store (a former group
                // member's entry stays at their removal).
                // A mention after the entry's end (a former member's removal) is not theirs.
                mention_seq: [own, all]
                    .into_iter()
                    .flatten()
                    .filter(|s| *s <= last_seq)
                    .max()
                    .unwrap_or(0),
                muted: bits & FLAG_MUTED != 0,
                pinned: bits & FLAG_PINNED != 0,
            });
        }
        if replies.next().is_some() {
            return Err(wrong());
        }
        Ok(out)
    }
}
