//! Message reads of [`RedisStore`]: a conversation's last seq, a read window (one pipelined
//! HMGET per bucket it touches) and one message, rebuilt from its header, body and recalled
//! fields.

use bytes::Bytes;
use prost::Message as _;
use tern_proto::v1;
use tern_store::Range;

use crate::error::RedisStoreError;
use crate::keys::{bucket_of, bucket_spans, message_fields};
use crate::store::RedisStore;

impl RedisStore {
    pub(crate) async fn last_seq_of(&self, conversation_id: &str) -> Result<u64, RedisStoreError> {
        let key = self.keys.meta(conversation_id);
        self.run(|mut conn| async move {
            let last: Option<u64> =
                redis::cmd("HGET").arg(&key).arg("last_seq").query_async(&mut conn).await?;
            Ok(last.unwrap_or(0))
        })
        .await
    }

    pub(crate) async fn range(
        &self,
        conversation_id: &str,
        from_seq: u64,
        window: u32,
    ) -> Result<Range, RedisStoreError> {
        let last_seq = self.last_seq_of(conversation_id).await?;
        let first = from_seq.max(1);
        let last = match window {
            0 => return Ok(Range { messages: Vec::new(), last_seq }),
            w => from_seq.saturating_add(u64::from(w) - 1).min(last_seq),
        };
        let spans = bucket_spans(first, last);
        if spans.is_empty() {
            return Ok(Range { messages: Vec::new(), last_seq });
        }
        let mut pipe = redis::pipe();
        for &(bucket, from, to) in &spans {
            let fields: Vec<String> = (from..=to).flat_map(message_fields).collect();
            pipe.cmd("HMGET").arg(self.keys.bucket(conversation_id, bucket)).arg(fields);
        }
        let replies: Vec<Vec<Option<Vec<u8>>>> =
            self.run(|mut conn| async move { Ok(pipe.query_async(&mut conn).await?) }).await?;
        if replies.len() != spans.len() {
            return Err(RedisStoreError::Corrupt {
                key: self.keys.conversation(conversation_id),
                what: format!("{} replies for {} buckets", replies.len(), spans.len()),
            });
        }
        let mut messages = Vec::new();
        for ((_, from, _), values) in spans.iter().zip(replies) {
            let mut values = values.into_iter();
            let mut seq = *from;
            while let (Some(header), Some(body), Some(recalled)) =
                (values.next(), values.next(), values.next())
            {
                if let Some(header) = header {
                    messages.push(self.message(conversation_id, seq, &header, body, recalled)?);
                }
                seq += 1;
            }
        }
        Ok(Range { messages, last_seq })
    }

    pub(crate) async fn message_at(
        &self,
        conversation_id: &str,
        seq: u64,
    ) -> Result<Option<v1::Message>, RedisStoreError> {
        if seq == 0 {
            return Ok(None);
        }
        let key = self.keys.bucket(conversation_id, bucket_of(seq));
        let fields = message_fields(seq);
        let values: Vec<Option<Vec<u8>>> = self
            .run(|mut conn| async move {
                Ok(redis::cmd("HMGET").arg(&key).arg(&fields[..]).query_async(&mut conn).await?)
            })
            .await?;
        let mut values = values.into_iter();
        match (values.next(), values.next(), values.next()) {
            (Some(Some(header)), Some(body), Some(recalled)) => {
                self.message(conversation_id, seq, &header, body, recalled).map(Some)
            }
            (Some(None), Some(_), Some(_)) => Ok(None),
            _ => Err(RedisStoreError::Corrupt {
                key: self.keys.bucket(conversation_id, bucket_of(seq)),
                what: "HMGET answered the wrong number of fields".into(),
            }),
        }
    }

    /// Rebuilds a stored message from its header, body field and recalled flag.
    pub(crate) fn message(
        &self,
        conversation_id: &str,
        seq: u64,
        header: &[u8],
        body: Option<Vec<u8>>,
        recalled: Option<Vec<u8>>,
    ) -> Result<v1::Message, RedisStoreError> {
        let mut m = v1::Message::decode(header).map_err(|e| RedisStoreError::Corrupt {
            key: format!("{} field {seq}", self.keys.bucket(conversation_id, bucket_of(seq))),
            what: e.to_string(),
        })?;
        m.conversation_id = conversation_id.to_owned();
        m.seq = seq;
        m.body = body.map_or_else(Bytes::new, Bytes::from);
        m.recalled = recalled.is_some();
        if m.recalled {
            m.body = Bytes::new();
        }
        Ok(m)
    }
}
