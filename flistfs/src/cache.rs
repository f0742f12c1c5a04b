//! The local chunk cache: content-addressed, bounded in bytes with LRU eviction, safe
//! against crashes, shared by every mount on the machine.
//!
//! Layout: `<dir>/<first two hex digits of the id>/<64 hex digits>` holding the chunk's
//! *stored* bytes (still encrypted), `<dir>/tmp/` for writes in progress, and
//! `<dir>/usage`, the bytes of chunks in the cache (a little-endian u64) shared by every
//! process using the folder.
//!
//! - **Crashes**: a chunk is written to `tmp/` and renamed into place, so a reader sees a
//!   whole chunk or none; and since every chunk read back is checked against its id before
//!   use, even a chunk torn by a power cut (renamed before its data reached the disk) is
//!   detected, deleted and fetched again: no half-written chunk is ever served. That is why
//!   no fsync is needed. Leftovers in `tmp/` of processes that are gone are deleted when a
//!   cache is opened.
//! - **Sharing and the bound**: every process adds what it writes to `usage` under an
//!   exclusive `flock` of that file. The one whose write takes `usage` over its bound
//!   evicts, still holding the lock: it lists the folder, deletes the least recently used
//!   chunks until the total is [`EVICT_TO_PERCENT`] of the bound, and writes the exact total
//!   back. So the folder stays within the bound whatever the number of mounts, and a total
//!   that drifted (a process killed between its rename and its update) is corrected by the
//!   next eviction or open.
//! - **LRU across processes and restarts**: recency is the file's mtime, set to now when a
//!   chunk is written or read from the cache, so every process sees the others' use and a
//!   restarted mount finds the order where it left it.
//! - **Plaintext copies**: `<dir>/files/<64 hex digits>` (folder mode 0700, files 0600)
//!   holds whole files' plaintext, for FUSE passthrough (made and checked by
//!   [`crate::copies`]). They are written to `tmp/` and renamed in like chunks, count in the
//!   same `usage` and the same bound (by allocated bytes, so sparse files count their data),
//!   and are evicted by the same LRU, except that a copy in use is never evicted: whoever
//!   uses one holds a shared `flock` on it, and eviction skips a copy it cannot lock
//!   exclusively.

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

