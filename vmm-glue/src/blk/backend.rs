//! The vhost-user-blk backend: virtqueues in, io_uring operations out.
//!
//! Each queue has its own worker thread (the vhost-user-backend epoll loop), its own
//! [`Ring`] and a bounded table of requests in flight. A kick pops chains while there is
//! room, validates them ([`super::request::parse`]) and queues their I/O; the ring's
//! eventfd wakes the same thread to complete requests in whatever order the kernel
//! finishes them: status byte, used ring, one notification per batch.
//!
//! Unencrypted reads and writes go straight between the volume file and guest memory
//! (readv/writev on the guest buffers); encrypted ones go through a bounce buffer that is
//! encrypted before the write and decrypted after the read.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryLoadGuard, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::request::{self, Limits, Request, RequestKind, Segment};
use crate::crypto::{SectorCipher, SECTOR_BYTES};
use crate::sys::{self, IoVecs, Operation, Ring};
use crate::volume::SERIAL_BYTES;

/// Guest memory as the vhost-user daemon maps it.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap<()>>;
type Memory = GuestMemoryMmap<()>;

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

const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// What the backend serves: an open, locked volume file and how to treat it.
#[derive(Debug)]
pub struct Device {
    pub file: File,
    pub cipher: Option<SectorCipher>,
    pub capacity_sectors: u64,
    pub serial: [u8; SERIAL_BYTES],
    pub read_only: bool,
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
    memory: RwLock<GuestMemory>,
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
                memory: RwLock::new(memory),
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
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX
            | VHOST_USER_F_PROTOCOL_FEATURES
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
        *self
            .shared
            .memory
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = memory;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.shared.workers.len())
            .map(|index| 1u64 << index)
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
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
        let memory = self
            .shared
            .memory
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
            .memory();
        let event_idx = self.shared.event_idx.load(Ordering::Acquire);
        let mut worker = worker.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut used_any = false;
        if u64::from(device_event) == self.completion_event_id(thread_id) {
            used_any |= worker.complete(vring);
        } else if device_event != 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        used_any |= worker.process_queue(vring, &memory, event_idx)?;
        if used_any {
            signal(vring, event_idx)?;
        }
        Ok(())
    }
}

fn signal(vring: &VringRwLock<GuestMemory>, event_idx: bool) -> io::Result<()> {
    let needed = if event_idx {
        vring
            .needs_notification()
            .map_err(|error| io::Error::other(error.to_string()))?
    } else {
        true
    };
    if needed {
        vring.signal_used_queue()?;
    }
    Ok(())
}

/// A request whose I/O the kernel is doing.
struct InFlight {
    head_index: u16,
    status_address: u64,
    /// Keeps the guest memory mapping alive while the kernel uses it.
    memory: Arc<Memory>,
    iovecs: IoVecs,
    /// The encrypted data of an encrypted read or write.
    bounce: Vec<u8>,
    /// For encrypted reads: where the decrypted data goes, and from which sector.
    decrypt_into: Option<(u64, Vec<Segment>)>,
    expected_result: i32,
    used_bytes: u32,
}

struct QueueWorker {
    device: Arc<Device>,
    limits: Limits,
    ring: Ring,
    slots: Vec<Option<InFlight>>,
    free_slots: Vec<usize>,
    completions: Vec<(u64, i32)>,
}

impl QueueWorker {
    fn new(device: Arc<Device>) -> io::Result<Self> {
        let limits = device.limits();
        Ok(Self {
            device,
            limits,
            ring: Ring::new(IN_FLIGHT_PER_QUEUE_MAX as u32)?,
            slots: (0..IN_FLIGHT_PER_QUEUE_MAX).map(|_| None).collect(),
            free_slots: (0..IN_FLIGHT_PER_QUEUE_MAX).rev().collect(),
            completions: Vec::with_capacity(IN_FLIGHT_PER_QUEUE_MAX),
        })
    }

    /// Pops and starts requests while there is room; true when some were answered at once.
    fn process_queue(
        &mut self,
        vring: &VringRwLock<GuestMemory>,
        memory: &GuestMemoryLoadGuard<Memory>,
        event_idx: bool,
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
            if !event_idx || self.free_slots.is_empty() {
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
                tracing::warn!(head_index, %error, "could not queue a request");
                false
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
            bounce: Vec::new(),
            decrypt_into: None,
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
                if self.device.cipher.is_some() {
                    in_flight.bounce = vec![0u8; data_bytes as usize];
                    in_flight
                        .iovecs
                        .push(in_flight.bounce.as_mut_ptr(), in_flight.bounce.len());
                    in_flight.decrypt_into = Some((sector, request.data));
                } else if !guest_iovecs(&in_flight.memory, &request.data, &mut in_flight.iovecs) {
                    return ioerr;
                }
                PendingOperation::Read(sector * SECTOR_BYTES as u64)
            }
            RequestKind::Write { sector } => {
                in_flight.expected_result = data_bytes as i32;
                if let Some(cipher) = &self.device.cipher {
                    let mut bounce = vec![0u8; data_bytes as usize];
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
                    cipher.encrypt(&mut bounce, sector);
                    in_flight.bounce = bounce;
                    in_flight
                        .iovecs
                        .push(in_flight.bounce.as_mut_ptr(), in_flight.bounce.len());
                } else if !guest_iovecs(&in_flight.memory, &request.data, &mut in_flight.iovecs) {
                    return ioerr;
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

    /// Completes what the ring finished; true when some request was answered.
    fn complete(&mut self, vring: &VringRwLock<GuestMemory>) -> bool {
        let mut completions = std::mem::take(&mut self.completions);
        self.ring.reap(&mut completions);
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
            } else if let Some((sector, segments)) = &in_flight.decrypt_into {
                let mut bounce = in_flight.bounce;
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
