//! The FUSE adapter: turns `/dev/fuse` requests into calls on the fs core.
//!
//! It owns nothing but the translation (fuser types in, errno out). It mounts with
//! mount(2) directly (no `AutoUnmount`, so no fusermount), read-only, with the kernel's
//! own permission checks (`default_permissions`), several worker threads, and long entry,
//! attribute and page caching: the flist is immutable, so nothing cached can go stale.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyXattr, Request, SessionACL,
};

use crate::format::mode;
use crate::fs::{Attr, FsCore, FsError};

/// How long the kernel may cache entries and attributes (the flist never changes).
pub const CACHE_TTL: Duration = Duration::from_secs(3600);
/// Read-ahead asked of the kernel (it may grant less).
pub const READ_AHEAD_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// Default FUSE worker threads.
pub const FUSE_THREADS_DEFAULT: usize = 4;

/// Pending background requests (read-ahead) the kernel may queue to us.
pub const BACKGROUND_REQUESTS_MAX: u16 = 64;

/// The FUSE filesystem over an [`FsCore`].
#[derive(Debug)]
pub struct FuseAdapter {
    core: FsCore,
}

impl FuseAdapter {
    /// Wraps `core`.
    pub fn new(core: FsCore) -> Self {
        Self { core }
    }
}

fn errno(error: &FsError) -> Errno {
    Errno::from_i32(error.errno())
}

fn time_of((seconds, nanoseconds): (i64, u32)) -> SystemTime {
    let nanoseconds = Duration::from_nanos(u64::from(nanoseconds.min(999_999_999)));
    if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds as u64) + nanoseconds
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs()) + nanoseconds
    }
}

fn file_type(type_bits: u32) -> FileType {
    match type_bits & mode::TYPE_MASK {
        mode::DIRECTORY => FileType::Directory,
        mode::SYMLINK => FileType::Symlink,
        mode::CHAR_DEVICE => FileType::CharDevice,
        mode::BLOCK_DEVICE => FileType::BlockDevice,
        mode::FIFO => FileType::NamedPipe,
        mode::SOCKET => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.id),
        size: attr.size,
        blocks: attr.blocks,
        atime: time_of(attr.atime),
        mtime: time_of(attr.mtime),
        ctime: time_of(attr.ctime),
        crtime: time_of(attr.ctime),
        kind: file_type(attr.mode),
        perm: (attr.mode & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev as u32,
        blksize: crate::fs::BLOCK_BYTES,
        flags: 0,
    }
}

impl Filesystem for FuseAdapter {
    /// Asks for what suits an immutable tree: readdirplus (attributes with listings),
    /// parallel lookups, cached symlinks, and a large read-ahead (reads are served in
    /// chunks, so the kernel may as well ask for whole ones).
    fn init(&mut self, _request: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS;
        // Flags the kernel lacks are simply not used.
        if let Err(missing) = config.add_capabilities(wanted) {
            let _ = config.add_capabilities(wanted - missing);
        }
        if let Err(nearest) = config.set_max_readahead(READ_AHEAD_BYTES_MAX) {
            let _ = config.set_max_readahead(nearest);
        }
        // Room for the kernel's read-ahead of several files at once.
        let _ = config.set_max_background(BACKGROUND_REQUESTS_MAX);
        let _ = config.set_congestion_threshold(BACKGROUND_REQUESTS_MAX * 3 / 4);
        Ok(())
    }