/// The machine-wide chunk cache, `/var/cache/zos/chunks`, when it can be used (root), else
/// the user's cache folder (`$XDG_CACHE_HOME/zos/chunks`, `~/.cache/zos/chunks`): the one
/// folder `zos flist mount` and `zos vm fs serve` share, so both reuse fetched chunks.
pub fn default_dir() -> PathBuf {
    let machine_wide = PathBuf::from("/var/cache/zos/chunks");
    if fs::create_dir_all(machine_wide.join("tmp")).is_ok() {
        return machine_wide;
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("zos").join("chunks")
}

/// Eviction brings the cache down to this share of its bound, so that a full cache lists
/// its folder once per tenth of its bound written, not at every write.
pub const EVICT_TO_PERCENT: u64 = 90;
/// Temporary files older than this are deleted at open even if their process seems alive.
const TEMPORARY_AGE_MAX: std::time::Duration = std::time::Duration::from_secs(3600);
const USAGE_FILE: &str = "usage";
/// The folder of plaintext copies, inside the cache folder.
pub const COPIES_DIR: &str = "files";
/// A plaintext copy may take at most this share of the cache's bound.
pub const COPY_SHARE_PERCENT_MAX: u64 = 25;

/// The on-disk chunk cache.
#[derive(Debug)]
pub struct ChunkCache {
    directory: PathBuf,
    capacity_bytes: u64,
    /// `<dir>/usage`; the mutex orders this process's threads, the flock other processes.
    usage: Mutex<fs::File>,
    temporary_counter: AtomicU64,
}

impl ChunkCache {
    /// Opens (creating if needed) the cache in `directory`, bounded to `capacity_bytes`.
    /// Lists the folder once: recounts its bytes and evicts down to the bound.
    pub fn open(directory: &Path, capacity_bytes: u64) -> std::io::Result<Self> {
        fs::create_dir_all(directory.join("tmp"))?;
        create_private_dir(&directory.join(COPIES_DIR))?;
        remove_abandoned_temporaries(&directory.join("tmp"))?;
        let usage = fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(directory.join(USAGE_FILE))?;
        let cache = Self {
            directory: directory.to_path_buf(),
            capacity_bytes,
            usage: Mutex::new(usage),
            temporary_counter: AtomicU64::new(0),
        };
        {
            let usage = cache.lock_usage()?;
            cache.evict_locked(&usage, capacity_bytes, None)?;
        }
        Ok(cache)
    }

    /// The bound in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn lock_usage(&self) -> std::io::Result<UsageGuard<'_>> {
        let file = self
            .usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        retry_interrupted(|| file.lock())?;
        Ok(UsageGuard { file })
    }

    fn path_of(&self, id: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(id);
        self.directory.join(&hex[..2]).join(hex)
    }

    /// Marks chunk `id` as just used: its mtime orders the LRU for every process.
    fn note_used(&self, path: &Path) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let now = (now.as_secs() as i64, now.subsec_nanos());
        let _ = crate::sys::set_times_nofollow(path, now, now);
    }

    /// Lists every chunk (mtime, path, bytes), evicts the oldest until the total is at
    /// most `target_bytes` (never `keep`), and stores the exact total. Caller holds the lock.
    fn evict_locked(
        &self,
        usage: &UsageGuard<'_>,
        target_bytes: u64,
        keep: Option<&Path>,
    ) -> std::io::Result<u64> {
        // (mtime, path, bytes, whether it is a plaintext copy)
        let mut found: Vec<(SystemTime, PathBuf, u64, bool)> = Vec::new();
        for shard in fs::read_dir(&self.directory)?.flatten() {
            let name = shard.file_name();
            if name.len() != 2 || !shard.path().is_dir() {
                continue;
            }
            list_cached(&shard.path(), false, &mut found)?;
        }
        list_cached(&self.directory.join(COPIES_DIR), true, &mut found)?;
        found.sort();
        let mut total: u64 = found.iter().map(|(_, _, bytes, _)| bytes).sum();
        let mut evicted = 0usize;
        for (_, path, bytes, is_copy) in &found {
            if total <= target_bytes {
                break;
            }
            if Some(path.as_path()) == keep {
                continue;
            }
            let removed = if *is_copy {
                remove_copy_if_unused(path)
            } else {
                fs::remove_file(path).is_ok()
            };
            if !removed {
                continue;
            }
            total -= bytes;
            evicted += 1;
        }
        if evicted > 0 {
            tracing::debug!(evicted, total, "chunk cache evicted");
        }
        usage.store(total)?;
        Ok(total)
    }

    /// The stored bytes of chunk `id`, if cached and intact. A cached chunk that does not
    /// hash to its id is deleted and reported missing.
    pub fn get(&self, codec: ChunkCodec, id: &[u8; 32]) -> Option<Vec<u8>> {
        let bytes = self.get_unverified(id)?;
        if stored_id(codec, &bytes) != *id {
            self.discard(id);
            return None;
        }
        Some(bytes)
    }

    /// The stored bytes of chunk `id` if cached, *not* checked against the id: for callers
    /// that verify them anyway (opening a chunk checks its id), so the bytes are hashed
    /// once. A caller that finds them corrupt must [`ChunkCache::discard`] them.
    pub fn get_unverified(&self, id: &[u8; 32]) -> Option<Vec<u8>> {
        let path = self.path_of(id);
        let bytes = fs::read(&path).ok()?;
        self.note_used(&path);
        Some(bytes)
    }

    /// Drops chunk `id` from the cache (found corrupt by a caller).
    pub fn discard(&self, id: &[u8; 32]) {
        tracing::warn!(chunk = %hex::encode(id), "cached chunk is corrupt; dropping it");
        let path = self.path_of(id);
        let Ok(metadata) = fs::metadata(&path) else {
            return;
        };
        if fs::remove_file(&path).is_ok() {
            if let Ok(usage) = self.lock_usage() {
                let _ = usage.add(-(metadata.len() as i64));
            }
        }
    }

    /// Stores the stored bytes of chunk `id` (already verified by the caller), evicting the
    /// least recently used chunks of every process beyond the bound.
    pub fn put(&self, id: &[u8; 32], stored: &[u8]) -> std::io::Result<()> {
        if stored.len() as u64 > self.capacity_bytes {
            return Ok(());
        }
        let path = self.path_of(id);
        if path.exists() {
            // Another mount (or thread) cached it first.
            self.note_used(&path);
            return Ok(());
        }
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
        // The kernel stamps writes with a coarse clock; order the LRU precisely.
        self.note_used(&path);
        let usage = self.lock_usage()?;
        let total = usage.add(stored.len() as i64)?;
        if total > self.capacity_bytes {
            let target = self.capacity_bytes / 100 * EVICT_TO_PERCENT;
            self.evict_locked(&usage, target, Some(&path))?;
        }
        Ok(())
    }

    /// Bytes of chunks and plaintext copies in the cache, all processes together.
    pub fn total_bytes(&self) -> u64 {
        self.lock_usage()
            .and_then(|usage| usage.load())
            .unwrap_or(0)
    }

    /// Where plaintext copy `name` lives.
    pub fn copy_path(&self, name: &[u8; 32]) -> PathBuf {
        self.directory.join(COPIES_DIR).join(hex::encode(name))
    }

    /// The largest plaintext copy this cache takes ([`COPY_SHARE_PERCENT_MAX`] of its bound).
    pub fn copy_bytes_max(&self) -> u64 {
        self.capacity_bytes / 100 * COPY_SHARE_PERCENT_MAX
    }

    /// Opens plaintext copy `name` for reading, if present, and locks it against eviction
    /// (a shared `flock`, held as long as the file is open). Not verified: that is the
    /// caller's business.
    pub fn open_copy(&self, name: &[u8; 32]) -> Option<fs::File> {
        let path = self.copy_path(name);
        let file = fs::File::open(&path).ok()?;
        retry_interrupted(|| file.lock_shared()).ok()?;
        // Evicted between our open and our lock: it is gone, whatever we hold.
        use std::os::unix::fs::MetadataExt;
        if file.metadata().ok()?.nlink() == 0 {
            return None;
        }
        self.note_used(&path);
        Some(file)
    }

    /// Deletes plaintext copy `name` (found corrupt by a caller) if nobody uses it.
    pub fn discard_copy(&self, name: &[u8; 32]) {
        let path = self.copy_path(name);
        let Ok(metadata) = fs::metadata(&path) else {
            return;
        };
        if remove_copy_if_unused(&path) {
            if let Ok(usage) = self.lock_usage() {
                let _ = usage.add(-(copy_bytes(&metadata) as i64));
            }
        }
    }

    /// Adds plaintext copy `name` of `size_bytes`: `fill` writes it into a new private
    /// temporary file, `verify` checks what was written (read back from the file), and
    /// only then is it renamed into place, counted and the cache evicted down to its bound
    /// (never this copy). Returns the copy, open and locked as by
    /// [`ChunkCache::open_copy`]; `Ok(None)` when it is larger than
    /// [`ChunkCache::copy_bytes_max`]. A copy that fails `verify` is never renamed in.
    pub fn put_copy(
        &self,
        name: &[u8; 32],
        size_bytes: u64,
        fill: impl FnOnce(&fs::File) -> std::io::Result<()>,
        verify: impl FnOnce(&fs::File) -> Result<(), String>,
    ) -> std::io::Result<Option<fs::File>> {
        if size_bytes > self.copy_bytes_max() {
            return Ok(None);
        }
        if let Some(file) = self.open_copy(name) {
            return Ok(Some(file));
        }
        let counter = self.temporary_counter.fetch_add(1, Ordering::Relaxed);
        let temporary = self.directory.join("tmp").join(format!(
            "{}.{}.{counter}",
            hex::encode(name),
            std::process::id()
        ));
        let made = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let file = fs::File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)?;
            fill(&file)?;
            file.set_len(size_bytes)?;
            verify(&file).map_err(std::io::Error::other)?;
            retry_interrupted(|| file.lock_shared())?;
            Ok::<_, std::io::Error>(file)
        })();
        let file = match made {
            Ok(file) => file,
            Err(error) => {
                let _ = fs::remove_file(&temporary);
                return Err(error);
            }
        };
        let path = self.copy_path(name);
        if let Err(error) = fs::rename(&temporary, &path) {
            let _ = fs::remove_file(&temporary);
            return Err(error);
        }
        self.note_used(&path);
        let bytes = copy_bytes(&file.metadata()?);
        let usage = self.lock_usage()?;
        let total = usage.add(bytes as i64)?;
        if total > self.capacity_bytes {
            let target = self.capacity_bytes / 100 * EVICT_TO_PERCENT;
            self.evict_locked(&usage, target, Some(&path))?;
        }
        Ok(Some(file))
    }

    /// Whether chunk `id` is in the cache (not verified).
    pub fn contains(&self, id: &[u8; 32]) -> bool {
        self.path_of(id).exists()
    }
}

