//! The FUSE side: a passthrough of the backing directory whose data operations are recorded in
//! [`State`] before they are done, whose fsyncs commit them, and which answers EIO to
//! everything once the power is cut.

use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::libc;

use super::inodes::ROOT;
use super::state::{Shared, State};

/// How long the kernel may cache names and attributes. Only this mount changes the backing
/// directory, so caching is safe; after a cut every request fails anyway.
const TTL: Duration = Duration::from_secs(1);

/// The [`Filesystem`] fuser drives (one session thread).
pub struct LazyFsCore {
    pub shared: Arc<Shared>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl LazyFsCore {
    /// Runs `f` on the state unless the power was cut (then EIO).
    fn with<T>(&self, f: impl FnOnce(&mut State) -> io::Result<T>) -> Result<T, Errno> {
        let mut state = self.shared.lock();
        if state.cut.is_some() {
            return Err(Errno::EIO);
        }
        f(&mut state).map_err(Errno::from)
    }

    /// Records then does a size change of `ino` (through `file`, read-write).
    fn set_len(&self, state: &mut State, ino: u64, file: &File, len: u64) -> io::Result<()> {
        state.record(&self.shared.options, ino, file, 0, |p| p.before_set_len(len))?;
        file.set_len(len)
    }
}

/// Opens a backing file for reading and writing whatever the program asked: the program's
/// access mode is enforced by the kernel on its own descriptor, and saving a file's old pages
/// needs to read it.
fn open_backing(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

fn is_sync(flags: i32) -> bool {
    flags & (libc::O_SYNC | libc::O_DSYNC) != 0
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nsecs.clamp(0, 999_999_999) as u64);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

fn kind(md: &Metadata) -> FileType {
    FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile)
}

fn attr(ino: u64, md: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: time(md.atime(), md.atime_nsec()),
        mtime: time(md.mtime(), md.mtime_nsec()),
        ctime: time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind(md),
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: md.blksize() as u32,
        flags: 0,
    }
}

