//! The only module that talks to the kernel with raw calls: io_uring, signals.
//!
//! Everything above works with safe wrappers; the few operations that hand the kernel raw
//! pointers (readv/writev into guest memory or bounce buffers) are `unsafe fn`s whose
//! contract the caller states at the call site.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::EventFd;

use crate::io::{Operation, QueueIo};

/// `fallocate` mode: deallocate the range (reads give zeros), keep the file size.
pub const FALLOCATE_PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
/// `fallocate` mode: zero the range, keep the file size.
pub const FALLOCATE_ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// An array of `iovec`s handed to the kernel. The pointers inside point into guest memory or
/// into bounce buffers that the owning request keeps alive until the kernel completes it.
#[derive(Debug, Default)]
pub struct IoVecs(Vec<libc::iovec>);

// SAFETY: the iovecs are plain addresses; the memory they describe is owned (and kept alive)
// by the in-flight request that owns this array, which moves between threads as a whole.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// An empty array with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    /// Appends one buffer.
    pub fn push(&mut self, base: *mut u8, len: usize) {
        self.0.push(libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        });
    }

    /// Number of buffers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no buffer.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An io_uring whose completions also signal an eventfd, so an epoll loop can wait on it.
pub struct Ring {
    ring: IoUring,
    completion_event: EventFd,
    unsubmitted_count: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Ring")
            .field("unsubmitted_count", &self.unsubmitted_count)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// A ring with room for `entries` submissions; its completion queue is twice that.
    pub fn new(entries: u32) -> io::Result<Self> {
        let ring = IoUring::new(entries)?;
        let completion_event = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        ring.submitter()
            .register_eventfd(completion_event.as_raw_fd())?;
        Ok(Self {
            ring,
            completion_event,
            unsubmitted_count: 0,
        })
    }
}

impl QueueIo for Ring {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    unsafe fn push(
        &mut self,
        file: &File,
        operation: Operation<'_>,
        user_data: u64,
    ) -> io::Result<()> {
        let fd = types::Fd(file.as_raw_fd());
        let entry = match operation {
            Operation::Readv { iovecs, offset } => {
                opcode::Readv::new(fd, iovecs.0.as_ptr(), iovec_count(iovecs)?)
                    .offset(offset)
                    .build()
            }
            Operation::Writev { iovecs, offset } => {
                opcode::Writev::new(fd, iovecs.0.as_ptr(), iovec_count(iovecs)?)
                    .offset(offset)
                    .build()
            }
            Operation::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Operation::Fallocate {
                offset,
                length,
                mode,
            } => opcode::Fallocate::new(fd, length)
                .offset(offset)
                .mode(mode)
                .build(),
        }
        .user_data(user_data);
        loop {
            // SAFETY: the caller guarantees the buffers outlive the operation (see above).
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                self.unsubmitted_count += 1;
                return Ok(());
            }
            // The submission queue is full: hand what is queued to the kernel and retry.
            self.submit()?;
        }
    }

    fn completion_fd(&self) -> RawFd {
        self.completion_event.as_raw_fd()
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.unsubmitted_count == 0 {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.unsubmitted_count = 0;
                    return Ok(());
                }
                Err(error) if error.raw_os_error() == Some(libc::EINTR) => continue,
                Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {
                    // The completion queue is full: the caller reaps and submits again.
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        // A failed read only means the counter was already zero.
        let _ = self.completion_event.read();
        out.extend(
            self.ring
                .completion()
                .map(|completion| (completion.user_data(), completion.result())),
        );
    }

    fn reap_ready(&mut self, out: &mut Vec<(u64, i32)>) {
        // The kernel posts a completion before it signals the eventfd, so clearing the
        // eventfd and then draining never loses a wake-up; an empty queue costs no syscall.
        if !self.ring.completion().is_empty() {
            self.reap(out);
        }
    }

    fn wait_all(&mut self, count: usize, out: &mut Vec<(u64, i32)>) -> io::Result<()> {
        let target = out.len() + count;
        while out.len() < target {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(libc::EINTR) => {}
                Err(error) => return Err(error),
            }
            self.unsubmitted_count = 0;
            self.reap(out);
        }
        Ok(())
    }
}

/// The fallback when io_uring cannot be set up (old kernel, seccomp, locked memory limits):
/// each operation runs synchronously (preadv, pwritev, fdatasync, fallocate) when pushed,
/// and its completion is reported through the same eventfd protocol as the ring.
pub struct SyncIo {
    completion_event: EventFd,
    completed: Vec<(u64, i32)>,
}

impl std::fmt::Debug for SyncIo {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SyncIo")
            .field("completed", &self.completed.len())
            .finish_non_exhaustive()
    }
}

impl SyncIo {
    /// A synchronous executor with its completion eventfd.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            completion_event: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            completed: Vec::new(),
        })
    }
}

fn result_code(result: isize) -> i32 {
    if result < 0 {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        i32::try_from(result).unwrap_or(i32::MAX)
    }
}

