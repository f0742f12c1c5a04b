//! The vhost-user-blk backend: virtqueues in, io_uring operations out.
//!
//! Each queue has its own worker thread (the vhost-user-backend epoll loop), its own
//! [`Ring`] and a bounded table of requests in flight. A kick pops chains while there is
//! room, validates them ([`super::request::parse`]) and queues their I/O; what the kernel
//! finished inside the submit call (page-cache hits) is answered at once, the rest when the
//! ring's eventfd wakes the same thread, in whatever order the kernel finishes them:
//! status byte, used ring, one notification per batch. While the queue is busy the worker
//! keeps polling it for a short idle window (`QueueWorker::poll`) with guest notifications
//! suppressed, so the guest kicks less and takes fewer interrupts per request.
//!
//! Unencrypted reads and writes go straight between the volume file and guest memory
//! (readv/writev on the guest buffers); encrypted ones go through a bounce buffer that is
//! encrypted before the write and decrypted after the read.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryLoadGuard};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::request::{self, Limits, Request, RequestKind, Segment};
use crate::crypto::{SectorCipher, SECTOR_BYTES};
use crate::io::{open_queue_io, Operation, QueueIo};
use crate::sys::{self, AlignedBuffer, IoVecs};
pub use crate::virtio::GuestMemory;
use crate::virtio::{self, Memory, MemorySlot};
use crate::volume::SERIAL_BYTES;

/// Largest virtqueue the backend accepts.
pub const QUEUE_SIZE_MAX: usize = 1024;
/// Requests in flight per queue (also the io_uring size).
pub const IN_FLIGHT_PER_QUEUE_MAX: usize = 256;
/// Data segments per request, advertised as `seg_max`.
pub const SEGMENTS_PER_REQUEST_MAX: u32 = 126;
/// Largest data segment, advertised as `size_max`.
pub const SEGMENT_BYTES_MAX: u32 = 128 << 10;
/// Largest read or write.
pub const REQUEST_BYTES_MAX: u64 = 16 << 20;
/// Largest discard / write-zeroes, in sectors (advertised).
pub const DISCARD_SECTORS_MAX: u32 = (1 << 30) / SECTOR_BYTES as u32;
/// Most queues a guest may use.
pub const QUEUES_MAX: usize = 16;
/// How long a worker keeps polling a busy queue after the last request or completion
/// (see `QueueWorker::poll`); [`Device::poll_idle`] overrides it, zero disables polling.
pub const POLL_IDLE_DEFAULT: Duration = Duration::from_micros(100);
/// Longest stretch a worker polls before it goes back to its event loop.
pub const POLL_TOTAL_MAX: Duration = Duration::from_millis(2);

const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// What the backend serves: an open, locked volume file and how to treat it.
#[derive(Debug)]
pub struct Device {
    pub file: File,
    pub cipher: Option<SectorCipher>,
    pub capacity_sectors: u64,
    pub serial: [u8; SERIAL_BYTES],
    pub read_only: bool,
    /// The file was opened with O_DIRECT: buffers must be sector-aligned (unaligned guest
    /// buffers go through an aligned bounce buffer).
    pub direct: bool,
    /// How long a worker polls a queue after its last activity before it waits for a
    /// notification again ([`POLL_IDLE_DEFAULT`]; zero: never poll).
    pub poll_idle: Duration,
}

impl Device {
    fn limits(&self) -> Limits {
        Limits {
            capacity_sectors: self.capacity_sectors,
            request_bytes_max: REQUEST_BYTES_MAX,
            descriptors_max: SEGMENTS_PER_REQUEST_MAX as usize + 2,
            discard_sectors_max: DISCARD_SECTORS_MAX,
            read_only: self.read_only,
        }
    }

    /// The virtio-blk configuration space (virtio 1.2, 5.2.4), little-endian.
    fn config_space(&self, num_queues: u16) -> [u8; 60] {
        let mut config = [0u8; 60];
        config[0..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        config[8..12].copy_from_slice(&SEGMENT_BYTES_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEGMENTS_PER_REQUEST_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_BYTES as u32).to_le_bytes());
        config[34..36].copy_from_slice(&num_queues.to_le_bytes());
        config[36..40].copy_from_slice(&DISCARD_SECTORS_MAX.to_le_bytes());
        config[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        config[44..48].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
        config[48..52].copy_from_slice(&DISCARD_SECTORS_MAX.to_le_bytes());
        config[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        config[56] = 1; // write_zeroes_may_unmap
        config
    }
}

/// The vhost-user-blk backend for one VMM connection.
#[derive(Clone)]
pub struct BlkBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BlkBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BlkBackend")
            .field("num_queues", &self.shared.workers.len())
            .finish_non_exhaustive()
    }
}

struct Shared {
    device: Arc<Device>,
    config: [u8; 60],
    event_idx: AtomicBool,
    memory: MemorySlot,
    workers: Vec<Mutex<QueueWorker>>,
}

