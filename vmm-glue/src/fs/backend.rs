//! The vhost-user-fs backend: virtqueues in, FUSE replies out, through a bounded worker pool.
//!
//! Queue 0 is the high-priority queue (the guest's FORGETs: one-way, answered by returning
//! the chain); queues 1.. carry requests. Each queue has its own epoll thread (the
//! vhost-user-backend worker) that only pops chains and records their descriptors; the
//! requests themselves run on a pool of [`FsPool`] worker threads shared by all queues, so
//! a slow chunk fetch never holds up the queue, and several requests of one queue run at
//! once. One exception for latency: a lone request popped while no worker is busy is
//! answered on the queue thread itself (a one-at-a-time reader then pays no thread
//! hand-off). The pool's job channel is bounded: when it is full the queue thread waits, and
//! the guest's requests wait in its ring.
//!
//! A worker gathers the readable bytes (at most [`IN_BYTES_MAX`]), decodes and answers the
//! request through [`Session`], writing the reply straight into the chain's writable
//! buffers, then puts the chain on the used ring and notifies the guest (if EVENT_IDX says
//! it wants to hear). Every guest address goes through vm-memory's checked accessors: a
//! descriptor outside guest memory fails the request, never the process.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryLoadGuard};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::request::IN_BYTES_MAX;
use super::session::{Outcome, ReplySink, Session};
pub use crate::virtio::GuestMemory;
use crate::virtio::{self, Memory, MemorySlot};

/// Largest virtqueue the backend accepts.
pub const QUEUE_SIZE_MAX: usize = 1024;
/// Most request queues offered (QEMU's `num-request-queues`; one high-priority queue more).
pub const REQUEST_QUEUES_MAX: usize = 8;
/// Request queues offered by default.
pub const REQUEST_QUEUES_DEFAULT: usize = 4;
/// Most descriptors in one chain (a 1 MiB read in 4 KiB pages is 256, plus headers).
pub const DESCRIPTORS_PER_CHAIN_MAX: usize = 1024;
/// Default worker threads.
pub const WORKERS_DEFAULT: usize = 4;
/// Most workers.
pub const WORKERS_MAX: usize = 64;
/// Requests popped from the rings and waiting for a worker, at most.
pub const JOBS_WAITING_MAX: usize = 256;

/// One descriptor as the worker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub address: u64,
    pub length: u32,
    pub device_writable: bool,
}

/// A popped chain waiting for a worker.
struct Job {
    memory: Arc<Memory>,
    vring: VringRwLock<GuestMemory>,
    event_idx: bool,
    head_index: u16,
    segments: Vec<Segment>,
    /// The chain was longer than [`DESCRIPTORS_PER_CHAIN_MAX`] or broken.
    malformed: bool,
}

/// The worker pool and the session it answers with; lives as long as the daemon, across
/// VMM connections.
pub struct FsPool {
    session: Arc<Session>,
    sender: Mutex<Option<SyncSender<Job>>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Jobs submitted and not yet completed.
    busy: Arc<AtomicUsize>,
}

impl std::fmt::Debug for FsPool {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("FsPool").finish_non_exhaustive()
    }
}

impl FsPool {
    /// Starts `workers` threads (1..=[`WORKERS_MAX`]) answering with `session`.
    pub fn new(session: Arc<Session>, workers: usize) -> io::Result<Arc<Self>> {
        let (sender, receiver) = sync_channel::<Job>(JOBS_WAITING_MAX);
        let receiver = Arc::new(Mutex::new(receiver));
        let busy = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for index in 0..workers.clamp(1, WORKERS_MAX) {
            let receiver = receiver.clone();
            let session = session.clone();
            let busy = busy.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("fs-worker-{index}"))
                    .spawn(move || work(&session, &receiver, &busy))?,
            );
        }
        Ok(Arc::new(Self {
            session,
            sender: Mutex::new(Some(sender)),
            workers: Mutex::new(handles),
            busy,
        }))
    }

    fn submit(&self, job: Job) -> io::Result<()> {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
            .ok_or_else(|| io::Error::other("the worker pool is stopped"))?;
        self.busy.fetch_add(1, Ordering::AcqRel);
        // Blocks while JOBS_WAITING_MAX jobs wait: the guest's requests stay in its ring.
        sender.send(job).map_err(|_| {
            self.busy.fetch_sub(1, Ordering::AcqRel);
            io::Error::other("the worker pool is gone")
        })
    }

    /// Answers `jobs` popped together from one queue: a lone request while no worker is
    /// busy is answered on the calling (queue) thread, which saves two thread hand-offs on
    /// the latency of one-at-a-time readers; anything more goes to the workers, in parallel.
    fn dispatch(&self, mut jobs: Vec<Job>) -> io::Result<()> {
        if jobs.len() == 1 && self.busy.load(Ordering::Acquire) == 0 {
            if let Some(job) = jobs.pop() {
                let mut message = Vec::with_capacity(IN_BYTES_MAX);
                complete(&self.session, &job, &mut message);
            }
            return Ok(());
        }
        for job in jobs {
            self.submit(job)?;
        }
        Ok(())
    }

    /// Stops the workers once the jobs already queued are done.
    pub fn stop(&self) {
        self.sender
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        let handles = std::mem::take(
            &mut *self
                .workers
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        for handle in handles {
            let _ = handle.join();
        }
    }
}

