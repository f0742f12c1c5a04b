//! zstor: objects over many backends. Put, get, list, delete, check, repair, status.
//!
//! Owns placement (which backend holds which shard), write thresholds, metadata replication
//! and the repair queue. Talks to backends only through [`ChunkStore`], so tests run the
//! same code over local folders with injected faults, and production over zdb.
//!
//! Metadata (head and page records) is written to every backend: any one intact copy is
//! enough to read an object, so it survives the same m failures as the data. The newest
//! head (by generation) wins, so a backend that missed an overwrite or a delete cannot
//! bring an old version back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{
    ChunkCodec, ChunkHash, ChunkPlace, CodecError, DecodedChunk, EncodedChunk, ReedSolomon,
    RsCodecId, Scratch, IN_PLACE_HEADROOM_BYTES,
};
use crate::config::{backend_address, Config, ConfigError};
use crate::meta::{self, ChunkEntry, MetaCodec, MetaError, ObjectHead, Page, CHUNKS_PER_PAGE};
use crate::queue::RepairQueue;
use crate::store::{open_store, ChunkStore, StoreError};

/// Chunks being encoded, written or read at once; bounds memory to about this many chunks
/// (times 1.5 for parity).
pub const CHUNKS_IN_FLIGHT: usize = 4;
/// Chunks one get fetches and decodes ahead of the one it is writing; bounds its memory to
/// about this many chunks (each: the shard frames, the gathered chunk, a spare buffer).
pub const GET_CHUNKS_IN_FLIGHT: usize = 8;
/// How long a chunk's first k shard reads may take before every other shard of the chunk is
/// read too and the first k that verify are used (and how long a head read waits for every
/// backend before a quorum of answers will do): a slow or hung backend delays a get by
/// about this much, not by [`BACKEND_OP_TIMEOUT_MS`].
pub const READ_HEDGE_AFTER_MS: u64 = 500;
/// How long one backend operation may take before the backend counts as failed.
pub const BACKEND_OP_TIMEOUT_MS: u64 = 30_000;
/// Most object names `list` returns.
pub const LIST_NAMES_MAX: usize = 1_000_000;
/// Objects whose metadata is read at once by `list`, `check` and `repair`.
const OBJECTS_IN_FLIGHT: usize = 8;

/// Errors of zstor operations. Messages name the backends involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZstorError {
    /// The config is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A backend could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Bad object name.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// No object by that name.
    #[error("no object named {0:?}")]
    NotFound(String),
    /// Too few shards of a chunk could be stored; nothing was kept.
    #[error("write failed: chunk {chunk} stored on {stored} backends, {needed} needed; failed: {failed}")]
    WriteFailed {
        /// Chunk index.
        chunk: u64,
        /// Shards stored.
        stored: usize,
        /// Threshold.
        needed: usize,
        /// Backends that failed, with reasons.
        failed: String,
    },
    /// Too few metadata copies could be stored; nothing was kept.
    #[error(
        "write failed: metadata stored on {stored} backends, {needed} needed; failed: {failed}"
    )]
    MetadataWriteFailed {
        /// Copies stored.
        stored: usize,
        /// Copies needed.
        needed: usize,
        /// Backends that failed, with reasons.
        failed: String,
    },
    /// Fewer than k intact shards of a chunk could be read.
    #[error("read failed: chunk {chunk} has {available} intact shards, {needed} needed; unusable: {failed}")]
    ReadFailed {
        /// Chunk index.
        chunk: u64,
        /// Intact shards found.
        available: usize,
        /// k.
        needed: usize,
        /// Backends that failed or returned bad shards, with reasons.
        failed: String,
    },
    /// No intact copy of an object's metadata could be read.
    #[error("metadata of {name:?} unavailable: {failed}")]
    MetadataUnavailable {
        /// Object name.
        name: String,
        /// Backends that failed, with reasons.
        failed: String,
    },
    /// Shards verified but the chunk did not decode (wrong key, forged shards).
    #[error("chunk {chunk} of {name:?}: {source}")]
    Codec {
        /// Object name.
        name: String,
        /// Chunk index.
        chunk: u64,
        /// What failed.
        #[source]
        source: CodecError,
    },
    /// Reading the input or writing the output failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// One backend as zstor uses it.
#[derive(Debug, Clone)]
pub struct Backend {
    /// URL without password: how metadata names it.
    pub address: String,
    /// Failure group.
    pub group: Option<String>,
    /// The store.
    pub store: Arc<dyn ChunkStore>,
}

/// Result of a put.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutReport {
    /// Object name.
    pub name: String,
    /// Bytes stored.
    pub size: u64,
    /// Chunks.
    pub chunks: u64,
    /// blake3 of the content, hex.
    pub blake3: String,
    /// Chunks stored with fewer than k+m shards (queued for repair).
    pub degraded_chunks: u64,
    /// Backends that failed during the put, with reasons.
    pub failed_backends: Vec<String>,
}

/// Result of a get.
#[derive(Debug, Clone, Serialize)]
pub struct GetReport {
    /// Object name.
    pub name: String,
    /// Bytes read.
    pub size: u64,
    /// Shards that were missing or corrupt on the way (object queued for repair).
    pub bad_shards: u64,
}

/// An object as `list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Chunks.
    pub chunks: u64,
    /// k.
    pub data_shards: u8,
    /// m.
    pub parity_shards: u8,
    /// blake3 of the content, hex.
    pub blake3: String,
    /// Write time, nanoseconds since the epoch.
    pub generation: u64,
}

/// A shard that is not as it should be.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardProblem {
    /// Chunk index.
    pub chunk: u64,
    /// Shard index.
    pub shard: u8,
    /// Backend address.
    pub backend: String,
    /// `missing`, `corrupt`, `unreachable` or `removed` (backend no longer configured).
    pub problem: String,
}

/// Result of checking one object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectCheck {
    /// Name.
    pub name: String,
    /// Chunks.
    pub chunks: u64,
    /// Shards present and intact.
    pub shards_ok: u64,
    /// Shards not.
    pub problems: Vec<ShardProblem>,
    /// Backends without an intact copy of the metadata.
    pub metadata_missing_on: Vec<String>,
    /// Chunks with fewer than k intact shards: data lost unless a backend comes back.
    pub chunks_unreadable: u64,
}

impl ObjectCheck {
    /// Whether every shard and metadata copy is in place.
    pub fn healthy(&self) -> bool {
        self.problems.is_empty() && self.metadata_missing_on.is_empty()
    }
}

/// Result of repairing one object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectRepair {
    /// Name.
    pub name: String,
    /// Shards rebuilt and written.
    pub shards_rebuilt: u64,
    /// Shards that could not be rebuilt or written, with reasons.
    pub failures: Vec<String>,
    /// Whether the metadata was rewritten (moved shards, missing copies).
    pub metadata_rewritten: bool,
}

/// Health of one backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Address.
    pub backend: String,
    /// Failure group.
    pub group: Option<String>,
    /// Whether it answered.
    pub reachable: bool,
    /// Why not.
    pub error: Option<String>,
    /// Values stored, when known.
    pub entries: Option<u64>,
    /// Bytes used, when known.
    pub used_bytes: Option<u64>,
    /// Bytes free, when known.
    pub free_bytes: Option<u64>,
}

