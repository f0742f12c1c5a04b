//! The FUSE adapter: turns `/dev/fuse` requests into calls on the fs core.
//!
//! It owns the translation (fuser types in, errno out) and the choice of how each open file
//! is served. It mounts with mount(2) directly (no `AutoUnmount`, so no fusermount),
//! read-only, with the kernel's own permission checks (`default_permissions`), several
//! worker threads, and long entry, attribute and page caching: the flist is immutable, so
//! nothing cached can go stale.
//!
//! **Passthrough**: when the kernel offers FUSE passthrough (Linux 6.9 and later) and a
//! file has a checked plaintext copy in the cache ([`crate::copies`]), `open` hands the
//! kernel that copy as the file's backing file: reads and mmaps of that open file go to
//! the copy without a round trip through this process, at the local filesystem's speed.
//! The kernel allows an inode to be open in passthrough or in cached mode, never both at
//! once, and every passthrough open of an inode must name the same backing file; so the
//! adapter counts each inode's open files by mode, opens in the mode already in use, and
//! keeps the backing file registered until the last passthrough open is released. A file
//! read to its end asks for its copy to be made; the next open (once no cached open is
//! left) is a passthrough one. Where passthrough is refused (an older kernel, no
//! `CAP_SYS_ADMIN`, a cache on a stacked filesystem) the adapter says so once in the log
//! and serves every read itself.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr, Request, SessionACL,
};

use crate::copies::Copies;
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

/// Backing files stack on a filesystem at most this deep below the mount: 1 lets the
/// copies live on an ordinary filesystem and lets an overlayfs (`--rw`) stack on the mount.
pub const PASSTHROUGH_STACK_DEPTH: u32 = 1;

/// File handle of a file opened in cached mode (reads answered by this process).
const HANDLE_CACHED: u64 = 0;
/// File handle of a file opened in passthrough mode (reads go to its plaintext copy).
const HANDLE_PASSTHROUGH: u64 = 1;

/// The open files of one inode, by mode (the kernel never mixes them on one inode).
#[derive(Default)]
struct InodeOpens {
    cached: u32,
    passthrough: u32,
    /// The registered backing file and the copy it was made from (open and locked against
    /// eviction), while `passthrough > 0`.
    backing: Option<(BackingId, std::fs::File)>,
}

/// The FUSE filesystem over an [`FsCore`].
pub struct FuseAdapter {
    core: FsCore,
    copies: Option<Arc<Copies>>,
    /// Passthrough was granted by the kernel and has not failed.
    passthrough: AtomicBool,
    opens: Mutex<HashMap<u64, InodeOpens>>,
}

impl std::fmt::Debug for FuseAdapter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FuseAdapter")
            .field("core", &self.core)
            .field("passthrough", &self.passthrough.load(Ordering::Relaxed))
            .finish()
    }
}

impl FuseAdapter {
    /// Wraps `core`; every read is answered by this process.
    pub fn new(core: FsCore) -> Self {
        Self::with_copies(core, None)
    }

    /// Wraps `core`; files with a plaintext copy in `copies` are opened in passthrough
    /// when the kernel allows it.
    pub fn with_copies(core: FsCore, copies: Option<Arc<Copies>>) -> Self {
        Self {
            core,
            copies,
            passthrough: AtomicBool::new(false),
            opens: Mutex::new(HashMap::new()),
        }
    }

    fn opens(&self) -> std::sync::MutexGuard<'_, HashMap<u64, InodeOpens>> {
        self.opens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens `ino` for reading, in passthrough when it has a copy and no cached open.
    fn open_file(&self, ino: u64, reply: ReplyOpen) {
        // Files that never get a copy are always opened cached, uncounted.
        let copies = match &self.copies {
            Some(copies) if copies.wanted(ino) => copies,
            _ => return reply.opened(FileHandle(HANDLE_CACHED), FopenFlags::FOPEN_KEEP_CACHE),
        };
        // (The lock is held for this statement only.)
        let Err(reply) = self.open_as_before(self.opens().entry(ino).or_default(), reply) else {
            return;
        };
        // Finding (and on first use checking) the copy takes a while: not under the lock.
        let copy = copies.open(ino);
        let mut opens = self.opens();
        let entry = opens.entry(ino).or_default();
        // Another open may have settled the mode meanwhile.
        let Err(reply) = self.open_as_before(entry, reply) else {
            return;
        };
        if let Some(copy) = copy {
            match reply.open_backing(&copy) {
                Ok(backing) => {
                    entry.passthrough = 1;
                    reply.opened_passthrough(
                        FileHandle(HANDLE_PASSTHROUGH),
                        FopenFlags::empty(),
                        &backing,
                    );
                    entry.backing = Some((backing, copy));
                    return;
                }
                Err(error) => {
                    self.passthrough.store(false, Ordering::Relaxed);
                    tracing::warn!(%error, "the kernel refused a backing file; FUSE passthrough is off for this mount, every read is served by the mount");
                }
            }
        } else {
            copies.request(ino);
        }
        entry.cached += 1;
        reply.opened(FileHandle(HANDLE_CACHED), FopenFlags::FOPEN_KEEP_CACHE)
    }