impl BlkBackend {
    /// A backend with `num_queues` queues (1..=[`QUEUES_MAX`]) over `device`.
    pub fn new(device: Arc<Device>, num_queues: usize, memory: GuestMemory) -> io::Result<Self> {
        let num_queues = num_queues.clamp(1, QUEUES_MAX);
        let mut workers = Vec::with_capacity(num_queues);
        for _ in 0..num_queues {
            workers.push(Mutex::new(QueueWorker::new(device.clone())?));
        }
        let config = device.config_space(num_queues as u16);
        Ok(Self {
            shared: Arc::new(Shared {
                device,
                config,
                event_idx: AtomicBool::new(false),
                memory: MemorySlot::new(memory),
                workers,
            }),
        })
    }

    /// The epoll event id of queue `queue_index`'s completions (above the ids the daemon
    /// reserves for queues and its exit event).
    pub fn completion_event_id(&self, queue_index: usize) -> u64 {
        (self.shared.workers.len() + 1 + queue_index) as u64
    }

    /// The eventfd of queue `queue_index`'s ring, to register with that queue's epoll loop.
    pub fn completion_fd(&self, queue_index: usize) -> Option<std::os::fd::RawFd> {
        let worker = self.shared.workers.get(queue_index)?;
        let worker = worker.lock().unwrap_or_else(|poison| poison.into_inner());
        Some(worker.ring.completion_fd())
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock<GuestMemory>;

    fn num_queues(&self) -> usize {
        self.shared.workers.len()
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE_MAX
    }

    fn features(&self) -> u64 {
        let mut features = virtio::FEATURES_COMMON
            | VIRTIO_BLK_F_SIZE_MAX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_MQ;
        if self.shared.device.read_only {
            features |= VIRTIO_BLK_F_RO;
        } else {
            features |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        features
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.shared.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let start = (offset as usize).min(self.shared.config.len());
        let end = start
            .saturating_add(size as usize)
            .min(self.shared.config.len());
        let mut bytes = self.shared.config[start..end].to_vec();
        bytes.resize(size as usize, 0);
        bytes
    }

    fn update_memory(&self, memory: GuestMemory) -> io::Result<()> {
        self.shared.memory.replace(memory);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        virtio::one_queue_per_thread(self.shared.workers.len())
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
        // One queue per thread: the thread's only vring is queue `thread_id`.
        let (Some(vring), Some(worker)) = (vrings.first(), self.shared.workers.get(thread_id))
        else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        let memory = self.shared.memory.load();
        let event_idx = self.shared.event_idx.load(Ordering::Acquire);
        let mut worker = worker.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut used_any = false;
        if u64::from(device_event) == self.completion_event_id(thread_id) {
            used_any |= worker.complete(vring, Reap::Woken);
        } else if device_event != 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let polling = !self.shared.device.poll_idle.is_zero();
        used_any |= worker.process_queue(vring, &memory, event_idx, !polling)?;
        // Page-cache hits (and holes) complete inside the submit call: answer them now, in
        // the same notification as the rest, instead of after another trip through epoll.
        used_any |= worker.complete(vring, Reap::Ready);
        if used_any {
            virtio::signal_used(vring, event_idx)?;
        }
        if polling {
            worker.poll(vring, &memory, event_idx, self.shared.device.poll_idle)?;
        }
        Ok(())
    }
}

/// True when the driver made requests available that the worker has not popped yet.
fn available(vring: &VringRwLock<GuestMemory>, memory: &GuestMemoryLoadGuard<Memory>) -> bool {
    let state = vring.get_ref();
    let queue = state.get_queue();
    queue.ready()
        && queue
            .avail_idx(&**memory, Ordering::Acquire)
            .is_ok_and(|index| index.0 != queue.next_avail())
}

/// A request whose I/O the kernel is doing.
struct InFlight {
    head_index: u16,
    status_address: u64,
    /// Keeps the guest memory mapping alive while the kernel uses it.
    memory: Arc<Memory>,
    iovecs: IoVecs,
    /// The bounce buffer of an encrypted (or, with O_DIRECT, unaligned) read or write.
    bounce: Option<AlignedBuffer>,
    /// For bounced reads: where the data goes (after decryption when encrypted), and the
    /// first sector.
    copy_out: Option<(u64, Vec<Segment>)>,
    expected_result: i32,
    used_bytes: u32,
}

struct QueueWorker {
    device: Arc<Device>,
    limits: Limits,
    ring: Box<dyn QueueIo>,
    slots: Vec<Option<InFlight>>,
    free_slots: Vec<usize>,
    completions: Vec<(u64, i32)>,
}

impl QueueWorker {
    fn new(device: Arc<Device>) -> io::Result<Self> {
        Ok(Self::with_io(
            device,
            open_queue_io(IN_FLIGHT_PER_QUEUE_MAX as u32)?,
        ))
    }

    fn with_io(device: Arc<Device>, ring: Box<dyn QueueIo>) -> Self {
        let limits = device.limits();
        Self {
            device,
            limits,
            ring,
            slots: (0..IN_FLIGHT_PER_QUEUE_MAX).map(|_| None).collect(),
            free_slots: (0..IN_FLIGHT_PER_QUEUE_MAX).rev().collect(),
            completions: Vec::with_capacity(IN_FLIGHT_PER_QUEUE_MAX),
        }
    }

    /// Pops and starts requests while there is room; true when some were answered at once.
    fn process_queue(
        &mut self,
        vring: &VringRwLock<GuestMemory>,
        memory: &GuestMemoryLoadGuard<Memory>,
        event_idx: bool,
        rearm: bool,
    ) -> io::Result<bool> {
        let mut used_any = false;
        loop {
            if event_idx {
                vring
                    .disable_notification()
                    .map_err(|error| io::Error::other(error.to_string()))?;
            }
            while !self.free_slots.is_empty() {
                let chain = {
                    let mut state = vring.get_mut();
                    let queue = state.get_queue_mut();
                    if !queue.ready() {
                        break;
                    }
                    queue.pop_descriptor_chain(memory.clone())
                };
                let Some(chain) = chain else { break };
                used_any |= self.start(chain, memory, vring);
            }
            if !event_idx || !rearm || self.free_slots.is_empty() {
                break;
            }
            let more = vring
                .enable_notification()
                .map_err(|error| io::Error::other(error.to_string()))?;
            if !more {
                break;
            }
        }
        self.ring.submit()?;
        Ok(used_any)
    }

    /// Keeps serving the queue without notifications while it is busy: new requests are
    /// picked up from the available ring and finished ones answered as they come, until
    /// nothing happened for `idle` (or [`POLL_TOTAL_MAX`] passed, so the thread's other
    /// events are never starved); then guest notifications are re-armed.
    ///
    /// While the worker polls, the guest does not kick (EVENT_IDX: the avail event stays
    /// behind) and more requests complete per interrupt; under TCG, where the guest's vCPU
    /// pays for every kick and interrupt, that is what limits small random I/O. The thread
    /// yields between looks, so a busy host CPU goes to whoever needs it.
    fn poll(
        &mut self,
        vring: &VringRwLock<GuestMemory>,
        memory: &GuestMemoryLoadGuard<Memory>,
        event_idx: bool,
        idle: Duration,
    ) -> io::Result<()> {
        let started = Instant::now();
        let mut idle_since = started;
        while idle_since.elapsed() < idle && started.elapsed() < POLL_TOTAL_MAX {
            let pending = !self.free_slots.is_empty() && available(vring, memory);
            let mut used = false;
            if pending {
                used |= self.process_queue(vring, memory, event_idx, false)?;
            }
            used |= self.complete(vring, Reap::Ready);
            if used {
                virtio::signal_used(vring, event_idx)?;
            }
            if pending || used {
                idle_since = Instant::now();
            } else {
                std::thread::yield_now();
            }
        }
        let mut used = self.process_queue(vring, memory, event_idx, true)?;
        used |= self.complete(vring, Reap::Ready);
        if used {
            virtio::signal_used(vring, event_idx)?;
        }
        Ok(())
    }

    /// Validates one chain and starts its I/O; true when it was answered at once.
    fn start(
        &mut self,
        chain: DescriptorChain<GuestMemoryLoadGuard<Memory>>,
        memory: &GuestMemoryLoadGuard<Memory>,
        vring: &VringRwLock<GuestMemory>,
    ) -> bool {
        let head_index = chain.head_index();
        let mut segments = Vec::with_capacity(4);
        for descriptor in chain {
            segments.push(Segment {
                address: descriptor.addr().0,
                length: descriptor.len(),
                device_writable: descriptor.is_write_only(),
            });
            if segments.len() > self.limits.descriptors_max {
                break;
            }
        }
        let request = match request::parse(&segments, &**memory, &self.limits) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(head_index, %error, "refused a request");
                let status = request::status_address(&segments, &**memory).zip(error.status());
                let written = status.is_some_and(|(address, status)| {
                    memory.write_obj(status, GuestAddress(address)).is_ok()
                });
                let used_bytes = u32::from(written);
                add_used(vring, head_index, used_bytes);
                return true;
            }
        };
        let status_address = request.status_address;
        match self.submit(head_index, request, memory) {
            Ok(None) => false,
            Ok(Some((status_address, status, used_bytes))) => {
                // Answered without I/O (get-id) or refused while preparing it.
                let used_bytes = if memory
                    .write_obj(status, GuestAddress(status_address))
                    .is_ok()
                {
                    used_bytes
                } else {
                    0
                };
                add_used(vring, head_index, used_bytes);
                true
            }
            Err(error) => {
                // Never leave a request unanswered: the guest would wait for it forever.
                tracing::warn!(head_index, %error, "could not queue a request");
                let written = memory
                    .write_obj(request::VIRTIO_BLK_S_IOERR, GuestAddress(status_address))
                    .is_ok();
                add_used(vring, head_index, u32::from(written));
                true
            }
        }
    }

