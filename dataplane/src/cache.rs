//! `cache`: recently written and read values kept in memory, so that hot reads need no disk
//! read at all. Bounded in bytes; first in, first out (cheap, and records never change, so
//! there is nothing to invalidate but what FLUSH and namespace deletion throw away).
//! Values are kept only after their record was checked (written by us, or read and verified).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Default bytes of values the cache of one namespace holds.
pub const CACHE_BYTES_DEFAULT: usize = 64 * 1024 * 1024;
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
    bytes_max: usize,
}

impl ValueCache {
    pub fn new(bytes_max: usize) -> Self {
        Self {
            values: HashMap::default(),
            order: VecDeque::new(),
            bytes: 0,
            bytes_max,
        }
    }

    pub fn get(&self, place: u64) -> Option<&Arc<[u8]>> {
        self.values.get(&place)
    }

    /// Keeps a copy of `value`; values larger than a sixteenth of the cache are not kept.
    pub fn insert(&mut self, place: u64, value: &[u8]) {
        let cost = value.len() + ENTRY_OVERHEAD_BYTES;
        if self.bytes_max == 0 || cost > self.bytes_max / 16 || self.values.contains_key(&place) {
            return;
        }
        while self.bytes + cost > self.bytes_max {
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
        let mut cache = ValueCache::new(16 * 1024);
        for i in 0..1000u32 {
            cache.insert(place(1, i), &[i as u8; 100]);
            assert!(cache.bytes() <= 16 * 1024);
        }
        assert!(cache.get(place(1, 999)).is_some());
        assert!(cache.get(place(1, 0)).is_none());
        cache.insert(place(2, 0), &[0u8; 2000]); // over a sixteenth: not kept
        assert!(cache.get(place(2, 0)).is_none());
        let mut off = ValueCache::new(0);
        off.insert(place(1, 1), b"x");
        assert!(off.get(place(1, 1)).is_none());
    }
}