fn work(session: &Session, receiver: &Mutex<Receiver<Job>>, busy: &AtomicUsize) {
    let mut message = Vec::with_capacity(IN_BYTES_MAX);
    loop {
        let job = {
            let receiver = receiver.lock().unwrap_or_else(|poison| poison.into_inner());
            match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        complete(session, &job, &mut message);
        busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers one job, returns its chain and notifies the guest.
fn complete(session: &Session, job: &Job, message: &mut Vec<u8>) {
    let used_bytes = run(session, job, message);
    if let Err(error) = job.vring.add_used(job.head_index, used_bytes) {
        tracing::warn!(%error, "could not return a chain to the guest");
        return;
    }
    if let Err(error) = virtio::signal_used(&job.vring, job.event_idx) {
        tracing::warn!(%error, "could not notify the guest");
    }
}

/// Answers one chain; the used length.
fn run(session: &Session, job: &Job, message: &mut Vec<u8>) -> u32 {
    if job.malformed {
        return 0;
    }
    message.clear();
    let mut readable_bytes = 0u64;
    let mut seen_writable = false;
    for segment in &job.segments {
        if segment.device_writable {
            seen_writable = true;
            continue;
        }
        if seen_writable {
            // Readable after writable breaks virtio's layout: refuse the chain.
            return 0;
        }
        readable_bytes += u64::from(segment.length);
        let take = (segment.length as usize).min(IN_BYTES_MAX - message.len());
        if take > 0 {
            let start = message.len();
            message.resize(start + take, 0);
            if job
                .memory
                .read_slice(&mut message[start..], GuestAddress(segment.address))
                .is_err()
            {
                tracing::debug!(
                    address = segment.address,
                    "a readable descriptor outside guest memory"
                );
                return 0;
            }
        }
    }
    let mut sink = GuestSink::new(&job.memory, &job.segments);
    let outcome = session.handle(message, readable_bytes, &mut sink);
    if outcome == Outcome::Dropped {
        tracing::debug!(head_index = job.head_index, "a request got no reply");
    }
    outcome.used_bytes()
}

/// The chain's device-writable buffers as one reply buffer.
struct GuestSink<'a> {
    memory: &'a Memory,
    /// (start offset in the reply, guest address, length)
    buffers: Vec<(u64, u64, u32)>,
    capacity: u64,
    /// Index of the buffer the last write ended in (writes mostly go forward).
    cursor: usize,
}

impl<'a> GuestSink<'a> {
    fn new(memory: &'a Memory, segments: &[Segment]) -> Self {
        let mut buffers = Vec::new();
        let mut capacity = 0u64;
        for segment in segments.iter().filter(|segment| segment.device_writable) {
            buffers.push((capacity, segment.address, segment.length));
            capacity += u64::from(segment.length);
        }
        Self {
            memory,
            buffers,
            capacity,
            cursor: 0,
        }
    }
}

impl ReplySink for GuestSink<'_> {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> bool {
        let Some(end) = offset.checked_add(bytes.len() as u64) else {
            return false;
        };
        if end > self.capacity {
            return false;
        }
        if self
            .buffers
            .get(self.cursor)
            .is_none_or(|(start, _, _)| *start > offset)
        {
            self.cursor = 0;
        }
        let mut written = 0usize;
        let mut index = self.cursor;
        while written < bytes.len() {
            let Some(&(start, address, length)) = self.buffers.get(index) else {
                return false;
            };
            let position = offset + written as u64;
            let buffer_end = start + u64::from(length);
            if position >= buffer_end {
                index += 1;
                continue;
            }
            let within = position - start;
            let take = ((buffer_end - position) as usize).min(bytes.len() - written);
            let Some(guest_address) = address.checked_add(within) else {
                return false;
            };
            if self
                .memory
                .write_slice(&bytes[written..written + take], GuestAddress(guest_address))
                .is_err()
            {
                return false;
            }
            written += take;
            self.cursor = index;
        }
        true
    }
}

/// The vhost-user-fs backend for one VMM connection.
#[derive(Clone)]
pub struct FsBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FsBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FsBackend")
            .field("num_queues", &self.shared.num_queues)
            .finish_non_exhaustive()
    }
}

struct Shared {
    pool: Arc<FsPool>,
    num_queues: usize,
    event_idx: AtomicBool,
    memory: MemorySlot,
}

impl FsBackend {
    /// A backend with one high-priority queue and `request_queues` request queues
    /// (1..=[`REQUEST_QUEUES_MAX`]), answering on `pool`.
    pub fn new(pool: Arc<FsPool>, request_queues: usize, memory: GuestMemory) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool,
                num_queues: 1 + request_queues.clamp(1, REQUEST_QUEUES_MAX),
                event_idx: AtomicBool::new(false),
                memory: MemorySlot::new(memory),
            }),
        }
    }

    fn memory(&self) -> GuestMemoryLoadGuard<Memory> {
        self.shared.memory.load()
    }
}