    /// Queues the I/O of a valid request. Ok(Some(..)) answers it at once with
    /// `(status_address, status, used_bytes)`.
    fn submit(
        &mut self,
        head_index: u16,
        request: Request,
        memory: &GuestMemoryLoadGuard<Memory>,
    ) -> io::Result<Option<(u64, u8, u32)>> {
        let status_address = request.status_address;
        let ioerr = Ok(Some((status_address, request::VIRTIO_BLK_S_IOERR, 1)));
        let data_bytes = request.data_bytes;
        let mut in_flight = InFlight {
            head_index,
            status_address,
            memory: memory.clone().into_inner(),
            iovecs: IoVecs::default(),
            bounce: None,
            copy_out: None,
            expected_result: 0,
            used_bytes: 1,
        };
        let operation_kind = match request.kind {
            RequestKind::GetId => {
                let mut written = 0usize;
                for segment in &request.data {
                    let take = (segment.length as usize).min(SERIAL_BYTES - written);
                    if take == 0 {
                        break;
                    }
                    if memory
                        .write_slice(
                            &self.device.serial[written..written + take],
                            GuestAddress(segment.address),
                        )
                        .is_err()
                    {
                        return ioerr;
                    }
                    written += take;
                }
                return Ok(Some((
                    status_address,
                    request::VIRTIO_BLK_S_OK,
                    written as u32 + 1,
                )));
            }
            RequestKind::Read { sector } => {
                in_flight.expected_result = data_bytes as i32;
                in_flight.used_bytes = data_bytes as u32 + 1;
                if !self.device_iovecs(&mut in_flight, &request.data) {
                    let mut bounce = AlignedBuffer::zeroed(data_bytes as usize)?;
                    in_flight.iovecs = IoVecs::with_capacity(1);
                    in_flight.iovecs.push(bounce.as_mut_ptr(), bounce.len());
                    in_flight.bounce = Some(bounce);
                    in_flight.copy_out = Some((sector, request.data));
                }
                PendingOperation::Read(sector * SECTOR_BYTES as u64)
            }
            RequestKind::Write { sector } => {
                in_flight.expected_result = data_bytes as i32;
                if !self.device_iovecs(&mut in_flight, &request.data) {
                    let mut bounce = AlignedBuffer::zeroed(data_bytes as usize)?;
                    let mut offset = 0usize;
                    for segment in &request.data {
                        let end = offset + segment.length as usize;
                        if memory
                            .read_slice(&mut bounce[offset..end], GuestAddress(segment.address))
                            .is_err()
                        {
                            return ioerr;
                        }
                        offset = end;
                    }
                    if let Some(cipher) = &self.device.cipher {
                        cipher.encrypt(&mut bounce, sector);
                    }
                    in_flight.iovecs = IoVecs::with_capacity(1);
                    in_flight.iovecs.push(bounce.as_mut_ptr(), bounce.len());
                    in_flight.bounce = Some(bounce);
                }
                PendingOperation::Write(sector * SECTOR_BYTES as u64)
            }
            RequestKind::Flush => PendingOperation::Flush,
            RequestKind::Discard { sector, sectors }
            | RequestKind::WriteZeroes {
                sector,
                sectors,
                unmap: true,
            } => PendingOperation::Fallocate(
                sector * SECTOR_BYTES as u64,
                u64::from(sectors) * SECTOR_BYTES as u64,
                sys::FALLOCATE_PUNCH_HOLE,
            ),
            RequestKind::WriteZeroes {
                sector,
                sectors,
                unmap: false,
            } => PendingOperation::Fallocate(
                sector * SECTOR_BYTES as u64,
                u64::from(sectors) * SECTOR_BYTES as u64,
                sys::FALLOCATE_ZERO_RANGE,
            ),
        };
        let Some(slot) = self.free_slots.pop() else {
            return ioerr;
        };
        let in_flight = self.slots[slot].insert(in_flight);
        let operation = match operation_kind {
            PendingOperation::Read(offset) => Operation::Readv {
                iovecs: &in_flight.iovecs,
                offset,
            },
            PendingOperation::Write(offset) => Operation::Writev {
                iovecs: &in_flight.iovecs,
                offset,
            },
            PendingOperation::Flush => Operation::Flush,
            PendingOperation::Fallocate(offset, length, mode) => Operation::Fallocate {
                offset,
                length,
                mode,
            },
        };
        // SAFETY: the iovecs and every buffer they point to (guest memory kept mapped by
        // `in_flight.memory`, or `in_flight.bounce`) live in `self.slots[slot]` until the
        // completion for `slot` is reaped in `complete` or `Drop`, and nothing else touches
        // the bounce buffer meanwhile.
        let pushed = unsafe { self.ring.push(&self.device.file, operation, slot as u64) };
        if let Err(error) = pushed {
            self.slots[slot] = None;
            self.free_slots.push(slot);
            tracing::warn!(%error, "io_uring refused an operation");
            return ioerr;
        }
        Ok(None)
    }

