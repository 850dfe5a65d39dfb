//! Group commits on Redis: [`Store::commit`](tern_store::Store::commit) and
//! [`Store::append`](tern_store::Store::append) as ONE call of the commit script
//! ([`crate::scripts`], "COMMIT"): appends, the last-seq bound of each watermark move and the
//! coalescing of moves per (conversation, user) all happen inside Redis, atomically, with one
//! AOF fsync for the whole group.

use tern_proto::v1;
use tern_store::{Appended, Committed, NewMessage, WatermarkUpdate, Write};
use tracing::warn;

use crate::error::RedisStoreError;
use crate::keys::{BUCKET_SIZE, bucket_of};
use crate::scripts;
use crate::store::{RedisStore, encode_header, parse_dedupe_record, parse_watermarks};

impl RedisStore {
    /// Appends a batch: a commit of appends only.
    pub(crate) async fn append_batch(
        &self,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Appended>, RedisStoreError> {
        let writes: Vec<Write> = batch.into_iter().map(Write::Append).collect();
        let out = self.commit_batch(&writes).await?;
        out.into_iter()
            .map(|c| match c {
                Committed::Appended(a) => Ok(a),
                other => Err(RedisStoreError::Corrupt {
                    key: "(commit script reply)".into(),
                    what: format!("{other:?} for an append"),
                }),
            })
            .collect()
    }

    /// One commit script call for the whole batch (plus `WAIT` when the batch appends and
    /// `min_replicas_acked` is set).
    pub(crate) async fn commit_batch(
        &self,
        batch: &[Write],
    ) -> Result<Vec<Committed>, RedisStoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = scripts::COMMIT.prepare_invoke();
        invocation.key(self.keys.history()).key(self.keys.node());
        invocation.arg(BUCKET_SIZE).arg(batch.len());
        let mut appends = false;
        for write in batch {
            match write {
                Write::Append(m) => {
                    appends = true;
                    let (recall_seq, recall_bucket) = if m.kind == v1::MessageKind::Recall {
                        let bucket =
                            self.keys.bucket(&m.conversation_id, bucket_of(m.recalled_seq));
                        (m.recalled_seq, bucket)
                    } else {
                        (0, String::new())
                    };
                    invocation
                        .arg("a")
                        .arg(self.keys.conversation(&m.conversation_id))
                        .arg(&m.conversation_id)
                        .arg(self.keys.dedupe(&m.sender_user_id, &m.client_msg_id))
                        .arg(m.server_time_ms)
                        .arg(encode_header(m))
                        .arg(m.body.as_ref())
                        .arg(recall_seq)
                        .arg(recall_bucket)
                        .arg(m.members.len());
                    for member in &m.members {
                        invocation.arg(self.keys.user(member));
                    }
                }
                Write::Watermark(w) => {
                    let kind = match w.kind {
                        v1::ReceiptKind::Delivered => "d",
                        v1::ReceiptKind::Read => "r",
                        v1::ReceiptKind::Unspecified => "u",
                    };
                    invocation
                        .arg("w")
                        .arg(self.keys.conversation(&w.conversation_id))
                        .arg(&w.user_id)
                        .arg(kind)
                        .arg(w.seq);
                }
                Write::Group(_) => return Err(RedisStoreError::Unsupported("group changes")),
            }
        }
        invocation.arg(self.failover.seq_gap);
        let mut reply: Vec<String> = match (&self.failover.append_conn, appends) {
            (Some(conn), true) => self.commit_and_wait(conn.clone(), &invocation).await?,
            _ => {
                self.run(|mut conn| async move { Ok(invocation.invoke_async(&mut conn).await?) })
                    .await?
            }
        };
        // The history fence's event comes last.
        if let Some(event) = reply.pop() {
            self.history_event(&event, "");
        }
        if reply.len() != batch.len() * 3 {
            return Err(RedisStoreError::Corrupt {
                key: "(commit script reply)".into(),
                what: format!("{} fields for {} writes", reply.len(), batch.len()),
            });
        }
        batch
            .iter()
            .zip(reply.chunks_exact(3))
            .map(|(write, out)| match write {
                Write::Append(m) => {
                    self.outcome(m, &out[0], &out[1], &out[2]).map(Committed::Appended)
                }
                Write::Watermark(w) => {
                    self.mark_outcome(&w.conversation_id, &w.user_id, &out[0], &out[1], &out[2])
                }
                Write::Group(_) => Err(RedisStoreError::Unsupported("group changes")),
            })
            .collect()
    }

    /// One append's outcome from the script's `[flag, value, recall_missing]`.
    fn outcome(
        &self,
        m: &NewMessage,
        flag: &str,
        value: &str,
        recall_missing: &str,
    ) -> Result<Appended, RedisStoreError> {
        if flag == "1" {
            return parse_dedupe_record(value).ok_or_else(|| RedisStoreError::Corrupt {
                key: self.keys.dedupe(&m.sender_user_id, &m.client_msg_id),
                what: format!("dedupe record {value:?}"),
            });
        }
        let seq = value.parse().map_err(|_| RedisStoreError::Corrupt {
            key: self.keys.meta(&m.conversation_id),
            what: format!("allocated seq {value:?}"),
        })?;
        if recall_missing == "1" {
            warn!(
                conversation_id = %m.conversation_id,
                seq = m.recalled_seq,
                "recall of a message that is not stored"
            );
        }
        Ok(Appended {
            conversation_id: m.conversation_id.clone(),
            seq,
            server_time_ms: m.server_time_ms,
            duplicate: false,
            group_version: 0,
        })
    }

    /// One watermark move's outcome from the script's `["w", "d:r", moved]` or
    /// `["x", last_seq, ""]`.
    fn mark_outcome(
        &self,
        conversation_id: &str,
        user_id: &str,
        flag: &str,
        value: &str,
        moved: &str,
    ) -> Result<Committed, RedisStoreError> {
        match flag {
            "x" => match value.parse() {
                Ok(last_seq) => Ok(Committed::AboveLastSeq { last_seq }),
                Err(_) => Err(RedisStoreError::Corrupt {
                    key: self.keys.meta(conversation_id),
                    what: format!("last_seq {value:?}"),
                }),
            },
            "w" => match parse_watermarks(value) {
                Some(watermarks) => {
                    Ok(Committed::Watermark(WatermarkUpdate { watermarks, moved: moved == "1" }))
                }
                None => Err(self.corrupt_receipt(conversation_id, user_id, value)),
            },
            other => Err(RedisStoreError::Corrupt {
                key: "(commit script reply)".into(),
                what: format!("watermark flag {other:?}"),
            }),
        }
    }
}
