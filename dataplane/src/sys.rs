//! `sys`: the only module that talks to the kernel's I/O interfaces (io_uring, positional
//! reads and writes, fdatasync). Everything above it sees the [`StorageIo`] trait, so tests can
//! put a fault-injecting implementation in its place (see [`crate::fault`]).
//!
//! Two implementations:
//! - [`UringIo`]: reads are io_uring submissions. Writes of one flush (group commit: the
//!   records of many clients, of many namespaces) to several files go in one submission and
//!   their fdatasyncs in the next, so one sync covers the whole batch. The writes and the
//!   fdatasync of a single file are plain calls on the calling thread: the ring would hand
//!   them to one of its workers (buffered writes and syncs cannot complete without blocking).
//! - [`PosixIo`]: `pread`/`pwrite`/`fdatasync` on the calling thread (the flusher thread for
//!   writes, the connection worker threads for reads), used when a ring cannot be set up
//!   (old kernel, seccomp, `io_uring_disabled`). The choice is made once at start-up and logged.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};

/// Submission queue entries of each ring; a flush of more writes is split into several
/// submissions of this many.
pub const RING_ENTRIES: u32 = 256;

/// One positional write of a batch.
#[derive(Debug)]
pub struct WriteRequest<'a> {
    pub file: &'a File,
    pub offset: u64,
    pub data: &'a [u8],
}

/// The disk operations the engine needs. Implementations must be usable from many threads.
pub trait StorageIo: Send + Sync + std::fmt::Debug {
    /// Writes every request completely, then, for each file in `sync`, makes its data durable
    /// (fdatasync). Returns only when all of it is done, or the first error.
    fn write_batch(&self, writes: &[WriteRequest<'_>], sync: &[&File]) -> io::Result<()>;
    /// Fills `buf` from `file` at `offset`; a short file is an `UnexpectedEof` error.
    fn read_exact_at(&self, file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// A short name for logs and INFO (`io_uring` or `posix`).
    fn name(&self) -> &'static str;
}

/// Picks io_uring when a ring can be set up here, else the positional-I/O fallback (logged once).
pub fn default_io() -> Arc<dyn StorageIo> {
    match IoUring::new(RING_ENTRIES) {
        Ok(_) => Arc::new(UringIo::new()),
        Err(error) => {
            tracing::warn!(%error, "io_uring is not available here; falling back to pread/pwrite");
            Arc::new(PosixIo)
        }
    }
}

/// io_uring-backed I/O. Each thread that uses it gets its own ring (created on first use), so
/// reads from many connection threads never contend on a lock.
#[derive(Debug, Default)]
pub struct UringIo {
    _private: (),
}

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

impl UringIo {
    pub fn new() -> Self {
        Self { _private: () }
    }

    /// An io_uring backend, after checking that a ring can be set up here.
    pub fn probe() -> io::Result<Self> {
        IoUring::new(RING_ENTRIES)?;
        Ok(Self::new())
    }

    fn with_ring<T>(f: impl FnOnce(&mut IoUring) -> io::Result<T>) -> io::Result<T> {
        RING.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(IoUring::new(RING_ENTRIES)?);
            }
            match slot.as_mut() {
                Some(ring) => f(ring),
                None => Err(io::Error::other("io_uring ring missing")),
            }
        })
    }
}

/// An operation in flight in [`run_ops`]: what is left of it.
struct PendingOp {
    fd: i32,
    offset: u64,
    ptr: *mut u8,
    remaining: usize,
    kind: OpKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Read,
    Write,
    DataSync,
}