    /// Points the request's iovecs straight at guest memory when that is allowed: no
    /// encryption, every segment in guest memory, and aligned when the file is O_DIRECT.
    /// False when a bounce buffer is needed instead.
    fn device_iovecs(&self, in_flight: &mut InFlight, data: &[Segment]) -> bool {
        self.device.cipher.is_none()
            && guest_iovecs(&in_flight.memory, data, &mut in_flight.iovecs)
            && (!self.device.direct || in_flight.iovecs.aligned_to(SECTOR_BYTES))
    }

    /// Completes what the ring finished; true when some request was answered.
    fn complete(&mut self, vring: &VringRwLock<GuestMemory>, reap: Reap) -> bool {
        let mut completions = std::mem::take(&mut self.completions);
        match reap {
            Reap::Woken => self.ring.reap(&mut completions),
            Reap::Ready => self.ring.reap_ready(&mut completions),
        }
        let answered = !completions.is_empty();
        for (user_data, result) in completions.drain(..) {
            let slot = user_data as usize;
            let Some(in_flight) = self.slots.get_mut(slot).and_then(Option::take) else {
                tracing::error!(slot, "completion for a slot with no request");
                continue;
            };
            self.free_slots.push(slot);
            let mut status = request::VIRTIO_BLK_S_OK;
            let mut used_bytes = in_flight.used_bytes;
            if result != in_flight.expected_result {
                tracing::warn!(
                    result,
                    expected = in_flight.expected_result,
                    "volume I/O failed or was short"
                );
                status = request::VIRTIO_BLK_S_IOERR;
                used_bytes = 1;
            } else if let (Some((sector, segments)), Some(mut bounce)) =
                (&in_flight.copy_out, in_flight.bounce)
            {
                if let Some(cipher) = &self.device.cipher {
                    cipher.decrypt(&mut bounce, *sector);
                }
                let mut offset = 0usize;
                for segment in segments {
                    let end = offset + segment.length as usize;
                    if in_flight
                        .memory
                        .write_slice(&bounce[offset..end], GuestAddress(segment.address))
                        .is_err()
                    {
                        status = request::VIRTIO_BLK_S_IOERR;
                        used_bytes = 1;
                        break;
                    }
                    offset = end;
                }
            }
            let used_bytes = if in_flight
                .memory
                .write_obj(status, GuestAddress(in_flight.status_address))
                .is_ok()
            {
                used_bytes
            } else {
                0
            };
            add_used(vring, in_flight.head_index, used_bytes);
        }
        self.completions = completions;
        answered
    }
}