/// Buffers reused from one chunk to the next (plaintext chunks, sealed chunks, frames), so
/// a large put does not fault in fresh pages for every chunk. Bounded: beyond
/// [`POOLED_BUFFERS_MAX`] of a kind, returned buffers are freed.
#[derive(Debug, Default)]
struct BufferPool {
    plain: std::sync::Mutex<Vec<Vec<u8>>>,
    sealed: std::sync::Mutex<Vec<Vec<u8>>>,
    frames: std::sync::Mutex<Vec<Vec<u8>>>,
    /// Buffers chunks are gathered, decrypted and decompressed in by gets.
    read: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// Room beyond a chunk's bytes in a read buffer: headroom, tag, Reed-Solomon padding, and
/// the few bytes `read_to_end` wants free before it sees the end of a chunk.
const CHUNK_SLACK_BYTES: usize = 64 * 1024;

/// Most buffers of one kind a pool keeps (frames: this many per shard of a chunk).
const POOLED_BUFFERS_MAX: usize = CHUNKS_IN_FLIGHT + 2;

/// Most spare read buffers a pool keeps: a get in full flight uses about one per chunk.
const READ_BUFFERS_MAX: usize = GET_CHUNKS_IN_FLIGHT + 2;

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BufferPool {
    /// A buffer holding [`IN_PLACE_HEADROOM_BYTES`] of headroom, with room for a chunk of
    /// `chunk_bytes` and what sealing adds, so neither reading nor sealing reallocates.
    fn take_plain(&self, chunk_bytes: usize) -> Vec<u8> {
        let mut buffer = lock(&self.plain).pop().unwrap_or_default();
        buffer.clear();
        buffer.reserve(chunk_bytes + CHUNK_SLACK_BYTES);
        buffer.resize(IN_PLACE_HEADROOM_BYTES, 0);
        buffer
    }

    fn put_plain(&self, buffer: Vec<u8>) {
        let mut plain = lock(&self.plain);
        if plain.len() < POOLED_BUFFERS_MAX {
            plain.push(buffer);
        }
    }

    /// A buffer for reading a chunk into, reused when one is spare (empty otherwise: it
    /// grows to what the chunk needs).
    fn take_read(&self) -> Vec<u8> {
        lock(&self.read).pop().unwrap_or_default()
    }

    fn put_read(&self, buffer: Vec<u8>) {
        let mut read = lock(&self.read);
        if read.len() < READ_BUFFERS_MAX && buffer.capacity() > 0 {
            read.push(buffer);
        }
    }

    fn take_scratch(&self, frame_count: usize) -> Scratch {
        let sealed = lock(&self.sealed).pop().unwrap_or_default();
        let mut frames = lock(&self.frames);
        let keep = frames.len().saturating_sub(frame_count);
        Scratch {
            sealed,
            frames: frames.split_off(keep),
        }
    }

    fn put_scratch(&self, scratch: Scratch, frame_count: usize) {
        {
            let mut sealed = lock(&self.sealed);
            if sealed.len() < POOLED_BUFFERS_MAX {
                sealed.push(scratch.sealed);
            }
        }
        self.put_frames(scratch.frames, frame_count);
    }

    fn put_frames(&self, returned: Vec<Vec<u8>>, frame_count: usize) {
        let mut frames = lock(&self.frames);
        let room = (POOLED_BUFFERS_MAX * frame_count).saturating_sub(frames.len());
        frames.extend(returned.into_iter().take(room));
    }
}

struct ShardFetch {
    index: usize,
    result: Result<Option<Vec<u8>>, StoreError>,
}

/// Tasks whose results are taken in the order they were started; the ones still running
/// are aborted when this is dropped.
struct OrderedTasks<T>(std::collections::VecDeque<tokio::task::JoinHandle<T>>);

impl<T> Drop for OrderedTasks<T> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// What the chunk readers of one get share.
struct ObjectReader {
    head: ObjectHead,
    codec: Arc<ChunkCodec>,
    /// The object's backends (by index in `head.backends`), `None` when no longer configured.
    stores: Vec<Option<Backend>>,
    buffers: Arc<BufferPool>,
    /// Backends (by index in `head.backends`) that failed, returned a bad shard or were still
    /// busy at the hedge bound during this get: later chunks read them last.
    avoided: Vec<std::sync::atomic::AtomicBool>,
}

impl ObjectReader {
    fn avoid(&self, backend: usize) {
        if let Some(flag) = self.avoided.get(backend) {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn is_avoided(&self, backend: usize) -> bool {
        self.avoided
            .get(backend)
            .is_some_and(|flag| flag.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Fetches one chunk's shards and decodes it; returns the plaintext and how many shards
    /// were bad.
    ///
    /// k shards are read at once, data shards of backends not avoided first (no
    /// Reed-Solomon needed then), one more for each that fails or does not verify. Shards
    /// not in after [`READ_HEDGE_AFTER_MS`] no longer hold the chunk up: every remaining
    /// shard is read too, and the first k that verify are used. Decoding runs on the
    /// blocking pool, in buffers from the pool.
    async fn read_chunk(
        &self,
        chunk: u64,
        entry: &ChunkEntry,
    ) -> Result<(DecodedChunk, usize), ZstorError> {
        let head = &self.head;
        let data_shards = head.data_shards as usize;
        let total = data_shards + head.parity_shards as usize;
        if entry.placement.len() != total
            || entry
                .placement
                .iter()
                .any(|&backend| backend as usize >= head.backends.len())
        {
            return Err(ZstorError::MetadataUnavailable {
                name: display_name(&head.name),
                failed: format!("chunk {chunk} names backends the object does not have"),
            });
        }
        let backend_of = |index: usize| entry.placement[index] as usize;
        let fetch = |index: usize| {
            let backend = self.stores[backend_of(index)].clone();
            let key = meta::shard_key(&head.object_id, chunk, index as u8);
            let address = head.backends[backend_of(index)].clone();
            async move {
                let result = match &backend {
                    Some(backend) => timed(&backend.store, backend.store.get(&key)).await,
                    None => Err(StoreError::Backend {
                        store: address,
                        reason: "no longer in the config".into(),
                    }),
                };
                ShardFetch { index, result }
            }
        };
        // Stable sort: data shards before parity, avoided backends last.
        let mut order: Vec<usize> = (0..total).collect();
        order.sort_by_key(|&index| self.is_avoided(backend_of(index)));
        let mut order = order.into_iter();
        let mut running: FuturesUnordered<_> =
            order.by_ref().take(data_shards).map(fetch).collect();
        let mut answered = vec![false; total];
        let hedge = tokio::time::sleep(Duration::from_millis(READ_HEDGE_AFTER_MS));
        tokio::pin!(hedge);
        let mut hedged = false;
        let mut frames: Vec<Option<Vec<u8>>> = vec![None; total];
        let mut intact = 0;
        let mut failures = Vec::new();
        while intact < data_shards {
            tokio::select! {
                fetched = running.next() => {
                    let Some(ShardFetch { index, result }) = fetched else {
                        break;
                    };
                    answered[index] = true;
                    let address = &head.backends[backend_of(index)];
                    let failure = match result {
                        Ok(Some(frame)) => {
                            match self.codec.verify_shard(&entry.info, index, &frame) {
                                Ok(_) => {
                                    frames[index] = Some(frame);
                                    intact += 1;
                                    None
                                }
                                Err(error) => Some(format!("{address}: shard {index}: {error}")),
                            }
                        }
                        Ok(None) => Some(format!("{address}: shard {index} missing")),
                        Err(error) => Some(describe(address, &error)),
                    };
                    if let Some(failure) = failure {
                        self.avoid(backend_of(index));
                        failures.push(failure);
                        if intact + running.len() < data_shards {
                            running.extend(order.next().map(fetch));
                        }
                    }
                }
                () = &mut hedge, if !hedged => {
                    hedged = true;
                    // Started (no longer in `order`) and not answered: slow.
                    for (index, _) in answered.iter().enumerate().filter(|(_, answered)| !**answered) {
                        if !order.as_slice().contains(&index) {
                            self.avoid(backend_of(index));
                        }
                    }
                    running.extend(order.by_ref().map(fetch));
                }
            }
        }
        // Reads still running are dropped: the zdb store finishes each in its own task, so
        // its connection stays in step.
        drop(running);
        if intact < data_shards {
            return Err(ZstorError::ReadFailed {
                chunk,
                available: intact,
                needed: data_shards,
                failed: join_failures(&failures),
            });
        }
        let hashing = chunk_hashing(head, chunk).map_err(|source| ZstorError::Codec {
            name: display_name(&head.name),
            chunk,
            source,
        })?;
        let place = ChunkPlace {
            object_id: head.object_id,
            chunk_index: chunk,
        };
        let codec = self.codec.clone();
        let buffers = self.buffers.clone();
        let info = entry.info.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            let (sealed, spare) = (buffers.take_read(), buffers.take_read());
            let (decoded, unused) =
                codec.decode_verified(place, &info, &frames, hashing, sealed, spare)?;
            buffers.put_read(unused);
            Ok(decoded)
        })
        .await
        .map_err(|e| ZstorError::Io {
            context: "chunk decoder".into(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(|source| ZstorError::Codec {
            name: display_name(&head.name),
            chunk,
            source,
        })?;
        Ok((decoded, failures.len()))
    }
}

/// A zstor client over a set of backends.
#[derive(Debug)]
pub struct Zstor {
    config: Config,
    key: [u8; 32],
    codec: Arc<ChunkCodec>,
    meta: MetaCodec,
    backends: Vec<Backend>,
    queue: RepairQueue,
    buffers: Arc<BufferPool>,
}

async fn timed<T>(
    store: &Arc<dyn ChunkStore>,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(Duration::from_millis(BACKEND_OP_TIMEOUT_MS), work).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Backend {
            store: store.url(),
            reason: format!("no answer within {BACKEND_OP_TIMEOUT_MS} ms"),
        }),
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0)
}

fn display_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// "address: error", without repeating the address when the error already names it.
fn describe(address: &str, error: &impl std::fmt::Display) -> String {
    let text = error.to_string();
    if text.contains(address) {
        text
    } else {
        format!("{address}: {text}")
    }
}

fn join_failures(failures: &[String]) -> String {
    if failures.is_empty() {
        "none".into()
    } else {
        failures.join("; ")
    }
}

/// Orders backends so consecutive ones are in different failure groups where possible:
/// round-robin over the groups, in config order.
fn interleave_groups(backends: Vec<Backend>) -> Vec<Backend> {
    let mut groups: Vec<(Option<String>, Vec<Backend>)> = Vec::new();
    for backend in backends {
        match groups.iter_mut().find(|(group, _)| {
            *group == backend.group || backend.group.is_none() && group.is_none()
        }) {
            Some((_, members)) if backend.group.is_some() => members.push(backend),
            _ => groups.push((backend.group.clone(), vec![backend])),
        }
    }
    let mut queues: Vec<std::collections::VecDeque<Backend>> = groups
        .into_iter()
        .map(|(_, members)| members.into())
        .collect();
    let mut ordered = Vec::new();
    while queues.iter().any(|queue| !queue.is_empty()) {
        for queue in &mut queues {
            if let Some(backend) = queue.pop_front() {
                ordered.push(backend);
            }
        }
    }
    ordered
}

impl Zstor {
    /// Opens the backends a config names (connections are made lazily).
    pub fn open(config: Config) -> Result<Self, ZstorError> {
        config.validate()?;
        let mut backends = Vec::with_capacity(config.backends.len());
        for backend in &config.backends {
            backends.push(Backend {
                address: backend_address(&backend.url),
                group: backend.group.clone(),
                store: open_store(&backend.url)?,
            });
        }
        Self::with_backends(config, backends)
    }

    /// A client over stores given by the caller (tests wrap them to inject faults). The
    /// backends must be listed in the same order as in the config.
    pub fn with_backends(config: Config, backends: Vec<Backend>) -> Result<Self, ZstorError> {
        config.validate()?;
        let key = config.key()?;
        let reed_solomon = ReedSolomon::new(
            RsCodecId::from_name(&config.reed_solomon)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?,
            config.data_shards,
            config.parity_shards,
        )
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let codec = Arc::new(ChunkCodec::new(
            &key,
            reed_solomon,
            config.compression_level,
        ));
        let queue = RepairQueue::new(&config.state_dir());
        Ok(Zstor {
            meta: MetaCodec::new(&key),
            key,
            codec,
            backends: interleave_groups(backends),
            queue,
            buffers: Arc::default(),
            config,
        })
    }

    /// The config in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The repair queue.
    pub fn repair_queue(&self) -> &RepairQueue {
        &self.queue
    }

    fn metadata_copies_needed(&self) -> usize {
        self.config
            .write_threshold()
            .max(self.config.parity_shards + 1)
            .min(self.backends.len())
    }

    /// The store of the backend at `index` in the config's list.
    pub fn backend_store(&self, index: usize) -> Option<Arc<dyn ChunkStore>> {
        let url = &self.config.backends.get(index)?.url;
        self.backend_by_address(&backend_address(url))
            .map(|backend| backend.store.clone())
    }

    fn backend_by_address(&self, address: &str) -> Option<&Backend> {
        self.backends
            .iter()
            .find(|backend| backend.address == address)
    }

    fn codec_for(&self, head: &ObjectHead) -> Result<Arc<ChunkCodec>, ZstorError> {
        let reed_solomon = self.codec.reed_solomon();
        if head.codec == reed_solomon.id()
            && head.data_shards as usize == reed_solomon.data_shards()
            && head.parity_shards as usize == reed_solomon.parity_shards()
        {
            return Ok(self.codec.clone());
        }
        let reed_solomon = ReedSolomon::new(
            head.codec,
            head.data_shards as usize,
            head.parity_shards as usize,
        )
        .map_err(|source| ZstorError::Codec {
            name: display_name(&head.name),
            chunk: 0,
            source,
        })?;
        Ok(Arc::new(ChunkCodec::new(
            &self.key,
            reed_solomon,
            self.config.compression_level,
        )))
    }

    fn queue_for_repair(&self, name: &[u8]) {
        if let Err(error) = self.queue.push(name) {
            tracing::warn!(queue = %self.queue.path().display(), %error, "could not queue object for repair");
        }
    }

    // ---------------------------------------------------------------- put

    /// Stores the stream `input` as object `name`, replacing any object of that name once
    /// the new one is safely stored. `progress` is called with bytes stored so far.
    pub async fn put(
        &self,
        name: &[u8],
        mut input: impl AsyncRead + Unpin,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<PutReport, ZstorError> {
        meta::head_key(name)?;
        let previous = match self.read_head(name).await {
            Ok(head) => Some(head),
            Err(ZstorError::NotFound(_)) => None,
            Err(error) => return Err(error),
        };
        let object_id: [u8; 16] = rand::random();
        let generation = now_nanos().max(previous.as_ref().map_or(0, |head| head.generation + 1));
        let chunk_bytes = self.config.chunk_size;
        // With power-of-two chunks the object's blake3 is merged from the chunks' subtree
        // hashes (codec::object_hash): one hashing pass over the data instead of two.
        let tree_hashes = chunk_bytes.is_power_of_two() && chunk_bytes >= blake3::CHUNK_LEN;
        let mut hasher = blake3::Hasher::new();
        let mut first_whole_hash = None;
        let mut stored_bytes = 0u64;
        let mut size = 0u64;
        let mut chunk_count = 0u64;
        let mut entries: Vec<ChunkEntry> = Vec::new();
        let mut degraded_chunks = 0u64;
        let mut failed_backends = BTreeSet::new();
        let mut pending = FuturesOrdered::new();
        let outcome: Result<(), ZstorError> = async {
            loop {
                let mut buffer = self.buffers.take_plain(chunk_bytes);
                let read = (&mut input)
                    .take(chunk_bytes as u64)
                    .read_to_end(&mut buffer)
                    .await
                    .map_err(|source| ZstorError::Io {
                        context: format!("reading the input of {:?}", display_name(name)),
                        source,
                    })?;
                if read > 0 {
                    let hashing = if tree_hashes {
                        ChunkHash::Subtree { offset: size }
                    } else {
                        hasher.update(&buffer[IN_PLACE_HEADROOM_BYTES..]);
                        ChunkHash::Whole
                    };
                    size += read as u64;
                    // Encoding starts now, on a blocking thread, not when the write future
                    // is first polled: reading, hashing and earlier writes overlap it.
                    let encoding = self.start_encode(object_id, chunk_count, buffer, hashing);
                    pending.push_back(self.store_chunk(object_id, chunk_count, encoding));
                    chunk_count += 1;
                }
                while pending.len() >= CHUNKS_IN_FLIGHT
                    || (read < chunk_bytes && !pending.is_empty())
                {
                    if let Some(result) = pending.next().await {
                        let (entry, failures, whole_hash) = result?;
                        if !failures.is_empty() {
                            degraded_chunks += 1;
                            failed_backends.extend(failures);
                        }
                        if entries.is_empty() {
                            first_whole_hash = whole_hash;
                        }
                        stored_bytes += entry.info.plain_bytes as u64;
                        entries.push(entry);
                        progress(stored_bytes);
                    }
                }
                if read < chunk_bytes {
                    return Ok(());
                }
            }
        }
        .await;
        drop(pending);
        let (outcome, content_hash) = match outcome {
            Err(error) => (Err(error), [0; 32]),
            Ok(()) if tree_hashes => {
                // An object of one chunk records that chunk's own blake3, its content hash.
                if let ([entry], Some(whole)) = (&mut entries[..], first_whole_hash) {
                    entry.info.hash = whole;
                }
                let hashes: Vec<[u8; 32]> = entries.iter().map(|entry| entry.info.hash).collect();
                match crate::codec::object_hash(&hashes, chunk_bytes as u64, size) {
                    Ok(hash) => (Ok(()), hash),
                    Err(source) => (
                        Err(ZstorError::Codec {
                            name: display_name(name),
                            chunk: 0,
                            source,
                        }),
                        [0; 32],
                    ),
                }
            }
            Ok(()) => (Ok(()), *hasher.finalize().as_bytes()),
        };
        let head = ObjectHead {
            name: name.to_vec(),
            object_id,
            generation,
            deleted: false,
            tree_hashes,
            size,
            chunk_bytes: chunk_bytes as u32,
            data_shards: self.config.data_shards as u8,
            parity_shards: self.config.parity_shards as u8,
            codec: self.codec.reed_solomon().id(),
            chunk_count,
            page_count: chunk_count.div_ceil(CHUNKS_PER_PAGE as u64) as u32,
            content_hash,
            backends: self
                .backends
                .iter()
                .map(|backend| backend.address.clone())
                .collect(),
        };
        if let Err(error) = outcome {
            self.remove_data(&head, chunk_count).await;
            return Err(error);
        }
        let pages = paginate(entries);
        if let Err(error) = self.write_metadata(&head, &pages).await {
            self.remove_data(&head, chunk_count).await;
            return Err(error);
        }
        if degraded_chunks > 0 {
            self.queue_for_repair(name);
        }
        if let Some(previous) =
            previous.filter(|previous| !previous.deleted && previous.object_id != object_id)
        {
            self.remove_data(&previous, previous.chunk_count).await;
        }
        Ok(PutReport {
            name: display_name(name),
            size,
            chunks: chunk_count,
            blake3: hex::encode(head.content_hash),
            degraded_chunks,
            failed_backends: failed_backends.into_iter().collect(),
        })
    }

    /// Stores `name` from a byte slice.
    pub async fn put_bytes(&self, name: &[u8], data: &[u8]) -> Result<PutReport, ZstorError> {
        self.put(name, data, &|_| {}).await
    }

    fn placement(&self, chunk: u64) -> Vec<usize> {
        let count = self.backends.len();
        let total = self.config.data_shards + self.config.parity_shards;
        (0..total)
            .map(|index| (chunk as usize + index) % count)
            .collect()
    }

    /// Starts encoding one chunk on a blocking thread.
    fn start_encode(
        &self,
        object_id: [u8; 16],
        chunk: u64,
        plain: Vec<u8>,
        hashing: ChunkHash,
    ) -> tokio::task::JoinHandle<Result<EncodedChunk, CodecError>> {
        let codec = self.codec.clone();
        let buffers = self.buffers.clone();
        let place = ChunkPlace {
            object_id,
            chunk_index: chunk,
        };
        let frame_count = self.config.data_shards + self.config.parity_shards;
        tokio::task::spawn_blocking(move || {
            let mut scratch = buffers.take_scratch(frame_count);
            let mut plain = plain;
            let encoded = codec.encode_in_place(place, &mut plain, hashing, &mut scratch);
            buffers.put_plain(plain);
            buffers.put_scratch(scratch, frame_count);
            encoded
        })
    }

    /// Waits for one chunk's encoding and writes its shards; returns its entry, the failed
    /// writes and the chunk's whole blake3 when it was hashed as the first subtree.
    async fn store_chunk(
        &self,
        object_id: [u8; 16],
        chunk: u64,
        encoding: tokio::task::JoinHandle<Result<EncodedChunk, CodecError>>,
    ) -> Result<(ChunkEntry, Vec<String>, Option<[u8; 32]>), ZstorError> {
        let encoded = encoding
            .await
            .map_err(|e| ZstorError::Io {
                context: "chunk encoder".into(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|source| ZstorError::Codec {
                name: String::new(),
                chunk,
                source,
            })?;
        let placement = self.placement(chunk);
        let writes = encoded.shards.iter().enumerate().map(|(index, frame)| {
            let backend = &self.backends[placement[index]];
            let key = meta::shard_key(&object_id, chunk, index as u8);
            async move {
                timed(&backend.store, backend.store.put(&key, frame))
                    .await
                    .map_err(|error| describe(&backend.address, &error))
            }
        });
        let results = futures::future::join_all(writes).await;
        let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        let frame_count = encoded.shards.len();
        self.buffers.put_frames(encoded.shards, frame_count);
        let stored = placement.len() - failures.len();
        let needed = self.config.write_threshold();
        if stored < needed {
            return Err(ZstorError::WriteFailed {
                chunk,
                stored,
                needed,
                failed: join_failures(&failures),
            });
        }
        Ok((
            ChunkEntry {
                info: encoded.info,
                placement: placement.iter().map(|&index| index as u16).collect(),
            },
            failures,
            encoded.whole_hash,
        ))
    }

    /// Writes pages then head to every backend; fails below the metadata threshold.
    async fn write_metadata(&self, head: &ObjectHead, pages: &[Page]) -> Result<(), ZstorError> {
        let mut records = Vec::with_capacity(pages.len() + 1);
        for page in pages {
            records.push(self.meta.encode_page(head, page));
        }
        records.push(self.meta.encode_head(head)?);
        let records = &records;
        let writes = self.backends.iter().map(|backend| async move {
            for (key, record) in records {
                timed(&backend.store, backend.store.put(key, record))
                    .await
                    .map_err(|error| describe(&backend.address, &error))?;
            }
            Ok::<(), String>(())
        });
        let results = futures::future::join_all(writes).await;
        let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        let stored = self.backends.len() - failures.len();
        let needed = self.metadata_copies_needed();
        if stored < needed {
            return Err(ZstorError::MetadataWriteFailed {
                stored,
                needed,
                failed: join_failures(&failures),
            });
        }
        Ok(())
    }

    /// Deletes the shards of chunks `0..chunks` and the pages of an object, best effort.
    async fn remove_data(&self, head: &ObjectHead, chunks: u64) {
        let total = (head.data_shards + head.parity_shards) as usize;
        let stores: Vec<Arc<dyn ChunkStore>> = head
            .backends
            .iter()
            .filter_map(|address| {
                self.backend_by_address(address)
                    .map(|backend| backend.store.clone())
            })
            .collect();
        // Shards sit where placement put them, but a repair may have moved some: ask every
        // backend of the table, which is cheap next to the data itself.
        let mut deletions = futures::stream::iter(
            (0..chunks).flat_map(|chunk| (0..total).map(move |index| (chunk, index))),
        )
        .map(|(chunk, index)| {
            let key = meta::shard_key(&head.object_id, chunk, index as u8);
            let stores = stores.clone();
            async move {
                for store in &stores {
                    let _ = timed(store, store.delete(&key)).await;
                }
            }
        })
        .buffer_unordered(CHUNKS_IN_FLIGHT * 4);
        while deletions.next().await.is_some() {}
        for page in 0..head.page_count {
            let key = meta::page_key(&head.object_id, page);
            for backend in &self.backends {
                let _ = timed(&backend.store, backend.store.delete(&key)).await;
            }
        }
    }

    // ---------------------------------------------------------------- metadata reads

    /// The newest head record of `name` (tombstones included).
    async fn read_head_any(&self, name: &[u8]) -> Result<Option<ObjectHead>, ZstorError> {
        let key = meta::head_key(name)?;
        let key = &key;
        let mut reads: FuturesUnordered<_> = self
            .backends
            .iter()
            .map(|backend| async move {
                let result = timed(&backend.store, backend.store.get(key)).await;
                (backend, result)
            })
            .collect();
        // Every stored head is on at least `metadata_copies_needed` backends, so the
        // answers of any `quorum` backends include the newest. Every backend is waited for
        // up to the hedge bound; past it, a quorum of answers is enough.
        let quorum = (self.backends.len() + 1).saturating_sub(self.metadata_copies_needed());
        let bound = tokio::time::sleep(Duration::from_millis(READ_HEDGE_AFTER_MS));
        tokio::pin!(bound);
        let mut bound_passed = false;
        let mut answered = 0;
        let mut newest: Option<ObjectHead> = None;
        let mut failures = Vec::new();
        loop {
            tokio::select! {
                read = reads.next() => {
                    let Some((backend, result)) = read else {
                        break;
                    };
                    match result {
                        Ok(Some(record)) => match self.meta.decode_head(name, &record) {
                            Ok(head) => {
                                answered += 1;
                                if newest
                                    .as_ref()
                                    .is_none_or(|current| head.generation > current.generation)
                                {
                                    newest = Some(head);
                                }
                            }
                            Err(error) => failures.push(describe(&backend.address, &error)),
                        },
                        Ok(None) => answered += 1,
                        Err(error) => failures.push(describe(&backend.address, &error)),
                    }
                }
                () = &mut bound, if !bound_passed => bound_passed = true,
            }
            if bound_passed && answered >= quorum.max(1) {
                break;
            }
        }
        if newest.is_none() && failures.len() > self.config.parity_shards {
            return Err(ZstorError::MetadataUnavailable {
                name: display_name(name),
                failed: join_failures(&failures),
            });
        }
        Ok(newest)
    }

    /// The newest live head record of `name`.
    pub async fn read_head(&self, name: &[u8]) -> Result<ObjectHead, ZstorError> {
        match self.read_head_any(name).await? {
            Some(head) if !head.deleted => Ok(head),
            _ => Err(ZstorError::NotFound(display_name(name))),
        }
    }

    async fn read_page(&self, head: &ObjectHead, index: u32) -> Result<Page, ZstorError> {
        let key = meta::page_key(&head.object_id, index);
        let key = &key;
        let mut reads: FuturesUnordered<_> =
            self.backends
                .iter()
                .map(|backend| async move {
                    (backend, timed(&backend.store, backend.store.get(key)).await)
                })
                .collect();
        let mut failures = Vec::new();
        while let Some((backend, result)) = reads.next().await {
            match result {
                Ok(Some(record)) => match self.meta.decode_page(head, index, &record) {
                    Ok(page) => return Ok(page),
                    Err(error) => failures.push(describe(&backend.address, &error)),
                },
                Ok(None) => failures.push(format!("{}: page {index} missing", backend.address)),
                Err(error) => failures.push(describe(&backend.address, &error)),
            }
        }
        Err(ZstorError::MetadataUnavailable {
            name: display_name(&head.name),
            failed: join_failures(&failures),
        })
    }

    async fn read_entries(&self, head: &ObjectHead) -> Result<Vec<ChunkEntry>, ZstorError> {
        // The count comes from a record: grow page by page, not on its word.
        let mut entries = Vec::with_capacity(head.chunk_count.min(CHUNKS_PER_PAGE as u64) as usize);
        for index in 0..head.page_count {
            entries.extend(self.read_page(head, index).await?.chunks);
        }
        if entries.len() as u64 != head.chunk_count {
            return Err(ZstorError::MetadataUnavailable {
                name: display_name(&head.name),
                failed: "chunk list shorter than the head says".into(),
            });
        }
        Ok(entries)
    }

    // ---------------------------------------------------------------- get

    /// Writes object `name` to `output`. Nothing is written for a chunk that does not
    /// verify; on error the output holds a prefix of the object and the error says why.
    ///
    /// Up to [`GET_CHUNKS_IN_FLIGHT`] chunks are fetched and decoded at once, each in its own
    /// task (shards fetched concurrently, decoded on the blocking pool), while the chunk
    /// before them is written: fetching, decoding and writing overlap, and the output still
    /// gets the chunks in order.
    pub async fn get(
        &self,
        name: &[u8],
        mut output: impl AsyncWrite + Unpin,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<GetReport, ZstorError> {
        let head = self.read_head(name).await?;
        let entries = self.read_entries(&head).await?;
        let reader = Arc::new(ObjectReader {
            codec: self.codec_for(&head)?,
            stores: self.stores_for(&head),
            buffers: self.buffers.clone(),
            avoided: head
                .backends
                .iter()
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            head,
        });
        let head = &reader.head;
        // Aborted when dropped: a failed or cancelled get leaves no fetches running.
        let mut tasks = OrderedTasks(std::collections::VecDeque::new());
        let mut next_chunk = 0usize;
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        let mut bad_shards = 0u64;
        loop {
            while tasks.0.len() < GET_CHUNKS_IN_FLIGHT && next_chunk < entries.len() {
                let reader = reader.clone();
                let entry = entries[next_chunk].clone();
                let chunk = next_chunk as u64;
                tasks.0.push_back(tokio::spawn(async move {
                    reader.read_chunk(chunk, &entry).await
                }));
                next_chunk += 1;
            }
            let Some(task) = tasks.0.pop_front() else {
                break;
            };
            let (decoded, bad) = task.await.map_err(|e| ZstorError::Io {
                context: "chunk reader".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
            bad_shards += bad as u64;
            let plain = decoded.plain();
            if !head.tree_hashes {
                hasher.update(plain);
            }
            output
                .write_all(plain)
                .await
                .map_err(|source| ZstorError::Io {
                    context: format!("writing object {:?}", display_name(name)),
                    source,
                })?;
            written += plain.len() as u64;
            self.buffers.put_read(decoded.buffer);
            progress(written);
        }
        output.flush().await.map_err(|source| ZstorError::Io {
            context: format!("writing object {:?}", display_name(name)),
            source,
        })?;
        // Tree hashes: every chunk matched its recorded subtree hash, so the object is what
        // was stored when those merge into the content hash.
        let content_hash = if head.tree_hashes {
            let hashes: Vec<[u8; 32]> = entries.iter().map(|entry| entry.info.hash).collect();
            crate::codec::object_hash(&hashes, head.chunk_bytes as u64, head.size).map_err(
                |source| ZstorError::Codec {
                    name: display_name(name),
                    chunk: head.chunk_count,
                    source,
                },
            )?
        } else {
            *hasher.finalize().as_bytes()
        };
        if content_hash != head.content_hash || written != head.size {
            return Err(ZstorError::Codec {
                name: display_name(name),
                chunk: head.chunk_count,
                source: CodecError::HashMismatch,
            });
        }
        if bad_shards > 0 {
            self.queue_for_repair(name);
        }
        Ok(GetReport {
            name: display_name(name),
            size: written,
            bad_shards,
        })
    }

    /// Reads object `name` into memory.
    pub async fn get_bytes(&self, name: &[u8]) -> Result<Vec<u8>, ZstorError> {
        let mut output = Vec::new();
        self.get(name, &mut output, &|_| {}).await?;
        Ok(output)
    }

    fn stores_for(&self, head: &ObjectHead) -> Vec<Option<Backend>> {
        head.backends
            .iter()
            .map(|address| self.backend_by_address(address).cloned())
            .collect()
    }

    // ---------------------------------------------------------------- list, delete

    /// Every live object.
    pub async fn list(&self) -> Result<Vec<ObjectInfo>, ZstorError> {
        let lists = self.backends.iter().map(|backend| async move {
            (
                backend,
                timed(
                    &backend.store,
                    backend.store.list(meta::HEAD_PREFIX, LIST_NAMES_MAX),
                )
                .await,
            )
        });
        let mut names = BTreeSet::new();
        let mut failures = Vec::new();
        for (backend, result) in futures::future::join_all(lists).await {
            match result {
                Ok(keys) => names.extend(
                    keys.into_iter()
                        .filter_map(|key| key.strip_prefix(meta::HEAD_PREFIX).map(<[u8]>::to_vec)),
                ),
                Err(error) => failures.push(describe(&backend.address, &error)),
            }
        }
        if failures.len() > self.config.parity_shards {
            return Err(ZstorError::MetadataUnavailable {
                name: "(object list)".into(),
                failed: join_failures(&failures),
            });
        }
        let heads: Vec<Result<Option<ObjectHead>, ZstorError>> = futures::stream::iter(names)
            .map(|name| async move { self.read_head_any(&name).await })
            .buffered(OBJECTS_IN_FLIGHT)
            .collect()
            .await;
        let mut objects = Vec::new();
        for head in heads {
            if let Some(head) = head?.filter(|head| !head.deleted) {
                objects.push(ObjectInfo {
                    name: display_name(&head.name),
                    size: head.size,
                    chunks: head.chunk_count,
                    data_shards: head.data_shards,
                    parity_shards: head.parity_shards,
                    blake3: hex::encode(head.content_hash),
                    generation: head.generation,
                });
            }
        }
        Ok(objects)
    }

    /// Deletes object `name`: a tombstone head goes to every backend first, so a backend
    /// that misses the delete cannot bring the object back; then shards and pages go.
    pub async fn delete(&self, name: &[u8]) -> Result<(), ZstorError> {
        let head = self.read_head(name).await?;
        let tombstone = ObjectHead {
            generation: now_nanos().max(head.generation + 1),
            deleted: true,
            size: 0,
            chunk_count: 0,
            page_count: 0,
            ..head.clone()
        };
        self.write_metadata(&tombstone, &[]).await?;
        self.remove_data(&head, head.chunk_count).await;
        Ok(())
    }

    // ---------------------------------------------------------------- check, repair

    /// Names to check or repair: `name`, or every object.
    async fn names(&self, name: Option<&[u8]>) -> Result<Vec<Vec<u8>>, ZstorError> {
        Ok(match name {
            Some(name) => vec![name.to_vec()],
            None => self
                .list()
                .await?
                .into_iter()
                .map(|object| object.name.into_bytes())
                .collect(),
        })
    }

    /// Reads every shard of one chunk and classifies it. Returns, per shard index, the
    /// verified frame or the problem.
    async fn survey_chunk(
        &self,
        head: &ObjectHead,
        codec: &ChunkCodec,
        stores: &[Option<Backend>],
        chunk: u64,
        entry: &ChunkEntry,
    ) -> Vec<Result<Vec<u8>, &'static str>> {
        let reads = entry
            .placement
            .iter()
            .enumerate()
            .map(|(index, &backend_index)| {
                let backend = stores.get(backend_index as usize).cloned().flatten();
                let key = meta::shard_key(&head.object_id, chunk, index as u8);
                async move {
                    let Some(backend) = backend else {
                        return Err("removed");
                    };
                    match timed(&backend.store, backend.store.get(&key)).await {
                        Ok(Some(frame)) => match codec.verify_shard(&entry.info, index, &frame) {
                            Ok(_) => Ok(frame),
                            Err(_) => Err("corrupt"),
                        },
                        Ok(None) => Err("missing"),
                        Err(StoreError::Corrupt { .. }) => Err("corrupt"),
                        Err(_) => Err("unreachable"),
                    }
                }
            });
        futures::future::join_all(reads).await
    }

    /// Backends without an intact copy of every metadata record of `head`.
    async fn metadata_missing_on(&self, head: &ObjectHead) -> Vec<String> {
        let checks = self.backends.iter().map(|backend| async move {
            let head_key = match meta::head_key(&head.name) {
                Ok(key) => key,
                Err(_) => return Some(backend.address.clone()),
            };
            match timed(&backend.store, backend.store.get(&head_key)).await {
                Ok(Some(record)) => match self.meta.decode_head(&head.name, &record) {
                    Ok(stored) if stored == *head => {}
                    _ => return Some(backend.address.clone()),
                },
                _ => return Some(backend.address.clone()),
            }
            for page in 0..head.page_count {
                let key = meta::page_key(&head.object_id, page);
                match timed(&backend.store, backend.store.get(&key)).await {
                    Ok(Some(record)) if self.meta.decode_page(head, page, &record).is_ok() => {}
                    _ => return Some(backend.address.clone()),
                }
            }
            None
        });
        futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Verifies every shard and metadata copy of `name` (or of every object), reading each
    /// shard once and reconstructing nothing.
    pub async fn check(
        &self,
        name: Option<&[u8]>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<ObjectCheck>, ZstorError> {
        let mut checks = Vec::new();
        for name in self.names(name).await? {
            let head = self.read_head(&name).await?;
            let entries = self.read_entries(&head).await?;
            let codec = self.codec_for(&head)?;
            let stores = self.stores_for(&head);
            let mut check = ObjectCheck {
                name: display_name(&name),
                chunks: head.chunk_count,
                shards_ok: 0,
                problems: Vec::new(),
                metadata_missing_on: self.metadata_missing_on(&head).await,
                chunks_unreadable: 0,
            };
            let mut surveys = FuturesOrdered::new();
            let mut next_chunk = 0usize;
            loop {
                while surveys.len() < CHUNKS_IN_FLIGHT && next_chunk < entries.len() {
                    let entry = &entries[next_chunk];
                    let chunk = next_chunk;
                    let survey = self.survey_chunk(&head, &codec, &stores, chunk as u64, entry);
                    surveys.push_back(async move { (chunk, entry, survey.await) });
                    next_chunk += 1;
                }
                let Some((chunk, entry, survey)) = surveys.next().await else {
                    break;
                };
                let mut intact = 0;
                for (index, result) in survey.into_iter().enumerate() {
                    match result {
                        Ok(_) => intact += 1,
                        Err(problem) => check.problems.push(ShardProblem {
                            chunk: chunk as u64,
                            shard: index as u8,
                            backend: head.backends[entry.placement[index] as usize].clone(),
                            problem: problem.into(),
                        }),
                    }
                }
                check.shards_ok += intact as u64;
                if intact < head.data_shards as usize {
                    check.chunks_unreadable += 1;
                }
                progress(1);
            }
            checks.push(check);
        }
        Ok(checks)
    }

    /// Rebuilds missing and corrupt shards of `name` (or of every object and the repair
    /// queue) onto their backend, or onto another configured backend when theirs is gone
    /// or unreachable, and rewrites metadata copies that are missing or stale.
    pub async fn repair(
        &self,
        name: Option<&[u8]>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<ObjectRepair>, ZstorError> {
        let mut names: BTreeSet<Vec<u8>> = self.names(name).await?.into_iter().collect();
        let queued = self.queue.load().unwrap_or_default();
        if name.is_none() {
            names.extend(queued.iter().cloned());
        }
        let mut reports = Vec::new();
        let mut still_queued: Vec<Vec<u8>> = queued
            .into_iter()
            .filter(|queued| !names.contains(queued))
            .collect();
        for name in names {
            match self.repair_object(&name, progress).await {
                Ok(report) => {
                    if !report.failures.is_empty() {
                        still_queued.push(name.clone());
                    }
                    reports.push(report);
                }
                Err(ZstorError::NotFound(_)) => {}
                Err(error) => {
                    still_queued.push(name.clone());
                    reports.push(ObjectRepair {
                        name: display_name(&name),
                        shards_rebuilt: 0,
                        failures: vec![error.to_string()],
                        metadata_rewritten: false,
                    });
                }
            }
        }
        if let Err(error) = self.queue.replace(&still_queued) {
            tracing::warn!(queue = %self.queue.path().display(), %error, "could not rewrite the repair queue");
        }
        Ok(reports)
    }

    async fn repair_object(
        &self,
        name: &[u8],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<ObjectRepair, ZstorError> {
        let mut head = self.read_head(name).await?;
        let mut entries = self.read_entries(&head).await?;
        let codec = self.codec_for(&head)?;
        let mut report = ObjectRepair {
            name: display_name(name),
            shards_rebuilt: 0,
            failures: Vec::new(),
            metadata_rewritten: false,
        };
        let mut placement_changed = false;
        for (chunk, entry) in entries.iter_mut().enumerate() {
            let chunk = chunk as u64;
            let stores = self.stores_for(&head);
            let survey = self
                .survey_chunk(&head, &codec, &stores, chunk, entry)
                .await;
            let bad: Vec<(usize, &str)> = survey
                .iter()
                .enumerate()
                .filter_map(|(index, result)| {
                    result.as_ref().err().map(|problem| (index, *problem))
                })
                .collect();
            progress(1);
            if bad.is_empty() {
                continue;
            }
            let frames: Vec<Option<Vec<u8>>> = survey.into_iter().map(Result::ok).collect();
            let wanted: Vec<usize> = bad.iter().map(|(index, _)| *index).collect();
            let rebuilt = match codec.rebuild_frames(&entry.info, &frames, &wanted) {
                Ok(rebuilt) => rebuilt,
                Err(error) => {
                    report.failures.push(format!("chunk {chunk}: {error}"));
                    continue;
                }
            };
            let mut used: BTreeSet<String> = entry
                .placement
                .iter()
                .enumerate()
                .filter(|(index, _)| !wanted.contains(index))
                .map(|(_, &backend)| head.backends[backend as usize].clone())
                .collect();
            for ((index, frame), (_, problem)) in rebuilt.into_iter().zip(bad) {
                let original = head.backends[entry.placement[index] as usize].clone();
                let mut candidates: Vec<&Backend> = Vec::new();
                if matches!(problem, "missing" | "corrupt") {
                    if let Some(backend) = self.backend_by_address(&original) {
                        candidates.push(backend);
                    }
                }
                candidates.extend(self.backends.iter().filter(|backend| {
                    !used.contains(&backend.address) && backend.address != original
                }));
                let key = meta::shard_key(&head.object_id, chunk, index as u8);
                let mut stored_on = None;
                let mut errors = Vec::new();
                for backend in candidates {
                    match timed(&backend.store, backend.store.put(&key, &frame)).await {
                        Ok(()) => {
                            stored_on = Some(backend.address.clone());
                            break;
                        }
                        Err(error) => errors.push(describe(&backend.address, &error)),
                    }
                }
                match stored_on {
                    Some(address) => {
                        report.shards_rebuilt += 1;
                        used.insert(address.clone());
                        if address != original {
                            let table_index =
                                match head.backends.iter().position(|known| *known == address) {
                                    Some(position) => position,
                                    None => {
                                        head.backends.push(address);
                                        head.backends.len() - 1
                                    }
                                };
                            entry.placement[index] = table_index as u16;
                            placement_changed = true;
                        }
                    }
                    None => report.failures.push(format!(
                        "chunk {chunk} shard {index}: no backend took it ({})",
                        join_failures(&errors)
                    )),
                }
            }
        }
        let missing_on = self.metadata_missing_on(&head).await;
        if placement_changed || !missing_on.is_empty() {
            if placement_changed {
                head.generation = now_nanos().max(head.generation + 1);
            }
            let pages = paginate(entries);
            self.write_metadata(&head, &pages).await?;
            report.metadata_rewritten = true;
        }
        Ok(report)
    }

    /// Health and usage of every backend.
    pub async fn status(&self) -> Vec<BackendStatus> {
        let probes = self.backends.iter().map(|backend| async move {
            let reachable = timed(&backend.store, backend.store.exists(b"zs:probe")).await;
            let usage = match &reachable {
                Ok(_) => timed(&backend.store, backend.store.usage()).await.ok(),
                Err(_) => None,
            };
            let usage = usage.unwrap_or_default();
            BackendStatus {
                backend: backend.address.clone(),
                group: backend.group.clone(),
                reachable: reachable.is_ok(),
                error: reachable.err().map(|error| error.to_string()),
                entries: usage.entries,
                used_bytes: usage.used_bytes,
                free_bytes: usage.free_bytes,
            }
        });
        let mut statuses = futures::future::join_all(probes).await;
        let order: HashMap<&str, usize> = self
            .config
            .backends
            .iter()
            .enumerate()
            .map(|(index, backend)| (backend.url.as_str(), index))
            .collect();
        let by_address: BTreeMap<String, usize> = self
            .config
            .backends
            .iter()
            .map(|backend| {
                (
                    backend_address(&backend.url),
                    order.get(backend.url.as_str()).copied().unwrap_or(0),
                )
            })
            .collect();
        statuses.sort_by_key(|status| {
            by_address
                .get(&status.backend)
                .copied()
                .unwrap_or(usize::MAX)
        });
        statuses
    }
}

/// How the hash recorded for chunk `chunk` of `head` was computed.
fn chunk_hashing(head: &ObjectHead, chunk: u64) -> Result<ChunkHash, CodecError> {
    if !head.tree_hashes || head.chunk_count == 1 {
        return Ok(ChunkHash::Whole);
    }
    let offset = chunk
        .checked_mul(head.chunk_bytes as u64)
        .ok_or_else(|| CodecError::InvalidParameters(format!("chunk {chunk} is out of range")))?;
    Ok(ChunkHash::Subtree { offset })
}

fn paginate(entries: Vec<ChunkEntry>) -> Vec<Page> {
    let mut pages = Vec::new();
    let mut entries = entries.into_iter().peekable();
    let mut index = 0u32;
    while entries.peek().is_some() {
        pages.push(Page {
            index,
            chunks: entries.by_ref().take(CHUNKS_PER_PAGE).collect(),
        });
        index += 1;
    }
    pages
}

/// zstor as a chunk store: each chunk is an object named by the hex of its id.
#[async_trait::async_trait]
impl ChunkStore for Zstor {
    async fn get(&self, id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        crate::store::check_id(id)?;
        match self.get_bytes(hex::encode(id).as_bytes()).await {
            Ok(data) => Ok(Some(data)),
            Err(ZstorError::NotFound(_)) => Ok(None),
            Err(error) => Err(StoreError::Backend {
                store: ChunkStore::url(self),
                reason: error.to_string(),
            }),
        }
    }

    async fn put(&self, id: &[u8], data: &[u8]) -> Result<(), StoreError> {
        crate::store::check_id(id)?;
        self.put_bytes(hex::encode(id).as_bytes(), data)
            .await
            .map(|_| ())
            .map_err(|error| StoreError::Backend {
                store: ChunkStore::url(self),
                reason: error.to_string(),
            })
    }

    async fn exists(&self, id: &[u8]) -> Result<bool, StoreError> {
        crate::store::check_id(id)?;
        match self.read_head(hex::encode(id).as_bytes()).await {
            Ok(_) => Ok(true),
            Err(ZstorError::NotFound(_)) => Ok(false),
            Err(error) => Err(StoreError::Backend {
                store: ChunkStore::url(self),
                reason: error.to_string(),
            }),
        }
    }

    async fn delete(&self, id: &[u8]) -> Result<bool, StoreError> {
        crate::store::check_id(id)?;
        match Zstor::delete(self, hex::encode(id).as_bytes()).await {
            Ok(()) => Ok(true),
            Err(ZstorError::NotFound(_)) => Ok(false),
            Err(error) => Err(StoreError::Backend {
                store: ChunkStore::url(self),
                reason: error.to_string(),
            }),
        }
    }

    fn url(&self) -> String {
        format!(
            "zstor://({}+{} over {} backends)",
            self.config.data_shards,
            self.config.parity_shards,
            self.backends.len()
        )
    }

    fn is_read_only(&self) -> bool {
        false
    }
}

/// Where `zos stor` looks for its config when `--config` is not given.
pub fn default_config_path() -> PathBuf {
    if let Some(config) = std::env::var_os("XDG_CONFIG_HOME").filter(|value| !value.is_empty()) {
        return PathBuf::from(config).join("zos").join("stor.toml");
    }
    match std::env::var_os("HOME").filter(|value| !value.is_empty()) {
        Some(home) => PathBuf::from(home).join(".config/zos/stor.toml"),
        None => PathBuf::from("/etc/zos/stor.toml"),
    }
}
