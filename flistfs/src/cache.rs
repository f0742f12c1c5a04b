//! The local chunk cache: content-addressed, bounded in bytes with LRU eviction, safe
//! against crashes, shared by every mount on the machine.
//!
//! Layout: `<dir>/<first two hex digits of the id>/<64 hex digits>` holding the chunk's
//! *stored* bytes (still encrypted), and `<dir>/tmp/` for writes in progress. A chunk is
//! written to `tmp/` and renamed into place, so a reader sees a whole chunk or none; and
//! since every chunk read back is checked against its id before use, even a chunk torn by a
//! power cut (renamed before its data reached the disk) is detected, deleted and fetched
//! again: no half-written chunk is ever served. That is why no fsync is needed.
//!
//! Each process keeps its own LRU view of the directory (scanned at start, by file mtime,
//! which a hit refreshes). Several mounts share the files; each evicts down to its own
//! bound, so the directory stays within the largest bound in use.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::chunk::{stored_id, ChunkCodec};

/// Default bound of the cache.
pub const CACHE_BYTES_DEFAULT: u64 = 4 * 1024 * 1024 * 1024;

/// Least-recently-used bookkeeping of keys with sizes.
#[derive(Debug)]
pub struct LruIndex<K: std::hash::Hash + Eq + Clone> {
    entries: HashMap<K, (u64, u64)>,
    order: BTreeMap<u64, K>,
    tick: u64,
    total_bytes: u64,
}

impl<K: std::hash::Hash + Eq + Clone> Default for LruIndex<K> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            total_bytes: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> LruIndex<K> {
    /// Marks `key` as just used; returns whether it is known.
    pub fn touch(&mut self, key: &K) -> bool {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(key) {
            Some((_, old_tick)) => {
                self.order.remove(old_tick);
                *old_tick = tick;
                self.order.insert(tick, key.clone());
                true
            }
            None => false,
        }
    }

    /// Records `key` of `bytes` as just used, then returns the keys to evict so that the
    /// total stays within `capacity_bytes` (never `key` itself).
    pub fn insert(&mut self, key: K, bytes: u64, capacity_bytes: u64) -> Vec<K> {
        self.remove(&key);
        self.tick += 1;
        self.entries.insert(key.clone(), (bytes, self.tick));
        self.order.insert(self.tick, key.clone());
        self.total_bytes += bytes;
        let mut evicted = Vec::new();
        while self.total_bytes > capacity_bytes {
            let Some((&oldest_tick, oldest)) = self.order.iter().next() else {
                break;
            };
            if *oldest == key {
                break;
            }
            let oldest = oldest.clone();
            self.order.remove(&oldest_tick);
            if let Some((size, _)) = self.entries.remove(&oldest) {
                self.total_bytes -= size;
            }
            evicted.push(oldest);
        }
        evicted
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &K) {
        if let Some((size, tick)) = self.entries.remove(key) {
            self.order.remove(&tick);
            self.total_bytes -= size;
        }
    }

    /// Bytes accounted.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The on-disk chunk cache.
#[derive(Debug)]
pub struct ChunkCache {
    directory: PathBuf,
    capacity_bytes: u64,
    index: Mutex<LruIndex<[u8; 32]>>,
    temporary_counter: AtomicU64,
}

impl ChunkCache {
    /// Opens (creating if needed) the cache in `directory`, bounded to `capacity_bytes`.
    pub fn open(directory: &Path, capacity_bytes: u64) -> std::io::Result<Self> {
        fs::create_dir_all(directory.join("tmp"))?;
        // Leftovers of writes cut short by a crash.
        for entry in fs::read_dir(directory.join("tmp"))?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        let mut found: Vec<(SystemTime, [u8; 32], u64)> = Vec::new();
        for shard in fs::read_dir(directory)?.flatten() {
            let name = shard.file_name();
            if name.len() != 2 || !shard.path().is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())?.flatten() {
                let Some(id) = parse_id(&entry.file_name().to_string_lossy()) else {
                    continue;
                };
                let Ok(metadata) = entry.metadata() else {
                    continue;
                };
                found.push((
                    metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    id,
                    metadata.len(),
                ));
            }
        }
        found.sort();
        let cache = Self {
            directory: directory.to_path_buf(),
            capacity_bytes,
            index: Mutex::new(LruIndex::default()),
            temporary_counter: AtomicU64::new(0),
        };
        for (_, id, bytes) in found {
            let evicted = cache.lock().insert(id, bytes, capacity_bytes);
            cache.remove_files(&evicted);
        }
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruIndex<[u8; 32]>> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn path_of(&self, id: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(id);
        self.directory.join(&hex[..2]).join(hex)
    }