/// Submits `ops` in rounds of at most [`RING_ENTRIES`], resubmitting the rest of short reads
/// and writes, until every op is complete or one fails.
fn run_ops(ring: &mut IoUring, ops: &mut [PendingOp]) -> io::Result<()> {
    let mut open: Vec<usize> = (0..ops.len()).collect();
    while !open.is_empty() {
        let round: Vec<usize> = open.iter().copied().take(RING_ENTRIES as usize).collect();
        for &index in &round {
            let op = &ops[index];
            let fd = types::Fd(op.fd);
            let length = u32::try_from(op.remaining.min(1 << 30)).unwrap_or(1 << 30);
            let entry = match op.kind {
                OpKind::Read => opcode::Read::new(fd, op.ptr, length)
                    .offset(op.offset)
                    .build(),
                OpKind::Write => opcode::Write::new(fd, op.ptr as *const u8, length)
                    .offset(op.offset)
                    .build(),
                OpKind::DataSync => opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            }
            .user_data(index as u64);
            // SAFETY: the buffer behind `op.ptr` is borrowed by the caller of `run_ops` for its
            // whole duration and we wait below for every submitted entry to complete before
            // returning, so the kernel never touches the memory after it is released.
            unsafe {
                ring.submission()
                    .push(&entry)
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
        }
        ring.submit_and_wait(round.len())?;
        let mut completed = 0;
        let mut first_error = None;
        while completed < round.len() {
            let entries: Vec<(u64, i32)> = ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result()))
                .collect();
            if entries.is_empty() {
                ring.submit_and_wait(1)?;
                continue;
            }
            for (user_data, result) in entries {
                completed += 1;
                let op = &mut ops[user_data as usize];
                if result < 0 {
                    first_error.get_or_insert(io::Error::from_raw_os_error(-result));
                    op.remaining = 0;
                    continue;
                }
                let done = result as usize;
                match op.kind {
                    OpKind::DataSync => op.remaining = 0,
                    _ if done == 0 && op.remaining > 0 => {
                        first_error.get_or_insert(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "short read or write at end of file",
                        ));
                        op.remaining = 0;
                    }
                    _ => {
                        op.remaining -= done;
                        op.offset += done as u64;
                        // SAFETY: `done` is at most the length we asked for, so the pointer
                        // stays inside the caller's buffer.
                        op.ptr = unsafe { op.ptr.add(done) };
                    }
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        open.retain(|&index| ops[index].remaining > 0);
    }
    Ok(())
}

impl StorageIo for UringIo {
    fn write_batch(&self, writes: &[WriteRequest<'_>], sync: &[&File]) -> io::Result<()> {
        // A buffered write that cannot complete without blocking (ext4 has no non-blocking
        // buffered write path) is handed by the ring to one of its worker threads: for the
        // writes of a single file, a plain call on this thread (already the flusher's, or the
        // event loop's for a small round) saves that hand-off (measured: SET -P 16 about 15%
        // faster, with and without `--sync`). Several files are written in parallel.
        let one_file = writes.first().is_none_or(|first| {
            let fd = first.file.as_raw_fd();
            writes.iter().all(|write| write.file.as_raw_fd() == fd)
        });
        if one_file {
            PosixIo.write_batch(writes, &[])?;
        } else {
            Self::with_ring(|ring| {
                let mut ops: Vec<PendingOp> = writes
                    .iter()
                    .filter(|write| !write.data.is_empty())
                    .map(|write| PendingOp {
                        fd: write.file.as_raw_fd(),
                        offset: write.offset,
                        ptr: write.data.as_ptr() as *mut u8,
                        remaining: write.data.len(),
                        kind: OpKind::Write,
                    })
                    .collect();
                run_ops(ring, &mut ops)
            })?;
        }
        // io_uring runs an fsync on one of its worker threads: for a single file that is one
        // more thread hand-off than calling fdatasync here (measured: SET under `--sync` up to
        // 15% faster at `-P 1`). Several files are synced in parallel.
        match sync {
            [] => Ok(()),
            [file] => file.sync_data(),
            _ => Self::with_ring(|ring| {
                let mut syncs: Vec<PendingOp> = sync
                    .iter()
                    .map(|file| PendingOp {
                        fd: file.as_raw_fd(),
                        offset: 0,
                        ptr: std::ptr::null_mut(),
                        remaining: 1,
                        kind: OpKind::DataSync,
                    })
                    .collect();
                run_ops(ring, &mut syncs)
            }),
        }
    }

    fn read_exact_at(&self, file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        Self::with_ring(|ring| {
            let mut ops = [PendingOp {
                fd: file.as_raw_fd(),
                offset,
                ptr: buf.as_mut_ptr(),
                remaining: buf.len(),
                kind: OpKind::Read,
            }];
            run_ops(ring, &mut ops)
        })
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }
}

/// Positional-I/O fallback for machines where io_uring cannot be used.
#[derive(Debug, Default, Clone, Copy)]
pub struct PosixIo;

impl StorageIo for PosixIo {
    fn write_batch(&self, writes: &[WriteRequest<'_>], sync: &[&File]) -> io::Result<()> {
        for write in writes {
            write.file.write_all_at(write.data, write.offset)?;
        }
        for file in sync {
            file.sync_data()?;
        }
        Ok(())
    }

    fn read_exact_at(&self, file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        file.read_exact_at(buf, offset)
    }

    fn name(&self) -> &'static str {
        "posix"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_file() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        (dir, file)
    }

    fn roundtrip(io: &dyn StorageIo) {
        let (_dir, file) = scratch_file();
        let a = vec![7u8; 100_000];
        let b = b"hello".to_vec();
        io.write_batch(
            &[
                WriteRequest {
                    file: &file,
                    offset: 0,
                    data: &a,
                },
                WriteRequest {
                    file: &file,
                    offset: 100_000,
                    data: &b,
                },
            ],
            &[&file],
        )
        .unwrap();
        let mut buf = vec![0u8; 5];
        io.read_exact_at(&file, 100_000, &mut buf).unwrap();
        assert_eq!(buf, b);
        let mut big = vec![0u8; 100_000];
        io.read_exact_at(&file, 0, &mut big).unwrap();
        assert_eq!(big, a);
        let mut past = vec![0u8; 10];
        let error = io.read_exact_at(&file, 100_000, &mut past).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn uring_roundtrip() {
        roundtrip(&UringIo::new());
    }

    #[test]
    fn posix_roundtrip() {
        roundtrip(&PosixIo);
    }

    #[test]
    fn uring_many_writes_span_rounds() {
        // Two files, so that the writes go through the ring (one file's are plain calls),
        // more of them than one submission holds.
        let (_dir, first) = scratch_file();
        let (_other_dir, second) = scratch_file();
        let chunks: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let writes: Vec<WriteRequest<'_>> = chunks
            .iter()
            .enumerate()
            .map(|(i, data)| WriteRequest {
                file: if i % 2 == 0 { &first } else { &second },
                offset: (i / 2) as u64 * 4,
                data,
            })
            .collect();
        UringIo::new()
            .write_batch(&writes, &[&first, &second])
            .unwrap();
        for (parity, file) in [&first, &second].into_iter().enumerate() {
            let mut buf = vec![0u8; 2000];
            UringIo::new().read_exact_at(file, 0, &mut buf).unwrap();
            for slot in 0..500u32 {
                let i = slot * 2 + parity as u32;
                let at = slot as usize * 4;
                assert_eq!(&buf[at..at + 4], &i.to_le_bytes());
            }
        }
    }
}
