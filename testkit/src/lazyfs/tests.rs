//! Tests of the mounted filesystem: what survives a cut, what does not, and that nothing runs
//! after it. They skip (saying why) only where `/dev/fuse` is absent.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// A failure guard for waits, not a timing assertion.
const WAIT: Duration = Duration::from_secs(30);

struct Mounted {
    backing: tempfile::TempDir,
    mnt: tempfile::TempDir,
    fs: LazyFs,
}

impl Mounted {
    fn path(&self, name: &str) -> PathBuf {
        self.mnt.path().join(name)
    }

    /// Unmounts and returns the backing directory's content of `name`.
    fn after(self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.finish().path().join(name)).ok()
    }

    /// Unmounts and returns the backing directory.
    fn finish(self) -> tempfile::TempDir {
        self.fs.unmount().unwrap();
        self.backing
    }
}

fn mount_with(options: LazyFsOptions) -> Option<Mounted> {
    if let Some(why) = unavailable() {
        eprintln!("skipping the LazyFs test: {why}");
        return None;
    }
    let backing = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let fs = LazyFs::mount_with(backing.path(), mnt.path(), options).unwrap();
    Some(Mounted { backing, mnt, fs })
}

fn mount() -> Option<Mounted> {
    mount_with(LazyFsOptions::default())
}

fn rw(path: &Path) -> File {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).unwrap()
}

fn is_eio(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::EIO)
}

#[test]
fn a_write_then_fsync_survives_a_cut() {
    let Some(m) = mount() else { return };
    let mut f = rw(&m.path("a"));
    f.write_all(b"durable").unwrap();
    f.sync_data().unwrap();
    m.fs.power_cut(Cut::DropAll).unwrap();
    drop(f);
    assert_eq!(m.after("a").as_deref(), Some(&b"durable"[..]));
}

#[test]
fn a_write_without_fsync_is_gone_after_a_cut_with_the_growth_it_made() {
    let Some(m) = mount() else { return };
    let mut f = rw(&m.path("a"));
    f.write_all(b"synced;").unwrap();
    f.sync_all().unwrap();
    f.write_all(b" lost").unwrap();
    f.write_all_at(b"S", 0).unwrap();
    assert_eq!(m.fs.stats().unsynced_files, 1);
    m.fs.power_cut(Cut::DropAll).unwrap();
    drop(f);
    assert_eq!(m.after("a").as_deref(), Some(&b"synced;"[..]));
}

#[test]
fn reads_before_the_cut_see_unsynced_data() {
    let Some(m) = mount() else { return };
    let f = rw(&m.path("a"));
    f.write_all_at(b"not yet durable", 4096).unwrap();
    let mut other = File::open(m.path("a")).unwrap();
    let mut got = Vec::new();
    other.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 4096 + 15);
    assert_eq!(&got[4096..], b"not yet durable");
    assert!(got[..4096].iter().all(|&b| b == 0));
    assert_eq!(std::fs::metadata(m.path("a")).unwrap().len(), 4096 + 15);
    drop((f, other));
    m.fs.power_cut(Cut::DropAll).unwrap();
    // Created (metadata is durable at once), but its data was never synced.
    assert_eq!(m.after("a").as_deref(), Some(&b""[..]));
}

#[test]
fn keep_prefix_tears_the_unsynced_tail() {
    let Some(m) = mount() else { return };
    let mut f = rw(&m.path("log"));
    f.write_all(b"record-1;").unwrap();
    f.sync_data().unwrap();
    f.write_all(b"record-2;").unwrap();
    f.write_all(b"record-3;").unwrap();
    m.fs.power_cut(Cut::KeepPrefix(13)).unwrap();
    drop(f);
    assert_eq!(m.after("log").as_deref(), Some(&b"record-1;record-2;reco"[..]));
}

