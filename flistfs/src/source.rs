//! Where a mount's chunks come from: store routes, the on-disk cache, and an in-memory
//! plaintext cache, with single flight and read-ahead. Implements [`ChunkSource`].
//!
//! A fetch asks, in order: the plaintext memory cache, then (once per chunk however many
//! threads ask at the same moment) the on-disk cache, then each store whose route covers
//! the chunk's first id byte, each call bounded by a timeout. Bytes from a store or the
//! cache are checked against the id and opened (which checks everything else) before they
//! are used or cached; a corrupt chunk from one replica makes the next one be tried, and
//! when none is left the read fails (EIO) with a log line.
//!
//! `fetch` blocks on the source's own tokio runtime: call it from plain threads (FUSE
//! workers, the unpacker), never from inside a tokio task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use erasure::store::ChunkStore;

use crate::cache::{ChunkCache, LruIndex};
use crate::chunk::{self, ChunkRef};
use crate::fs::ChunkSource;

/// Default time a store may take to answer one chunk before the read fails.
pub const STORE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default bound of decrypted chunks kept in memory. It serves the kernel's several
/// requests per chunk and random reads (a random 4 KiB read that misses costs a whole
/// chunk's read and decryption: with 64 MiB, random reads over a 256 MiB file fell from
/// about 140 to 9 MB/s). The price of a large one: a cold read of a big file keeps taking
/// fresh memory (page faults and zeroing on every chunk buffer) instead of reusing evicted
/// buffers, 30% more CPU per cold byte than with 64 MiB (measured).
pub const MEMORY_CACHE_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
/// Most read-ahead fetches in flight at once.
pub const PREFETCH_IN_FLIGHT_MAX: usize = 8;

/// One store and the first-id-byte range it serves.
#[derive(Debug, Clone)]
pub struct Route {
    /// First id byte served (inclusive).
    pub first: u8,
    /// Last id byte served (inclusive).
    pub last: u8,
    /// The store's URL as written in the flist.
    pub url: String,
}

/// Errors of parsing routes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The text is not `URL` or `XX-YY=URL`.
    #[error("invalid store route {0:?}: expected URL or XX-YY=URL with hex bytes XX <= YY")]
    Invalid(String),
}

impl Route {
    /// Parses `URL` (all ids) or `XX-YY=URL`.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let bytes = text.as_bytes();
        if bytes.len() > 6 && bytes[2] == b'-' && bytes[5] == b'=' {
            let first = u8::from_str_radix(&text[0..2], 16)
                .map_err(|_| RouteError::Invalid(text.into()))?;
            let last = u8::from_str_radix(&text[3..5], 16)
                .map_err(|_| RouteError::Invalid(text.into()))?;
            if first > last {
                return Err(RouteError::Invalid(text.into()));
            }
            return Ok(Self {
                first,
                last,
                url: text[6..].to_string(),
            });
        }
        if !text.contains("://") {
            return Err(RouteError::Invalid(text.into()));
        }
        Ok(Self {
            first: 0,
            last: 0xff,
            url: text.to_string(),
        })
    }

    /// Whether this route serves `id`.
    pub fn covers(&self, id: &[u8; 32]) -> bool {
        (self.first..=self.last).contains(&id[0])
    }

    /// The text written into an flist's `route` tag.
    pub fn to_tag(&self) -> String {
        format!("{:02x}-{:02x}={}", self.first, self.last, self.url)
    }
}

/// `url` without the password of its user part (`zdb://user:secret@host` → `zdb://user@host`).
pub fn strip_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!(
                "{}{}{}",
                &url[..scheme_end + 3],
                &authority[..colon],
                &rest[at..]
            )
        }
        _ => url.to_string(),
    }
}

/// Whether the routes together cover every first id byte.
pub fn routes_cover_all(routes: &[Route]) -> bool {
    (0..=255u8).all(|byte| {
        routes
            .iter()
            .any(|route| (route.first..=route.last).contains(&byte))
    })
}

/// Settings of a [`StoreSource`].
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Time one store call may take.
    pub store_timeout: Duration,
    /// Bound of the plaintext memory cache.
    pub memory_cache_bytes: u64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            store_timeout: Duration::from_millis(STORE_TIMEOUT_MS_DEFAULT),
            memory_cache_bytes: MEMORY_CACHE_BYTES_DEFAULT,
        }
    }
}

