//! The writer's filter of dedupe keys: a Bloom filter over every (sender, client_msg_id) the
//! index may hold, so that a new key (almost every append) skips the redb lookup.
//!
//! Exact by construction: it is filled at open from the whole `dedupe` table (after recovery,
//! before the first commit) and every key the writer commits is added before it can leave the
//! writer's map, so "not in the filter" means "not in the index". A hit only means "maybe":
//! the writer then looks the key up. The filter has a fixed size; as it fills, more lookups
//! happen, never a wrong answer. Hashed with a random seed (the keys come from clients).

use std::hash::BuildHasher;

/// Bits set per key.
const HASHES: u64 = 3;

/// A fixed-size Bloom filter of string pairs.
pub(crate) struct KeyFilter {
    words: Vec<u64>,
    /// Bits in the filter minus one (a power of two minus one); unused when `words` is empty.
    mask: u64,
    hasher: foldhash::fast::RandomState,
}

impl KeyFilter {
    /// A filter of about `bytes` (rounded down to a power of two; 0: disabled, every key is a
    /// "maybe").
    pub(crate) fn new(bytes: usize) -> Self {
        let words = if bytes < 8 { 0 } else { 1usize << (bytes / 8).ilog2() };
        let mask = (words as u64 * 64).saturating_sub(1);
        Self { words: vec![0; words], mask, hasher: foldhash::fast::RandomState::default() }
    }

    /// The bit positions of a key: double hashing over the two halves of one 64-bit hash.
    fn bits(&self, a: &str, b: &str) -> impl Iterator<Item = u64> + use<> {
        let h = self.hasher.hash_one((a, b));
        let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
        let mask = self.mask;
        (0..HASHES).map(move |i| {
            h1.wrapping_add(i.wrapping_mul(h2)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7 & mask
        })
    }

    pub(crate) fn insert(&mut self, a: &str, b: &str) {
        if self.words.is_empty() {
            return;
        }
        for bit in self.bits(a, b) {
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    /// False only if `(a, b)` was never inserted.
    pub(crate) fn may_contain(&self, a: &str, b: &str) -> bool {
        if self.words.is_empty() {
            return true;
        }
        self.bits(a, b).all(|bit| self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_keys_are_always_found_and_others_mostly_not() {
        let mut f = KeyFilter::new(1 << 16);
        for i in 0..20_000 {
            f.insert(&format!("s{}", i % 97), &format!("m{i}"));
        }
        assert!((0..20_000).all(|i| f.may_contain(&format!("s{}", i % 97), &format!("m{i}"))));
        let false_hits = (20_000..40_000)
            .filter(|i| f.may_contain(&format!("s{}", i % 97), &format!("m{i}")))
            .count();
        // 2^19 bits, 20k keys, 3 hashes: about 0.15 % expected.
        assert!(false_hits < 200, "{false_hits} false hits");
    }

    #[test]
    fn a_disabled_filter_says_maybe() {
        let mut f = KeyFilter::new(0);
        f.insert("a", "b");
        assert!(f.may_contain("x", "y"));
    }
}
