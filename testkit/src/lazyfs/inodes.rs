//! The inode table of the mount: FUSE inode numbers for the files of the backing directory,
//! by their backing (device, inode), with each one's current backing path.
//!
//! Renames and unlinks go through the mount, so the table follows them: a rename moves the
//! path (and the paths under a renamed directory), an unlink forgets the backing identity so
//! that a new file that gets the same backing inode number gets a new FUSE inode. Entries are
//! never freed (`forget` is ignored): a test mount lives for one test.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// FUSE's root inode number.
pub const ROOT: u64 = 1;

/// See the module doc.
#[derive(Debug)]
pub struct Inodes {
    /// FUSE inode -> backing path.
    paths: HashMap<u64, PathBuf>,
    /// Backing (device, inode) -> FUSE inode, for files still linked.
    by_backing: HashMap<(u64, u64), u64>,
    next: u64,
}

impl Inodes {
    /// A table whose root is `backing` (an existing directory).
    pub fn new(backing: &Path) -> io::Result<Self> {
        let md = std::fs::metadata(backing)?;
        let paths = HashMap::from([(ROOT, backing.to_path_buf())]);
        let by_backing = HashMap::from([((md.dev(), md.ino()), ROOT)]);
        Ok(Self { paths, by_backing, next: ROOT + 1 })
    }

    /// The backing path of `ino`.
    pub fn path(&self, ino: u64) -> io::Result<PathBuf> {
        self.paths.get(&ino).cloned().ok_or_else(|| io::Error::from_raw_os_error(nix::libc::ESTALE))
    }

    /// The backing path of `name` in directory `parent`.
    pub fn child_path(&self, parent: u64, name: &OsStr) -> io::Result<PathBuf> {
        if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/')
        {
            return Err(io::Error::from_raw_os_error(nix::libc::EINVAL));
        }
        Ok(self.path(parent)?.join(name))
    }

    /// The FUSE inode of the file at backing `path` (whose metadata is `md`), made if new.
    pub fn intern(&mut self, path: PathBuf, md: &Metadata) -> u64 {
        let key = (md.dev(), md.ino());
        if let Some(&ino) = self.by_backing.get(&key) {
            self.paths.insert(ino, path);
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_backing.insert(key, ino);
        self.paths.insert(ino, path);
        ino
    }

    /// The FUSE inode already given to the file with metadata `md`, if any.
    pub fn known(&self, md: &Metadata) -> Option<u64> {
        self.by_backing.get(&(md.dev(), md.ino())).copied()
    }

    /// Call after the last link of the file with metadata `md` (taken before) was removed.
    pub fn unlinked(&mut self, md: &Metadata) {
        if md.is_dir() || md.nlink() <= 1 {
            self.by_backing.remove(&(md.dev(), md.ino()));
        }
    }

    /// Call after a rename from `from` to `to`: every path at or under `from` moves.
    pub fn renamed(&mut self, from: &Path, to: &Path) {
        for path in self.paths.values_mut() {
            if let Ok(rest) = path.strip_prefix(from) {
                *path = if rest.as_os_str().is_empty() { to.to_path_buf() } else { to.join(rest) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_directory_moves_the_paths_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Inodes::new(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/f"), b"").unwrap();
        let a = t.intern(dir.path().join("a"), &std::fs::metadata(dir.path().join("a")).unwrap());
        let f =
            t.intern(dir.path().join("a/f"), &std::fs::metadata(dir.path().join("a/f")).unwrap());
        std::fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        t.renamed(&dir.path().join("a"), &dir.path().join("b"));
        assert_eq!(t.path(a).unwrap(), dir.path().join("b"));
        assert_eq!(t.path(f).unwrap(), dir.path().join("b/f"));
        assert_eq!(t.path(ROOT).unwrap(), dir.path());
    }

    #[test]
    fn an_unlinked_identity_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Inodes::new(dir.path()).unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"").unwrap();
        let md = std::fs::metadata(&p).unwrap();
        let first = t.intern(p.clone(), &md);
        assert_eq!(t.intern(p.clone(), &md), first);
        t.unlinked(&md);
        assert_ne!(t.intern(p, &md), first);
    }

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = Inodes::new(dir.path()).unwrap();
        for bad in ["", ".", "..", "a/b"] {
            assert!(t.child_path(ROOT, OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }
}