impl QueueIo for SyncIo {
    fn name(&self) -> &'static str {
        "synchronous"
    }

    unsafe fn push(
        &mut self,
        file: &File,
        operation: Operation<'_>,
        user_data: u64,
    ) -> io::Result<()> {
        let fd = file.as_raw_fd();
        let result = match operation {
            Operation::Readv { iovecs, offset } => {
                // SAFETY: the caller guarantees the iovecs describe valid, writable buffers.
                result_code(unsafe {
                    libc::preadv(fd, iovecs.0.as_ptr(), iovecs.0.len() as i32, offset as i64)
                })
            }
            Operation::Writev { iovecs, offset } => {
                // SAFETY: the caller guarantees the iovecs describe valid buffers.
                result_code(unsafe {
                    libc::pwritev(fd, iovecs.0.as_ptr(), iovecs.0.len() as i32, offset as i64)
                })
            }
            Operation::Flush => match file.sync_data() {
                Ok(()) => 0,
                Err(error) => -error.raw_os_error().unwrap_or(libc::EIO),
            },
            Operation::Fallocate {
                offset,
                length,
                mode,
            } => {
                // SAFETY: fallocate on a descriptor we own, plain integer arguments.
                let result = unsafe { libc::fallocate(fd, mode, offset as i64, length as i64) };
                result_code(result as isize)
            }
        };
        self.completed.push((user_data, result));
        self.completion_event.write(1)
    }

    fn completion_fd(&self) -> RawFd {
        self.completion_event.as_raw_fd()
    }

    fn submit(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        // A failed read only means the counter was already zero.
        let _ = self.completion_event.read();
        out.append(&mut self.completed);
    }

    fn reap_ready(&mut self, out: &mut Vec<(u64, i32)>) {
        if !self.completed.is_empty() {
            self.reap(out);
        }
    }

    fn wait_all(&mut self, count: usize, out: &mut Vec<(u64, i32)>) -> io::Result<()> {
        let available = self.completed.len().min(count);
        out.extend(self.completed.drain(..available));
        Ok(())
    }
}

fn iovec_count(iovecs: &IoVecs) -> io::Result<u32> {
    u32::try_from(iovecs.0.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread it spawns later)
/// so that [`wait_for_termination_signal`] can take them synchronously.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_signal_set()?;
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let result = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(result))
    }
}

/// Waits for SIGINT or SIGTERM (blocked beforehand with [`block_termination_signals`]) and
/// returns its number.
pub fn wait_for_termination_signal() -> io::Result<i32> {
    let set = termination_signal_set()?;
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is initialised and `signal` is a valid place for the result.
    let result = unsafe { libc::sigwait(&set, &mut signal) };
    if result == 0 {
        Ok(signal)
    } else {
        Err(io::Error::from_raw_os_error(result))
    }
}

fn termination_signal_set() -> io::Result<libc::sigset_t> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given; sigaddset then adds valid signal
    // numbers to that initialised set.
    unsafe {
        if libc::sigemptyset(set.as_mut_ptr()) != 0
            || libc::sigaddset(set.as_mut_ptr(), libc::SIGINT) != 0
            || libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(set.assume_init())
    }
}

/// Alignment of bounce buffers: a page, enough for O_DIRECT on every block size we serve.
pub const BUFFER_ALIGNMENT_BYTES: usize = 4096;

/// A zeroed, page-aligned heap buffer (bounce buffers must be aligned for O_DIRECT).
pub struct AlignedBuffer {
    pointer: std::ptr::NonNull<u8>,
    length: usize,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is uniquely owned heap memory, like a Vec<u8>.
unsafe impl Send for AlignedBuffer {}

impl std::fmt::Debug for AlignedBuffer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "AlignedBuffer({} bytes)", self.length)
    }
}

impl AlignedBuffer {
    /// A zeroed buffer of `length` bytes.
    pub fn zeroed(length: usize) -> io::Result<Self> {
        let layout = std::alloc::Layout::from_size_align(length.max(1), BUFFER_ALIGNMENT_BYTES)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size.
        let pointer = unsafe { std::alloc::alloc_zeroed(layout) };
        let pointer = std::ptr::NonNull::new(pointer)
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Self {
            pointer,
            length,
            layout,
        })
    }

    /// The buffer's start, for iovecs.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.pointer.as_ptr()
    }
}

impl std::ops::Deref for AlignedBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `pointer` is valid for `length` initialised (zeroed) bytes we own.
        unsafe { std::slice::from_raw_parts(self.pointer.as_ptr(), self.length) }
    }
}

impl std::ops::DerefMut for AlignedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.pointer.as_ptr(), self.length) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout.
        unsafe { std::alloc::dealloc(self.pointer.as_ptr(), self.layout) }
    }
}

impl IoVecs {
    /// True when every buffer's address and length are multiples of `alignment`.
    pub fn aligned_to(&self, alignment: usize) -> bool {
        self.0.iter().all(|iovec| {
            (iovec.iov_base as usize).is_multiple_of(alignment)
                && iovec.iov_len.is_multiple_of(alignment)
        })
    }
}