#[test]
fn operations_after_the_cut_fail_with_eio_and_change_nothing() {
    let Some(m) = mount() else { return };
    let mut f = rw(&m.path("a"));
    f.write_all(b"kept").unwrap();
    f.sync_all().unwrap();
    m.fs.power_cut(Cut::DropAll).unwrap();
    assert!(is_eio(&f.write_all_at(b"after", 0).unwrap_err()));
    assert!(is_eio(&f.sync_all().unwrap_err()));
    assert!(is_eio(&f.set_len(0).unwrap_err()));
    assert!(is_eio(&File::create(m.path("new")).unwrap_err()));
    assert!(is_eio(&std::fs::rename(m.path("a"), m.path("b")).unwrap_err()));
    assert!(is_eio(&std::fs::remove_file(m.path("a")).unwrap_err()));
    assert!(is_eio(&std::fs::create_dir(m.path("d")).unwrap_err()));
    assert_eq!(m.fs.stats().cut, Some(Cut::DropAll));
    drop(f);
    let backing: Vec<_> =
        std::fs::read_dir(m.backing.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(backing, ["a"]);
    assert_eq!(m.after("a").as_deref(), Some(&b"kept"[..]));
}

#[test]
fn a_remount_serves_what_survived() {
    let Some(m) = mount() else { return };
    let mut f = rw(&m.path("a"));
    f.write_all(b"one").unwrap();
    f.sync_data().unwrap();
    f.write_all(b" two").unwrap();
    m.fs.power_cut(Cut::DropAll).unwrap();
    drop(f);
    m.fs.unmount().unwrap();
    let fs = LazyFs::mount(m.backing.path(), m.mnt.path()).unwrap();
    assert_eq!(std::fs::read(m.mnt.path().join("a")).unwrap(), b"one");
    std::fs::write(m.mnt.path().join("a"), b"fresh start").unwrap();
    assert_eq!(std::fs::read(m.mnt.path().join("a")).unwrap(), b"fresh start");
    fs.unmount().unwrap();
}

#[test]
fn an_unsynced_set_len_is_lost_and_a_synced_one_kept() {
    let Some(m) = mount() else { return };
    let f = rw(&m.path("db"));
    f.set_len(1 << 20).unwrap();
    f.write_all_at(b"page", 8192).unwrap();
    f.sync_data().unwrap();
    f.set_len(3 << 20).unwrap();
    f.write_all_at(b"late", 2 << 20).unwrap();
    f.set_len(4096).unwrap();
    m.fs.power_cut(Cut::DropAll).unwrap();
    drop(f);
    let got = m.after("db").unwrap();
    assert_eq!(got.len(), 1 << 20);
    assert_eq!(&got[8192..8196], b"page");
}

#[test]
fn metadata_is_durable_at_once_but_renamed_data_still_needs_its_fsync() {
    let Some(m) = mount() else { return };
    std::fs::create_dir(m.path("dir")).unwrap();
    let mut f = rw(&m.path("dir/tmp"));
    f.write_all(b"synced").unwrap();
    f.sync_all().unwrap();
    f.write_all(b" unsynced").unwrap();
    std::fs::rename(m.path("dir/tmp"), m.path("dir/final")).unwrap();
    std::fs::rename(m.path("dir"), m.path("moved")).unwrap();
    File::create(m.path("empty")).unwrap();
    m.fs.power_cut(Cut::DropAll).unwrap();
    drop(f);
    let backing = m.finish();
    assert_eq!(std::fs::read(backing.path().join("moved/final")).unwrap(), b"synced");
    assert_eq!(std::fs::read(backing.path().join("empty")).unwrap(), b"");
    assert!(!backing.path().join("dir").exists());
}

#[test]
fn a_cut_armed_at_the_next_fsync_loses_what_that_fsync_was_for() {
    let Some(m) = mount() else { return };
    let mut f = rw(&m.path("wal"));
    f.write_all(b"group-1;").unwrap();
    f.sync_data().unwrap();
    m.fs.power_cut_at_next_fsync(Cut::KeepPercent(50));
    f.write_all(b"group-2;").unwrap();
    assert_eq!(m.fs.stats().cut, None, "armed, not yet cut");
    assert!(is_eio(&f.sync_data().unwrap_err()), "the fsync the cut replaced must fail");
    assert_eq!(m.fs.wait_for_cut(WAIT).unwrap(), Cut::KeepPercent(50));
    let stats = m.fs.stats();
    assert_eq!((stats.cut_unsynced_bytes, stats.cut_unsynced_files), (8, 1));
    drop(f);
    assert_eq!(m.after("wal").as_deref(), Some(&b"group-1;grou"[..]));
}

#[test]
fn a_disk_that_ignores_fsync_loses_synced_data() {
    let options = LazyFsOptions { fsync: FsyncMode::Ignore, ..LazyFsOptions::default() };
    let Some(m) = mount_with(options) else { return };
    let mut f = rw(&m.path("a"));
    f.write_all(b"acked").unwrap();
    f.sync_all().unwrap();
    m.fs.power_cut(Cut::DropAll).unwrap();
    drop(f);
    assert_eq!(m.after("a").as_deref(), Some(&b""[..]));
}

#[test]
fn writes_through_o_dsync_are_durable() {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(m) = mount() else { return };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(nix::libc::O_DSYNC)
        .open(m.path("a"))
        .unwrap();
    f.write_all(b"dsync").unwrap();
    m.fs.power_cut(Cut::DropAll).unwrap();
    drop(f);
    assert_eq!(m.after("a").as_deref(), Some(&b"dsync"[..]));
}

#[test]
fn the_unsynced_memory_is_bounded() {
    let options = LazyFsOptions { max_unsynced_bytes: 64 * 1024, ..LazyFsOptions::default() };
    let Some(m) = mount_with(options) else { return };
    let f = rw(&m.path("a"));
    f.write_all_at(&[1; 32 * 1024], 0).unwrap();
    let err = f.write_all_at(&[2; 64 * 1024], 32 * 1024).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    f.sync_data().unwrap();
    f.write_all_at(&[3; 32 * 1024], 32 * 1024).unwrap();
    drop(f);
    m.fs.power_cut(Cut::KeepAll).unwrap();
    assert_eq!(m.after("a").map(|d| d.len()), Some(64 * 1024));
}

#[test]
fn directories_list_and_unlink_through_the_mount() {
    let Some(m) = mount() else { return };
    for name in ["b", "a", "c"] {
        std::fs::write(m.path(name), name).unwrap();
    }
    std::fs::remove_file(m.path("b")).unwrap();
    let mut names: Vec<_> =
        std::fs::read_dir(m.mnt.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["a", "c"]);
    File::open(m.mnt.path()).unwrap().sync_all().unwrap();
    m.fs.power_cut(Cut::DropAll).unwrap();
    assert_eq!(m.after("b"), None);
}

#[test]
fn a_cut_armed_at_the_nth_fsync_lets_the_ones_before_it_through() {
    let Some(m) = mount() else { return };
    let mut f = rw(&m.path("db"));
    m.fs.power_cut_at_fsync(3, Cut::DropAll);
    for part in [&b"data;"[..], b"header;"] {
        f.write_all(part).unwrap();
        f.sync_data().unwrap();
        // Nothing written to sync: does not count.
        f.sync_data().unwrap();
    }
    // A size change alone does not count either.
    f.set_len(100).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(b"next data;", 12).unwrap();
    assert!(is_eio(&f.sync_data().unwrap_err()));
    assert_eq!(m.fs.stats().fsyncs, 6);
    drop(f);
    let mut want = b"data;header;".to_vec();
    want.resize(100, 0);
    assert_eq!(m.after("db"), Some(want));
}
