//! What both vhost-user backends ([`crate::blk::backend`], [`crate::fs::backend`]) share in
//! front of the guest: the guest memory type and the slot the daemon replaces it in, the
//! virtio features every device offers, one queue per epoll thread, exit events, and the
//! used-ring notification that honours EVENT_IDX.

use std::io;
use std::sync::RwLock;

use vhost_user_backend::{VringRwLock, VringT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// Guest memory as the vhost-user daemon maps it.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap<()>>;
/// One snapshot of the guest's memory map.
pub type Memory = GuestMemoryMmap<()>;

const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// The features every device here offers: virtio 1, indirect descriptors, EVENT_IDX and
/// vhost-user protocol features. Devices add their own.
pub const FEATURES_COMMON: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_RING_F_EVENT_IDX
    | VHOST_USER_F_PROTOCOL_FEATURES;

/// The guest memory a backend reads through; the daemon replaces it whenever the VMM sends
/// a new memory table.
#[derive(Debug)]
pub struct MemorySlot(RwLock<GuestMemory>);

impl MemorySlot {
    pub fn new(memory: GuestMemory) -> Self {
        Self(RwLock::new(memory))
    }

    /// Takes the VMM's new memory table (`VhostUserBackend::update_memory`).
    pub fn replace(&self, memory: GuestMemory) {
        *self.0.write().unwrap_or_else(|poison| poison.into_inner()) = memory;
    }

    /// The current memory map, kept mapped while the guard lives.
    pub fn load(&self) -> GuestMemoryLoadGuard<Memory> {
        self.0
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .memory()
    }
}

/// `VhostUserBackend::queues_per_thread` for one epoll thread per queue.
pub fn one_queue_per_thread(num_queues: usize) -> Vec<u64> {
    (0..num_queues).map(|index| 1u64 << index).collect()
}

/// `VhostUserBackend::exit_event`: a non-blocking eventfd pair.
pub fn exit_event() -> Option<(EventConsumer, EventNotifier)> {
    new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
}

/// Notifies the guest of used chains, unless EVENT_IDX says it does not want to hear yet.
pub fn signal_used(vring: &VringRwLock<GuestMemory>, event_idx: bool) -> io::Result<()> {
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
