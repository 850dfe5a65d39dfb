//! Group commits on Redis: [`Store::commit`](tern_store::Store::commit) and
//! [`Store::append`](tern_store::Store::append) as ONE call of the commit script
//! ([`crate::scripts`], "COMMIT"): appends, the last-seq bound of each watermark move and the
//! coalescing of moves per (conversation, user) all happen inside Redis, atomically, with one
//! AOF fsync for the whole group.

use tern_proto::v1;
use tern_store::{
    Appended, Committed, MemberChange, NewMessage, Refusal, Role, StoreError, WatermarkUpdate,
    Write,
};
use tracing::warn;

use crate::error::RedisStoreError;
use crate::group::{encode_group_record, is_group};
use crate::keys::{BUCKET_SIZE, MENTION_ALL, bucket_of, mention_field};
use crate::records::{encode_event_header, encode_header, parse_dedupe_record, parse_watermarks};
use crate::scripts;
use crate::store::RedisStore;

/// Reply fields per write (see [`crate::scripts`]).
const REPLY_FIELDS: usize = 4;

impl RedisStore {
    /// Appends a batch: a commit of appends only. A refused append (a send to a group from a
    /// non-member, or to no group) fails the call with [`StoreError::Refused`], as in the
    /// embedded store (the rest of the batch is committed all the same).
    pub(crate) async fn append_batch(
        &self,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Appended>, StoreError> {
        let writes: Vec<Write> = batch.into_iter().map(Write::Append).collect();
        let out = self.commit_batch(&writes).await?;
        out.into_iter()
            .map(|c| match c {
                Committed::Appended(a) => Ok(a),
                Committed::Refused(r) => Err(StoreError::Refused(r)),
                other => Err(RedisStoreError::Corrupt {
                    key: "(commit script reply)".into(),
                    what: format!("{other:?} for an append"),
                }
                .into()),
            })
            .collect()
    }

    /// One commit script call for the whole batch (plus `WAIT` when the batch appends and
    /// `min_replicas_acked` is set; a batch of watermark moves and flags only neither runs the
    /// history fence nor waits).
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
                Write::Flags(f) => {
                    let flag = |set: Option<bool>| match set {
                        Some(true) => "1",
                        Some(false) => "0",
                        None => "",
                    };
                    invocation
                        .arg("f")
                        .arg(self.keys.user(&f.user_id))
                        .arg(&f.conversation_id)
                        .arg(flag(f.muted))
                        .arg(flag(f.pinned));
                }
                Write::Append(m) => {
                    appends = true;
                    let (recall_seq, recall_bucket) = if m.kind == v1::MessageKind::Recall {
                        let bucket =
                            self.keys.bucket(&m.conversation_id, bucket_of(m.recalled_seq));
                        (m.recalled_seq, bucket)
                    } else {
                        (0, String::new())
                    };
                    let group = is_group(&m.conversation_id);
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
                        .arg(if group { "1" } else { "0" })
                        .arg(if group { m.sender_user_id.as_str() } else { "" })
                        .arg(m.members.len());
                    for member in &m.members {
                        invocation.arg(self.keys.user(member));
                    }
                    let mentions = m.mention_user_ids.len() + usize::from(m.mention_all);
                    invocation.arg(mentions);
                    for user in &m.mention_user_ids {
                        invocation.arg(mention_field(user));
                    }
                    if m.mention_all {
                        invocation.arg(MENTION_ALL);
                    }
                }
                Write::Group(g) => {
                    appends = true;
                    let m = &g.event;
                    invocation
                        .arg("g")
                        .arg(self.keys.conversation(&m.conversation_id))
                        .arg(&m.conversation_id)
                        .arg(self.keys.dedupe(&m.sender_user_id, &m.client_msg_id))
                        .arg(m.server_time_ms)
                        .arg(encode_event_header(m))
                        .arg(m.body.as_ref())
                        .arg(g.expect_version)
                        .arg(if g.meta.dissolved { "1" } else { "0" })
                        .arg(encode_group_record(&g.meta))
                        .arg(g.members.len());
                    for change in &g.members {
                        let (op, role, full) = match change {
                            MemberChange::Join { role, full_history, .. } => {
                                ("j", *role, *full_history)
                            }
                            MemberChange::SetRole { role, .. } => ("s", *role, false),
                            // The role is kept from the row.
                            MemberChange::Remove { .. } => ("r", Role::Member, false),
                        };
                        invocation
                            .arg(op)
                            .arg(change.user_id())
                            .arg(self.keys.user(change.user_id()))
                            .arg(role as u8)
                            .arg(if full { "1" } else { "0" });
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
        if reply.len() != batch.len() * REPLY_FIELDS {
            return Err(RedisStoreError::Corrupt {
                key: "(commit script reply)".into(),
                what: format!("{} fields for {} writes", reply.len(), batch.len()),
            });
        }
        batch
            .iter()
            .zip(reply.chunks_exact(REPLY_FIELDS))
            .map(|(write, out)| match write {
                Write::Append(m) => self.outcome(m, out),
                Write::Group(g) => self.outcome(&g.event, out),
                Write::Flags(_) => match out[0].as_str() {
                    "f" => Ok(Committed::Flagged),
                    other => Err(RedisStoreError::Corrupt {
                        key: "(commit script reply)".into(),
                        what: format!("flags flag {other:?}"),
                    }),
                },
                Write::Watermark(w) => {
                    self.mark_outcome(&w.conversation_id, &w.user_id, &out[0], &out[1], &out[2])
                }
            })
            .collect()
    }

    /// One append's or group change's outcome from the script's
    /// `[flag, value, recall_missing | version, group_version]` (see [`crate::scripts`]).
    fn outcome(&self, m: &NewMessage, out: &[String]) -> Result<Committed, RedisStoreError> {
        let [flag, value, third, group_version] = out else {
            return Err(RedisStoreError::Corrupt {
                key: "(commit script reply)".into(),
                what: format!("{} fields for a write", out.len()),
            });
        };
        let number = |what: &str, v: &str| -> Result<u64, RedisStoreError> {
            v.parse().map_err(|_| RedisStoreError::Corrupt {
                key: self.keys.meta(&m.conversation_id),
                what: format!("{what} {v:?}"),
            })
        };
        match flag.as_str() {
            "1" => parse_dedupe_record(value).map(Committed::Appended).ok_or_else(|| {
                RedisStoreError::Corrupt {
                    key: self.keys.dedupe(&m.sender_user_id, &m.client_msg_id),
                    what: format!("dedupe record {value:?}"),
                }
            }),
            "r" => Ok(Committed::Refused(match value.as_str() {
                "m" => Refusal::NotAMember,
                "n" => Refusal::NoSuchGroup,
                "v" => Refusal::VersionConflict { version: number("group version", third)? },
                other => {
                    return Err(RedisStoreError::Corrupt {
                        key: "(commit script reply)".into(),
                        what: format!("refusal {other:?}"),
                    });
                }
            })),
            "0" => {
                if third == "1" {
                    warn!(
                        conversation_id = %m.conversation_id,
                        seq = m.recalled_seq,
                        "recall of a message that is not stored"
                    );
                }
                Ok(Committed::Appended(Appended {
                    conversation_id: m.conversation_id.clone(),
                    seq: number("allocated seq", value)?,
                    server_time_ms: m.server_time_ms,
                    duplicate: false,
                    group_version: number("group version", group_version)?,
                }))
            }
            other => Err(RedisStoreError::Corrupt {
                key: "(commit script reply)".into(),
                what: format!("append flag {other:?}"),
            }),
        }
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