/// Why completions are collected: the ring's eventfd woke the worker (clear it), or the
/// worker just submitted and looks for what already finished (no syscall when nothing did).
#[derive(Clone, Copy)]
enum Reap {
    Woken,
    Ready,
}

enum PendingOperation {
    Read(u64),
    Write(u64),
    Flush,
    Fallocate(u64, u64, i32),
}

impl Drop for QueueWorker {
    fn drop(&mut self) {
        // The kernel may still write into bounce buffers or guest memory: wait for every
        // operation in flight before the buffers go away.
        let in_flight_count = IN_FLIGHT_PER_QUEUE_MAX - self.free_slots.len();
        if in_flight_count > 0 {
            let mut completions = Vec::new();
            if let Err(error) = self.ring.submit() {
                tracing::error!(%error, "submitting before shutdown");
            }
            if let Err(error) = self.ring.wait_all(in_flight_count, &mut completions) {
                tracing::error!(%error, "waiting for I/O in flight at shutdown; leaking its buffers");
                for slot in self.slots.iter_mut() {
                    if let Some(in_flight) = slot.take() {
                        std::mem::forget(in_flight);
                    }
                }
            }
        }
    }
}

/// Host iovecs for guest data segments; false when a segment is not in guest memory.
fn guest_iovecs(memory: &Memory, segments: &[Segment], iovecs: &mut IoVecs) -> bool {
    *iovecs = IoVecs::with_capacity(segments.len());
    for segment in segments {
        match memory.get_slice(GuestAddress(segment.address), segment.length as usize) {
            Ok(slice) => iovecs.push(slice.ptr_guard_mut().as_ptr(), slice.len()),
            Err(_) => return false,
        }
    }
    true
}

fn add_used(vring: &VringRwLock<GuestMemory>, head_index: u16, used_bytes: u32) {
    if let Err(error) = vring.add_used(head_index, used_bytes) {
        tracing::warn!(head_index, %error, "could not add to the used ring");
    }
}

#[cfg(test)]
mod tests {
    //! The worker driven through a split virtqueue laid out by hand in guest memory, as a
    //! guest driver would, over a real volume file; faults injected with a seeded plan.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::crypto::VolumeKey;
    use crate::io::{FaultInjector, FaultPlan};
    use crate::sys::SyncIo;
    use std::os::unix::fs::FileExt;
    use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

    const QUEUE_SIZE: u16 = 128;
    const DESCRIPTORS: u64 = 0x1000;
    const AVAIL: u64 = 0x3000;
    const USED: u64 = 0x4000;
    const BUFFERS: u64 = 0x10000;

    struct Driver {
        memory: GuestMemory,
        vring: VringRwLock<GuestMemory>,
        next_descriptor: u16,
        avail_index: u16,
        next_buffer: u64,
    }

    impl Driver {
        fn new() -> Self {
            let mmap = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
            let memory = GuestMemoryAtomic::new(mmap);
            let vring = VringRwLock::new(memory.clone(), QUEUE_SIZE).unwrap();
            vring.set_queue_size(QUEUE_SIZE);
            vring.set_queue_info(DESCRIPTORS, AVAIL, USED).unwrap();
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            Self {
                memory,
                vring,
                next_descriptor: 0,
                avail_index: 0,
                next_buffer: BUFFERS,
            }
        }

        fn buffer(&mut self, bytes: u64) -> u64 {
            let address = self.next_buffer;
            self.next_buffer += bytes.div_ceil(4096) * 4096;
            address
        }

        fn write(&self, address: u64, bytes: &[u8]) {
            self.memory
                .memory()
                .write_slice(bytes, GuestAddress(address))
                .unwrap();
        }