    fn lookup(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.core.lookup(parent.0, name.as_bytes()) {
            Ok(attr) => reply.entry(&CACHE_TTL, &file_attr(&attr), Generation(0)),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn getattr(
        &self,
        _request: &Request,
        ino: INodeNo,
        _handle: Option<FileHandle>,
        reply: ReplyAttr,
    ) {
        match self.core.getattr(ino.0) {
            Ok(attr) => reply.attr(&CACHE_TTL, &file_attr(&attr)),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn readlink(&self, _request: &Request, ino: INodeNo, reply: ReplyData) {
        match self.core.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn open(&self, _request: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        match self.core.open(ino.0, write) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn read(
        &self,
        _request: &Request,
        ino: INodeNo,
        _handle: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // The kernel copies the reply once, into its page cache: hand it the chunk's own
        // bytes when the read lies in one chunk (nearly always), no copy of ours.
        match self.core.read_data(ino.0, offset, size) {
            Ok(data) => match data.as_single_slice() {
                Some(bytes) => reply.data(bytes),
                None => reply.data(&data.to_vec()),
            },
            Err(error) => reply.error(errno(&error)),
        }
    }

    /// Nothing is ever buffered for writing: a close has nothing to flush.
    fn flush(
        &self,
        _request: &Request,
        _ino: INodeNo,
        _handle: FileHandle,
        _owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn lseek(
        &self,
        _request: &Request,
        ino: INodeNo,
        _handle: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::EINVAL);
        };
        let hole = match whence {
            libc::SEEK_DATA => false,
            libc::SEEK_HOLE => true,
            // The kernel answers SEEK_SET, SEEK_CUR and SEEK_END itself.
            _ => return reply.error(Errno::EINVAL),
        };
        match self.core.seek_data_or_hole(ino.0, offset, hole) {
            Ok(found) => reply.offset(found as i64),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn opendir(&self, _request: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.core.getattr(ino.0) {
            Ok(attr) if attr.mode & mode::TYPE_MASK == mode::DIRECTORY => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn readdir(
        &self,
        _request: &Request,
        ino: INodeNo,
        _handle: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let outcome = self.core.readdir(ino.0, offset, |item| {
            !reply.add(
                INodeNo(item.id),
                item.next_offset,
                file_type(item.kind),
                OsStr::from_bytes(&item.name),
            )
        });
        match outcome {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn readdirplus(
        &self,
        _request: &Request,
        ino: INodeNo,
        _handle: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut failure = None;
        let outcome = self
            .core
            .readdir(ino.0, offset, |item| match self.core.getattr(item.id) {
                Ok(attr) => !reply.add(
                    INodeNo(item.id),
                    item.next_offset,
                    OsStr::from_bytes(&item.name),
                    &CACHE_TTL,
                    &file_attr(&attr),
                    Generation(0),
                ),
                Err(error) => {
                    failure = Some(error);
                    false
                }
            });
        match outcome.and_then(|()| failure.map_or(Ok(()), Err)) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn statfs(&self, _request: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let stat = self.core.statfs();
        reply.statfs(
            stat.blocks,
            0,
            0,
            stat.files,
            0,
            stat.block_bytes,
            stat.name_bytes_max,
            stat.block_bytes,
        );
    }

    fn getxattr(
        &self,
        _request: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        match self.core.getxattr(ino.0, name.as_bytes()) {
            Ok(value) if size == 0 => reply.size(value.len() as u32),
            Ok(value) if value.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(value) => reply.data(&value),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn listxattr(&self, _request: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.core.listxattr(ino.0) {
            Ok(names) if size == 0 => reply.size(names.len() as u32),
            Ok(names) if names.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(names) => reply.data(&names),
            Err(error) => reply.error(errno(&error)),
        }
    }

    /// No ioctls are supported; answering ENOTTY quietly keeps tools like `cat` (which
    /// probe with TCGETS) from filling the log.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _request: &Request,
        _ino: INodeNo,
        _handle: FileHandle,
        _flags: IoctlFlags,
        _command: u32,
        _input: &[u8],
        _output_bytes: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, request: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self
            .core
            .access(ino.0, mask.bits(), request.uid(), request.gid())
        {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(errno(&error)),
        }
    }
}

/// The mount configuration: read-only, kernel permission checks, `threads` workers.
pub fn mount_config(threads: usize, fs_name: &str) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(fs_name.to_string()),
        MountOption::Subtype("zos-flist".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(threads.max(1));
    config.clone_fd = true;
    config
}

/// Mounts `core` at `mountpoint` and serves it until the filesystem is unmounted (by
/// `zos flist umount` or umount(8)) or the process gets SIGINT or SIGTERM, which unmount it
/// (`stacked` first: a mount made over this one, such as the `--rw` overlay).
pub fn serve(
    core: FsCore,
    mountpoint: &Path,
    threads: usize,
    fs_name: &str,
    stacked: Option<std::path::PathBuf>,
) -> std::io::Result<()> {
    let mut session = fuser::Session::new(
        FuseAdapter::new(core),
        mountpoint,
        &mount_config(threads, fs_name),
    )?;
    let mut unmounter = session.unmount_callable();
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let waiter = std::thread::Builder::new()
        .name("flist-signals".into())
        .spawn(move || {
            let outcome: std::io::Result<()> = signals.block_on(async {
                let mut terminate =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    result = tokio::signal::ctrl_c() => result?,
                    _ = terminate.recv() => {}
                }
                Ok(())
            });
            if let Err(error) = outcome {
                tracing::error!(%error, "cannot wait for signals");
                return;
            }
            tracing::info!("signal received: unmounting");
            if let Some(stacked) = &stacked {
                if let Err(error) = crate::sys::unmount(stacked) {
                    tracing::warn!(%error, path = %stacked.display(), "unmounting the stacked mount");
                }
            }
            if let Err(error) = unmounter.unmount() {
                tracing::error!(%error, "unmount failed");
            }
        })?;
    drop(waiter);
    session.run()
}
