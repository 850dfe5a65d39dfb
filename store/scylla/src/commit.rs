//! [`Store::commit`](tern_store::Store::commit) on Scylla: each run of consecutive appends and
//! group changes goes through the append path as one batch (conversations concurrently, each
//! conversation's writes in batch order, so a send after a removal in the same batch is
//! checked after it); each watermark move is bounded by the conversation's last seq as it
//! stands then (counting the runs before it), and moves of one (conversation, user) are
//! coalesced as the trait says; each flags write is one plain write, in batch order (see
//! `flags.rs`). There is no cross-partition atomicity: on `Err` any write of
//! the batch may or may not have been applied (appends and changes are deduplicated on retry,
//! watermarks are monotonic).

use std::collections::HashMap;
use std::sync::Arc;

use tern_store::{Committed, WatermarkUpdate, Write};

use crate::append::Item;
use crate::error::OpError;
use crate::store::Inner;

impl Inner {
    pub(crate) async fn commit(
        self: &Arc<Self>,
        batch: &[Write],
    ) -> Result<Vec<Committed>, OpError> {
        let mut out: Vec<Committed> = Vec::with_capacity(batch.len());
        let mut run: Vec<Item> = Vec::new();
        // (conversation, user) -> the indexes of its outcomes, and whether any moved.
        let mut marks: HashMap<(&str, &str), (Vec<usize>, bool)> = HashMap::new();
        let mut iter = batch.iter().peekable();
        while let Some(write) = iter.next() {
            match write {
                Write::Append(m) => run.push(Item::Send(m.clone())),
                Write::Group(g) => run.push(Item::Change(g.clone())),
                Write::Flags(f) => {
                    self.set_flags(f).await?;
                    out.push(Committed::Flagged);
                    continue;
                }
                Write::Watermark(w) => {
                    let last_seq = self.meta(&w.conversation_id).await?.0;
                    if w.seq > last_seq {
                        out.push(Committed::AboveLastSeq { last_seq });
                        continue;
                    }
                    let up =
                        self.set_watermark(&w.conversation_id, &w.user_id, w.kind, w.seq).await?;
                    let mark = marks.entry((&w.conversation_id, &w.user_id)).or_default();
                    mark.0.push(out.len());
                    mark.1 |= up.moved;
                    out.push(Committed::Watermark(up));
                    continue;
                }
            }
            if !matches!(iter.peek(), Some(Write::Append(_) | Write::Group(_))) {
                let n = run.len();
                let done = self.append_batch(std::mem::take(&mut run)).await?;
                if done.len() != n {
                    return Err(OpError::Task("wrong number of append outcomes".into()));
                }
                out.extend(done);
            }
        }
        coalesce(&mut out, marks.into_values());
        Ok(out)
    }
}

/// Every outcome of one (conversation, user) carries its last one's watermarks and whether
/// any of them moved.
fn coalesce(out: &mut [Committed], marks: impl Iterator<Item = (Vec<usize>, bool)>) {
    for (indexes, moved) in marks {
        let Some(&last) = indexes.last() else { continue };
        let Some(Committed::Watermark(fin)) = out.get(last).cloned() else { continue };
        for i in indexes {
            out[i] = Committed::Watermark(WatermarkUpdate { watermarks: fin.watermarks, moved });
        }
    }
}

#[cfg(test)]
mod tests {
    use tern_store::{Appended, Watermarks};

    use super::*;

    fn mark(delivered: u64, read: u64, moved: bool) -> Committed {
        Committed::Watermark(WatermarkUpdate { watermarks: Watermarks { delivered, read }, moved })
    }

    #[test]
    fn coalescing_gives_every_outcome_the_final_value() {
        let appended = Committed::Appended(Appended {
            conversation_id: "c".into(),
            seq: 1,
            server_time_ms: 0,
            duplicate: false,
            group_version: 0,
        });
        let mut out =
            vec![mark(1, 0, true), appended.clone(), mark(3, 3, false), mark(2, 0, false)];
        coalesce(&mut out, [(vec![0, 2], true), (vec![3], false)].into_iter());
        assert_eq!(out, vec![mark(3, 3, true), appended, mark(3, 3, true), mark(2, 0, false)]);
    }
}