/// The usage file, locked for this process and against others until dropped.
struct UsageGuard<'a> {
    file: std::sync::MutexGuard<'a, fs::File>,
}

impl UsageGuard<'_> {
    fn load(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let mut bytes = [0u8; 8];
        match self.file.read_exact_at(&mut bytes, 0) {
            Ok(()) => Ok(u64::from_le_bytes(bytes)),
            // A new (or torn) usage file: the next listing sets it right.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
            Err(error) => Err(error),
        }
    }

    fn store(&self, total: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(&total.to_le_bytes(), 0)
    }

    fn add(&self, delta: i64) -> std::io::Result<u64> {
        let total = self.load()?.saturating_add_signed(delta);
        self.store(total)?;
        Ok(total)
    }
}

impl Drop for UsageGuard<'_> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// Adds the cache files of folder `dir` (named by their id) to `found`: (mtime, path, bytes
/// they count for, `is_copy`). Files gone meanwhile are skipped.
fn list_cached(
    dir: &Path,
    is_copy: bool,
    found: &mut Vec<(SystemTime, PathBuf, u64, bool)>,
) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        if parse_id(&entry.file_name().to_string_lossy()).is_none() {
            continue;
        }
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        let bytes = if is_copy {
            copy_bytes(&metadata)
        } else {
            metadata.len()
        };
        found.push((
            metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            entry.path(),
            bytes,
            is_copy,
        ));
    }
    Ok(())
}

