//! Bucket arithmetic: which `messages` partitions a seq window touches.
//!
//! A message with sequence number `seq` lives in partition `(conversation_id, seq /
//! bucket_size)`. A read of the window `[from, from + n)` is clipped to the seqs that can
//! exist (`1 ..= min(last_seq, i64::MAX)`), then split into one contiguous seq span per
//! bucket, so a read touches exactly the partitions that can hold its messages and no more.

/// The largest seq this backend stores (CQL `bigint`).
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// The bucket of `seq`. `bucket_size` is > 0 (checked by the config).
pub fn bucket_of(seq: u64, bucket_size: u64) -> u64 {
    seq / bucket_size.max(1)
}

/// The inclusive seq range `[first, last]` a read of `window` seqs from `from` can find,
/// given the conversation's latest allocated seq. `None` when it can find nothing.
pub fn clip_window(from: u64, window: u32, last_seq: u64) -> Option<(u64, u64)> {
    if window == 0 {
        return None;
    }
    let first = from.max(1);
    let last = from.saturating_add(u64::from(window) - 1).min(last_seq).min(MAX_SEQ);
    (first <= last).then_some((first, last))
}

/// One partition's part of a read: `bucket` and the inclusive seq span inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSpan {
    /// The bucket (second partition key column).
    pub bucket: u64,
    /// First seq to read in it.
    pub first: u64,
    /// Last seq to read in it (inclusive).
    pub last: u64,
}

/// The spans of `[first, last]` (inclusive, `first <= last`), one per bucket, in seq order.
pub fn spans(first: u64, last: u64, bucket_size: u64) -> impl Iterator<Item = BucketSpan> {
    let size = bucket_size.max(1);
    let mut next = (first <= last).then_some(first);
    std::iter::from_fn(move || {
        let start = next?;
        let bucket = start / size;
        // Last seq of this bucket, without overflowing at the top of u64.
        let bucket_end = bucket.saturating_mul(size).saturating_add(size - 1);
        let end = bucket_end.min(last);
        next = if end < last { end.checked_add(1) } else { None };
        Some(BucketSpan { bucket, first: start, last: end })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(first: u64, last: u64, size: u64) -> Vec<(u64, u64, u64)> {
        spans(first, last, size).map(|s| (s.bucket, s.first, s.last)).collect()
    }

    #[test]
    fn bucket_boundaries() {
        assert_eq!(bucket_of(0, 1024), 0);
        assert_eq!(bucket_of(1023, 1024), 0);
        assert_eq!(bucket_of(1024, 1024), 1);
        assert_eq!(bucket_of(MAX_SEQ, 1024), MAX_SEQ / 1024);
        assert_eq!(bucket_of(7, 1), 7);
    }

    #[test]
    fn window_is_clipped_to_existing_seqs() {
        assert_eq!(clip_window(1, 3, 10), Some((1, 3)));
        assert_eq!(clip_window(0, 2, 10), Some((1, 1)));
        assert_eq!(clip_window(8, 100, 10), Some((8, 10)));
        assert_eq!(clip_window(10, 1, 10), Some((10, 10)));
        assert_eq!(clip_window(11, 5, 10), None);
        assert_eq!(clip_window(5, 0, 10), None);
        assert_eq!(clip_window(1, 10, 0), None);
        assert_eq!(clip_window(0, 1, 10), None, "seq 0 never exists");
    }

    #[test]
    fn window_near_u64_max_neither_overflows_nor_reads() {
        assert_eq!(clip_window(u64::MAX - 1, u32::MAX, u64::MAX), None);
        assert_eq!(clip_window(u64::MAX, 1, u64::MAX), None);
        assert_eq!(clip_window(MAX_SEQ, u32::MAX, u64::MAX), Some((MAX_SEQ, MAX_SEQ)));
        assert_eq!(clip_window(MAX_SEQ - 1, 5, MAX_SEQ), Some((MAX_SEQ - 1, MAX_SEQ)));
    }

    #[test]
    fn spans_split_at_bucket_boundaries() {
        assert_eq!(all(1, 3, 1024), vec![(0, 1, 3)]);
        assert_eq!(all(1020, 1030, 1024), vec![(0, 1020, 1023), (1, 1024, 1030)]);
        assert_eq!(all(1023, 1024, 1024), vec![(0, 1023, 1023), (1, 1024, 1024)]);
        assert_eq!(all(1024, 2047, 1024), vec![(1, 1024, 2047)]);
        assert_eq!(
            all(1, 2 * 1024 + 5, 1024),
            vec![(0, 1, 1023), (1, 1024, 2047), (2, 2048, 2053)]
        );
        assert_eq!(all(5, 7, 1), vec![(5, 5, 5), (6, 6, 6), (7, 7, 7)]);
        assert_eq!(all(9, 8, 4), vec![]);
    }

    #[test]
    fn spans_cover_the_window_exactly() {
        for size in [1, 2, 3, 7, 1024] {
            for first in 0..40 {
                for last in first..first + 40 {
                    let got = all(first, last, size);
                    let seqs: Vec<u64> = got.iter().flat_map(|&(_, a, b)| a..=b).collect();
                    assert_eq!(seqs, (first..=last).collect::<Vec<_>>(), "{first}..={last}/{size}");
                    for (bucket, a, b) in got {
                        assert_eq!((bucket_of(a, size), bucket_of(b, size)), (bucket, bucket));
                    }
                }
            }
        }
    }

    #[test]
    fn spans_at_the_top_of_u64_terminate() {
        assert_eq!(
            all(u64::MAX - 2, u64::MAX, 1024),
            vec![(u64::MAX / 1024, u64::MAX - 2, u64::MAX)]
        );
        assert_eq!(all(u64::MAX, u64::MAX, 1), vec![(u64::MAX, u64::MAX, u64::MAX)]);
        let top = all(MAX_SEQ - 1, MAX_SEQ, 1 << 62);
        assert_eq!(top, vec![(1, MAX_SEQ - 1, MAX_SEQ)]);
    }
}
