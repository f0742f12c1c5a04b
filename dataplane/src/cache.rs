//! `cache`: recently read values kept in memory, so that hot reads need no disk read at all.
//! Bounded in bytes; first in, first out (cheap, and records never change, so there is
//! nothing to invalidate but what FLUSH and namespace deletion throw away). A value is kept
//! only once its record was read back and verified; writes do not fill the cache (a value
//! still pending is served from the pending buffer).
//!
//! One budget covers the whole server: each namespace's cache may hold an equal share of it,
//! so adding namespaces shrinks the shares and never grows the total.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Default bytes of values cached by the whole server.
pub const CACHE_BYTES_DEFAULT: usize = 256 * 1024 * 1024;

/// The server-wide cache budget, shared equally by the namespaces.
#[derive(Debug)]
pub struct CacheBudget {
    total_bytes: usize,
    namespaces: AtomicUsize,
}

impl CacheBudget {
    pub fn new(total_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            total_bytes,
            namespaces: AtomicUsize::new(1),
        })
    }

    /// Tells the budget how many namespaces share it now.
    pub fn set_namespaces(&self, count: usize) {
        self.namespaces.store(count.max(1), Ordering::Relaxed);
    }

    /// What one namespace may hold.
    pub fn share_bytes(&self) -> usize {
        self.total_bytes / self.namespaces.load(Ordering::Relaxed).max(1)
    }
}
/// Per-value bookkeeping counted against the bound.
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// A record's place as one number: segment id in the high half, offset in the low half.
pub fn place(segment: u32, offset: u32) -> u64 {
    (u64::from(segment) << 32) | u64::from(offset)
}

#[derive(Debug)]
pub struct ValueCache {
    values: HashMap<u64, Arc<[u8]>, foldhash::fast::RandomState>,
    order: VecDeque<u64>,
    bytes: usize,
    budget: Arc<CacheBudget>,
}

impl ValueCache {
    pub fn new(budget: Arc<CacheBudget>) -> Self {
        Self {
            values: HashMap::default(),
            order: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    pub fn get(&self, place: u64) -> Option<&Arc<[u8]>> {
        self.values.get(&place)
    }

    /// Keeps a copy of `value`; values larger than a sixteenth of the cache are not kept.
    pub fn insert(&mut self, place: u64, value: &[u8]) {
        let cost = value.len() + ENTRY_OVERHEAD_BYTES;
        let bytes_max = self.budget.share_bytes();
        if bytes_max == 0 || cost > bytes_max / 16 || self.values.contains_key(&place) {
            return;
        }
        while self.bytes + cost > bytes_max {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(evicted) = self.values.remove(&oldest) {
                self.bytes -= evicted.len() + ENTRY_OVERHEAD_BYTES;
            }
        }
        self.values.insert(place, Arc::from(value));
        self.order.push_back(place);
        self.bytes += cost;
    }

    pub fn clear(&mut self) {
        self.values.clear();
        self.order.clear();
        self.bytes = 0;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_fifo() {
        let budget = CacheBudget::new(32 * 1024);
        budget.set_namespaces(2);
        let mut cache = ValueCache::new(Arc::clone(&budget));
        for i in 0..1000u32 {
            cache.insert(place(1, i), &[i as u8; 100]);
            assert!(cache.bytes() <= 16 * 1024);
        }
        assert!(cache.get(place(1, 999)).is_some());
        assert!(cache.get(place(1, 0)).is_none());
        cache.insert(place(2, 0), &[0u8; 2000]); // over a sixteenth: not kept
        assert!(cache.get(place(2, 0)).is_none());
        budget.set_namespaces(1);
        cache.insert(place(3, 0), &[0u8; 1500]); // the share grew back
        assert!(cache.get(place(3, 0)).is_some());
        budget.set_namespaces(8); // shares shrink: the next insert evicts down to 4 KiB
        cache.insert(place(3, 1), &[0u8; 100]);
        assert!(cache.bytes() <= 4 * 1024);
        let mut off = ValueCache::new(CacheBudget::new(0));
        off.insert(place(1, 1), b"x");
        assert!(off.get(place(1, 1)).is_none());
    }
}