fn when(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn answer_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn answer_entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn answer_attr(reply: ReplyAttr, result: Result<FileAttr, Errno>) {
    match result {
        Ok(a) => reply.attr(&TTL, &a),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for LazyFsCore {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.with(|s| {
            let path = s.inodes.child_path(parent.0, name)?;
            let md = std::fs::symlink_metadata(&path)?;
            Ok(attr(s.inodes.intern(path, &md), &md))
        });
        answer_entry(reply, result)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = self.with(|s| {
            let md = match fh.and_then(|fh| s.handle(ino.0, fh.0).ok()) {
                Some((file, _)) => file.metadata()?,
                None => std::fs::symlink_metadata(s.inodes.path(ino.0)?)?,
            };
            Ok(attr(ino.0, &md))
        });
        answer_attr(reply, result)
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.with(|s| {
            let path = s.inodes.path(ino.0)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid)?;
            }
            if let Some(len) = size {
                let file = match fh.and_then(|fh| s.handle(ino.0, fh.0).ok()) {
                    Some((file, _)) => file,
                    None => Arc::new(open_backing(&path)?),
                };
                self.set_len(s, ino.0, &file, len)?;
            }
            if atime.is_some() || mtime.is_some() {
                let mut times = std::fs::FileTimes::new();
                if let Some(t) = atime {
                    times = times.set_accessed(when(t));
                }
                if let Some(t) = mtime {
                    times = times.set_modified(when(t));
                }
                File::open(&path)?.set_times(times)?;
            }
            Ok(attr(ino.0, &std::fs::symlink_metadata(&path)?))
        });
        answer_attr(reply, result)
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.with(|s| {
            let path = s.inodes.child_path(parent.0, name)?;
            std::fs::DirBuilder::new().mode(mode & !umask & 0o7777).create(&path)?;
            let md = std::fs::symlink_metadata(&path)?;
            Ok(attr(s.inodes.intern(path, &md), &md))
        });
        answer_entry(reply, result)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.with(|s| {
            let path = s.inodes.child_path(parent.0, name)?;
            let md = std::fs::symlink_metadata(&path)?;
            std::fs::remove_file(&path)?;
            if let Some(ino) = s.inodes.known(&md).filter(|_| md.nlink() <= 1) {
                s.forget_data(ino);
            }
            s.inodes.unlinked(&md);
            Ok(())
        });
        answer_empty(reply, result)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.with(|s| {
            let path = s.inodes.child_path(parent.0, name)?;
            let md = std::fs::symlink_metadata(&path)?;
            std::fs::remove_dir(&path)?;
            s.inodes.unlinked(&md);
            Ok(())
        });
        answer_empty(reply, result)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.with(|s| {
            let from = s.inodes.child_path(parent.0, name)?;
            let to = s.inodes.child_path(newparent.0, newname)?;
            let replaced = std::fs::symlink_metadata(&to).ok();
            if flags.contains(RenameFlags::RENAME_NOREPLACE) && replaced.is_some() {
                return Err(errno(libc::EEXIST));
            }
            if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
                return Err(errno(libc::EINVAL));
            }
            let moved = std::fs::symlink_metadata(&from)?;
            std::fs::rename(&from, &to)?;
            if let Some(md) = replaced.filter(|md| md.ino() != moved.ino()) {
                if let Some(ino) = s.inodes.known(&md).filter(|_| md.nlink() <= 1) {
                    s.forget_data(ino);
                }
                s.inodes.unlinked(&md);
            }
            s.inodes.renamed(&from, &to);
            Ok(())
        });
        answer_empty(reply, result)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|s| {
            let path = s.inodes.path(ino.0)?;
            let file = open_backing(&path)?;
            if flags.0 & libc::O_TRUNC != 0 {
                self.set_len(s, ino.0, &file, 0)?;
            }
            Ok(s.open_handle(ino.0, file, is_sync(flags.0)))
        }) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.with(|s| {
            let path = s.inodes.child_path(parent.0, name)?;
            let mut options = OpenOptions::new();
            options.read(true).write(true).mode(mode & !umask & 0o7777);
            if flags & libc::O_EXCL != 0 {
                options.create_new(true);
            } else {
                options.create(true);
            }
            let file = options.open(&path)?;
            let md = file.metadata()?;
            let ino = s.inodes.intern(path, &md);
            if flags & libc::O_TRUNC != 0 && md.len() > 0 {
                self.set_len(s, ino, &file, 0)?;
            }
            let md = file.metadata()?;
            Ok((attr(ino, &md), s.open_handle(ino, file, is_sync(flags))))
        }) {
            Ok((a, fh)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|s| {
            let (file, _) = s.handle(ino.0, fh.0)?;
            let mut buf = vec![0; size as usize];
            let mut filled = 0;
            while filled < buf.len() {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            Ok(buf)
        }) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|s| {
            let (file, sync) = s.handle(ino.0, fh.0)?;
            let options = &self.shared.options;
            s.record(options, ino.0, &file, data.len() as u64, |p| p.before_write(offset, data))?;
            file.write_all_at(data, offset)?;
            s.stats.writes += 1;
            if sync || is_sync(flags.0) {
                s.fsync(options, ino.0)?;
            }
            Ok(data.len() as u32)
        }) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() does not sync.
        let result = self.with(|_| Ok(()));
        answer_empty(reply, result)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Even after the cut: the descriptor is gone either way.
        self.shared.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.with(|s| s.fsync(&self.shared.options, ino.0));
        if self.shared.lock().cut.is_some() {
            self.shared.cut_done.notify_all();
        }
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|s| {
            if std::fs::metadata(s.inodes.path(ino.0)?)?.is_dir() {
                Ok(())
            } else {
                Err(errno(libc::ENOTDIR))
            }
        }) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.with(|s| {
            let path = s.inodes.path(ino.0)?;
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            let mut names: Vec<_> = std::fs::read_dir(&path)?.collect::<io::Result<_>>()?;
            names.sort_by_key(|e| e.file_name());
            for e in names {
                let md = e.metadata()?;
                let child = s.inodes.intern(e.path(), &md);
                entries.push((child, kind(&md), e.file_name()));
            }
            Ok(entries)
        }) {
            Ok(entries) => {
                for (i, (child, kind, name)) in
                    entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory operations are durable at once (see the module doc of `lazyfs`).
        let result = self.with(|s| {
            s.stats.fsyncs += 1;
            Ok(())
        });
        answer_empty(reply, result)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self
            .with(|s| nix::sys::statvfs::statvfs(&s.inodes.path(ROOT)?).map_err(io::Error::from))
        {
            Ok(v) => reply.statfs(
                v.blocks(),
                v.blocks_free(),
                v.blocks_available(),
                v.files(),
                v.files_free(),
                v.block_size() as u32,
                v.name_max() as u32,
                v.fragment_size() as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let result = self.with(|_| Ok(()));
        answer_empty(reply, result)
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        use nix::fcntl::{FallocateFlags, fallocate};
        let result = self.with(|s| {
            let (file, _) = s.handle(ino.0, fh.0)?;
            let flags = FallocateFlags::from_bits(mode).ok_or_else(|| errno(libc::EOPNOTSUPP))?;
            if !(flags - FallocateFlags::FALLOC_FL_KEEP_SIZE).is_empty() {
                // Punching holes or zeroing ranges changes data; not modelled.
                return Err(errno(libc::EOPNOTSUPP));
            }
            let end = offset.checked_add(length).ok_or_else(|| errno(libc::EFBIG))?;
            if !flags.contains(FallocateFlags::FALLOC_FL_KEEP_SIZE) && end > file.metadata()?.len()
            {
                // The file grows (with zeros): a size change, lost at a cut like a write.
                s.record(&self.shared.options, ino.0, &file, 0, |p| p.before_set_len(end))?;
            }
            let too_far = || errno(libc::EFBIG);
            let offset = i64::try_from(offset).map_err(|_| too_far())?;
            let length = i64::try_from(length).map_err(|_| too_far())?;
            fallocate(&*file, flags, offset, length).map_err(io::Error::from)
        });
        answer_empty(reply, result)
    }
}
