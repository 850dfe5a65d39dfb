//! What one file holds that is not yet durable: its content at the last fsync (the pages
//! changed since, as they were) and the writes since, in order; and what a power cut leaves.
//!
//! This part knows nothing of FUSE: it works on a plain [`File`], so its tests need no mount.
//! The file on the backing directory always holds the *current* content (reads need nothing
//! special); [`Pending`] keeps what is needed to bring it back to the content at the last
//! fsync, plus a chosen part of the writes since ([`Cut`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Size of the pages the original content is saved in, and that [`Cut::RandomPages`] keeps or
/// drops: the usual page size of Linux and of disks' atomic writes.
pub const PAGE: u64 = 4096;

/// What survives of the data written since each file's last fsync when the power goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing: every file is as it was at its last fsync (a disk with a volatile cache that
    /// wrote nothing of it).
    DropAll,
    /// Of each file's unsynced writes, in the order they were made, the first `n` bytes: the
    /// write that straddles `n` is torn (its head kept, its tail lost) and every later write is
    /// lost. A size change (`set_len`, `fallocate`) counts as zero bytes and is kept if some of
    /// the budget is left when it comes. A disk that writes its queue in order and dies midway.
    KeepPrefix(u64),
    /// Like [`KeepPrefix`](Self::KeepPrefix) with `n` = this percentage (0–100, rounded down)
    /// of each file's unsynced bytes: a torn write wherever the unsynced data is, without the
    /// caller knowing its size.
    KeepPercent(u8),
    /// Each 4 KiB page touched since the last fsync keeps its new content or goes back to its
    /// old one by a coin toss seeded with `seed` (and the page index): a disk that reorders its
    /// writes. Size changes are kept; a dropped page past the old end of the file reads as
    /// zeros.
    RandomPages {
        /// Seed of the coin tosses; the same seed and writes give the same result.
        seed: u64,
    },
    /// Everything written survives: the effect of a process crash alone. The control run that
    /// tells the losses of the cut from the losses of the program.
    KeepAll,
}

/// One data operation since the last fsync, as it must be replayed.
#[derive(Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// The unsynced state of one file. Create it just before the first data operation after an
/// fsync ([`Pending::new`] reads the size then), record every data operation *before* doing it
/// on the file ([`before_write`](Self::before_write), [`before_set_len`](Self::before_set_len)),
/// drop it at the next fsync, or [`cut`](Self::cut) it.
#[derive(Debug)]
pub struct Pending {
    /// The backing file, open for reading and writing (kept even if renamed or unlinked).
    file: File,
    /// The file's size at its last fsync.
    synced_len: u64,
    /// The content at the last fsync of every page changed since, clipped to `synced_len`
    /// (empty for a page wholly past it).
    original: BTreeMap<u64, Vec<u8>>,
    /// The data operations since the last fsync, in order.
    ops: Vec<Op>,
    /// Bytes held in `original` and `ops`.
    bytes: u64,
}

impl Pending {
    /// Starts tracking `file` (open read-write): its current content is the synced one.
    pub fn new(file: File) -> io::Result<Self> {
        let synced_len = file.metadata()?.len();
        Ok(Self { file, synced_len, original: BTreeMap::new(), ops: Vec::new(), bytes: 0 })
    }