type FetchResult = Result<Arc<Vec<u8>>, String>;

#[derive(Default)]
struct Flight {
    result: Mutex<Option<FetchResult>>,
    done: Condvar,
}

struct Memory {
    index: LruIndex<[u8; 32]>,
    chunks: HashMap<[u8; 32], Arc<Vec<u8>>>,
}

struct Inner {
    stores: Vec<(Route, Arc<dyn ChunkStore>)>,
    cache: Option<Arc<ChunkCache>>,
    runtime: tokio::runtime::Runtime,
    config: SourceConfig,
    memory: Mutex<Memory>,
    flights: Mutex<HashMap<[u8; 32], Arc<Flight>>>,
    store_reads: AtomicU64,
    prefetching: AtomicUsize,
}

/// Chunks from stores through the caches.
#[derive(Clone)]
pub struct StoreSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StoreSource {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self
            .inner
            .stores
            .iter()
            .map(|(route, _)| route.url.as_str())
            .collect();
        formatter
            .debug_struct("StoreSource")
            .field("stores", &urls)
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StoreSource {
    /// A source over `stores` (each with its route), optionally through `cache`.
    pub fn new(
        stores: Vec<(Route, Arc<dyn ChunkStore>)>,
        cache: Option<Arc<ChunkCache>>,
        config: SourceConfig,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flist-fetch")
            .enable_all()
            .build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                stores,
                cache,
                runtime,
                config,
                memory: Mutex::new(Memory {
                    index: LruIndex::default(),
                    chunks: HashMap::new(),
                }),
                flights: Mutex::new(HashMap::new()),
                store_reads: AtomicU64::new(0),
                prefetching: AtomicUsize::new(0),
            }),
        })
    }

    /// Chunk reads that went to a store (cache misses), for tests and stats.
    pub fn store_reads(&self) -> u64 {
        self.inner.store_reads.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn remembered(&self, id: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        let mut memory = lock(&self.memory);
        let found = memory.chunks.get(id).cloned();
        if found.is_some() {
            memory.index.touch(id);
        }
        found
    }

    fn fetch(&self, chunk: &ChunkRef) -> FetchResult {
        if let Some(plain) = self.remembered(&chunk.id) {
            return Ok(plain);
        }
        let (flight, leader) = {
            let mut flights = lock(&self.flights);
            match flights.get(&chunk.id) {
                Some(flight) => (flight.clone(), false),
                None => {
                    let flight = Arc::new(Flight::default());
                    flights.insert(chunk.id, flight.clone());
                    (flight, true)
                }
            }
        };
        if !leader {
            let mut result = lock(&flight.result);
            while result.is_none() {
                result = flight
                    .done
                    .wait(result)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            return result
                .clone()
                .unwrap_or_else(|| Err("fetch vanished".into()));
        }
        let result = self.fetch_uncached(chunk);
        if let Ok(plain) = &result {
            let mut memory = lock(&self.memory);
            let evicted =
                memory
                    .index
                    .insert(chunk.id, plain.len() as u64, self.config.memory_cache_bytes);
            memory.chunks.insert(chunk.id, plain.clone());
            for id in evicted {
                memory.chunks.remove(&id);
            }
        }
        *lock(&flight.result) = Some(result.clone());
        flight.done.notify_all();
        lock(&self.flights).remove(&chunk.id);
        result
    }

    fn fetch_uncached(&self, chunk: &ChunkRef) -> FetchResult {
        if let Some(cache) = &self.cache {
            // Opening checks the bytes against the id: hashed once, here.
            if let Some(stored) = cache.get_unverified(&chunk.id) {
                let opened = chunk::check_stored(chunk, &stored)
                    .and_then(|()| chunk::open_checked(chunk, stored));
                match opened {
                    Ok(plain) => return Ok(Arc::new(plain)),
                    Err(error) => {
                        tracing::error!(%error, "cached chunk does not open; fetching it again");
                        cache.discard(&chunk.id);
                    }
                }
            }
        }
        let id_hex = hex::encode(chunk.id);
        let mut failures: Vec<String> = Vec::new();
        for (route, store) in self
            .stores
            .iter()
            .filter(|(route, _)| route.covers(&chunk.id))
        {
            self.store_reads.fetch_add(1, Ordering::Relaxed);
            let answer = self.runtime.block_on(async {
                tokio::time::timeout(self.config.store_timeout, store.get(&chunk.id)).await
            });
            let stored = match answer {
                Err(_) => {
                    failures.push(format!(
                        "{}: no answer within {:?}",
                        route.url, self.config.store_timeout
                    ));
                    continue;
                }
                Ok(Err(error)) => {
                    failures.push(format!("{}: {error}", route.url));
                    continue;
                }
                Ok(Ok(None)) => {
                    failures.push(format!("{}: not found", route.url));
                    continue;
                }
                Ok(Ok(Some(stored))) => stored,
            };
            // Bytes that hash to the id are the chunk's: cache them, then decrypt them in
            // place (which checks everything else).
            if let Err(error) = chunk::check_stored(chunk, &stored) {
                failures.push(format!("{}: {error}", route.url));
                continue;
            }
            if let Some(cache) = &self.cache {
                if let Err(error) = cache.put(&chunk.id, &stored) {
                    tracing::warn!(%error, chunk = %id_hex, "could not write the chunk cache");
                }
            }
            match chunk::open_checked(chunk, stored) {
                Ok(plain) => return Ok(Arc::new(plain)),
                Err(error) => failures.push(format!("{}: {error}", route.url)),
            }
        }
        if failures.is_empty() {
            failures.push("no store route covers it".into());
        }
        let message = format!("chunk {id_hex}: {}", failures.join("; "));
        tracing::error!("{message}");
        Err(message)
    }
}

impl ChunkSource for StoreSource {
    fn fetch(&self, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>, String> {
        self.inner.fetch(chunk)
    }

    fn is_local(&self, chunk: &ChunkRef) -> bool {
        lock(&self.inner.memory).chunks.contains_key(&chunk.id)
            || self
                .inner
                .cache
                .as_ref()
                .is_some_and(|cache| cache.contains(&chunk.id))
    }

    fn fetch_local(&self, chunk: &ChunkRef) -> Option<Arc<Vec<u8>>> {
        if let Some(plain) = self.inner.remembered(&chunk.id) {
            return Some(plain);
        }
        let cache = self.inner.cache.as_ref()?;
        let stored = cache.get_unverified(&chunk.id)?;
        let opened =
            chunk::check_stored(chunk, &stored).and_then(|()| chunk::open_checked(chunk, stored));
        match opened {
            Ok(plain) => Some(Arc::new(plain)),
            Err(error) => {
                tracing::error!(%error, "cached chunk does not open");
                cache.discard(&chunk.id);
                None
            }
        }
    }

    fn prefetch(&self, chunks: &[ChunkRef]) {
        for chunk in chunks {
            if lock(&self.inner.memory).chunks.contains_key(&chunk.id)
                || lock(&self.inner.flights).contains_key(&chunk.id)
            {
                continue;
            }
            if self.inner.prefetching.fetch_add(1, Ordering::AcqRel) >= PREFETCH_IN_FLIGHT_MAX {
                self.inner.prefetching.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            let inner = self.inner.clone();
            let chunk = *chunk;
            let spawned = std::thread::Builder::new()
                .name("flist-readahead".into())
                .spawn(move || {
                    let _ = inner.fetch(&chunk);
                    inner.prefetching.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                self.inner.prefetching.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_cover() {
        let low = Route::parse("00-7f=zdb://h1:9900/ns").unwrap();
        let all = Route::parse("dir:///srv/store").unwrap();
        assert_eq!(
            (low.first, low.last, low.url.as_str()),
            (0, 0x7f, "zdb://h1:9900/ns")
        );
        assert!(low.covers(&[0x7f; 32]) && !low.covers(&[0x80; 32]));
        assert_eq!(all.to_tag(), "00-ff=dir:///srv/store");
        assert!(Route::parse("80-7f=dir:///x").is_err());
        assert!(Route::parse("nonsense").is_err());
        assert!(!routes_cover_all(std::slice::from_ref(&low)));
        assert!(routes_cover_all(&[
            low,
            Route::parse("80-ff=dir:///x").unwrap()
        ]));
    }

    #[test]
    fn passwords_are_stripped() {
        assert_eq!(
            strip_password("zdb://user:secret@host:9900/ns"),
            "zdb://user@host:9900/ns"
        );
        assert_eq!(strip_password("zdb://host:9900/ns"), "zdb://host:9900/ns");
        assert_eq!(strip_password("dir:///a:b@c"), "dir:///a:b@c");
    }
}