    fn remove_files(&self, ids: &[[u8; 32]]) {
        for id in ids {
            let _ = fs::remove_file(self.path_of(id));
        }
    }

    /// The stored bytes of chunk `id`, if cached and intact. A cached chunk that does not
    /// hash to its id is deleted and reported missing.
    pub fn get(&self, codec: ChunkCodec, id: &[u8; 32]) -> Option<Vec<u8>> {
        let path = self.path_of(id);
        let bytes = fs::read(&path).ok()?;
        if stored_id(codec, &bytes) != *id {
            tracing::warn!(chunk = %hex::encode(id), "cached chunk is corrupt; dropping it");
            let _ = fs::remove_file(&path);
            self.lock().remove(id);
            return None;
        }
        if !self.lock().touch(id) {
            // Written by another mount: account for it here too.
            let evicted = self
                .lock()
                .insert(*id, bytes.len() as u64, self.capacity_bytes);
            self.remove_files(&evicted);
        }
        // The mtime orders the LRU across restarts.
        if let Ok(file) = fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        Some(bytes)
    }

    /// Stores the stored bytes of chunk `id` (already verified by the caller), evicting the
    /// least recently used chunks beyond the bound.
    pub fn put(&self, id: &[u8; 32], stored: &[u8]) -> std::io::Result<()> {
        if stored.len() as u64 > self.capacity_bytes {
            return Ok(());
        }
        let path = self.path_of(id);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let counter = self.temporary_counter.fetch_add(1, Ordering::Relaxed);
        let temporary = self.directory.join("tmp").join(format!(
            "{}.{}.{counter}",
            hex::encode(id),
            std::process::id()
        ));
        let mut file = fs::File::create(&temporary)?;
        file.write_all(stored)?;
        drop(file);
        fs::rename(&temporary, &path)?;
        let evicted = self
            .lock()
            .insert(*id, stored.len() as u64, self.capacity_bytes);
        self.remove_files(&evicted);
        Ok(())
    }

    /// Bytes this process accounts for.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total_bytes()
    }
}

fn parse_id(name: &str) -> Option<[u8; 32]> {
    if name.len() != 64 {
        return None;
    }
    hex::decode(name).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_oldest_first_and_never_the_newest() {
        let mut index = LruIndex::default();
        assert!(index.insert(1, 40, 100).is_empty());
        assert!(index.insert(2, 40, 100).is_empty());
        assert!(index.touch(&1));
        assert_eq!(index.insert(3, 40, 100), vec![2]);
        assert_eq!(index.insert(4, 500, 100), vec![1, 3]);
        assert_eq!(index.total_bytes(), 500);
    }

    #[test]
    fn cache_is_bounded_verified_and_survives_restarts() {
        let directory = tempfile::tempdir().unwrap();
        let sealed: Vec<_> = (0..4u8)
            .map(|seed| crate::chunk::seal(&[seed; 30_000]).unwrap())
            .collect();
        let bound = sealed[0].stored.len() as u64 * 3;
        {
            let cache = ChunkCache::open(directory.path(), bound).unwrap();
            for chunk in &sealed {
                cache.put(&chunk.id, &chunk.stored).unwrap();
            }
            assert!(cache.total_bytes() <= bound);
            assert!(
                cache.get(ChunkCodec::ZosV1, &sealed[0].id).is_none(),
                "the oldest was evicted"
            );
            assert_eq!(
                cache.get(ChunkCodec::ZosV1, &sealed[3].id).unwrap(),
                sealed[3].stored
            );
        }
        // A torn or corrupt file is never served.
        let path = directory
            .path()
            .join(&hex::encode(sealed[3].id)[..2])
            .join(hex::encode(sealed[3].id));
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(bytes.len() / 2);
        fs::write(&path, bytes).unwrap();
        let cache = ChunkCache::open(directory.path(), bound).unwrap();
        assert!(cache.get(ChunkCodec::ZosV1, &sealed[3].id).is_none());
        assert!(!path.exists());
        assert_eq!(
            cache.get(ChunkCodec::ZosV1, &sealed[2].id).unwrap(),
            sealed[2].stored
        );
    }
}