/// Deletes files in `tmp/` left by processes that are gone (or older than an hour); the
/// files of live processes sharing the cache are theirs to rename.
fn remove_abandoned_temporaries(temporary_directory: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(temporary_directory)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner_alive = name
            .split('.')
            .nth(1)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
        let old = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > TEMPORARY_AGE_MAX);
        if !owner_alive || old {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// What a plaintext copy counts for in the bound: its allocated bytes (holes are free).
fn copy_bytes(metadata: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    metadata.blocks() * 512
}

/// Deletes the copy at `path` unless some process holds it open and locked; whether it
/// was deleted.
fn remove_copy_if_unused(path: &Path) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    match file.try_lock() {
        // Deleted while locked: an opener that locks it next sees it unlinked.
        Ok(()) => fs::remove_file(path).is_ok(),
        Err(_) => false,
    }
}

/// Runs a blocking `flock` (`File::lock`, `File::lock_shared`) again when a signal cut it
/// short: the standard library hands `EINTR` back.
fn retry_interrupted(mut lock: impl FnMut() -> std::io::Result<()>) -> std::io::Result<()> {
    loop {
        match lock() {
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// Creates `path` (and its parents) as a folder only its owner may enter (0700), and
/// makes an existing one so.
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
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

    fn sealed_chunks(count: u8) -> Vec<crate::chunk::SealedChunk> {
        (0..count)
            .map(|seed| crate::chunk::seal(&[seed; 30_000]).unwrap())
            .collect()
    }

    fn cached_files(directory: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for shard in fs::read_dir(directory).unwrap().flatten() {
            if shard.file_name().len() == 2 {
                found.extend(
                    fs::read_dir(shard.path())
                        .unwrap()
                        .map(|e| e.unwrap().path()),
                );
            }
        }
        found
    }

    #[test]
    fn two_caches_on_one_folder_share_the_bound_and_the_lru() {
        let directory = tempfile::tempdir().unwrap();
        let sealed = sealed_chunks(6);
        let size = sealed[0].stored.len() as u64;
        let bound = size * 4;
        let first = ChunkCache::open(directory.path(), bound).unwrap();
        let second = ChunkCache::open(directory.path(), bound).unwrap();
        for chunk in &sealed[..4] {
            first.put(&chunk.id, &chunk.stored).unwrap();
        }
        assert_eq!(second.total_bytes(), 4 * size, "usage is shared");
        // The second process reads chunk 0: it becomes the most recently used for both.
        assert!(second.get(ChunkCodec::ZosV1, &sealed[0].id).is_some());
        second.put(&sealed[4].id, &sealed[4].stored).unwrap();
        let files = cached_files(directory.path());
        assert!(files.len() as u64 * size <= bound, "{} files", files.len());
        assert_eq!(first.total_bytes(), files.len() as u64 * size);
        assert!(first.get(ChunkCodec::ZosV1, &sealed[0].id).is_some());
        assert!(first.get(ChunkCodec::ZosV1, &sealed[4].id).is_some());
        assert!(
            first.get(ChunkCodec::ZosV1, &sealed[1].id).is_none(),
            "the least recently used chunk went first"
        );
        // Putting what the other process already cached adds nothing.
        let before = second.total_bytes();
        second.put(&sealed[4].id, &sealed[4].stored).unwrap();
        assert_eq!(second.total_bytes(), before);
    }

    #[test]
    fn only_temporaries_of_dead_processes_are_removed() {
        let directory = tempfile::tempdir().unwrap();
        let temporary = directory.path().join("tmp");
        fs::create_dir_all(&temporary).unwrap();
        let ours = temporary.join(format!("{}.{}.0", "ab".repeat(32), std::process::id()));
        // Pids are below 2^22 on Linux, so this one belongs to nobody.
        let dead = temporary.join(format!("{}.{}.0", "cd".repeat(32), 999_999_999u32));
        fs::write(&ours, b"in progress").unwrap();
        fs::write(&dead, b"torn").unwrap();
        ChunkCache::open(directory.path(), 1 << 20).unwrap();
        assert!(
            ours.exists(),
            "a live process's write in progress is left alone"
        );
        assert!(!dead.exists());
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