    /// Opens an inode already open in one mode in that mode (passthrough ones too after
    /// passthrough was turned off: the kernel would refuse a cached open), and opens it cached
    /// while passthrough is off. Hands `reply` back when the mode is still open to choose.
    fn open_as_before(&self, entry: &mut InodeOpens, reply: ReplyOpen) -> Result<(), ReplyOpen> {
        if let Some((backing, _)) = &entry.backing {
            entry.passthrough += 1;
            reply.opened_passthrough(FileHandle(HANDLE_PASSTHROUGH), FopenFlags::empty(), backing);
            return Ok(());
        }
        if entry.cached > 0 || !self.passthrough.load(Ordering::Relaxed) {
            entry.cached += 1;
            reply.opened(FileHandle(HANDLE_CACHED), FopenFlags::FOPEN_KEEP_CACHE);
            return Ok(());
        }
        Err(reply)
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
        if self.copies.is_some() {
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(PASSTHROUGH_STACK_DEPTH).is_ok();
            self.passthrough.store(granted, Ordering::Relaxed);
            if granted {
                tracing::info!("FUSE passthrough on: files with a plaintext copy are read by the kernel directly");
            } else {
                tracing::warn!("the kernel offers no FUSE passthrough (Linux 6.9 or later has it); every read is served by the mount");
            }
        }
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
            Ok(()) => self.open_file(ino.0, reply),
            Err(error) => reply.error(errno(&error)),
        }
    }

    fn release(
        &self,
        _request: &Request,
        ino: INodeNo,
        handle: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut opens = self.opens();
        if let Some(entry) = opens.get_mut(&ino.0) {
            if handle.0 == HANDLE_PASSTHROUGH {
                entry.passthrough = entry.passthrough.saturating_sub(1);
                if entry.passthrough == 0 {
                    // Unregisters the backing file and unlocks the copy.
                    entry.backing = None;
                }
            } else {
                entry.cached = entry.cached.saturating_sub(1);
            }
            if entry.cached == 0 && entry.passthrough == 0 {
                opens.remove(&ino.0);
            }
        }
        drop(opens);
        reply.ok();
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
            Ok(data) => {
                let read_end = offset + data.len() as u64;
                match data.as_single_slice() {
                    Some(bytes) => reply.data(bytes),
                    None => reply.data(&data.to_vec()),
                }
                // A read that reaches the end of a file that gets copies: the file was
                // likely read whole, so its chunks are local; have its copy made (that
                // checks every chunk is local first, and never fetches).
                if let Some(copies) = &self.copies {
                    if copies.wanted(ino.0)
                        && self
                            .core
                            .getattr(ino.0)
                            .is_ok_and(|attr| read_end >= attr.size)
                    {
                        copies.read_to_end(ino.0);
                    }
                }
            }
            Err(error) => reply.error(errno(&error)),
        }
    }

    /// Nothing is ever buffered for writing: a close has nothing to flush. ENOSYS tells
    /// the kernel so once and for all: it sends no more flushes, so a close costs no round
    /// trip (and closing a passthrough file never waits for this process).
    fn flush(
        &self,
        _request: &Request,
        _ino: INodeNo,
        _handle: FileHandle,
        _owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
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

/// Mounts `core` at `mountpoint` (with passthrough to the plaintext copies of `copies`,
/// when given) and serves it until the filesystem is unmounted (by
/// `zos flist umount` or umount(8)) or the process gets SIGINT or SIGTERM, which unmount it
/// (`stacked` first: a mount made over this one, such as the `--rw` overlay).
pub fn serve(
    core: FsCore,
    copies: Option<Arc<Copies>>,
    mountpoint: &Path,
    threads: usize,
    fs_name: &str,
    stacked: Option<std::path::PathBuf>,
) -> std::io::Result<()> {
    let mut session = fuser::Session::new(
        FuseAdapter::with_copies(core, copies),
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