    /// Memory held for this file (saved pages and unsynced writes), in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Unsynced bytes written (what [`Cut::KeepPrefix`] counts).
    pub fn written(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Write { data, .. } => data.len() as u64,
                Op::SetLen(_) => 0,
            })
            .sum()
    }

    /// Records a write of `data` at `offset`; call it before writing.
    pub fn before_write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(data.len() as u64).ok_or_else(too_far)?;
        self.save_pages(offset, end)?;
        self.bytes += data.len() as u64;
        self.ops.push(Op::Write { offset, data: data.to_vec() });
        Ok(())
    }

    /// Records a size change to `len`; call it before changing the size.
    pub fn before_set_len(&mut self, len: u64) -> io::Result<()> {
        let current = self.file.metadata()?.len();
        if len < current {
            // The bytes cut off are lost from the current content: save their pages.
            self.save_pages(len, current)?;
        }
        self.ops.push(Op::SetLen(len));
        Ok(())
    }

    /// Saves the synced content of the pages over `[start, end)` not saved yet.
    fn save_pages(&mut self, start: u64, end: u64) -> io::Result<()> {
        for page in start / PAGE..end.div_ceil(PAGE) {
            if self.original.contains_key(&page) {
                continue;
            }
            let from = page * PAGE;
            let to = (from + PAGE).min(self.synced_len);
            let mut old = vec![0; to.saturating_sub(from) as usize];
            self.file.read_exact_at(&mut old, from)?;
            self.bytes += old.len() as u64;
            self.original.insert(page, old);
        }
        Ok(())
    }

    /// Leaves the file as `cut` says: first back to its content at the last fsync, then the
    /// part of the unsynced writes that survives, replayed in order.
    pub fn cut(self, cut: Cut) -> io::Result<()> {
        if cut == Cut::KeepAll {
            return Ok(());
        }
        self.file.set_len(self.synced_len)?;
        for (page, old) in &self.original {
            self.file.write_all_at(old, page * PAGE)?;
        }
        let mut budget = match cut {
            Cut::KeepPrefix(n) => n,
            Cut::KeepPercent(p) => self.written() * u64::from(p.min(100)) / 100,
            Cut::DropAll => 0,
            Cut::RandomPages { .. } | Cut::KeepAll => u64::MAX,
        };
        let pages = match cut {
            Cut::RandomPages { seed } => Some(seed),
            _ => None,
        };
        for op in &self.ops {
            if budget == 0 {
                break;
            }
            match op {
                Op::SetLen(len) => self.file.set_len(*len)?,
                Op::Write { offset, data } => {
                    let keep = (data.len() as u64).min(budget) as usize;
                    budget -= keep as u64;
                    match pages {
                        None => self.file.write_all_at(&data[..keep], *offset)?,
                        Some(seed) => self.write_kept_pages(seed, *offset, data)?,
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the parts of `data` (at `offset`) that fall in pages the coin keeps.
    fn write_kept_pages(&self, seed: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let page = at / PAGE;
            let page_end = ((page + 1) * PAGE).min(end);
            if keeps(seed, page) {
                let range = (at - offset) as usize..(page_end - offset) as usize;
                self.file.write_all_at(&data[range], at)?;
            }
            at = page_end;
        }
        Ok(())
    }
}

/// The coin of [`Cut::RandomPages`]: splitmix64 of the seed and the page index.
fn keeps(seed: u64, page: u64) -> bool {
    let mut z = seed ^ page.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & 1 == 1
}

fn too_far() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::EFBIG)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with `content`, "synced", and its Pending.
    fn file_with(content: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, Pending) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, content).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let pending = Pending::new(file.try_clone().unwrap()).unwrap();
        (dir, path, pending)
    }

    fn write(p: &mut Pending, path: &std::path::Path, offset: u64, data: &[u8]) {
        p.before_write(offset, data).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(data, offset).unwrap();
    }

    fn set_len(p: &mut Pending, path: &std::path::Path, len: u64) {
        p.before_set_len(len).unwrap();
        std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
    }

    #[test]
    fn drop_all_restores_content_and_size() {
        let (_d, path, mut p) = file_with(b"hello world");
        write(&mut p, &path, 6, b"there, and more past the old end");
        write(&mut p, &path, 0, b"HE");
        assert_eq!(std::fs::read(&path).unwrap(), b"HEllo there, and more past the old end");
        p.cut(Cut::DropAll).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
    }

    #[test]
    fn keep_all_changes_nothing() {
        let (_d, path, mut p) = file_with(b"abc");
        write(&mut p, &path, 3, b"def");
        p.cut(Cut::KeepAll).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
    }

    #[test]
    fn keep_prefix_tears_the_write_at_the_boundary_and_drops_later_ones() {
        let (_d, path, mut p) = file_with(b"0123");
        write(&mut p, &path, 4, b"4567");
        write(&mut p, &path, 8, b"89ab");
        write(&mut p, &path, 0, b"XX");
        p.cut(Cut::KeepPrefix(6)).unwrap();
        // 4 bytes of the first append, 2 of the second; the overwrite at 0 is lost.
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
    }

    #[test]
    fn keep_percent_is_a_prefix_of_that_share() {
        let (_d, path, mut p) = file_with(b"");
        write(&mut p, &path, 0, &[7; 1000]);
        write(&mut p, &path, 1000, &[8; 1000]);
        p.cut(Cut::KeepPercent(25)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![7; 500]);
    }

    #[test]
    fn a_shrink_is_undone_and_a_grow_dropped() {
        let (_d, path, mut p) = file_with(&[5; 10_000]);
        set_len(&mut p, &path, 100);
        set_len(&mut p, &path, 20_000);
        write(&mut p, &path, 15_000, b"x");
        p.cut(Cut::DropAll).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![5; 10_000]);
    }

    #[test]
    fn set_len_survives_in_a_prefix_that_reaches_it() {
        let (_d, path, mut p) = file_with(b"");
        write(&mut p, &path, 0, b"ab");
        set_len(&mut p, &path, 8192);
        write(&mut p, &path, 2, b"cd");
        p.cut(Cut::KeepPrefix(3)).unwrap();
        let mut want = vec![0; 8192];
        want[..3].copy_from_slice(b"abc");
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn random_pages_keep_whole_pages_old_or_new_and_the_seed_decides() {
        let pages = 64u64;
        let old: Vec<u8> = vec![1; (pages * PAGE) as usize];
        let new: Vec<u8> = vec![2; (pages * PAGE) as usize];
        let mut results = Vec::new();
        for seed in [1, 2] {
            let (_d, path, mut p) = file_with(&old);
            write(&mut p, &path, 0, &new);
            p.cut(Cut::RandomPages { seed }).unwrap();
            let got = std::fs::read(&path).unwrap();
            assert_eq!(got.len(), old.len());
            let kept: Vec<bool> = got
                .chunks(PAGE as usize)
                .map(|c| {
                    assert!(c.iter().all(|&b| b == c[0]), "a page is torn inside");
                    c[0] == 2
                })
                .collect();
            assert!(kept.iter().any(|&k| k) && kept.iter().any(|&k| !k), "{kept:?}");
            results.push(kept);
        }
        assert_ne!(results[0], results[1], "two seeds chose the same pages");
    }

    #[test]
    fn a_dropped_page_past_the_old_end_reads_as_zeros() {
        // Two new pages past the synced end: whichever the coin drops reads as zeros.
        let (_d, path, mut p) = file_with(b"");
        let seed = (0..).find(|&s| !keeps(s, 0) && keeps(s, 1)).unwrap();
        write(&mut p, &path, 0, &vec![9; 2 * PAGE as usize]);
        p.cut(Cut::RandomPages { seed }).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), 2 * PAGE as usize);
        assert!(got[..PAGE as usize].iter().all(|&b| b == 0));
        assert!(got[PAGE as usize..].iter().all(|&b| b == 9));
    }

    #[test]
    fn memory_counts_saved_pages_and_writes() {
        let (_d, path, mut p) = file_with(&[0; 100]);
        write(&mut p, &path, 10, &[1; 10]);
        write(&mut p, &path, 20, &[1; 10]);
        // One saved page (clipped to the 100 synced bytes) and 20 bytes written.
        assert_eq!(p.bytes(), 100 + 20);
        assert_eq!(p.written(), 20);
    }
}