/// Pops every available chain of `vring`, calling `each` with its head and descriptors.
fn drain(
    vring: &VringRwLock<GuestMemory>,
    memory: &GuestMemoryLoadGuard<Memory>,
    event_idx: bool,
    mut each: impl FnMut(u16, Vec<Segment>, bool) -> io::Result<()>,
) -> io::Result<()> {
    loop {
        if event_idx {
            vring
                .disable_notification()
                .map_err(|error| io::Error::other(error.to_string()))?;
        }
        loop {
            let chain = {
                let mut state = vring.get_mut();
                let queue = state.get_queue_mut();
                if !queue.ready() {
                    return Ok(());
                }
                queue.pop_descriptor_chain(memory.clone())
            };
            let Some(chain) = chain else { break };
            let head_index = chain.head_index();
            let mut segments = Vec::with_capacity(4);
            let mut malformed = false;
            for descriptor in chain {
                if segments.len() == DESCRIPTORS_PER_CHAIN_MAX {
                    malformed = true;
                    break;
                }
                segments.push(Segment {
                    address: descriptor.addr().0,
                    length: descriptor.len(),
                    device_writable: descriptor.is_write_only(),
                });
            }
            each(head_index, segments, malformed)?;
        }
        if !event_idx {
            return Ok(());
        }
        let more = vring
            .enable_notification()
            .map_err(|error| io::Error::other(error.to_string()))?;
        if !more {
            return Ok(());
        }
    }
}

impl VhostUserBackend for FsBackend {
    type Bitmap = ();
    type Vring = VringRwLock<GuestMemory>;

    fn num_queues(&self) -> usize {
        self.shared.num_queues
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE_MAX
    }

    fn features(&self) -> u64 {
        virtio::FEATURES_COMMON
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.shared.event_idx.store(enabled, Ordering::Release);
    }

    fn update_memory(&self, memory: GuestMemory) -> io::Result<()> {
        self.shared.memory.replace(memory);
        Ok(())
    }

    /// One epoll thread per queue: queue 0 (high priority) and each request queue are
    /// popped in parallel.
    fn queues_per_thread(&self) -> Vec<u64> {
        virtio::one_queue_per_thread(self.shared.num_queues)
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        virtio::exit_event()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Self::Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        let memory = self.memory();
        let event_idx = self.shared.event_idx.load(Ordering::Acquire);
        if thread_id == 0 {
            // High priority: FORGET and BATCH_FORGET (one-way; inodes are never dropped)
            // and INTERRUPT, which needs no answer either.
            let mut used_any = false;
            drain(vring, &memory, event_idx, |head_index, _, _| {
                vring
                    .add_used(head_index, 0)
                    .map_err(|error| io::Error::other(error.to_string()))?;
                used_any = true;
                Ok(())
            })?;
            if used_any {
                virtio::signal_used(vring, event_idx)?;
            }
            return Ok(());
        }
        let shared_memory = memory.clone().into_inner();
        let mut jobs = Vec::new();
        drain(
            vring,
            &memory,
            event_idx,
            |head_index, segments, malformed| {
                jobs.push(Job {
                    memory: shared_memory.clone(),
                    vring: vring.clone(),
                    event_idx,
                    head_index,
                    segments,
                    malformed,
                });
                if jobs.len() >= JOBS_WAITING_MAX {
                    self.shared.pool.dispatch(std::mem::take(&mut jobs))?;
                }
                Ok(())
            },
        )?;
        self.shared.pool.dispatch(jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> Memory {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x1000), 0x2000)]).unwrap()
    }

    #[test]
    fn the_sink_spreads_writes_over_buffers_and_stays_inside_memory() {
        let memory = memory();
        let segments = [
            Segment {
                address: 0x1000,
                length: 16,
                device_writable: false,
            },
            Segment {
                address: 0x1100,
                length: 10,
                device_writable: true,
            },
            Segment {
                address: 0x1200,
                length: 10,
                device_writable: true,
            },
        ];
        let mut sink = GuestSink::new(&memory, &segments);
        assert_eq!(sink.capacity(), 20);
        assert!(sink.write_at(5, b"0123456789"));
        let mut first = [0u8; 10];
        let mut second = [0u8; 10];
        memory.read_slice(&mut first, GuestAddress(0x1100)).unwrap();
        memory
            .read_slice(&mut second, GuestAddress(0x1200))
            .unwrap();
        assert_eq!(&first[5..], b"01234");
        assert_eq!(&second[..5], b"56789");
        assert!(sink.write_at(0, b"ab"));
        assert!(!sink.write_at(15, b"123456"));
        assert!(!sink.write_at(u64::MAX, b"1"));
        // A writable buffer outside guest memory fails the write, nothing more.
        let outside = [Segment {
            address: 0x8000,
            length: 64,
            device_writable: true,
        }];
        let mut sink = GuestSink::new(&memory, &outside);
        assert!(!sink.write_at(0, b"x"));
    }
}
