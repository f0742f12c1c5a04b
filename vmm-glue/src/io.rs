//! The I/O a queue worker needs, behind a trait: the io_uring ring ([`crate::sys::Ring`]),
//! the synchronous fallback ([`crate::sys::SyncIo`]) when the ring cannot be set up, and
//! [`FaultInjector`], which wraps either and fails chosen operations so tests can check what
//! the guest sees when the disk fails.
//!
//! Protocol: `push` queues an operation tagged with `user_data`; `submit` hands queued ones
//! to the kernel; the executor's eventfd (`completion_fd`) becomes readable when
//! completions are waiting, and `reap` moves them out as `(user_data, result)` where result
//! is the byte count or a negative errno, like io_uring's.

use std::fs::File;
use std::io;
use std::os::fd::RawFd;

use crate::sys::IoVecs;

/// One I/O operation on a volume file.
#[derive(Debug)]
pub enum Operation<'a> {
    /// Read into the buffers at `offset`.
    Readv { iovecs: &'a IoVecs, offset: u64 },
    /// Write the buffers at `offset`.
    Writev { iovecs: &'a IoVecs, offset: u64 },
    /// fdatasync.
    Flush,
    /// fallocate with one of the `sys::FALLOCATE_*` modes.
    Fallocate { offset: u64, length: u64, mode: i32 },
}

/// An executor of volume I/O for one queue.
pub trait QueueIo: Send {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// Queues one operation on `file`.
    ///
    /// # Safety
    /// The buffers a `Readv`/`Writev` describes, and the `IoVecs` array itself, must stay
    /// valid (and for reads, not be accessed otherwise) until the completion with
    /// `user_data` has been returned by `reap` or `wait_all`.
    unsafe fn push(
        &mut self,
        file: &File,
        operation: Operation<'_>,
        user_data: u64,
    ) -> io::Result<()>;

    /// The eventfd that becomes readable when completions are waiting.
    fn completion_fd(&self) -> RawFd;

    /// Hands queued operations to the kernel.
    fn submit(&mut self) -> io::Result<()>;

    /// Moves the available completions into `out` and clears the eventfd.
    fn reap(&mut self, out: &mut Vec<(u64, i32)>);

    /// Like [`QueueIo::reap`], for a caller that was not woken by the eventfd (right after
    /// `submit`, to answer what the kernel finished inline): when nothing is waiting it
    /// returns at once, without a syscall.
    fn reap_ready(&mut self, out: &mut Vec<(u64, i32)>) {
        self.reap(out);
    }

    /// Blocks until `count` more completions arrived and moves them into `out`.
    fn wait_all(&mut self, count: usize, out: &mut Vec<(u64, i32)>) -> io::Result<()>;
}

/// Opens the best executor: io_uring with `entries` entries, or the synchronous fallback
/// (logged) when the ring cannot be set up.
pub fn open_queue_io(entries: u32) -> io::Result<Box<dyn QueueIo>> {
    match crate::sys::Ring::new(entries) {
        Ok(ring) => Ok(Box::new(ring)),
        Err(error) => {
            tracing::warn!(%error, "io_uring unavailable; volume I/O falls back to synchronous calls");
            Ok(Box::new(crate::sys::SyncIo::new()?))
        }
    }
}

/// Which operations a [`FaultInjector`] fails.
#[derive(Debug, Clone)]
pub enum FaultPlan {
    /// Fail the operations with these 0-based sequence numbers.
    Operations(Vec<u64>),
    /// Fail each operation with probability `per_million` / 1e6, from a seeded generator.
    Random { seed: u64, per_million: u32 },
}

/// Wraps an executor and turns chosen operations into errors (`-errno`) or short transfers,
/// deterministically, without performing them.
pub struct FaultInjector {
    inner: Box<dyn QueueIo>,
    plan: FaultPlan,
    errno: i32,
    sequence: u64,
    rng_state: u64,
    injected: Vec<(u64, i32)>,
    /// Sequence numbers of the operations that were failed.
    pub failed: Vec<u64>,
}

impl std::fmt::Debug for FaultInjector {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FaultInjector")
            .field("plan", &self.plan)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl FaultInjector {
    /// Fails the planned operations with `-errno`.
    pub fn new(inner: Box<dyn QueueIo>, plan: FaultPlan, errno: i32) -> Self {
        let rng_state = match &plan {
            FaultPlan::Random { seed, .. } => seed | 1,
            FaultPlan::Operations(_) => 1,
        };
        Self {
            inner,
            plan,
            errno,
            sequence: 0,
            rng_state,
            injected: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn should_fail(&mut self, sequence: u64) -> bool {
        match &self.plan {
            FaultPlan::Operations(list) => list.contains(&sequence),
            FaultPlan::Random { per_million, .. } => {
                // xorshift64*
                self.rng_state ^= self.rng_state >> 12;
                self.rng_state ^= self.rng_state << 25;
                self.rng_state ^= self.rng_state >> 27;
                let value = self.rng_state.wrapping_mul(0x2545_f491_4f6c_dd1d);
                (value % 1_000_000) < u64::from(*per_million)
            }
        }
    }
}

impl QueueIo for FaultInjector {
    fn name(&self) -> &'static str {
        "fault-injector"
    }

    unsafe fn push(
        &mut self,
        file: &File,
        operation: Operation<'_>,
        user_data: u64,
    ) -> io::Result<()> {
        let sequence = self.sequence;
        self.sequence += 1;
        if self.should_fail(sequence) {
            self.failed.push(sequence);
            self.injected.push((user_data, -self.errno));
            return Ok(());
        }
        // SAFETY: forwarded with the caller's own guarantee.
        unsafe { self.inner.push(file, operation, user_data) }
    }

    fn completion_fd(&self) -> RawFd {
        self.inner.completion_fd()
    }

    fn submit(&mut self) -> io::Result<()> {
        self.inner.submit()
    }

    fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        out.append(&mut self.injected);
        self.inner.reap(out);
    }

    fn reap_ready(&mut self, out: &mut Vec<(u64, i32)>) {
        out.append(&mut self.injected);
        self.inner.reap_ready(out);
    }

    fn wait_all(&mut self, count: usize, out: &mut Vec<(u64, i32)>) -> io::Result<()> {
        let injected = self.injected.len().min(count);
        out.extend(self.injected.drain(..injected));
        self.inner.wait_all(count - injected, out)
    }
}
