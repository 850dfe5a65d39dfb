//! Receipt watermarks of [`RedisStore`]: one move (the SET_WATERMARK script), and every
//! member's watermarks of a conversation (one HGETALL of `C:rcpt`).

use tern_proto::v1;
use tern_store::{WatermarkUpdate, Watermarks};

use crate::error::RedisStoreError;
use crate::records::parse_watermarks;
use crate::scripts;
use crate::store::RedisStore;

impl RedisStore {
    pub(crate) async fn watermark(
        &self,
        conversation_id: &str,
        user_id: &str,
        kind: v1::ReceiptKind,
        seq: u64,
    ) -> Result<WatermarkUpdate, RedisStoreError> {
        let key = self.keys.receipts(conversation_id);
        let kind = match kind {
            v1::ReceiptKind::Delivered => "d",
            v1::ReceiptKind::Read => "r",
            v1::ReceiptKind::Unspecified => {
                // The caller's bug: nothing to move; answer with the current watermarks.
                let record: Option<String> = self
                    .run(|mut conn| async move {
                        Ok(redis::cmd("HGET").arg(&key).arg(user_id).query_async(&mut conn).await?)
                    })
                    .await?;
                let watermarks = match record {
                    None => Watermarks::default(),
                    Some(r) => parse_watermarks(&r)
                        .ok_or_else(|| self.corrupt_receipt(conversation_id, user_id, &r))?,
                };
                return Ok(WatermarkUpdate { watermarks, moved: false });
            }
        };
        let reply: Vec<String> = self
            .run(|mut conn| async move {
                let mut invocation = scripts::SET_WATERMARK.prepare_invoke();
                invocation.key(&key).arg(user_id).arg(kind).arg(seq);
                Ok(invocation.invoke_async(&mut conn).await?)
            })
            .await?;
        match &reply[..] {
            [delivered, read, moved] => {
                let record = format!("{delivered}:{read}");
                let watermarks = parse_watermarks(&record)
                    .ok_or_else(|| self.corrupt_receipt(conversation_id, user_id, &record))?;
                Ok(WatermarkUpdate { watermarks, moved: moved == "1" })
            }
            _ => Err(self.corrupt_receipt(conversation_id, user_id, &format!("{reply:?}"))),
        }
    }

    pub(crate) fn corrupt_receipt(
        &self,
        conversation_id: &str,
        user_id: &str,
        record: &str,
    ) -> RedisStoreError {
        RedisStoreError::Corrupt {
            key: format!("{} field {user_id}", self.keys.receipts(conversation_id)),
            what: format!("receipt record {record:?}"),
        }
    }

    pub(crate) async fn all_watermarks(
        &self,
        conversation_id: &str,
    ) -> Result<Vec<(String, Watermarks)>, RedisStoreError> {
        let key = self.keys.receipts(conversation_id);
        let records: Vec<(String, String)> = self
            .run(|mut conn| async move {
                Ok(redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await?)
            })
            .await?;
        let mut out = records
            .into_iter()
            .map(|(user, record)| match parse_watermarks(&record) {
                Some(w) => Ok((user, w)),
                None => Err(self.corrupt_receipt(conversation_id, &user, &record)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