        fn read(&self, address: u64, length: usize) -> Vec<u8> {
            let mut bytes = vec![0u8; length];
            self.memory
                .memory()
                .read_slice(&mut bytes, GuestAddress(address))
                .unwrap();
            bytes
        }

        /// Publishes a chain of (address, length, device_writable); returns its head.
        fn chain(&mut self, parts: &[(u64, u32, bool)]) -> u16 {
            let head = self.next_descriptor;
            for (position, (address, length, writable)) in parts.iter().enumerate() {
                let index = self.next_descriptor;
                self.next_descriptor = (self.next_descriptor + 1) % QUEUE_SIZE;
                let mut flags = 0u16;
                if *writable {
                    flags |= 2;
                }
                if position + 1 < parts.len() {
                    flags |= 1;
                }
                let mut entry = [0u8; 16];
                entry[0..8].copy_from_slice(&address.to_le_bytes());
                entry[8..12].copy_from_slice(&length.to_le_bytes());
                entry[12..14].copy_from_slice(&flags.to_le_bytes());
                entry[14..16].copy_from_slice(&self.next_descriptor.to_le_bytes());
                self.write(DESCRIPTORS + 16 * u64::from(index), &entry);
            }
            let slot = u64::from(self.avail_index % QUEUE_SIZE);
            self.write(AVAIL + 4 + 2 * slot, &head.to_le_bytes());
            self.avail_index = self.avail_index.wrapping_add(1);
            self.write(AVAIL + 2, &self.avail_index.to_le_bytes());
            head
        }

        fn header(&mut self, request_type: u32, sector: u64) -> u64 {
            let address = self.buffer(16);
            let mut header = [0u8; 16];
            header[0..4].copy_from_slice(&request_type.to_le_bytes());
            header[8..16].copy_from_slice(&sector.to_le_bytes());
            self.write(address, &header);
            address
        }

        /// A write request; returns the status byte's address.
        fn write_request(&mut self, sector: u64, data: &[u8]) -> u64 {
            let header = self.header(request::VIRTIO_BLK_T_OUT, sector);
            let buffer = self.buffer(data.len() as u64);
            self.write(buffer, data);
            let status = self.buffer(1);
            self.write(status, &[0xff]);
            self.chain(&[
                (header, 16, false),
                (buffer, data.len() as u32, false),
                (status, 1, true),
            ]);
            status
        }

        /// A read request; returns (data address, status address).
        fn read_request(&mut self, sector: u64, length: u32) -> (u64, u64) {
            let header = self.header(request::VIRTIO_BLK_T_IN, sector);
            let buffer = self.buffer(u64::from(length));
            let status = self.buffer(1);
            self.write(status, &[0xff]);
            self.chain(&[
                (header, 16, false),
                (buffer, length, true),
                (status, 1, true),
            ]);
            (buffer, status)
        }

        fn used_count(&self) -> u16 {
            u16::from_le_bytes(self.read(USED + 2, 2).try_into().unwrap())
        }

        fn used_entry(&self, index: u16) -> (u32, u32) {
            let bytes = self.read(USED + 4 + 8 * u64::from(index % QUEUE_SIZE), 8);
            (
                u32::from_le_bytes(bytes[0..4].try_into().unwrap()),
                u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
            )
        }

        /// Lets the worker pop everything and complete until `expected` used entries exist.
        fn run(&self, worker: &mut QueueWorker, expected: u16) {
            let started = std::time::Instant::now();
            worker
                .process_queue(&self.vring, &self.memory.memory(), false, true)
                .unwrap();
            while self.used_count() < expected {
                assert!(started.elapsed().as_secs() < 10, "requests never completed");
                std::thread::sleep(std::time::Duration::from_millis(1));
                worker.complete(&self.vring, Reap::Woken);
                worker
                    .process_queue(&self.vring, &self.memory.memory(), false, true)
                    .unwrap();
            }
            assert_eq!(self.used_count(), expected);
        }
    }

    fn device(size_bytes: u64, cipher: Option<SectorCipher>) -> Arc<Device> {
        let file = tempfile::tempfile().unwrap();
        file.set_len(size_bytes).unwrap();
        Arc::new(Device {
            file,
            cipher,
            capacity_sectors: size_bytes / 512,
            serial: *b"zos-test-serial-0001",
            read_only: false,
            direct: false,
            poll_idle: Duration::ZERO,
        })
    }

    fn pattern(seed: u64, length: usize) -> Vec<u8> {
        fixtures::bytes::xorshift_bytes(seed | 1, length)
    }

    /// Asserts that write `i` (the `i`th of `statuses`, at sector `i * length / 512`)
    /// succeeded and left `pattern(i, length)` in the volume file.
    fn assert_writes_on_disk(driver: &Driver, device: &Device, statuses: &[u64], length: usize) {
        for (i, status) in statuses.iter().enumerate() {
            assert_eq!(
                driver.read(*status, 1),
                [request::VIRTIO_BLK_S_OK],
                "write {i}"
            );
            let mut on_disk = vec![0u8; length];
            device
                .file
                .read_exact_at(&mut on_disk, (i * length) as u64)
                .unwrap();
            assert_eq!(
                on_disk,
                pattern(i as u64, length),
                "file bytes of write {i}"
            );
        }
    }

