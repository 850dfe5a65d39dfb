//! Sync: one page of a conversation from a sequence number. Every seq of the page's window is
//! either returned or listed as missing, so a client never waits for a hole.

use prost::Message as _;
use tern_proto::v1::{self, envelope::Body};

use crate::dispatcher::{Dispatcher, Origin};
use crate::error::DispatchError;
use crate::membership;

/// Serves one SyncRequest.
pub async fn page(
    d: &Dispatcher,
    origin: &Origin,
    req: v1::SyncRequest,
) -> Result<Body, DispatchError> {
    let access = membership::readable(&*d.store, &req.conversation_id, &origin.user_id).await?;
    let from = req.from_seq.max(1);
    let limit = d.cfg.page(req.limit);
    let range = match access {
        membership::Access::Direct(_) => {
            d.store.read_range(&req.conversation_id, from, limit).await?
        }
        membership::Access::Group(row) => {
            visible(d, &req.conversation_id, &row, from, limit).await?
        }
    };
    d.metrics.sync_pages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Body::SyncPage(build_page(req.conversation_id, from, limit, d.cfg.max_page_bytes, range)))
}

/// What a group member's window `[from, from + limit)` shows them: nothing before their
/// `visible_from` (listed as missing: those seqs will never be theirs) and nothing after their
/// removal (the conversation ends there for them).
async fn visible(
    d: &Dispatcher,
    conv: &str,
    row: &tern_store::Member,
    from: u64,
    limit: u32,
) -> Result<tern_store::Range, DispatchError> {
    let start = from.max(row.visible_from);
    let end = from.saturating_add(u64::from(limit));
    let end = if row.is_current() { end } else { end.min(row.removed_seq.saturating_add(1)) };
    let window = u32::try_from(end.saturating_sub(start)).unwrap_or(u32::MAX);
    let mut range = d.store.read_range(conv, start, window).await?;
    range.messages.retain(|m| row.sees(m.seq));
    if !row.is_current() {
        range.last_seq = range.last_seq.min(row.removed_seq);
    }
    Ok(range)
}

/// Builds a page from what the store returned for the window `[from, from + limit)`, cut short
/// (after at least one message) where the messages would pass `max_bytes` encoded.
pub fn build_page(
    conversation_id: String,
    from: u64,
    limit: u32,
    max_bytes: usize,
    mut range: tern_store::Range,
) -> v1::SyncPage {
    let mut window_last = from.saturating_add(u64::from(limit)).saturating_sub(1);
    let mut used = 0usize;
    for i in 0..range.messages.len() {
        // Each message costs its bytes plus a tag and a length prefix in the page.
        used += range.messages[i].encoded_len() + 4;
        if i > 0 && used > max_bytes {
            window_last = range.messages[i - 1].seq;
            range.messages.truncate(i);
            break;
        }
    }
    let upto = window_last.min(range.last_seq);
    let mut missing = Vec::new();
    let mut expect = from;
    for m in &range.messages {
        if m.seq > expect {
            missing.push(v1::SeqRange { first: expect, last: m.seq - 1 });
        }
        expect = m.seq.saturating_add(1);
    }
    if upto >= expect {
        missing.push(v1::SeqRange { first: expect, last: upto });
    }
    let next_from_seq = if range.last_seq >= from { upto + 1 } else { from };
    v1::SyncPage {
        conversation_id,
        messages: range.messages,
        missing,
        next_from_seq,
        has_more: next_from_seq <= range.last_seq,
        last_seq: range.last_seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(seqs: &[u64]) -> Vec<v1::Message> {
        seqs.iter().map(|&seq| v1::Message { seq, ..Default::default() }).collect()
    }

    #[test]
    fn full_page_then_last_page() {
        let p = build_page(
            "c".into(),
            1,
            3,
            usize::MAX,
            tern_store::Range { messages: msgs(&[1, 2, 3]), last_seq: 5 },
        );
        assert_eq!((p.next_from_seq, p.has_more, p.missing.len()), (4, true, 0));
        let p = build_page(
            "c".into(),
            4,
            3,
            usize::MAX,
            tern_store::Range { messages: msgs(&[4, 5]), last_seq: 5 },
        );
        assert_eq!((p.next_from_seq, p.has_more, p.missing.len()), (6, false, 0));
    }

    #[test]
    fn holes_are_reported_as_missing() {
        let p = build_page(
            "c".into(),
            1,
            10,
            usize::MAX,
            tern_store::Range { messages: msgs(&[2, 5]), last_seq: 7 },
        );
        let got: Vec<(u64, u64)> = p.missing.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(got, vec![(1, 1), (3, 4), (6, 7)]);
        assert_eq!((p.next_from_seq, p.has_more), (8, false));
    }

    #[test]
    fn past_the_end_and_empty() {
        let p = build_page(
            "c".into(),
            9,
            10,
            usize::MAX,
            tern_store::Range { messages: vec![], last_seq: 7 },
        );
        assert_eq!((p.next_from_seq, p.has_more, p.missing.len()), (9, false, 0));
        let p = build_page("c".into(), 1, 10, usize::MAX, tern_store::Range::default());
        assert_eq!((p.next_from_seq, p.has_more, p.missing.len()), (1, false, 0));
    }

    #[test]
    fn pages_are_cut_at_the_byte_budget() {
        let mut messages = msgs(&[1, 2, 3, 4, 5]);
        for m in &mut messages {
            m.body = vec![0u8; 1000].into();
        }
        let range = tern_store::Range { messages, last_seq: 5 };
        let p = build_page("c".into(), 1, 10, 2500, range.clone());
        assert_eq!(p.messages.len(), 2);
        assert!(p.missing.is_empty(), "cutting the page must not invent holes");
        assert_eq!((p.next_from_seq, p.has_more), (3, true));
        // A single message larger than the budget still goes out alone.
        let p = build_page("c".into(), 1, 10, 10, range);
        assert_eq!((p.messages.len(), p.next_from_seq), (1, 2));
    }
}
