//! `cache`: what reads are served from without a disk read, bounded in bytes, first in first
//! out (cheap, and records never change, so there is nothing to invalidate but what FLUSH,
//! compaction and namespace deletion throw away). Two kinds of memory:
//!
//! - **values** read back from disk and verified, one copy each;
//! - **written buffers**: the buffers of the latest write rounds (those of the usual size
//!   copied by the flusher, so that the event loop's next buffers reuse memory still in the
//!   CPU's cache), so that reading what was just written (the common case of a key-value
//!   store) costs neither a system call nor a copy per value. They take at most half of the
//!   share. Like records still pending, they are the engine's own bytes, never read back from
//!   storage: a read checks their layout and key, not their checksums.
//!
//! One budget covers the whole server: each namespace's cache may hold an equal share of it,
//! so adding namespaces shrinks the shares and never grows the total.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
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

/// One kept write buffer: `data` is the segment's bytes from `offset` on.
#[derive(Debug)]
struct WrittenBuffer {
    segment: u32,
    offset: u64,
    data: Arc<Vec<u8>>,
}

impl WrittenBuffer {
    /// Bytes counted against the bound: the whole allocation.
    fn cost(&self) -> usize {
        self.data.capacity() + ENTRY_OVERHEAD_BYTES
    }
}

#[derive(Debug)]
pub struct ValueCache {
    values: HashMap<u64, Arc<[u8]>, foldhash::fast::RandomState>,
    order: VecDeque<u64>,
    bytes: usize,
    /// In log order: (segment, offset) strictly increasing.
    written: VecDeque<WrittenBuffer>,
    written_bytes: usize,
    budget: Arc<CacheBudget>,
}

impl ValueCache {
    pub fn new(budget: Arc<CacheBudget>) -> Self {
        Self {
            values: HashMap::default(),
            order: VecDeque::new(),
            bytes: 0,
            written: VecDeque::new(),
            written_bytes: 0,
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

    /// Keeps a buffer just written at `offset` of `segment` (or a copy of it: the caller
    /// decides), evicting the oldest buffers beyond half the share.
    pub fn keep_written(&mut self, segment: u32, offset: u64, data: Arc<Vec<u8>>) {
        let bytes_max = self.budget.share_bytes() / 2;
        if data.is_empty() {
            return;
        }
        let buffer = WrittenBuffer {
            segment,
            offset,
            data,
        };
        if buffer.cost() > bytes_max / 4 {
            return;
        }
        // Kept in log order, so that a lookup can bisect: a buffer that does not extend the
        // order (compaction's output lives in lower segment ids) starts over.
        if self
            .written
            .back()
            .is_some_and(|last| (last.segment, last.offset) >= (segment, offset))
        {
            self.written.clear();
            self.written_bytes = 0;
        }
        self.written_bytes += buffer.cost();
        self.written.push_back(buffer);
        while self.written_bytes > bytes_max {
            let Some(oldest) = self.written.pop_front() else {
                break;
            };
            self.written_bytes -= oldest.cost();
        }
    }

    /// The bytes `range` of `segment`, when a kept write buffer holds all of them.
    pub fn written(&self, segment: u32, range: Range<u64>) -> Option<&[u8]> {
        let after = self
            .written
            .partition_point(|b| (b.segment, b.offset) <= (segment, range.start));
        let buffer = self.written.get(after.checked_sub(1)?)?;
        if buffer.segment != segment {
            return None;
        }
        let start = usize::try_from(range.start - buffer.offset).ok()?;
        let end = usize::try_from(range.end - buffer.offset).ok()?;
        buffer.data.get(start..end)
    }

    pub fn clear(&mut self) {
        self.values.clear();
        self.order.clear();
        self.bytes = 0;
        self.written.clear();
        self.written_bytes = 0;
    }

    /// Bytes held: values and kept write buffers.
    pub fn bytes(&self) -> usize {
        self.bytes + self.written_bytes
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
        off.keep_written(1, 0, Arc::new(vec![1u8; 10]));
        assert!(off.written(1, 0..1).is_none());
    }

    #[test]
    fn written_buffers_are_found_by_place_and_bounded() {
        let budget = CacheBudget::new(1024 * 1024);
        let mut cache = ValueCache::new(budget);
        let buffer = |fill: u8, len: usize| Arc::new(vec![fill; len]);
        cache.keep_written(1, 100, buffer(1, 1000));
        cache.keep_written(1, 1100, buffer(2, 1000));
        cache.keep_written(2, 50, buffer(3, 1000));
        assert_eq!(cache.written(1, 100..110), Some(&[1u8; 10][..]));
        assert_eq!(cache.written(1, 1099..1100), Some(&[1u8][..]));
        assert_eq!(cache.written(1, 1100..2100), Some(&[2u8; 1000][..]));
        // Straddling two buffers, before the first, past the end, in a gap, another segment.
        assert!(cache.written(1, 1090..1110).is_none());
        assert!(cache.written(1, 0..10).is_none());
        assert!(cache.written(1, 2090..2110).is_none());
        assert!(cache.written(2, 0..10).is_none());
        assert!(cache.written(3, 0..10).is_none());
        assert_eq!(cache.written(2, 50..60), Some(&[3u8; 10][..]));
        // Out of log order: the older buffers go.
        cache.keep_written(1, 5000, buffer(4, 1000));
        assert!(cache.written(2, 50..60).is_none());
        assert_eq!(cache.written(1, 5000..5001), Some(&[4u8][..]));
        // At most half of the share: the oldest are evicted.
        for i in 0..1000u64 {
            cache.keep_written(5, i * 4096, buffer(5, 4096));
            assert!(cache.bytes() <= 512 * 1024);
        }
        assert!(cache.written(5, 0..10).is_none());
        assert!(cache.written(5, 999 * 4096..999 * 4096 + 10).is_some());
        cache.clear();
        assert_eq!(cache.bytes(), 0);
        assert!(cache.written(5, 999 * 4096..999 * 4096 + 10).is_none());
    }
}
