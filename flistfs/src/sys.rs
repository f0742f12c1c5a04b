//! The only place in this crate that maps memory or calls into the kernel directly.
//!
//! It owns: mapping an flist file read-only (memmap2; everything above sees a `&[u8]`),
//! device nodes and times for unpack, mount and unmount calls.

use std::fs::File;
use std::io;
use std::path::Path;

/// A read-only, private mapping of a whole file.
#[derive(Debug)]
pub struct Mapping {
    map: Option<memmap2::Mmap>,
}

impl Mapping {
    /// Maps `path` read-only. An empty file gives an empty slice (mmap refuses length 0).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let length_bytes = file.metadata()?.len();
        if length_bytes == 0 {
            return Ok(Self { map: None });
        }
        // SAFETY: the mapping is read-only and private. flists are immutable by contract: a
        // writer builds a new file and renames it into place, so the pages we map are never
        // truncated under us by our own tools. Every byte read through it is bounds- and
        // checksum-checked by the reader before being trusted.
        let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
        Ok(Self { map: Some(map) })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Some(map) => map,
            None => &[],
        }
    }
}

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Creates a device node, fifo or socket at `path` with `mode` (type bits included).
pub fn make_node(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call; mknod reads
    // nothing else from our memory.
    let result = unsafe { libc::mknod(path.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets access and modification times of `path` with nanoseconds, not following symlinks.
pub fn set_times_nofollow(path: &Path, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    let path = c_path(path)?;
    let times = [
        libc::timespec {
            tv_sec: atime.0 as libc::time_t,
            tv_nsec: atime.1 as libc::c_long,
        },
        libc::timespec {
            tv_sec: mtime.0 as libc::time_t,
            tv_nsec: mtime.1 as libc::c_long,
        },
    ];
    // SAFETY: `path` is NUL-terminated and `times` is an array of two timespecs, as
    // utimensat requires; both outlive the call.
    let result = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unmounts the filesystem at `path` (umount2 with no flags).
pub fn unmount(path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let result = unsafe { libc::umount2(path.as_ptr(), 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mounts an overlayfs at `target`: `lower` read-only below, writes going to `upper`
/// (`work` is overlayfs's scratch folder, on the same filesystem as `upper`).
pub fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    for path in [lower, upper, work] {
        let text = path.to_string_lossy();
        if text.contains(',') || text.contains(':') || text.contains('\\') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{text}: overlayfs paths may not hold ',', ':' or '\\'"),
            ));
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let options = std::ffi::CString::new(options)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let target = c_path(target)?;
    let kind = c"overlay";
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call; the
    // data argument is the options string overlayfs expects.
    let result = unsafe {
        libc::mount(
            kind.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `path` (absolute, as the kernel shows it) is a mount point of this namespace.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_ref()))
}

/// Largest buffer glibc's malloc serves from its heaps once [`keep_freed_memory`] ran
/// (glibc's own ceiling for the setting on 64-bit targets).
pub const MALLOC_MMAP_THRESHOLD_BYTES: i32 = 32 * 1024 * 1024;
/// Free memory at the top of a heap that glibc keeps instead of returning it.
pub const MALLOC_TRIM_THRESHOLD_BYTES: i32 = 128 * 1024 * 1024;

/// Makes glibc's malloc keep chunk-sized buffers (a few MiB) for reuse instead of mapping
/// and unmapping each one: a mount allocates one per chunk fetched, and a fresh mapping is
/// paid again in page faults and page zeroing as the bytes arrive (38% of a mount's CPU on
/// cold reads, measured). Freed memory is still returned beyond
/// [`MALLOC_TRIM_THRESHOLD_BYTES`]. Without glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator tunables; it takes plain integers and is
        // called before the mount's threads allocate much (any time is allowed).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES);
            libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES);
        }
    }
}