    #[test]
    fn batch_of_writes_and_reads_over_io_uring() {
        let device = device(4 << 20, None);
        let mut worker = QueueWorker::new(device.clone()).unwrap();
        let mut driver = Driver::new();
        let count = 40u16;
        let statuses: Vec<u64> = (0..count)
            .map(|i| driver.write_request(u64::from(i) * 16, &pattern(u64::from(i), 8192)))
            .collect();
        driver.run(&mut worker, count);
        assert_writes_on_disk(&driver, &device, &statuses, 8192);
        let reads: Vec<(u64, u64)> = (0..count)
            .map(|i| driver.read_request(u64::from(i) * 16, 8192))
            .collect();
        driver.run(&mut worker, 2 * count);
        for (i, (data, status)) in reads.iter().enumerate() {
            assert_eq!(driver.read(*status, 1), [request::VIRTIO_BLK_S_OK]);
            assert_eq!(
                driver.read(*data, 8192),
                pattern(i as u64, 8192),
                "read {i}"
            );
        }
        // Used lengths: 1 for writes, data + 1 for reads (completion order is the kernel's).
        assert!((0..count).all(|index| driver.used_entry(index).1 == 1));
        assert!((count..2 * count).all(|index| driver.used_entry(index).1 == 8193));
    }

    /// The polling path: with EVENT_IDX, requests published while the worker polls are
    /// served without a kick, and when it stops polling the avail event is re-armed at the
    /// next request it has not seen (so the guest's next request kicks it).
    #[test]
    fn polling_serves_without_kicks_and_rearms_notifications() {
        let device = device(4 << 20, None);
        let mut worker = QueueWorker::new(device.clone()).unwrap();
        let mut driver = Driver::new();
        driver.vring.set_queue_event_idx(true);
        let avail_event_address = USED + 4 + 8 * u64::from(QUEUE_SIZE);
        driver.write(avail_event_address, &0u16.to_le_bytes());
        let first: Vec<u64> = (0..8u16)
            .map(|i| driver.write_request(u64::from(i) * 8, &pattern(u64::from(i), 4096)))
            .collect();
        let memory = driver.memory.memory();
        worker
            .process_queue(&driver.vring, &memory, true, false)
            .unwrap();
        // Not re-armed while the worker means to poll: the guest would not kick.
        assert_eq!(driver.read(avail_event_address, 2), [0, 0]);
        // More requests arrive "during" polling; a long idle window lets the poll find them.
        let second: Vec<u64> = (8..16u16)
            .map(|i| driver.write_request(u64::from(i) * 8, &pattern(u64::from(i), 4096)))
            .collect();
        worker
            .poll(&driver.vring, &memory, true, Duration::from_millis(50))
            .unwrap();
        driver.run(&mut worker, 16);
        let statuses: Vec<u64> = first.into_iter().chain(second).collect();
        assert_writes_on_disk(&driver, &device, &statuses, 4096);
        assert_eq!(
            driver.read(avail_event_address, 2),
            16u16.to_le_bytes(),
            "notifications re-armed at the next unseen request"
        );
    }

    #[test]
    fn flush_get_id_and_hostile_chains() {
        let device = device(1 << 20, None);
        let mut worker = QueueWorker::new(device).unwrap();
        let mut driver = Driver::new();
        let header = driver.header(request::VIRTIO_BLK_T_FLUSH, 0);
        let flush_status = driver.buffer(1);
        driver.chain(&[(header, 16, false), (flush_status, 1, true)]);
        let header = driver.header(request::VIRTIO_BLK_T_GET_ID, 0);
        let id = driver.buffer(20);
        let id_status = driver.buffer(1);
        driver.chain(&[(header, 16, false), (id, 20, true), (id_status, 1, true)]);
        // Data far outside guest memory.
        let header = driver.header(request::VIRTIO_BLK_T_IN, 0);
        let bad_status = driver.buffer(1);
        driver.chain(&[
            (header, 16, false),
            (1 << 40, 512, true),
            (bad_status, 1, true),
        ]);
        // No status byte at all.
        let header = driver.header(request::VIRTIO_BLK_T_IN, 0);
        let no_status_head = driver.chain(&[(header, 16, false)]);
        // Beyond the disk.
        let (_, beyond_status) = driver.read_request(2048, 512);
        // And a good one after all that.
        let good_status = driver.write_request(5, &[7u8; 512]);
        driver.run(&mut worker, 6);
        assert_eq!(driver.read(flush_status, 1), [request::VIRTIO_BLK_S_OK]);
        assert_eq!(driver.read(id_status, 1), [request::VIRTIO_BLK_S_OK]);
        assert_eq!(driver.read(id, 20), b"zos-test-serial-0001");
        assert_eq!(driver.read(bad_status, 1), [request::VIRTIO_BLK_S_IOERR]);
        let no_status_used = (0..6)
            .map(|index| driver.used_entry(index))
            .find(|(head, _)| *head == u32::from(no_status_head))
            .unwrap();
        assert_eq!(no_status_used.1, 0, "no status byte: nothing written");
        assert_eq!(driver.read(beyond_status, 1), [request::VIRTIO_BLK_S_IOERR]);
        assert_eq!(driver.read(good_status, 1), [request::VIRTIO_BLK_S_OK]);
    }

    #[test]
    fn encrypted_device_keeps_ciphertext_on_disk() {
        let key = VolumeKey::from_bytes([5; 64]);
        let device = device(1 << 20, Some(SectorCipher::new(&key)));
        let mut worker = QueueWorker::new(device.clone()).unwrap();
        let mut driver = Driver::new();
        let plain = pattern(99, 4096);
        let status = driver.write_request(8, &plain);
        let (fresh, fresh_status) = driver.read_request(100, 1024);
        driver.run(&mut worker, 2);
        assert_eq!(driver.read(status, 1), [request::VIRTIO_BLK_S_OK]);
        assert_eq!(driver.read(fresh_status, 1), [request::VIRTIO_BLK_S_OK]);
        assert_eq!(
            driver.read(fresh, 1024),
            vec![0u8; 1024],
            "fresh sectors read as zeros"
        );
        let mut on_disk = vec![0u8; 4096];
        device.file.read_exact_at(&mut on_disk, 8 * 512).unwrap();
        assert_ne!(on_disk, plain);
        let mut decrypted = on_disk.clone();
        SectorCipher::new(&key).decrypt(&mut decrypted, 8);
        assert_eq!(decrypted, plain);
        let (data, read_status) = driver.read_request(8, 4096);
        driver.run(&mut worker, 3);
        assert_eq!(driver.read(read_status, 1), [request::VIRTIO_BLK_S_OK]);
        assert_eq!(driver.read(data, 4096), plain);
    }

    #[test]
    fn injected_faults_reach_the_guest_as_ioerr_and_nothing_else_does() {
        let seed = std::env::var("FAULT_SEED")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(0x5eed_0017_u64);
        let device = device(1 << 20, None);
        let injector = FaultInjector::new(
            Box::new(SyncIo::new().unwrap()),
            FaultPlan::Random {
                seed,
                per_million: 300_000,
            },
            libc::EIO,
        );
        let mut worker = QueueWorker::with_io(device.clone(), Box::new(injector));
        let mut driver = Driver::new();
        let count = 30u16;
        let statuses: Vec<u64> = (0..count)
            .map(|i| driver.write_request(u64::from(i) * 8, &pattern(u64::from(i) + 1, 4096)))
            .collect();
        driver.run(&mut worker, count);
        let mut failures = 0;
        for (i, status) in statuses.iter().enumerate() {
            let mut on_disk = vec![0u8; 4096];
            device
                .file
                .read_exact_at(&mut on_disk, i as u64 * 8 * 512)
                .unwrap();
            match driver.read(*status, 1)[0] {
                request::VIRTIO_BLK_S_OK => {
                    assert_eq!(
                        on_disk,
                        pattern(i as u64 + 1, 4096),
                        "seed {seed}: write {i}"
                    )
                }
                request::VIRTIO_BLK_S_IOERR => {
                    failures += 1;
                    assert_eq!(
                        on_disk,
                        vec![0u8; 4096],
                        "seed {seed}: failed write {i} landed"
                    );
                }
                other => panic!("seed {seed}: status {other} for write {i}"),
            }
        }
        assert!(
            failures > 0 && failures < count,
            "seed {seed}: {failures} failures"
        );
    }

    #[test]
    fn direct_io_bounces_unaligned_guest_buffers() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("direct");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        let device = Arc::new(Device {
            file,
            cipher: None,
            capacity_sectors: 2048,
            serial: *b"zos-test-serial-0002",
            read_only: false,
            direct: true,
            poll_idle: Duration::ZERO,
        });
        let mut worker = QueueWorker::new(device.clone()).unwrap();
        let mut driver = Driver::new();
        // Aligned buffer: straight to the file. Unaligned one (+3 bytes): bounced.
        let aligned = pattern(1, 4096);
        let status_aligned = driver.write_request(0, &aligned);
        let header = driver.header(request::VIRTIO_BLK_T_OUT, 16);
        let unaligned_buffer = driver.buffer(8192) + 3;
        let unaligned = pattern(2, 4096);
        driver.write(unaligned_buffer, &unaligned);
        let status_unaligned = driver.buffer(1);
        driver.chain(&[
            (header, 16, false),
            (unaligned_buffer, 4096, false),
            (status_unaligned, 1, true),
        ]);
        driver.run(&mut worker, 2);
        assert_eq!(driver.read(status_aligned, 1), [request::VIRTIO_BLK_S_OK]);
        assert_eq!(driver.read(status_unaligned, 1), [request::VIRTIO_BLK_S_OK]);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk[..4096], aligned[..]);
        assert_eq!(on_disk[16 * 512..16 * 512 + 4096], unaligned[..]);
        let header = driver.header(request::VIRTIO_BLK_T_IN, 16);
        let read_buffer = driver.buffer(8192) + 5;
        let read_status = driver.buffer(1);
        driver.chain(&[
            (header, 16, false),
            (read_buffer, 4096, true),
            (read_status, 1, true),
        ]);
        driver.run(&mut worker, 3);
        assert_eq!(driver.read(read_status, 1), [request::VIRTIO_BLK_S_OK]);
        assert_eq!(driver.read(read_buffer, 4096), unaligned);
    }
}
