//! `engine`: namespaces over the log. Owns the in-memory index, the append path with group
//! commit, durability, recovery and reads. Knows nothing of RESP or clients: callers ask it
//! to set, get, delete and walk keys in a namespace and get plain results back.
//!
//! Write path: a writer encodes its record into the namespace's pending buffer under the
//! namespace lock, updates the index and wakes the flusher thread. The flusher takes every
//! namespace's pending buffer at once and writes them all in one io_uring submission, then
//! (under `--sync`, or when the sync interval is due) fdatasyncs every file it wrote in the
//! next, and publishes the highest write ticket that is now durable. Writers that must wait for
//! durability wait for that ticket. Records not yet on disk are served from the buffers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio::sync::watch;

use crate::cache::{self, CacheBudget, ValueCache};
use crate::log::archive;
use crate::log::index_file::{self, Entry, Index, Key, SnapshotMeta};
use crate::log::record::{
    self, NewRecord, FLAG_TOMBSTONE, HEADER_BYTES, KEY_BYTES_MAX, LINK_BYTES, VALUE_BYTES_MAX,
};
use crate::log::segment::{self, ScanEvent, SEGMENT_HEADER_BYTES};
use crate::sys::{StorageIo, WriteRequest};

/// Default size at which a namespace starts a new segment (0-db's default).
pub const SEGMENT_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
/// Segments are addressed with 32-bit offsets.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;
/// Bytes of records a namespace may hold in memory, not yet written, before writers wait.
pub const PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Pending bytes of a namespace past which a write wakes the flusher, so that a long pipeline
/// (or a caller of the library that does not commit) is written while it goes on, and so that
/// the records of a busy turn of the event loop are sealed (hashed) on the flusher's core
/// while the event loop is still executing the turn's later commands: its commit then finds
/// most of its records written. (At 4 MiB the sealing of a turn began only at its commit, and
/// `redis-benchmark -P 16` SETs ran about 8% slower.)
const FLUSHER_WAKE_BYTES: usize = 64 * 1024;
/// A commit without fdatasync writes its round on the event loop itself when at most this
/// many bytes were appended since the last round (measured: SET -P 1 takes a fifth less CPU
/// than with the hand-off, SET -P 16 the same).
const COMMIT_INLINE_BYTES_MAX: usize = 16 * 1024;
/// Under --sync, a commit writes and fdatasyncs its round on the event loop itself when at
/// most this many bytes were appended since the last round.
const SYNC_INLINE_BYTES_MAX: usize = 256 * 1024;
/// ... and only while the last sync round's fdatasync took at most this long: on a slow disk
/// the event loop would stall every client, readers included, for each sync; the flusher
/// takes those rounds while the event loop goes on serving.
const SYNC_INLINE_MICROS_MAX: u64 = 2_000;
/// First capacity of a pending chunk (the buffer records are encoded into before their
/// write); a record at least this large gets a chunk of its own size.
const PENDING_CHUNK_BYTES: usize = 64 * 1024;
/// A pending chunk grows (by doubling) up to this size; past it a record that does not fit
/// starts a new chunk rather than have the whole buffer copied again.
const PENDING_CHUNK_GROWN_BYTES_MAX: usize = 1024 * 1024;
/// How often the flusher looks for work when nobody wakes it: records appended by callers
/// that never commit reach the files within this, and under `--sync` snapshots are written
/// at this pace.
const FLUSHER_TICK_IDLE: Duration = Duration::from_millis(500);
/// A CPU cache line.
const CACHE_LINE_BYTES: usize = 64;
/// Bytes of a record's head loaded ahead of use (header, key, a small value).
const PREFETCH_RECORD_BYTES: usize = 256;
/// GETs [`Engine::get_many_in_memory`] serves under one acquisition of the lock at most.
pub const GET_RUN_MAX: usize = 64;
/// New segments get ids that are multiples of this; compaction output takes the ids between
/// the last segment it compacts and the next multiple.
pub const SEGMENT_ID_STRIDE: u32 = 1024;
/// Compaction starts by itself when at least this share of a namespace's log is garbage...
pub const COMPACT_GARBAGE_RATIO_DEFAULT: f64 = 0.5;
/// ...and the log is at least this large.
pub const COMPACT_LOG_BYTES_MIN: u64 = 64 * 1024 * 1024;
/// Index entries switched to their compacted copy per lock hold (bounds the pause).
const COMPACT_SWITCH_BATCH: usize = 4096;
/// How often a compaction waiting for another one of the same namespace looks again.
const COMPACT_WAIT_POLL: Duration = Duration::from_millis(10);
/// Damaged records remembered per namespace for INFO and logs (all are counted).
pub const DAMAGE_REPORTS_MAX: usize = 1000;
/// A namespace name is at most this long and uses only `[A-Za-z0-9._-]`.
pub const NAMESPACE_NAME_BYTES_MAX: usize = 128;
/// How often an index snapshot is written while a namespace changes.
pub const SNAPSHOT_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// The namespace every connection starts in.
pub const DEFAULT_NAMESPACE: &str = "default";

const SETTINGS_FILE: &str = "namespace.conf";
const COMPACT_TEMPORARY_EXTENSION: &str = "compacting";
const SNAPSHOT_FILE: &str = "index.zdx";

/// When an acknowledged write is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Reply only once the record is durable (fdatasync shared by the batch).
    Sync,
    /// Records are written to the file as soon as the flusher gets to them and made durable at
    /// least this often.
    Periodic(Duration),
}

/// How keys of a namespace are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Clients choose binary keys of up to 255 bytes.
    User,
    /// The server assigns 64-bit little-endian ids, in order, from 0.
    Seq,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::User => "userkey",
            Mode::Seq => "sequential",
        }
    }
}

/// The configuration of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub index_dir: PathBuf,
    pub segment_bytes_max: u64,
    pub durability: Durability,
    /// The mode of namespaces created without one.
    pub default_mode: Mode,
    pub snapshot_interval: Duration,
    pub pending_bytes_max: usize,
    /// Bytes of recently read values the server keeps in memory, shared equally by the
    /// namespaces (0: none).
    pub cache_bytes_max: usize,
    /// Share of garbage in a namespace's log past which it is compacted by itself (0: never).
    pub compact_garbage_ratio: f64,
}

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>, index_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            index_dir: index_dir.into(),
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            durability: Durability::Periodic(Duration::from_secs(1)),
            default_mode: Mode::User,
            snapshot_interval: SNAPSHOT_INTERVAL_DEFAULT,
            pending_bytes_max: PENDING_BYTES_MAX,
            cache_bytes_max: cache::CACHE_BYTES_DEFAULT,
            compact_garbage_ratio: COMPACT_GARBAGE_RATIO_DEFAULT,
        }
    }
}

/// Everything that can go wrong in the engine, phrased for the client that asked.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("key too long ({0} bytes, at most 255)")]
    KeyTooLong(usize),
    #[error("value too large ({0} bytes, at most 8 MiB)")]
    ValueTooLarge(usize),
    #[error("namespace already exists")]
    NamespaceExists,
    #[error("namespace not found")]
    NamespaceNotFound,
    #[error("invalid namespace name (1 to 128 characters of A-Z a-z 0-9 . _ -)")]
    InvalidNamespaceName,
    #[error("namespace was deleted")]
    NamespaceDeleted,
    #[error("no space left on this namespace (maxsize {0} bytes)")]
    NamespaceFull(u64),
    #[error("namespace is in worm mode: existing keys cannot change")]
    Worm,
    #[error("namespace is locked (read-only)")]
    Locked,
    #[error("namespace is frozen")]
    Frozen,
    #[error("key not found")]
    NotFound,
    #[error(
        "invalid key: in sequential mode a key is an existing 8-byte id, or empty for a new one"
    )]
    InvalidSeqKey,
    #[error("invalid cursor")]
    InvalidCursor,
    #[error("record damaged on disk (segment {segment}, offset {offset}): {detail}")]
    Corrupt {
        segment: u32,
        offset: u64,
        detail: String,
    },
    #[error("storage failed, writes are refused until restart: {0}")]
    Failed(String),
    #[error("mode can only change while the namespace is empty")]
    ModeNotEmpty,
    #[error("namespace settings file is damaged: {0}")]
    BadSettings(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// The settings of a namespace, kept in `namespace.conf` beside its segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub password: Option<String>,
    pub public: bool,
    pub maxsize: u64,
    pub worm: bool,
    pub lock: bool,
    pub freeze: bool,
    pub mode: Mode,
}

impl Settings {
    fn new(mode: Mode) -> Self {
        Self {
            password: None,
            public: true,
            maxsize: 0,
            worm: false,
            lock: false,
            freeze: false,
            mode,
        }
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        let password = self
            .password
            .as_deref()
            .map(hex::encode)
            .unwrap_or_default();
        out.push_str(&format!("password_hex={password}\n"));
        out.push_str(&format!("public={}\n", self.public as u8));
        out.push_str(&format!("maxsize={}\n", self.maxsize));
        out.push_str(&format!("worm={}\n", self.worm as u8));
        out.push_str(&format!("lock={}\n", self.lock as u8));
        out.push_str(&format!("freeze={}\n", self.freeze as u8));
        out.push_str(&format!("mode={}\n", self.mode.name()));
        let crc = crc32fast::hash(out.as_bytes());
        out.push_str(&format!("crc32={crc:08x}\n"));
        out
    }

    fn decode(text: &str) -> std::result::Result<Self, String> {
        let body_end = text.rfind("crc32=").ok_or("no checksum line")?;
        let (body, crc_line) = text.split_at(body_end);
        let stored = u32::from_str_radix(crc_line.trim().trim_start_matches("crc32="), 16)
            .map_err(|_| "bad checksum line")?;
        if stored != crc32fast::hash(body.as_bytes()) {
            return Err("checksum mismatch".into());
        }
        let mut settings = Settings::new(Mode::User);
        for line in body.lines() {
            let (key, value) = line.split_once('=').ok_or("line without '='")?;
            let flag = || value == "1";
            match key {
                "password_hex" if value.is_empty() => settings.password = None,
                "password_hex" => {
                    let bytes = hex::decode(value).map_err(|_| "bad password field")?;
                    settings.password =
                        Some(String::from_utf8(bytes).map_err(|_| "bad password field")?);
                }
                "public" => settings.public = flag(),
                "maxsize" => settings.maxsize = value.parse().map_err(|_| "bad maxsize")?,
                "worm" => settings.worm = flag(),
                "lock" => settings.lock = flag(),
                "freeze" => settings.freeze = flag(),
                "mode" => {
                    settings.mode = if value == "sequential" {
                        Mode::Seq
                    } else {
                        Mode::User
                    }
                }
                _ => {} // written by a newer version: ignored
            }
        }
        Ok(settings)
    }
}

/// A damaged record found by a scan or a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: u32,
    pub offset: u64,
    pub length: u64,
    pub key: Option<Vec<u8>>,
    pub detail: String,
}

/// Result of a SET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOutcome {
    /// Stored (under the new id `assigned_id` for a seq-mode append, else under the key
    /// given); durable once the engine's durable ticket reaches `ticket`.
    Stored {
        assigned_id: Option<u64>,
        ticket: u64,
    },
    /// The key already holds exactly this value: nothing was written.
    Unchanged,
}

/// What `Engine::store_locked` did.
enum Stored {
    Done(SetOutcome),
    /// Nothing yet: the key holds this entry, a value of the same length and crc.
    SameShape(Entry),
}

/// One key as SCAN reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanItem {
    pub key: Vec<u8>,
    pub value_len: u32,
    pub timestamp_s: u32,
}

/// One step back in a key's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// Cursor for the previous version, if any.
    pub previous: Option<Vec<u8>>,
    pub timestamp_s: u32,
    /// The value at that time; `None` for a deletion.
    pub value: Option<Vec<u8>>,
}

/// What a compaction did.
#[derive(Debug, Clone, Default)]
pub struct CompactionReport {
    pub segments_before: usize,
    pub segments_after: usize,
    pub log_bytes_before: u64,
    pub log_bytes_after: u64,
    pub records_carried: u64,
    pub records_dropped: u64,
    /// The longest time the namespace lock was held by the compaction (writers wait that long).
    pub pause_max_us: u64,
    pub elapsed_ms: u64,
}

/// The result of VERIFY when something does not check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    pub segment: Option<u32>,
    pub offset: Option<u64>,
    pub sequence: Option<u64>,
    pub detail: String,
}

impl std::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.segment, self.offset, self.sequence) {
            (Some(segment), Some(offset), _) => write!(
                f,
                "record at segment {segment}, offset {offset}: {}",
                self.detail
            ),
            (_, _, Some(sequence)) => write!(f, "record {sequence}: {}", self.detail),
            _ => f.write_str(&self.detail),
        }
    }
}

/// Statistics of a namespace for NSINFO and INFO.
#[derive(Debug, Clone)]
pub struct NamespaceInfo {
    pub name: String,
    pub entries: u64,
    pub data_bytes: u64,
    pub log_bytes: u64,
    pub segments: usize,
    pub index_bytes_estimate: u64,
    pub damaged: u64,
    pub record_count: u64,
    pub chain_head: [u8; LINK_BYTES],
    pub settings: Settings,
    pub last_compaction: Option<CompactionReport>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Checks a namespace name.
pub fn valid_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAMESPACE_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Values at least this large are sealed by the writer itself (see `Engine::append`).
const SEAL_INLINE_FROM_BYTES: usize = 1024;

/// Bytes appended but not yet on disk, for one segment. Records are appended unsealed (no
/// chain link, no checksums: see `record::encode_unsealed`) and sealed later in log order,
/// normally by the flusher on its own thread; `data[..sealed]` is sealed.
#[derive(Debug)]
struct PendingChunk {
    segment: u32,
    offset: u64,
    data: Vec<u8>,
    sealed: usize,
}

impl PendingChunk {
    /// Seals every record of the chunk not sealed yet, extending the chain from `head`.
    fn seal(&mut self, head: &mut [u8; LINK_BYTES]) {
        while self.sealed < self.data.len() {
            let (link, length) = record::seal(&mut self.data[self.sealed..], head);
            *head = link;
            self.sealed += length;
        }
    }

    fn holds(&self, location: Location) -> bool {
        location.segment == self.segment
            && location.offset >= self.offset
            && location.offset < self.offset + self.data.len() as u64
    }
}

/// What the flusher took from a namespace and is writing. `data` is `None` while the flusher
/// seals it (outside the namespace lock); readers of those bytes wait on `Namespace::sealed`.
#[derive(Debug)]
struct InflightChunk {
    segment: u32,
    offset: u64,
    length: usize,
    data: Option<Arc<Vec<u8>>>,
}

/// One buffer the flusher writes: namespace, file, offset, bytes.
type FlushWrite = (Arc<Namespace>, Arc<File>, u64, Arc<Vec<u8>>);

/// The mutable state of a namespace, behind its lock.
#[derive(Debug)]
struct NsState {
    settings: Settings,
    index: Index,
    cache: ValueCache,
    files: BTreeMap<u32, Arc<File>>,
    active_segment: u32,
    /// End of the active segment, counting records still pending.
    append_offset: u64,
    pending: Vec<PendingChunk>,
    inflight: Vec<InflightChunk>,
    pending_bytes: usize,
    /// Link of the last sealed record (every record before `pending` is sealed, and so is
    /// `pending`'s sealed prefix). Use `Engine::sealed_state` for the head of everything.
    chain_head: [u8; LINK_BYTES],
    /// The flusher is sealing records it took from `pending`: `chain_head` moves on when it
    /// is done.
    sealing: bool,
    next_sequence: u64,
    next_id: u64,
    record_count: u64,
    live_bytes: u64,
    log_bytes: u64,
    damaged: Vec<Damage>,
    damaged_total: u64,
    changed_since_snapshot: bool,
    snapshot_due: bool,
    compacting: bool,
    last_compaction: Option<CompactionReport>,
    last_snapshot: Instant,
    deleted: bool,
}

/// A namespace: a directory of segments, its settings and its index.
#[derive(Debug)]
pub struct Namespace {
    name: String,
    data_dir: PathBuf,
    index_dir: PathBuf,
    state: Mutex<NsState>,
    /// Signalled (with `state`) when the flusher has sealed what it took.
    sealed: Condvar,
    /// Held while the index snapshot is written: the flusher and compaction both write it.
    snapshot_writer: Mutex<()>,
}

/// Write and durability progress, published by each write or sync round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Every write with a ticket at or below this is in its file (a crash of the process
    /// cannot lose it; a crash of the machine can, until it is durable).
    pub written_ticket: u64,
    /// Every write with a ticket at or below this is durable.
    pub durable_ticket: u64,
    /// Flush rounds completed (pending memory was released).
    pub rounds: u64,
    /// The storage failed: nothing more becomes durable.
    pub failed: bool,
}

/// What write and sync rounds share; its lock keeps rounds from overlapping.
#[derive(Debug, Default)]
struct RoundState {
    /// Files written since their last fdatasync.
    dirty_files: Vec<Arc<File>>,
    rounds: u64,
}

#[derive(Debug, Default)]
struct FlushSignal {
    wake: bool,
    /// A commit waits for this round to be durable.
    sync_requested: bool,
    shutdown: bool,
}

/// The engine: all namespaces of one server.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    io: Arc<dyn StorageIo>,
    namespaces: RwLock<BTreeMap<String, Arc<Namespace>>>,
    /// Write rounds started. A write made under its namespace's lock while this reads `e`
    /// has ticket `e + 1`: the round that moves it to `e + 1` takes every namespace's pending
    /// records after moving it, so it covers that write. Reading it costs a write nothing,
    /// where a counter bumped by every write was an atomic read-modify-write, a full memory
    /// barrier on x86, on the hottest path.
    round_epoch: AtomicU64,
    signal: Mutex<FlushSignal>,
    signal_cond: Condvar,
    wake_pending: AtomicBool,
    progress: watch::Sender<Progress>,
    failure: Mutex<Option<String>>,
    /// Set with `failure`, read without a lock on every write.
    failed: AtomicBool,
    flusher: Mutex<Option<JoinHandle<()>>>,
    /// Held by a write or sync round (taken before any namespace lock).
    round: Mutex<RoundState>,
    /// Held through a whole sync round (taken before `round`): from taking the dirty files to
    /// publishing the durable ticket, so that a round never publishes records whose
    /// fdatasync another round is still running.
    sync_gate: Mutex<()>,
    /// How long the last sync round's fdatasync took (microseconds).
    sync_micros_last: AtomicU64,
    /// Bytes appended since the last write round started (all namespaces).
    appended_bytes: AtomicUsize,
    /// One automatic compaction at a time, server-wide.
    compaction_running: Arc<AtomicBool>,
    /// The value cache's server-wide budget.
    cache_budget: Arc<CacheBudget>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a namespace lock is a bug; the state is still structurally valid
    // (every mutation is completed before anything can fail), so keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Engine {
    /// Opens (or creates) the data and index directories, recovers every namespace and starts
    /// the flusher thread.
    pub fn open(config: EngineConfig, io: Arc<dyn StorageIo>) -> Result<Arc<Self>> {
        std::fs::create_dir_all(&config.data_dir)?;
        std::fs::create_dir_all(&config.index_dir)?;
        let (progress, _) = watch::channel(Progress {
            written_ticket: 0,
            durable_ticket: 0,
            rounds: 0,
            failed: false,
        });
        let cache_budget = CacheBudget::new(config.cache_bytes_max);
        let engine = Arc::new(Engine {
            config,
            io,
            namespaces: RwLock::new(BTreeMap::new()),
            round_epoch: AtomicU64::new(0),
            signal: Mutex::new(FlushSignal::default()),
            signal_cond: Condvar::new(),
            wake_pending: AtomicBool::new(false),
            progress,
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            flusher: Mutex::new(None),
            round: Mutex::new(RoundState::default()),
            sync_gate: Mutex::new(()),
            sync_micros_last: AtomicU64::new(0),
            appended_bytes: AtomicUsize::new(0),
            compaction_running: Arc::new(AtomicBool::new(false)),
            cache_budget,
        });
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&engine.config.data_dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                if let Some(name) = entry
                    .file_name()
                    .to_str()
                    .filter(|n| valid_namespace_name(n))
                {
                    names.push(name.to_string());
                }
            }
        }
        {
            let mut namespaces = engine.namespaces.write().unwrap_or_else(|p| p.into_inner());
            for name in names {
                let namespace = engine.load_namespace(&name)?;
                namespaces.insert(name, Arc::new(namespace));
            }
            engine.cache_budget.set_namespaces(namespaces.len());
        }
        if engine.namespace(DEFAULT_NAMESPACE).is_err() {
            engine.create_namespace(DEFAULT_NAMESPACE)?;
        }
        let worker = Arc::clone(&engine);
        let handle = std::thread::Builder::new()
            .name("zdb-flusher".into())
            .spawn(move || worker.flusher_loop())?;
        *lock(&engine.flusher) = Some(handle);
        Ok(engine)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn io_name(&self) -> &'static str {
        self.io.name()
    }

    /// Watches durability progress (for `--sync` replies and back-pressure).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Set when a write or sync failed: the engine then refuses writes.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Waits while the namespace holds more than `pending_bytes_max` bytes not yet written.
    pub async fn wait_for_room(&self, namespace: &Namespace) {
        let mut receiver = self.progress.subscribe();
        while lock(&namespace.state).pending_bytes > self.config.pending_bytes_max {
            let _ = receiver.changed().await;
            if receiver.borrow().failed {
                return;
            }
        }
    }

    /// Names of all namespaces, sorted.
    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub fn namespace(&self, name: &str) -> Result<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or(EngineError::NamespaceNotFound)
    }

    pub fn create_namespace(&self, name: &str) -> Result<Arc<Namespace>> {
        if !valid_namespace_name(name) {
            return Err(EngineError::InvalidNamespaceName);
        }
        let mut namespaces = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
        if namespaces.contains_key(name) {
            return Err(EngineError::NamespaceExists);
        }
        let data_dir = self.config.data_dir.join(name);
        let index_dir = self.config.index_dir.join(name);
        std::fs::create_dir_all(&data_dir)?;
        std::fs::create_dir_all(&index_dir)?;
        let settings = Settings::new(self.config.default_mode);
        write_settings(&data_dir, &settings)?;
        sync_dir(&self.config.data_dir)?;
        let namespace = Arc::new(self.load_namespace(name)?);
        namespaces.insert(name.to_string(), Arc::clone(&namespace));
        self.cache_budget.set_namespaces(namespaces.len());
        tracing::info!(namespace = name, "namespace created");
        Ok(namespace)
    }

    /// Deletes a namespace and everything in it.
    pub fn delete_namespace(&self, name: &str) -> Result<()> {
        let namespace = {
            let mut namespaces = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
            let removed = namespaces
                .remove(name)
                .ok_or(EngineError::NamespaceNotFound)?;
            self.cache_budget.set_namespaces(namespaces.len());
            removed
        };
        let mut state = lock(&namespace.state);
        state.deleted = true;
        state.pending.clear();
        state.index.clear();
        state.cache.clear();
        state.files.clear();
        drop(state);
        std::fs::remove_dir_all(&namespace.data_dir)?;
        let _ = std::fs::remove_dir_all(&namespace.index_dir);
        tracing::info!(namespace = name, "namespace deleted");
        Ok(())
    }

    fn load_namespace(&self, name: &str) -> Result<Namespace> {
        let data_dir = self.config.data_dir.join(name);
        let index_dir = self.config.index_dir.join(name);
        std::fs::create_dir_all(&index_dir)?;
        let settings = match std::fs::read_to_string(data_dir.join(SETTINGS_FILE)) {
            Ok(text) => Settings::decode(&text).map_err(|e| {
                EngineError::BadSettings(format!("{}: {e}", data_dir.join(SETTINGS_FILE).display()))
            })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let settings = Settings::new(self.config.default_mode);
                write_settings(&data_dir, &settings)?;
                settings
            }
            Err(error) => return Err(error.into()),
        };
        let started = Instant::now();
        let state = recover(
            &*self.io,
            name,
            &data_dir,
            &index_dir,
            settings,
            Arc::clone(&self.cache_budget),
        )?;
        tracing::info!(
            namespace = name,
            keys = state.index.len(),
            records = state.record_count,
            damaged = state.damaged_total,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "namespace loaded"
        );
        Ok(Namespace {
            name: name.to_string(),
            data_dir,
            index_dir,
            state: Mutex::new(state),
            sealed: Condvar::new(),
            snapshot_writer: Mutex::new(()),
        })
    }

    fn check_failed(&self) -> Result<()> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        match &*lock(&self.failure) {
            Some(reason) => Err(EngineError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    fn wake_flusher(&self) {
        // Checked with a plain load first: every write past the threshold calls this until the
        // round takes the bytes, and a swap would be a full barrier on each.
        if !self.wake_pending.load(Ordering::Acquire)
            && !self.wake_pending.swap(true, Ordering::AcqRel)
        {
            lock(&self.signal).wake = true;
            self.signal_cond.notify_one();
        }
    }

    /// Stores `value` under `key` (in seq mode, an empty key asks for a new id). `timestamp_s`
    /// overrides the record's time (0-db lets an admin do this for replication).
    pub fn set(
        &self,
        namespace: &Namespace,
        key: &[u8],
        value: &[u8],
        timestamp_s: Option<u32>,
    ) -> Result<SetOutcome> {
        let timestamp_us = timestamp_s
            .map(|s| s as u64 * 1_000_000)
            .unwrap_or_else(now_us);
        let mut guard = Some(lock(&namespace.state));
        let result = self.set_locked(namespace, &mut guard, key, value, timestamp_us);
        self.release_after_writes(guard);
        result
    }

    /// [`Engine::set`] for each `(key, value)` of `items`, in order, under one acquisition of
    /// the namespace lock and with one timestamp: a pipeline of SETs pays for the lock (two
    /// full memory barriers, each waiting for the stores before it) once instead of once per
    /// SET. `outcome` gets each key and result, the lock held (it must be quick).
    pub fn set_many<'k>(
        &self,
        namespace: &Namespace,
        items: &[(&'k [u8], &'k [u8])],
        mut outcome: impl FnMut(&'k [u8], Result<SetOutcome>),
    ) {
        let timestamp_us = now_us();
        let mut guard = Some(lock(&namespace.state));
        if let Some(state) = guard.as_deref() {
            // The keys' index slots first, all of them: their memory misses overlap here
            // instead of stalling each SET in turn.
            let found = items
                .iter()
                .filter(|(key, _)| state.index.get(key).is_some())
                .count();
            std::hint::black_box(found);
        }
        for &(key, value) in items {
            outcome(
                key,
                self.set_locked(namespace, &mut guard, key, value, timestamp_us),
            );
        }
        self.release_after_writes(guard);
    }

    /// Drops the namespace lock after writes, waking the flusher when they piled up.
    fn release_after_writes(&self, guard: Option<MutexGuard<'_, NsState>>) {
        let wake = guard
            .as_ref()
            .is_some_and(|state| state.pending_bytes >= FLUSHER_WAKE_BYTES);
        drop(guard);
        if wake {
            self.wake_flusher();
        }
    }

    /// The body of [`Engine::set`], `guard` holding the namespace lock (taken again when it
    /// does not). Comparing with a stored value may have to release it (to read the record):
    /// then `guard` is left `None` or holds the lock taken again.
    fn set_locked<'a>(
        &self,
        namespace: &'a Namespace,
        guard: &mut Option<MutexGuard<'a, NsState>>,
        key: &[u8],
        value: &[u8],
        timestamp_us: u64,
    ) -> Result<SetOutcome> {
        if key.len() > KEY_BYTES_MAX {
            return Err(EngineError::KeyTooLong(key.len()));
        }
        if value.len() > VALUE_BYTES_MAX {
            return Err(EngineError::ValueTooLarge(value.len()));
        }
        self.check_failed()?;
        let mut state = guard.take().unwrap_or_else(|| lock(&namespace.state));
        let stored = self.store_locked(namespace, &mut state, key, value, timestamp_us, true);
        let old = match stored {
            Ok(Stored::Done(outcome)) => {
                *guard = Some(state);
                return Ok(outcome);
            }
            Ok(Stored::SameShape(old)) => old,
            Err(error) => {
                *guard = Some(state);
                return Err(error);
            }
        };
        // The key holds a value of the same length and crc: probably the same value. Compare
        // the bytes to be sure (reading them may need the lock released).
        let (record_bytes, _) = self.read_record_locked(namespace, state, key, old)?;
        if &record_bytes[HEADER_BYTES + key.len()..] == value {
            return Ok(SetOutcome::Unchanged);
        }
        // Only while the lock was released can the key have changed: decide afresh, without
        // comparing again.
        let mut state = lock(&namespace.state);
        let stored = self.store_locked(namespace, &mut state, key, value, timestamp_us, false);
        *guard = Some(state);
        match stored? {
            Stored::Done(outcome) => Ok(outcome),
            Stored::SameShape(_) => Err(EngineError::Failed("compared twice".into())),
        }
    }

    /// Stores `value` under `key`, the lock held; with `compare`, first hands back the key's
    /// entry when it holds a value of the same length and crc, to be compared before anything
    /// is written.
    fn store_locked(
        &self,
        namespace: &Namespace,
        state: &mut MutexGuard<'_, NsState>,
        key: &[u8],
        value: &[u8],
        timestamp_us: u64,
        compare: bool,
    ) -> Result<Stored> {
        state.writable()?;
        let new_id = state.next_id.to_le_bytes();
        let key_owned: &[u8] = match state.settings.mode {
            Mode::User => key,
            Mode::Seq if key.is_empty() => &new_id,
            Mode::Seq => {
                if key.len() != 8 || !state.index.contains_key(key) {
                    return Err(EngineError::InvalidSeqKey);
                }
                key
            }
        };
        let value_crc = crc32fast::hash(value);
        let previous = state.index.get(key_owned).copied();
        if let Some(old) = previous {
            if state.settings.worm {
                return Err(EngineError::Worm);
            }
            if compare
                && old.value_len() as usize == value.len()
                && old.value_crc == value_crc
                && !old.is_damaged()
            {
                return Ok(Stored::SameShape(old));
            }
        }
        let freed = previous.map(|old| old.value_len() as u64).unwrap_or(0);
        if state.settings.maxsize > 0
            && state.live_bytes - freed + value.len() as u64 > state.settings.maxsize
        {
            return Err(EngineError::NamespaceFull(state.settings.maxsize));
        }
        let (prev_segment, prev_offset) = previous.map(|e| (e.segment, e.offset)).unwrap_or((0, 0));
        let (segment_id, offset) = self.append(
            state,
            namespace,
            &NewRecord {
                flags: 0,
                key: key_owned,
                value,
                value_crc,
                timestamp_us,
                sequence: 0,
                prev_segment,
                prev_offset,
            },
        )?;
        let entry = Entry::new(segment_id, offset as u32, value.len() as u32, value_crc);
        state.live_bytes = state.live_bytes - freed + value.len() as u64;
        if state.settings.mode == Mode::Seq && key.is_empty() {
            state.next_id += 1;
        }
        let assigned_id = (state.settings.mode == Mode::Seq && key.is_empty()).then(|| {
            let mut id = [0u8; 8];
            id.copy_from_slice(key_owned);
            u64::from_le_bytes(id)
        });
        state.index.insert(Key::new(key_owned), entry);
        let ticket = self.round_epoch.load(Ordering::Acquire) + 1;
        Ok(Stored::Done(SetOutcome::Stored {
            assigned_id,
            ticket,
        }))
    }

    /// Deletes `key`: writes a tombstone. Returns the write ticket.
    pub fn delete(&self, namespace: &Namespace, key: &[u8]) -> Result<u64> {
        self.check_failed()?;
        let mut state = lock(&namespace.state);
        state.writable()?;
        let old = *state.index.get(key).ok_or(EngineError::NotFound)?;
        if state.settings.worm {
            return Err(EngineError::Worm);
        }
        self.append(
            &mut state,
            namespace,
            &NewRecord {
                flags: FLAG_TOMBSTONE,
                key,
                value: &[],
                value_crc: 0,
                timestamp_us: now_us(),
                sequence: 0,
                prev_segment: old.segment,
                prev_offset: old.offset,
            },
        )?;
        state.index.remove(key);
        state.live_bytes -= old.value_len() as u64;
        let ticket = self.round_epoch.load(Ordering::Acquire) + 1;
        self.release_after_writes(Some(state));
        Ok(ticket)
    }

    /// Appends an encoded record to the namespace's pending buffer, starting a new segment
    /// first when the active one is full. Returns where the record will live.
    fn append(
        &self,
        state: &mut NsState,
        namespace: &Namespace,
        new: &NewRecord<'_>,
    ) -> Result<(u32, u64)> {
        let record_bytes = (HEADER_BYTES + new.key.len() + new.value.len()) as u64;
        let limit = self.config.segment_bytes_max.min(SEGMENT_BYTES_MAX);
        if state.append_offset + record_bytes > limit
            && state.append_offset > SEGMENT_HEADER_BYTES as u64
        {
            self.start_segment(state, namespace)?;
        }
        let segment_id = state.active_segment;
        let offset = state.append_offset;
        // A record that does not fit the last chunk's room starts a chunk of its own when it
        // is large or that chunk already is: growing the buffer would copy it all again.
        let needs_chunk = match state.pending.last() {
            Some(chunk) => {
                chunk.segment != segment_id
                    || (chunk.data.capacity() - chunk.data.len() < record_bytes as usize
                        && (record_bytes as usize >= PENDING_CHUNK_BYTES
                            || chunk.data.len() >= PENDING_CHUNK_GROWN_BYTES_MAX))
            }
            None => true,
        };
        if needs_chunk {
            state.pending.push(PendingChunk {
                segment: segment_id,
                offset,
                data: Vec::with_capacity(PENDING_CHUNK_BYTES.max(record_bytes as usize)),
                sealed: 0,
            });
        }
        let record = NewRecord {
            sequence: state.next_sequence,
            ..*new
        };
        let seal_here = new.value.len() >= SEAL_INLINE_FROM_BYTES
            && !state.sealing
            && state.pending.iter().all(|c| c.sealed == c.data.len());
        let Some(chunk) = state.pending.last_mut() else {
            return Err(EngineError::Failed("pending buffer missing".into()));
        };
        let before = chunk.data.len();
        record::encode_unsealed(&record, &mut chunk.data);
        let written = (chunk.data.len() - before) as u64;
        // A large value is hashed here, while it is still in this core's cache: on the
        // flusher's core the hashing would read it from memory again. Only possible when
        // everything before it is sealed (the chain runs in log order).
        if seal_here {
            let NsState {
                pending,
                chain_head,
                ..
            } = &mut *state;
            if let Some(chunk) = pending.last_mut() {
                chunk.seal(chain_head);
            }
        }
        state.next_sequence += 1;
        state.record_count += 1;
        state.append_offset += written;
        state.log_bytes += written;
        state.pending_bytes += written as usize;
        // Only a hint for `commit_up_to` (a lost update costs at most one hand-off), so a
        // plain load and store: an atomic add would be a full barrier on every write.
        let appended = self.appended_bytes.load(Ordering::Relaxed);
        self.appended_bytes
            .store(appended + written as usize, Ordering::Relaxed);
        state.changed_since_snapshot = true;
        Ok((segment_id, offset))
    }

    /// Opens the next segment file and queues its header.
    fn start_segment(&self, state: &mut NsState, namespace: &Namespace) -> Result<()> {
        // New segments take the next multiple of the stride; the ids in between are for the
        // output of compactions, which must replay after what they compacted and before
        // anything written later.
        let highest = state
            .files
            .keys()
            .next_back()
            .copied()
            .unwrap_or(state.active_segment);
        let segment_id = (highest / SEGMENT_ID_STRIDE + 1) * SEGMENT_ID_STRIDE;
        let path = segment::path(&namespace.data_dir, segment_id);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        state.files.insert(segment_id, Arc::new(file));
        state.active_segment = segment_id;
        state.append_offset = SEGMENT_HEADER_BYTES as u64;
        state.pending.push(PendingChunk {
            segment: segment_id,
            offset: 0,
            data: segment::encode_header(segment_id, now_us()).to_vec(),
            sealed: SEGMENT_HEADER_BYTES,
        });
        state.pending_bytes += SEGMENT_HEADER_BYTES;
        state.log_bytes += SEGMENT_HEADER_BYTES as u64;
        state.snapshot_due = true;
        tracing::debug!(
            namespace = namespace.name,
            segment = segment_id,
            "new segment"
        );
        Ok(())
    }

    /// Reads a whole record (verified) for `entry`, releasing the lock before any disk read.
    /// Returns the record bytes and its header.
    fn read_record_locked(
        &self,
        namespace: &Namespace,
        state: MutexGuard<'_, NsState>,
        key: &[u8],
        entry: Entry,
    ) -> Result<(Vec<u8>, record::Header)> {
        let length = HEADER_BYTES + key.len() + entry.value_len() as usize;
        let location = Location {
            segment: entry.segment,
            offset: entry.offset as u64,
        };
        // A record still unsealed in memory is our own bytes, written under this lock: hand
        // it out as it is rather than make the event loop seal (and wait for the flusher).
        if let Some(chunk) = state.pending.iter().find(|c| c.holds(location)) {
            let start = (location.offset - chunk.offset) as usize;
            if start >= chunk.sealed {
                if let Some(bytes) = chunk.data.get(start..start + length) {
                    if let Ok(header) = record::decode_unsealed(bytes) {
                        if &bytes[HEADER_BYTES..HEADER_BYTES + header.key_len as usize] == key {
                            return Ok((bytes.to_vec(), header));
                        }
                    }
                }
            }
        }
        let bytes = self.read_at(namespace, state, location, length)?;
        let header = self.check_record(namespace, location, &bytes)?;
        if &bytes[HEADER_BYTES..HEADER_BYTES + header.key_len as usize] != key {
            return Err(self.note_damage(
                namespace,
                location,
                length as u64,
                Some(key),
                "record holds another key".into(),
            ));
        }
        Ok((bytes, header))
    }

    fn check_record(
        &self,
        namespace: &Namespace,
        location: Location,
        bytes: &[u8],
    ) -> Result<record::Header> {
        record::verify(bytes).map_err(|error| {
            let key = record::decode_header(bytes).ok().and_then(|h| {
                bytes
                    .get(HEADER_BYTES..HEADER_BYTES + h.key_len as usize)
                    .map(|k| k.to_vec())
            });
            self.note_damage(
                namespace,
                location,
                bytes.len() as u64,
                key.as_deref(),
                error.to_string(),
            )
        })
    }

    /// Reads `length` bytes at `location`, from memory when not yet written, else from disk.
    fn read_at(
        &self,
        namespace: &Namespace,
        state: MutexGuard<'_, NsState>,
        location: Location,
        length: usize,
    ) -> Result<Vec<u8>> {
        let mut state = state;
        // Records not yet on disk are read from memory, once sealed.
        loop {
            if let Some(chunk) = state.pending.iter().find(|c| c.holds(location)) {
                let start = (location.offset - chunk.offset) as usize;
                if start + length > chunk.sealed {
                    state = seal_pending(namespace, state);
                    continue;
                }
                if let Some(bytes) = chunk.data.get(start..start + length) {
                    return Ok(bytes.to_vec());
                }
                break;
            }
            let inflight = state.inflight.iter().find(|c| {
                c.segment == location.segment
                    && location.offset >= c.offset
                    && location.offset < c.offset + c.length as u64
            });
            match inflight {
                Some(InflightChunk { data: None, .. }) => {
                    state = namespace
                        .sealed
                        .wait(state)
                        .unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                Some(InflightChunk {
                    data: Some(data),
                    offset,
                    ..
                }) => {
                    let start = (location.offset - offset) as usize;
                    if let Some(bytes) = data.get(start..start + length) {
                        return Ok(bytes.to_vec());
                    }
                }
                None => {}
            }
            break;
        }
        let file =
            state
                .files
                .get(&location.segment)
                .cloned()
                .ok_or_else(|| EngineError::Corrupt {
                    segment: location.segment,
                    offset: location.offset,
                    detail: "segment file missing".into(),
                })?;
        drop(state);
        let _ = namespace;
        let mut buffer = vec![0u8; length];
        match self.io.read_exact_at(&file, location.offset, &mut buffer) {
            Ok(()) => Ok(buffer),
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Err(self.note_damage(
                namespace,
                location,
                length as u64,
                None,
                "record extends past the end of its segment".into(),
            )),
            Err(error) => Err(error.into()),
        }
    }

    fn note_damage(
        &self,
        namespace: &Namespace,
        location: Location,
        length: u64,
        key: Option<&[u8]>,
        detail: String,
    ) -> EngineError {
        tracing::error!(
            namespace = namespace.name,
            segment = location.segment,
            offset = location.offset,
            %detail,
            "damaged record: refusing to return it"
        );
        let mut state = lock(&namespace.state);
        let already = state
            .damaged
            .iter()
            .any(|d| d.segment == location.segment && d.offset == location.offset);
        if !already {
            state.damaged_total += 1;
            if state.damaged.len() < DAMAGE_REPORTS_MAX {
                state.damaged.push(Damage {
                    segment: location.segment,
                    offset: location.offset,
                    length,
                    key: key.map(|k| k.to_vec()),
                    detail: detail.clone(),
                });
            }
            if let Some(key) = key {
                if let Some(entry) = state.index.get_mut(key) {
                    if entry.segment == location.segment && entry.offset as u64 == location.offset {
                        entry.mark_damaged();
                    }
                }
            }
        }
        EngineError::Corrupt {
            segment: location.segment,
            offset: location.offset,
            detail,
        }
    }

    /// The value of `key`, verified; `Ok(None)` when there is none.
    pub fn get(&self, namespace: &Namespace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_with(namespace, key, |value| value.to_vec())
    }

    /// Like [`Engine::get`], handing the verified value to `use_value` (which must be quick:
    /// on a cache hit it runs under the namespace lock) instead of returning a copy.
    pub fn get_with<T>(
        &self,
        namespace: &Namespace,
        key: &[u8],
        use_value: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>> {
        let state = lock(&namespace.state);
        state.readable()?;
        let Some(entry) = state.index.get(key).copied() else {
            return Ok(None);
        };
        let place = cache::place(entry.segment, entry.offset);
        if !entry.is_damaged() {
            if let Some(value) = state.cache.get(place) {
                return Ok(Some(use_value(value)));
            }
            // Anything unexpected in a kept buffer falls through to the file.
            if let Some(value) = state
                .written_record(key, &entry)
                .and_then(|bytes| written_value(bytes, key))
            {
                return Ok(Some(use_value(value)));
            }
        }
        let (bytes, header) = self.read_record_locked(namespace, state, key, entry)?;
        let value = &bytes[HEADER_BYTES + header.key_len as usize..];
        lock(&namespace.state).cache.insert(place, value);
        Ok(Some(use_value(value)))
    }

    /// GETs of `keys` in order, under one acquisition of the namespace lock, for as long as
    /// their values are in memory: `use_value` gets what [`Engine::get_with`] would hand it
    /// (`None` for a key that is not there), the lock held. Stops at the first key whose
    /// value needs a disk read (or that [`Engine::get_with`] would answer with an error) and
    /// returns how many keys it served; the caller runs that one on its own. At most
    /// [`GET_RUN_MAX`] keys, and no more once the values served add up to `value_bytes_max`
    /// (one at least), so that the replies gathered stay bounded.
    ///
    /// All index entries are looked up first, then the records are found and their heads
    /// loaded, then the values used: a pipeline's memory misses overlap instead of stalling
    /// each GET in turn, and each key is looked up once.
    pub fn get_many_in_memory(
        &self,
        namespace: &Namespace,
        keys: &[&[u8]],
        value_bytes_max: usize,
        mut use_value: impl FnMut(Option<&[u8]>),
    ) -> usize {
        /// Where a GET's answer is.
        enum Found<'a> {
            Missing,
            Value(&'a [u8]),
            Record(&'a [u8]),
            Elsewhere,
        }
        let state = lock(&namespace.state);
        if state.readable().is_err() {
            return 0;
        }
        let keys = &keys[..keys.len().min(GET_RUN_MAX)];
        let entries: smallvec::SmallVec<[Option<Entry>; GET_RUN_MAX]> = keys
            .iter()
            .map(|key| state.index.get(key).copied())
            .collect();
        let mut touched = 0u8;
        let found: smallvec::SmallVec<[Found<'_>; GET_RUN_MAX]> = keys
            .iter()
            .zip(&entries)
            .map(|(key, entry)| match entry {
                None => Found::Missing,
                Some(entry) if entry.is_damaged() => Found::Elsewhere,
                Some(entry) => {
                    let place = cache::place(entry.segment, entry.offset);
                    if let Some(value) = state.cache.get(place) {
                        Found::Value(value)
                    } else if let Some(bytes) = state.written_record(key, entry) {
                        touched ^= touch_head(bytes);
                        Found::Record(bytes)
                    } else {
                        Found::Elsewhere
                    }
                }
            })
            .collect();
        std::hint::black_box(touched);
        let mut served = 0;
        let mut value_bytes = 0;
        for (key, found) in keys.iter().zip(found) {
            if value_bytes >= value_bytes_max.max(1) {
                break;
            }
            let value = match found {
                Found::Missing => None,
                Found::Value(value) => Some(value),
                // Anything unexpected goes to the file, as in `get_with`.
                Found::Record(bytes) => match written_value(bytes, key) {
                    Some(value) => Some(value),
                    None => break,
                },
                Found::Elsewhere => break,
            };
            value_bytes += value.map_or(0, <[u8]>::len);
            use_value(value);
            served += 1;
        }
        served
    }

    /// Whether `key` exists.
    pub fn exists(&self, namespace: &Namespace, key: &[u8]) -> Result<bool> {
        let state = lock(&namespace.state);
        state.readable()?;
        Ok(state.index.contains_key(key))
    }

    /// Re-reads the record of `key` and checks it. `Ok(None)` when there is no such key.
    pub fn check(&self, namespace: &Namespace, key: &[u8]) -> Result<Option<bool>> {
        let state = lock(&namespace.state);
        state.readable()?;
        let Some(entry) = state.index.get(key).copied() else {
            return Ok(None);
        };
        match self.read_record_locked(namespace, state, key, entry) {
            Ok(_) => Ok(Some(true)),
            Err(EngineError::Corrupt { .. }) => Ok(Some(false)),
            Err(error) => Err(error),
        }
    }

    /// The index entry of `key` (length and time), without reading the record.
    pub fn entry(&self, namespace: &Namespace, key: &[u8]) -> Result<Option<Entry>> {
        let state = lock(&namespace.state);
        state.readable()?;
        Ok(state.index.get(key).copied())
    }

    /// When `key`'s current version was written (Unix seconds), read from its record header
    /// (the index does not keep times, to stay small).
    pub fn key_time(&self, namespace: &Namespace, key: &[u8]) -> Result<Option<u32>> {
        let state = lock(&namespace.state);
        state.readable()?;
        let Some(entry) = state.index.get(key).copied() else {
            return Ok(None);
        };
        let location = Location {
            segment: entry.segment,
            offset: entry.offset as u64,
        };
        let head = self.read_at(namespace, state, location, HEADER_BYTES)?;
        let header = record::decode_header(&head).map_err(|error| {
            self.note_damage(
                namespace,
                location,
                HEADER_BYTES as u64,
                Some(key),
                error.to_string(),
            )
        })?;
        Ok(Some((header.timestamp_us / 1_000_000) as u32))
    }

    /// The cursor designating `key`'s current record (KEYCUR).
    pub fn key_cursor(&self, namespace: &Namespace, key: &[u8]) -> Result<Vec<u8>> {
        let entry = self.entry(namespace, key)?.ok_or(EngineError::NotFound)?;
        Ok(Location {
            segment: entry.segment,
            offset: entry.offset as u64,
        }
        .cursor())
    }

    /// Walks live keys in log order, after `cursor` (from the start when `None`), forward or
    /// backward. Returns at most `count_max` items and the cursor of the last one.
    pub fn scan(
        &self,
        namespace: &Namespace,
        cursor: Option<&[u8]>,
        backward: bool,
        count_max: usize,
    ) -> Result<(Vec<ScanItem>, Option<Vec<u8>>)> {
        let start = match cursor {
            Some(bytes) => Some(Location::from_cursor(bytes)?),
            None => None,
        };
        let segments: Vec<u32> = {
            let state = lock(&namespace.state);
            state.readable()?;
            state.files.keys().copied().collect()
        };
        if let Some(start) = start {
            if !segments.contains(&start.segment) {
                return Err(EngineError::InvalidCursor);
            }
        }
        let mut items = Vec::new();
        let mut last = None;
        let ordered: Vec<u32> = if backward {
            segments.into_iter().rev().collect()
        } else {
            segments
        };
        for segment_id in ordered {
            let mut from = SEGMENT_HEADER_BYTES as u64;
            if let Some(start) = start {
                if (!backward && segment_id < start.segment)
                    || (backward && segment_id > start.segment)
                {
                    continue;
                }
                if !backward && segment_id == start.segment {
                    from = start.offset;
                }
            }
            let mut visit = |offset: u64, key: Vec<u8>, value_len: u32, timestamp_s: u32| -> bool {
                let here = Location {
                    segment: segment_id,
                    offset,
                };
                if let Some(start) = start {
                    let after = if backward { here < start } else { here > start };
                    if !after {
                        return true;
                    }
                }
                let live = lock(&namespace.state)
                    .index
                    .get(key.as_slice())
                    .is_some_and(|e| e.segment == segment_id && e.offset as u64 == offset);
                if live {
                    items.push(ScanItem {
                        key,
                        value_len,
                        timestamp_s,
                    });
                    last = Some(here.cursor());
                }
                items.len() < count_max
            };
            if backward {
                // Records only link forward: collect the segment's records, then walk them back.
                let mut records = Vec::new();
                self.walk_segment(
                    namespace,
                    segment_id,
                    from,
                    |offset, key, value_len, timestamp_s| {
                        records.push((offset, key, value_len, timestamp_s));
                        start.is_none_or(|s| s.segment != segment_id || offset < s.offset)
                    },
                )?;
                for (offset, key, value_len, timestamp_s) in records.into_iter().rev() {
                    if !visit(offset, key, value_len, timestamp_s) {
                        return Ok((items, last));
                    }
                }
            } else if !self.walk_segment(namespace, segment_id, from, &mut visit)? {
                return Ok((items, last));
            }
        }
        Ok((items, last))
    }

    /// Reads the records of a segment from `from` on, calling `visit(offset, key, value
    /// length, timestamp)` for each that is not a tombstone until it returns false. Returns
    /// false when stopped by `visit`.
    fn walk_segment(
        &self,
        namespace: &Namespace,
        segment_id: u32,
        from: u64,
        mut visit: impl FnMut(u64, Vec<u8>, u32, u32) -> bool,
    ) -> Result<bool> {
        let mut offset = from;
        loop {
            let state = lock(&namespace.state);
            let Some(file) = state.files.get(&segment_id).cloned() else {
                return Ok(true);
            };
            let end = if segment_id == state.active_segment {
                state.append_offset
            } else {
                // A finished segment whose tail the flusher has not written yet ends where
                // its records in memory end.
                let in_memory = state
                    .pending
                    .iter()
                    .filter(|c| c.segment == segment_id)
                    .map(|c| c.offset + c.data.len() as u64)
                    .chain(
                        state
                            .inflight
                            .iter()
                            .filter(|c| c.segment == segment_id)
                            .map(|c| c.offset + c.length as u64),
                    )
                    .max()
                    .unwrap_or(0);
                file.metadata()?.len().max(in_memory)
            };
            if offset + HEADER_BYTES as u64 > end {
                return Ok(true);
            }
            // Header, then key: each lies whole inside one record, so inside one buffer
            // when the record is not yet on disk.
            let location = Location {
                segment: segment_id,
                offset,
            };
            let head = self.read_at(namespace, state, location, HEADER_BYTES)?;
            let Ok(header) = record::decode_header(&head) else {
                // Damage: this walk stops here (it was reported when the namespace was loaded).
                return Ok(true);
            };
            if !header.is_tombstone() {
                let key_location = Location {
                    segment: segment_id,
                    offset: offset + HEADER_BYTES as u64,
                };
                let state = lock(&namespace.state);
                let key = self.read_at(namespace, state, key_location, header.key_len as usize)?;
                if !visit(
                    offset,
                    key,
                    header.value_len,
                    (header.timestamp_us / 1_000_000) as u32,
                ) {
                    return Ok(false);
                }
            }
            offset += header.record_bytes() as u64;
        }
    }

    /// One step of HISTORY: the record at `cursor` (or the current one of `key`).
    pub fn history(
        &self,
        namespace: &Namespace,
        key: &[u8],
        cursor: Option<&[u8]>,
    ) -> Result<HistoryItem> {
        let state = lock(&namespace.state);
        state.readable()?;
        let location = match cursor {
            Some(bytes) => Location::from_cursor(bytes)?,
            None => {
                let entry = state.index.get(key).copied().ok_or(EngineError::NotFound)?;
                Location {
                    segment: entry.segment,
                    offset: entry.offset as u64,
                }
            }
        };
        if !state.files.contains_key(&location.segment) {
            return Err(EngineError::InvalidCursor);
        }
        let head = self.read_at(namespace, state, location, HEADER_BYTES)?;
        let header = record::decode_header(&head).map_err(|_| EngineError::InvalidCursor)?;
        let state = lock(&namespace.state);
        let bytes = self.read_at(namespace, state, location, header.record_bytes())?;
        let header = self.check_record(namespace, location, &bytes)?;
        if &bytes[HEADER_BYTES..HEADER_BYTES + header.key_len as usize] != key {
            return Err(EngineError::InvalidCursor);
        }
        let previous_exists = lock(&namespace.state)
            .files
            .contains_key(&header.prev_segment);
        let previous = (header.prev_segment != 0 && previous_exists).then(|| {
            Location {
                segment: header.prev_segment,
                offset: header.prev_offset as u64,
            }
            .cursor()
        });
        let value = (!header.is_tombstone())
            .then(|| bytes[HEADER_BYTES + header.key_len as usize..].to_vec());
        Ok(HistoryItem {
            previous,
            timestamp_s: (header.timestamp_us / 1_000_000) as u32,
            value,
        })
    }

    /// Removes every key of a namespace (FLUSH): its segments are deleted and a new log begun.
    pub fn flush_namespace(&self, namespace: &Namespace) -> Result<()> {
        let mut state = lock(&namespace.state);
        state.writable()?;
        // Let in-flight writes land before their files disappear.
        while !state.inflight.is_empty() {
            drop(state);
            std::thread::sleep(Duration::from_millis(1));
            state = lock(&namespace.state);
        }
        for segment_id in state.files.keys() {
            std::fs::remove_file(segment::path(&namespace.data_dir, *segment_id))?;
        }
        let _ = std::fs::remove_file(namespace.index_dir.join(SNAPSHOT_FILE));
        let _ = std::fs::remove_file(namespace.data_dir.join(archive::FILE_NAME));
        let settings = state.settings.clone();
        let deleted = state.deleted;
        *state = empty_state(settings, Arc::clone(&self.cache_budget));
        state.deleted = deleted;
        let first = Arc::new(
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(segment::path(&namespace.data_dir, 1))?,
        );
        first.sync_all()?;
        state.files.insert(1, Arc::clone(&first));
        drop(state);
        self.io.write_batch(
            &[WriteRequest {
                file: &first,
                offset: 0,
                data: &segment::encode_header(1, now_us()),
            }],
            &[&first],
        )?;
        sync_dir(&namespace.data_dir)?;
        Ok(())
    }

    /// Changes a setting and saves it.
    pub fn update_settings(
        &self,
        namespace: &Namespace,
        change: impl FnOnce(&mut Settings) -> Result<()>,
    ) -> Result<()> {
        let mut state = lock(&namespace.state);
        if state.deleted {
            return Err(EngineError::NamespaceDeleted);
        }
        let mut settings = state.settings.clone();
        change(&mut settings)?;
        if settings.mode != state.settings.mode && !state.index.is_empty() {
            return Err(EngineError::ModeNotEmpty);
        }
        write_settings(&namespace.data_dir, &settings)?;
        state.settings = settings;
        Ok(())
    }

    /// Starts a new segment now (NSJUMP).
    pub fn jump(&self, namespace: &Namespace) -> Result<()> {
        let mut state = lock(&namespace.state);
        state.writable()?;
        self.start_segment(&mut state, namespace)?;
        drop(state);
        self.wake_flusher();
        Ok(())
    }

    pub fn info(&self, namespace: &Namespace) -> NamespaceInfo {
        let state = seal_pending(namespace, lock(&namespace.state));
        NamespaceInfo {
            name: namespace.name.clone(),
            entries: state.index.len() as u64,
            data_bytes: state.live_bytes,
            log_bytes: state.log_bytes,
            segments: state.files.len(),
            index_bytes_estimate: state
                .index
                .keys()
                .map(|k| (k.as_bytes().len() + 40) as u64)
                .sum(),
            damaged: state.damaged_total,
            record_count: state.record_count,
            chain_head: state.chain_head,
            settings: state.settings.clone(),
            last_compaction: state.last_compaction.clone(),
        }
    }

    /// Damaged records found so far in a namespace.
    pub fn damage(&self, namespace: &Namespace) -> Vec<Damage> {
        lock(&namespace.state).damaged.clone()
    }

    /// Writes everything pending for the namespace now and fdatasyncs all of its segments, so
    /// that its files hold every record acknowledged so far. Holds the namespace lock while it
    /// writes (a bounded pause); returns the chain head and record count at that point.
    fn flush_now(&self, namespace: &Namespace) -> Result<([u8; LINK_BYTES], u64)> {
        // No round runs meanwhile: nothing is in flight, so nothing is being sealed.
        let _round = lock(&self.round);
        {
            let state = lock(&namespace.state);
            // Nothing in flight, so nothing is being sealed: this cannot wait.
            let mut state = seal_pending(namespace, state);
            let pending = std::mem::take(&mut state.pending);
            let mut written = 0usize;
            let files: Vec<Arc<File>> = state.files.values().cloned().collect();
            let mut writes = Vec::with_capacity(pending.len());
            for chunk in &pending {
                if let Some(file) = state.files.get(&chunk.segment) {
                    writes.push((Arc::clone(file), chunk.offset, &chunk.data));
                    written += chunk.data.len();
                }
            }
            let requests: Vec<WriteRequest<'_>> = writes
                .iter()
                .map(|(file, offset, data)| WriteRequest {
                    file,
                    offset: *offset,
                    data,
                })
                .collect();
            let sync: Vec<&File> = files.iter().map(|f| f.as_ref()).collect();
            if let Err(error) = self.io.write_batch(&requests, &sync) {
                drop(state);
                return Err(self.fail(error));
            }
            state.pending_bytes = state.pending_bytes.saturating_sub(written);
            Ok((state.chain_head, state.next_sequence))
        }
    }

    /// The chain head of a namespace and the number of records it covers (CHAIN).
    pub fn chain(&self, namespace: &Namespace) -> Result<([u8; LINK_BYTES], u64)> {
        let state = seal_pending(namespace, lock(&namespace.state));
        state.readable()?;
        Ok((state.chain_head, state.next_sequence))
    }

    /// Every record's digest in sequence order, from the segments and the chain archive, each
    /// with the link stored in the record when it is still on disk. Checks every record's
    /// checksums on the way. `up_to` is the record count to stop at.
    #[allow(clippy::type_complexity)]
    fn collect_chain(
        &self,
        namespace: &Namespace,
        up_to: u64,
    ) -> std::result::Result<
        Vec<([u8; LINK_BYTES], Option<([u8; LINK_BYTES], u32, u64)>)>,
        VerifyFailure,
    > {
        let failure = |segment: Option<u32>,
                       offset: Option<u64>,
                       sequence: Option<u64>,
                       detail: String| VerifyFailure {
            segment,
            offset,
            sequence,
            detail,
        };
        let files: Vec<(u32, Arc<File>, u64)> = {
            let state = lock(&namespace.state);
            state
                .files
                .iter()
                .map(|(id, file)| {
                    let end = if *id == state.active_segment {
                        state.append_offset
                    } else {
                        u64::MAX
                    };
                    (*id, Arc::clone(file), end)
                })
                .collect()
        };
        let mut slots: Vec<Option<([u8; LINK_BYTES], Option<([u8; LINK_BYTES], u32, u64)>)>> =
            vec![None; up_to as usize];
        let mut first_error: Option<VerifyFailure> = None;
        for (segment_id, file, flushed_end) in &files {
            let mut header = [0u8; SEGMENT_HEADER_BYTES];
            if self.io.read_exact_at(file, 0, &mut header).is_err()
                || segment::decode_header(&header) != Ok(*segment_id)
            {
                return Err(failure(
                    Some(*segment_id),
                    Some(0),
                    None,
                    "segment header does not check".into(),
                ));
            }
            let scanned = segment::scan(
                &*self.io,
                file,
                SEGMENT_HEADER_BYTES as u64,
                true,
                |event| match event {
                    ScanEvent::Record {
                        offset,
                        header,
                        bytes,
                    } => {
                        if header.sequence >= up_to {
                            return;
                        }
                        let digest = record::digest(bytes, &header);
                        let slot = &mut slots[header.sequence as usize];
                        match slot {
                            Some((known, _)) if *known != digest => {
                                first_error.get_or_insert(failure(
                                    Some(*segment_id),
                                    Some(offset),
                                    Some(header.sequence),
                                    "two different records carry this sequence number".into(),
                                ));
                            }
                            _ => *slot = Some((digest, Some((header.link, *segment_id, offset)))),
                        }
                    }
                    ScanEvent::Damaged { offset, error, .. } => {
                        first_error.get_or_insert(failure(
                            Some(*segment_id),
                            Some(offset),
                            None,
                            error.to_string(),
                        ));
                    }
                },
            );
            match scanned {
                Err(error) => {
                    return Err(failure(Some(*segment_id), None, None, error.to_string()))
                }
                // Bad bytes after the last valid record: in the active segment past the point
                // flushed above, that is a write in progress; anywhere else it is damage.
                Ok(end) => {
                    if let Some(error) = end.torn {
                        if end.valid_end < *flushed_end {
                            first_error.get_or_insert(failure(
                                Some(*segment_id),
                                Some(end.valid_end),
                                None,
                                error.to_string(),
                            ));
                        }
                    }
                }
            }
            if first_error.is_some() {
                break;
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        let archived = archive::read(&namespace.data_dir)
            .map_err(|detail| failure(None, None, None, detail))?;
        for (sequence, digest) in archived {
            if sequence >= up_to {
                continue;
            }
            let slot = &mut slots[sequence as usize];
            match slot {
                Some((known, _)) if *known != digest => {
                    return Err(failure(
                        None,
                        None,
                        Some(sequence),
                        "the chain archive disagrees with the record on disk".into(),
                    ))
                }
                Some(_) => {}
                None => *slot = Some((digest, None)),
            }
        }
        slots
            .into_iter()
            .enumerate()
            .map(|(sequence, slot)| {
                slot.ok_or_else(|| {
                    failure(
                        None,
                        None,
                        Some(sequence as u64),
                        "missing from the segments and the chain archive".into(),
                    )
                })
            })
            .collect()
    }

    /// Re-reads the whole namespace: every record's checksums, and every link of the hash
    /// chain from the first record to the head (VERIFY). Returns the head and the count.
    pub fn verify(
        &self,
        namespace: &Namespace,
    ) -> std::result::Result<([u8; LINK_BYTES], u64), VerifyFailure> {
        let (head, count) = self.flush_now(namespace).map_err(|e| VerifyFailure {
            segment: None,
            offset: None,
            sequence: None,
            detail: e.to_string(),
        })?;
        let chain = self.collect_chain(namespace, count)?;
        let mut link = [0u8; LINK_BYTES];
        for (sequence, (digest, stored)) in chain.iter().enumerate() {
            link = record::link_from(&link, digest);
            if let Some((stored_link, segment, offset)) = stored {
                if *stored_link != link {
                    return Err(VerifyFailure {
                        segment: Some(*segment),
                        offset: Some(*offset),
                        sequence: Some(sequence as u64),
                        detail: "chain link does not follow from the records before it".into(),
                    });
                }
            }
        }
        if link != head {
            return Err(VerifyFailure {
                segment: None,
                offset: None,
                sequence: Some(count),
                detail: "the chain does not end at the namespace's head".into(),
            });
        }
        Ok((head, count))
    }

    /// Digests of records `from..from + count` (CHAIN ... PROOF), with which a client that
    /// holds the head after `from` records recomputes every later link up to the current head.
    pub fn chain_digests(
        &self,
        namespace: &Namespace,
        from: u64,
        count: u64,
    ) -> std::result::Result<Vec<[u8; LINK_BYTES]>, VerifyFailure> {
        let (_, total) = self.flush_now(namespace).map_err(|e| VerifyFailure {
            segment: None,
            offset: None,
            sequence: None,
            detail: e.to_string(),
        })?;
        let end = from.saturating_add(count).min(total);
        let chain = self.collect_chain(namespace, end)?;
        Ok(chain
            .into_iter()
            .skip(from as usize)
            .map(|(digest, _)| digest)
            .collect())
    }

    /// Rewrites the live records of every sealed segment into new segments and frees the old
    /// ones, while reads and writes go on (COMPACT). Records are copied byte for byte, so their
    /// sequence numbers and chain links stay; the digests of the records left behind go to the
    /// chain archive first, so VERIFY and chain proofs keep working.
    pub fn compact(&self, namespace: &Namespace) -> Result<CompactionReport> {
        let started = Instant::now();
        let mut pause_max = Duration::ZERO;
        // Seal the active segment so that everything written so far can be compacted.
        let (inputs, output_first, output_last, segments_before, log_bytes_before) = {
            let mut state = lock(&namespace.state);
            // One compaction of a namespace at a time: an explicit COMPACT that finds the
            // automatic one running waits for it, then compacts what is left.
            while state.compacting {
                drop(state);
                std::thread::sleep(COMPACT_WAIT_POLL);
                state = lock(&namespace.state);
            }
            let held = Instant::now();
            state.writable()?;
            if state.damaged_total > 0 {
                return Err(EngineError::Corrupt {
                    segment: 0,
                    offset: 0,
                    detail:
                        "the namespace has damaged records; compaction would hide them (see INFO)"
                            .into(),
                });
            }
            if state.append_offset > SEGMENT_HEADER_BYTES as u64 {
                self.start_segment(&mut state, namespace)?;
            }
            let inputs: Vec<u32> = state
                .files
                .keys()
                .copied()
                .filter(|id| *id < state.active_segment)
                .collect();
            state.compacting = !inputs.is_empty();
            let last_input = inputs.last().copied().unwrap_or(0);
            let report = (
                inputs,
                last_input + 1,
                state.active_segment - 1,
                state.files.len(),
                state.log_bytes,
            );
            pause_max = pause_max.max(held.elapsed());
            report
        };
        if inputs.is_empty() {
            return Ok(CompactionReport {
                segments_before,
                segments_after: segments_before,
                log_bytes_before,
                log_bytes_after: log_bytes_before,
                ..Default::default()
            });
        }
        let result = self.compact_inputs(
            namespace,
            &inputs,
            output_first,
            output_last,
            &mut pause_max,
        );
        let mut state = lock(&namespace.state);
        state.compacting = false;
        let (carried, dropped) = result?;
        let report = CompactionReport {
            segments_before,
            segments_after: state.files.len(),
            log_bytes_before,
            log_bytes_after: state.log_bytes,
            records_carried: carried,
            records_dropped: dropped,
            pause_max_us: pause_max.as_micros() as u64,
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        state.last_compaction = Some(report.clone());
        drop(state);
        tracing::info!(
            namespace = namespace.name,
            before_bytes = report.log_bytes_before,
            after_bytes = report.log_bytes_after,
            carried = report.records_carried,
            dropped = report.records_dropped,
            pause_max_us = report.pause_max_us,
            elapsed_ms = report.elapsed_ms,
            "compaction done"
        );
        Ok(report)
    }

    fn compact_inputs(
        &self,
        namespace: &Namespace,
        inputs: &[u32],
        output_first: u32,
        output_last: u32,
        pause_max: &mut Duration,
    ) -> Result<(u64, u64)> {
        // Everything in the inputs must be on disk before it is read back.
        let flush_started = Instant::now();
        self.flush_now(namespace)?;
        *pause_max = (*pause_max).max(flush_started.elapsed());
        let limit = self.config.segment_bytes_max.min(SEGMENT_BYTES_MAX);
        let mut outputs: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut moves: Vec<(Box<[u8]>, Location, Location)> = Vec::new();
        let mut dropped: Vec<(u64, [u8; LINK_BYTES])> = Vec::new();
        for &segment_id in inputs {
            let Some(file) = lock(&namespace.state).files.get(&segment_id).cloned() else {
                continue;
            };
            let mut damage = None;
            segment::scan(
                &*self.io,
                &file,
                SEGMENT_HEADER_BYTES as u64,
                false,
                |event| match event {
                    ScanEvent::Record {
                        offset,
                        header,
                        bytes,
                    } => {
                        let key = &bytes[HEADER_BYTES..HEADER_BYTES + header.key_len as usize];
                        let live = !header.is_tombstone()
                            && lock(&namespace.state).index.get(key).is_some_and(|e| {
                                e.segment == segment_id && e.offset as u64 == offset
                            });
                        if !live {
                            dropped.push((header.sequence, record::digest(bytes, &header)));
                            return;
                        }
                        let record_bytes = header.record_bytes() as u64;
                        let needs_new = match outputs.last() {
                            None => true,
                            Some((_, data)) => {
                                data.len() as u64 + record_bytes > limit
                                    && data.len() > SEGMENT_HEADER_BYTES
                            }
                        };
                        if needs_new {
                            let id = outputs.last().map(|(id, _)| id + 1).unwrap_or(output_first);
                            outputs.push((id, segment::encode_header(id, now_us()).to_vec()));
                        }
                        if let Some((id, data)) = outputs.last_mut() {
                            let new_offset = data.len() as u64;
                            data.extend_from_slice(bytes);
                            moves.push((
                                key.into(),
                                Location {
                                    segment: segment_id,
                                    offset,
                                },
                                Location {
                                    segment: *id,
                                    offset: new_offset,
                                },
                            ));
                        }
                    }
                    ScanEvent::Damaged { offset, error, .. } => {
                        damage.get_or_insert(EngineError::Corrupt {
                            segment: segment_id,
                            offset,
                            detail: error.to_string(),
                        });
                    }
                },
            )?;
            if let Some(error) = damage {
                return Err(error);
            }
        }
        if outputs.last().is_some_and(|(id, _)| *id > output_last) {
            return Err(EngineError::Failed(format!(
                "compaction needs more segment ids than are free below segment {}; write more, then compact again",
                output_last + 1
            )));
        }
        // Outputs: written under a temporary name, synced, then renamed into place.
        let mut new_files = Vec::with_capacity(outputs.len());
        for (id, data) in &outputs {
            let final_path = segment::path(&namespace.data_dir, *id);
            let temporary = final_path.with_extension(COMPACT_TEMPORARY_EXTENSION);
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temporary)?;
            self.io.write_batch(
                &[WriteRequest {
                    file: &file,
                    offset: 0,
                    data,
                }],
                &[&file],
            )?;
            std::fs::rename(&temporary, &final_path)?;
            new_files.push((*id, Arc::new(file), data.len() as u64));
        }
        sync_dir(&namespace.data_dir)?;
        // The digests of what is left behind, durable before anything is removed.
        dropped.sort_unstable_by_key(|(sequence, _)| *sequence);
        archive::append(&namespace.data_dir, &dropped)?;
        {
            let held = Instant::now();
            let mut state = lock(&namespace.state);
            for (id, file, length) in &new_files {
                state.files.insert(*id, Arc::clone(file));
                state.log_bytes += length;
            }
            *pause_max = (*pause_max).max(held.elapsed());
        }
        // Point the index at the copies, a batch per lock hold; a key written meanwhile keeps
        // its newer record (its copy is garbage for the next compaction).
        for batch in moves.chunks(COMPACT_SWITCH_BATCH) {
            let held = Instant::now();
            let mut state = lock(&namespace.state);
            for (key, from, to) in batch {
                if let Some(entry) = state.index.get_mut(&key[..]) {
                    if entry.segment == from.segment && entry.offset as u64 == from.offset {
                        entry.segment = to.segment;
                        entry.offset = to.offset as u32;
                    }
                }
            }
            *pause_max = (*pause_max).max(held.elapsed());
        }
        // A snapshot that no longer names the inputs, then the inputs go; no other snapshot
        // (cloned from an older index) can be written in between.
        let writer = lock(&namespace.snapshot_writer);
        let held = Instant::now();
        self.flush_now(namespace)?;
        self.write_snapshot(namespace)?;
        *pause_max = (*pause_max).max(held.elapsed());
        let held = Instant::now();
        let mut state = lock(&namespace.state);
        for segment_id in inputs {
            if let Some(file) = state.files.remove(segment_id) {
                state.log_bytes = state
                    .log_bytes
                    .saturating_sub(file.metadata().map(|m| m.len()).unwrap_or(0));
            }
            state.cache.clear();
            std::fs::remove_file(segment::path(&namespace.data_dir, *segment_id))?;
        }
        *pause_max = (*pause_max).max(held.elapsed());
        drop(state);
        drop(writer);
        sync_dir(&namespace.data_dir)?;
        Ok((moves.len() as u64, dropped.len() as u64))
    }

    /// Writes the namespace's index snapshot now; the caller holds `snapshot_writer`.
    fn write_snapshot(&self, namespace: &Namespace) -> Result<()> {
        let state = lock(&namespace.state);
        if !state.pending.is_empty() || !state.inflight.is_empty() {
            // Records appended since the caller flushed: the snapshot must only cover what is
            // on disk.
            drop(state);
            self.flush_now(namespace)?;
            return self.write_snapshot(namespace);
        }
        save_snapshot(namespace, state)
            .map_err(|e| EngineError::Failed(format!("index snapshot: {e}")))?;
        Ok(())
    }

    /// Starts, in a thread of its own, the compaction of the first namespace that wants one,
    /// unless one is running already.
    fn start_automatic_compaction(self: &Arc<Self>, namespaces: &[Arc<Namespace>]) {
        let Some(namespace) = namespaces
            .iter()
            .find(|n| self.wants_compaction(n))
            .cloned()
        else {
            return;
        };
        if self.compaction_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let engine = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("zdb-compact".into()).spawn(move || {
            tracing::info!(namespace = namespace.name, "garbage over the threshold: compacting");
            if let Err(error) = engine.compact(&namespace) {
                tracing::warn!(namespace = namespace.name, %error, "automatic compaction failed");
            }
            engine.compaction_running.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            self.compaction_running.store(false, Ordering::Release);
        }
    }

    /// Whether a namespace has enough garbage to be compacted by itself.
    fn wants_compaction(&self, namespace: &Namespace) -> bool {
        let ratio = self.config.compact_garbage_ratio;
        if ratio <= 0.0 {
            return false;
        }
        let state = lock(&namespace.state);
        if state.compacting
            || state.damaged_total > 0
            || state.deleted
            || state.log_bytes < COMPACT_LOG_BYTES_MIN
        {
            return false;
        }
        // Live bytes estimated with a 16-byte key per entry: close enough to decide.
        let live = state.live_bytes + state.index.len() as u64 * (HEADER_BYTES as u64 + 16);
        let garbage = state.log_bytes.saturating_sub(live) as f64 / state.log_bytes as f64;
        garbage >= ratio
    }

    /// Flushes everything, syncs, writes index snapshots and stops the flusher.
    pub fn shutdown(&self) {
        {
            let mut signal = lock(&self.signal);
            signal.shutdown = true;
        }
        self.signal_cond.notify_all();
        if let Some(handle) = lock(&self.flusher).take() {
            let _ = handle.join();
        }
    }

    /// The flusher thread: writes what gathered when nobody committed it (large pipelines,
    /// callers of the library that do not commit), makes written records durable at least
    /// every sync interval, and writes index snapshots and starts compactions after syncs.
    fn flusher_loop(self: Arc<Self>) {
        let sync_interval = match self.config.durability {
            Durability::Sync => FLUSHER_TICK_IDLE,
            Durability::Periodic(interval) => interval,
        };
        let mut last_sync = Instant::now();
        loop {
            let (sync_requested, shutdown) = {
                let mut signal = lock(&self.signal);
                while !signal.wake && !signal.shutdown {
                    let dirty = !lock(&self.round).dirty_files.is_empty();
                    let timeout = if dirty {
                        sync_interval
                            .saturating_sub(last_sync.elapsed())
                            .max(Duration::from_millis(1))
                    } else {
                        FLUSHER_TICK_IDLE
                    };
                    let (guard, result) = self
                        .signal_cond
                        .wait_timeout(signal, timeout)
                        .unwrap_or_else(|p| p.into_inner());
                    signal = guard;
                    if result.timed_out() {
                        break;
                    }
                }
                signal.wake = false;
                let sync_requested = std::mem::take(&mut signal.sync_requested);
                (sync_requested, signal.shutdown)
            };
            self.wake_pending.store(false, Ordering::Release);
            let written = self.write_round();
            if sync_requested && written.is_ok() {
                // Failures are published to the waiters by the round itself.
                let _ = self.sync_round(false, &[], false);
            }
            let sync_due = shutdown || last_sync.elapsed() >= sync_interval;
            if written.is_ok() && sync_due {
                let namespaces = self.namespace_list();
                let snapshot = shutdown || self.snapshots_due(&namespaces);
                if self.sync_round(snapshot, &namespaces, shutdown).is_ok() {
                    last_sync = Instant::now();
                    if !shutdown {
                        self.start_automatic_compaction(&namespaces);
                    }
                }
            }
            if shutdown {
                let pending_left = self
                    .namespace_list()
                    .iter()
                    .any(|n| !lock(&n.state).pending.is_empty());
                if !pending_left || self.failure().is_some() {
                    return;
                }
            }
        }
    }

    fn namespace_list(&self) -> Vec<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Makes every write up to `ticket` reach its segment file (and, under `--sync`, the
    /// disk) before the caller acknowledges it, as Redis writes its log before it replies.
    /// The first caller yields once, so that the writes of every client served in this turn
    /// of the event loop join one round, then writes a small round itself or wakes the
    /// flusher, which seals and writes the round (and fdatasyncs it under `--sync`) on its own
    /// thread while the event loop goes on serving; later callers find their writes covered
    /// by that round.
    pub async fn commit(&self, ticket: u64) -> Result<()> {
        self.commit_up_to(ticket, self.config.durability == Durability::Sync)
            .await
    }

    /// Makes every write up to `ticket` durable, whatever the durability policy.
    pub async fn wait_durable(&self, ticket: u64) -> Result<()> {
        self.commit_up_to(ticket, true).await
    }

    async fn commit_up_to(&self, ticket: u64, durable: bool) -> Result<()> {
        if self.committed(ticket, durable)? {
            return Ok(());
        }
        tokio::task::yield_now().await;
        let mut receiver = self.progress.subscribe();
        // A small round costs less on this thread than the two wake-ups of a hand-off to the
        // flusher, and under --sync so does its fdatasync while the disk is fast: the event
        // loop waits it out, as redis's loop does with `appendfsync always`, and the clients
        // that become ready meanwhile all join the next round. A large round (sealing is most
        // of it) is left to the flusher so that the event loop goes on serving meanwhile; so
        // is a small one while another sync round runs or when the last sync was slow.
        let inline_bytes_max = if durable {
            SYNC_INLINE_BYTES_MAX
        } else {
            COMMIT_INLINE_BYTES_MAX
        };
        if !self.committed(ticket, durable)?
            && self.appended_bytes.load(Ordering::Relaxed) <= inline_bytes_max
        {
            if !durable {
                self.write_round()?;
            } else if self.sync_micros_last.load(Ordering::Relaxed) <= SYNC_INLINE_MICROS_MAX {
                if let Ok(gate) = self.sync_gate.try_lock() {
                    self.sync_round_gated(&gate, true, false, &[], false)?;
                }
            }
        }
        if !self.committed(ticket, durable)? {
            {
                let mut signal = lock(&self.signal);
                signal.wake = true;
                signal.sync_requested |= durable;
            }
            self.signal_cond.notify_one();
            receiver
                .wait_for(|p| {
                    p.failed
                        || if durable {
                            p.durable_ticket >= ticket
                        } else {
                            p.written_ticket >= ticket
                        }
                })
                .await
                .map_err(|_| EngineError::Failed("engine stopped".into()))?;
        }
        if self.committed(ticket, durable)? {
            Ok(())
        } else {
            Err(EngineError::Failed("engine stopped".into()))
        }
    }

    /// Whether every write up to `ticket` is written (and durable when `durable`); an error
    /// when the storage failed before that.
    fn committed(&self, ticket: u64, durable: bool) -> Result<bool> {
        let progress = *self.progress.borrow();
        let done = if durable {
            progress.durable_ticket >= ticket
        } else {
            progress.written_ticket >= ticket
        };
        if done {
            return Ok(true);
        }
        if progress.failed {
            return Err(EngineError::Failed(self.failure().unwrap_or_default()));
        }
        Ok(false)
    }

    /// One write round: takes every namespace's pending records, seals the ones not sealed
    /// yet (outside the namespace lock), writes them all in one batch and publishes the
    /// written ticket. Rounds never overlap (`Engine::round`).
    fn write_round(&self) -> Result<()> {
        let mut round = lock(&self.round);
        self.write_round_locked(&mut round)
    }

    fn write_round_locked(&self, round: &mut RoundState) -> Result<()> {
        self.check_failed()?;
        self.appended_bytes.store(0, Ordering::Relaxed);
        // Every write whose ticket is this epoch or older is pending now (see `round_epoch`).
        let target_ticket = self.round_epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let namespaces = self.namespace_list();
        // Take every namespace's pending bytes.
        let mut batch: Vec<FlushWrite> = Vec::new();
        for namespace in &namespaces {
            let mut state = lock(&namespace.state);
            if state.pending.is_empty() || state.sealing {
                continue;
            }
            // Take the pending records, seal what is not sealed yet here, off the lock
            // (readers of those bytes wait on `Namespace::sealed`), then publish them.
            let mut pending = std::mem::take(&mut state.pending);
            pending.retain(|chunk| state.files.contains_key(&chunk.segment));
            let unsealed = pending.iter().any(|c| c.sealed < c.data.len());
            if unsealed {
                let mut head = state.chain_head;
                state.sealing = true;
                for chunk in &pending {
                    state.inflight.push(InflightChunk {
                        segment: chunk.segment,
                        offset: chunk.offset,
                        length: chunk.data.len(),
                        data: None,
                    });
                }
                drop(state);
                for chunk in &mut pending {
                    chunk.seal(&mut head);
                }
                state = lock(&namespace.state);
                state.chain_head = head;
                state.sealing = false;
            }
            for chunk in pending {
                let Some(file) = state.files.get(&chunk.segment).cloned() else {
                    continue;
                };
                let data = Arc::new(chunk.data);
                let slot = state.inflight.iter_mut().find(|c| {
                    c.data.is_none() && c.segment == chunk.segment && c.offset == chunk.offset
                });
                match slot {
                    Some(slot) => slot.data = Some(Arc::clone(&data)),
                    None => state.inflight.push(InflightChunk {
                        segment: chunk.segment,
                        offset: chunk.offset,
                        length: data.len(),
                        data: Some(Arc::clone(&data)),
                    }),
                }
                batch.push((Arc::clone(namespace), file, chunk.offset, data));
            }
            // A chunk whose file went away meanwhile (FLUSH, deletion) is not written.
            state.inflight.retain(|c| c.data.is_some());
            drop(state);
            if unsealed {
                namespace.sealed.notify_all();
            }
        }
        for (_, file, _, _) in &batch {
            if !round.dirty_files.iter().any(|f| Arc::ptr_eq(f, file)) {
                round.dirty_files.push(Arc::clone(file));
            }
        }
        let writes: Vec<WriteRequest<'_>> = batch
            .iter()
            .map(|(_, file, offset, data)| WriteRequest {
                file,
                offset: *offset,
                data,
            })
            .collect();
        let result = if writes.is_empty() {
            Ok(())
        } else {
            self.io.write_batch(&writes, &[])
        };
        drop(writes);
        // Release the written buffers; the read cache keeps them (reads of what was just
        // written are the common case).
        let keep = result.is_ok() && self.cache_budget.share_bytes() > 0;
        for (namespace, _, offset, data) in &batch {
            // A buffer of the usual size is copied for the cache, here off the lock, and goes
            // back to the allocator: the next pending chunk then reuses memory still in the
            // CPU's cache instead of touching fresh memory (keeping those buffers themselves
            // made SET -P 16's appends wait on their stores, about 6% of a SET). A larger one
            // (a large record's own, never reused that way) is kept as it is, unless mostly
            // empty: copying megabytes doubled zdb's CPU per byte of zstor's shard writes.
            let copy = keep.then(|| {
                if data.capacity() <= PENDING_CHUNK_BYTES || data.len() * 2 < data.capacity() {
                    Arc::new(data.as_slice().to_vec())
                } else {
                    Arc::clone(data)
                }
            });
            let mut state = lock(&namespace.state);
            let mut released = 0usize;
            let mut segment = None;
            state.inflight.retain(|chunk| {
                let written = *offset == chunk.offset
                    && chunk.data.as_ref().is_some_and(|d| Arc::ptr_eq(data, d));
                if written {
                    released += chunk.length;
                    segment = Some(chunk.segment);
                }
                !written
            });
            state.pending_bytes = state.pending_bytes.saturating_sub(released);
            if let (Some(segment), Some(copy)) = (segment, copy) {
                state.cache.keep_written(segment, *offset, copy);
            }
        }
        round.rounds += 1;
        let rounds = round.rounds;
        match result {
            Ok(()) => {
                self.progress.send_modify(|p| {
                    p.written_ticket = p.written_ticket.max(target_ticket);
                    p.rounds = rounds;
                });
                Ok(())
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Makes every written record durable: fdatasyncs the files written since the last sync
    /// and publishes the durable ticket. With `snapshot`, holds off write rounds until the
    /// index snapshots that are due are written (a snapshot must cover only durable records).
    fn sync_round(&self, snapshot: bool, namespaces: &[Arc<Namespace>], force: bool) -> Result<()> {
        let gate = lock(&self.sync_gate);
        self.sync_round_gated(&gate, false, snapshot, namespaces, force)
    }

    /// A sync round, `sync_gate` held (its guard is `_gate`); with `write_first`, a write
    /// round first under the same lock of `round`.
    fn sync_round_gated(
        &self,
        _gate: &MutexGuard<'_, ()>,
        write_first: bool,
        snapshot: bool,
        namespaces: &[Arc<Namespace>],
        force: bool,
    ) -> Result<()> {
        let mut round = lock(&self.round);
        if snapshot || write_first {
            // What is pending now would keep its namespace's snapshot waiting (or is what an
            // inline commit is for): write it too.
            self.write_round_locked(&mut round)?;
        }
        self.check_failed()?;
        let written = self.progress.borrow().written_ticket;
        let files = std::mem::take(&mut round.dirty_files);
        let held = if snapshot {
            Some(round)
        } else {
            drop(round);
            None
        };
        if !files.is_empty() {
            let sync: Vec<&File> = files.iter().map(|f| f.as_ref()).collect();
            let started = Instant::now();
            if let Err(error) = self.io.write_batch(&[], &sync) {
                return Err(self.fail(error));
            }
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.sync_micros_last.store(micros, Ordering::Relaxed);
        }
        self.progress.send_modify(|p| {
            p.durable_ticket = p.durable_ticket.max(written);
        });
        if held.is_some() {
            self.snapshots(namespaces, force);
        }
        Ok(())
    }

    /// Records a failed write or sync: from now on writes are refused and waiters are told.
    fn fail(&self, error: io::Error) -> EngineError {
        tracing::error!(%error, "write to disk failed: refusing writes from now on");
        *lock(&self.failure) = Some(error.to_string());
        self.failed.store(true, Ordering::Release);
        self.progress.send_modify(|p| p.failed = true);
        error.into()
    }

    /// Whether any namespace's index snapshot is due (see `Engine::snapshots`).
    fn snapshots_due(&self, namespaces: &[Arc<Namespace>]) -> bool {
        namespaces.iter().any(|namespace| {
            let state = lock(&namespace.state);
            state.changed_since_snapshot
                && !state.deleted
                && (state.snapshot_due
                    || state.last_snapshot.elapsed() >= self.config.snapshot_interval)
        })
    }

    /// Writes the index snapshot of every namespace that is due: a new segment was started, the
    /// interval passed with changes, or the server is stopping. Called right after a sync, so
    /// the covered point is durable; namespaces with records still pending are left for later.
    fn snapshots(&self, namespaces: &[Arc<Namespace>], force: bool) {
        for namespace in namespaces {
            // A compaction writing the snapshot itself: leave it to it (never block the flusher).
            let Ok(_writer) = namespace.snapshot_writer.try_lock() else {
                continue;
            };
            let state = lock(&namespace.state);
            let due = state.changed_since_snapshot
                && (force
                    || state.snapshot_due
                    || state.last_snapshot.elapsed() >= self.config.snapshot_interval);
            if !due || !state.pending.is_empty() || !state.inflight.is_empty() || state.deleted {
                continue;
            }
            if let Err(error) = save_snapshot(namespace, state) {
                tracing::warn!(namespace = namespace.name, %error, "index snapshot not written");
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        lock(&self.signal).shutdown = true;
        self.signal_cond.notify_all();
    }
}

impl Namespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A copy of the namespace's settings.
    pub fn settings(&self) -> Settings {
        lock(&self.state).settings.clone()
    }
}

/// The value of the record at the start of `bytes`, a kept write buffer's: the engine's own
/// bytes, never read back from storage, so served like a pending record (layout and key
/// checked; the checksums guard what comes back from a disk). `None` when anything is
/// unexpected.
fn written_value<'b>(bytes: &'b [u8], key: &[u8]) -> Option<&'b [u8]> {
    let header = record::decode_unsealed(bytes).ok()?;
    let key_end = HEADER_BYTES + header.key_len as usize;
    (bytes.get(HEADER_BYTES..key_end)? == key).then(|| &bytes[key_end..])
}

/// Loads every cache line of the head of `bytes` (header, key and a small value span three
/// or four) and folds them into one byte, for the caller to keep. Each load depends on
/// nothing but the slice, so the misses of several records overlap. A larger value streams
/// in behind its head as it is copied.
fn touch_head(bytes: &[u8]) -> u8 {
    let head = &bytes[..bytes.len().min(PREFETCH_RECORD_BYTES)];
    let mut folded = head.last().copied().unwrap_or(0);
    for line in head.iter().step_by(CACHE_LINE_BYTES) {
        folded ^= *line;
    }
    folded
}

impl NsState {
    /// The bytes of `key`'s record at `entry`, when a kept write buffer holds them.
    fn written_record(&self, key: &[u8], entry: &Entry) -> Option<&[u8]> {
        let start = u64::from(entry.offset);
        let length = (HEADER_BYTES + key.len() + entry.value_len() as usize) as u64;
        self.cache.written(entry.segment, start..start + length)
    }

    fn writable(&self) -> Result<()> {
        if self.deleted {
            return Err(EngineError::NamespaceDeleted);
        }
        if self.settings.freeze {
            return Err(EngineError::Frozen);
        }
        if self.settings.lock {
            return Err(EngineError::Locked);
        }
        Ok(())
    }

    fn readable(&self) -> Result<()> {
        if self.deleted {
            return Err(EngineError::NamespaceDeleted);
        }
        if self.settings.freeze {
            return Err(EngineError::Frozen);
        }
        Ok(())
    }
}

/// A record's place: segment id and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Location {
    segment: u32,
    offset: u64,
}

impl Location {
    /// Cursors are 8 bytes: segment id and offset, both u32 little-endian.
    fn cursor(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8);
        out.extend_from_slice(&self.segment.to_le_bytes());
        out.extend_from_slice(&(self.offset as u32).to_le_bytes());
        out
    }

    fn from_cursor(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != 8 {
            return Err(EngineError::InvalidCursor);
        }
        let segment = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let offset = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as u64;
        Ok(Location { segment, offset })
    }
}

/// Waits until the flusher is not sealing, then seals every pending record, so that
/// `chain_head` is the head of every record appended so far.
fn seal_pending<'a>(
    namespace: &'a Namespace,
    mut state: MutexGuard<'a, NsState>,
) -> MutexGuard<'a, NsState> {
    while state.sealing {
        state = namespace
            .sealed
            .wait(state)
            .unwrap_or_else(|p| p.into_inner());
    }
    let NsState {
        pending,
        chain_head,
        ..
    } = &mut *state;
    for chunk in pending.iter_mut() {
        chunk.seal(chain_head);
    }
    state
}

fn empty_state(settings: Settings, cache_budget: Arc<CacheBudget>) -> NsState {
    NsState {
        settings,
        index: Index::default(),
        cache: ValueCache::new(cache_budget),
        files: BTreeMap::new(),
        active_segment: 1,
        append_offset: SEGMENT_HEADER_BYTES as u64,
        pending: Vec::new(),
        inflight: Vec::new(),
        pending_bytes: 0,
        chain_head: [0u8; LINK_BYTES],
        sealing: false,
        next_sequence: 0,
        next_id: 0,
        record_count: 0,
        live_bytes: 0,
        log_bytes: SEGMENT_HEADER_BYTES as u64,
        damaged: Vec::new(),
        damaged_total: 0,
        changed_since_snapshot: false,
        snapshot_due: false,
        compacting: false,
        last_compaction: None,
        last_snapshot: Instant::now(),
        deleted: false,
    }
}

/// Writes the index snapshot of a namespace from its current state (the caller made sure no
/// record is pending, so the covered point is on disk), then releases and records it.
fn save_snapshot(
    namespace: &Namespace,
    state: MutexGuard<'_, NsState>,
) -> std::result::Result<(), index_file::SnapshotError> {
    let meta = SnapshotMeta {
        covered_segment: state.active_segment,
        covered_offset: state.append_offset,
        next_sequence: state.next_sequence,
        next_id: state.next_id,
        chain_head: state.chain_head,
        record_count: state.record_count,
    };
    let index = state.index.clone();
    drop(state);
    index_file::write(&namespace.index_dir.join(SNAPSHOT_FILE), &meta, &index)?;
    let mut state = lock(&namespace.state);
    state.snapshot_due = false;
    state.last_snapshot = Instant::now();
    state.changed_since_snapshot = state.next_sequence != meta.next_sequence;
    Ok(())
}

fn write_settings(dir: &Path, settings: &Settings) -> io::Result<()> {
    let path = dir.join(SETTINGS_FILE);
    let temporary = dir.join(format!("{SETTINGS_FILE}.tmp"));
    std::fs::write(&temporary, settings.encode())?;
    File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Rebuilds a namespace's state from its index snapshot (when it checks) and its segments.
fn recover(
    io: &dyn StorageIo,
    name: &str,
    data_dir: &Path,
    index_dir: &Path,
    settings: Settings,
    cache_budget: Arc<CacheBudget>,
) -> Result<NsState> {
    let mut state = empty_state(settings, cache_budget);
    // Output of a compaction that was interrupted before it finished writing: never used.
    for entry in std::fs::read_dir(data_dir)? {
        let path = entry?.path();
        if path
            .extension()
            .is_some_and(|e| e == COMPACT_TEMPORARY_EXTENSION)
        {
            tracing::warn!(namespace = name, file = %path.display(), "removing unfinished compaction output");
            std::fs::remove_file(&path)?;
        }
    }
    let mut segment_ids = segment::list(data_dir)?;
    if segment_ids.is_empty() {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(segment::path(data_dir, 1))?;
        io.write_batch(
            &[WriteRequest {
                file: &file,
                offset: 0,
                data: &segment::encode_header(1, now_us()),
            }],
            &[&file],
        )?;
        sync_dir(data_dir)?;
        segment_ids.push(1);
    }
    for &segment_id in &segment_ids {
        let file = File::options()
            .read(true)
            .write(true)
            .open(segment::path(data_dir, segment_id))?;
        state.files.insert(segment_id, Arc::new(file));
    }
    let snapshot = match index_file::read(&index_dir.join(SNAPSHOT_FILE)) {
        Ok(Some((meta, index)))
            if state.files.contains_key(&meta.covered_segment)
                && index
                    .values()
                    .all(|entry| state.files.contains_key(&entry.segment)) =>
        {
            Some((meta, index))
        }
        Ok(Some(_)) => {
            tracing::warn!(
                namespace = name,
                "index snapshot refers to a missing segment: rebuilding from the segments"
            );
            None
        }
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(namespace = name, %error, "index snapshot unusable: rebuilding from the segments");
            None
        }
    };
    let (start_segment, start_offset) = match snapshot {
        Some((meta, index)) => {
            state.index = index;
            state.next_sequence = meta.next_sequence;
            state.next_id = meta.next_id;
            state.chain_head = meta.chain_head;
            state.record_count = meta.record_count;
            state.live_bytes = state.index.values().map(|e| e.value_len() as u64).sum();
            (meta.covered_segment, meta.covered_offset)
        }
        None => (segment_ids[0], SEGMENT_HEADER_BYTES as u64),
    };
    let replay_base = state.record_count;
    let last_segment = *segment_ids.last().unwrap_or(&1);
    let mut log_bytes = 0u64;
    for &segment_id in &segment_ids {
        let file = Arc::clone(&state.files[&segment_id]);
        let file_len = file.metadata()?.len();
        if segment_id < start_segment {
            log_bytes += file_len;
            continue;
        }
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        let header_ok = file_len >= SEGMENT_HEADER_BYTES as u64
            && io.read_exact_at(&file, 0, &mut header).is_ok()
            && segment::decode_header(&header) == Ok(segment_id);
        if !header_ok {
            if segment_id == last_segment && file_len <= SEGMENT_HEADER_BYTES as u64 {
                // A segment whose creation was torn: start it again.
                tracing::warn!(
                    namespace = name,
                    segment = segment_id,
                    "torn segment header rewritten"
                );
                io.write_batch(
                    &[WriteRequest {
                        file: &file,
                        offset: 0,
                        data: &segment::encode_header(segment_id, now_us()),
                    }],
                    &[&file],
                )?;
            } else {
                tracing::error!(
                    namespace = name,
                    segment = segment_id,
                    "segment header damaged; scanning its records anyway"
                );
                state.damaged_total += 1;
                state.damaged.push(Damage {
                    segment: segment_id,
                    offset: 0,
                    length: SEGMENT_HEADER_BYTES as u64,
                    key: None,
                    detail: "segment header damaged".into(),
                });
            }
        }
        let from = if segment_id == start_segment {
            start_offset.max(SEGMENT_HEADER_BYTES as u64)
        } else {
            SEGMENT_HEADER_BYTES as u64
        };
        let is_last = segment_id == last_segment;
        let end = segment::scan(io, &file, from, is_last, |event| match event {
            ScanEvent::Record {
                offset,
                header,
                bytes,
            } => {
                let key = &bytes[HEADER_BYTES..HEADER_BYTES + header.key_len as usize];
                state.chain_head = header.link;
                state.next_sequence = state.next_sequence.max(header.sequence + 1);
                state.record_count += 1;
                if header.is_tombstone() {
                    if let Some(old) = state.index.remove(key) {
                        state.live_bytes -= old.value_len() as u64;
                    }
                } else {
                    let value =
                        &bytes[HEADER_BYTES + header.key_len as usize..header.record_bytes()];
                    if state.settings.mode == Mode::Seq && key.len() == 8 {
                        let mut id = [0u8; 8];
                        id.copy_from_slice(key);
                        state.next_id = state.next_id.max(u64::from_le_bytes(id) + 1);
                    }
                    let entry = Entry::new(
                        segment_id,
                        offset as u32,
                        header.value_len,
                        crc32fast::hash(value),
                    );
                    if let Some(old) = state.index.insert(Key::new(key), entry) {
                        state.live_bytes -= old.value_len() as u64;
                    }
                    state.live_bytes += header.value_len as u64;
                }
            }
            ScanEvent::Damaged {
                offset,
                length,
                header,
                key,
                error,
            } => {
                tracing::error!(namespace = name, segment = segment_id, offset, length, %error, "damaged record kept in place (valid records follow it)");
                state.damaged_total += 1;
                if state.damaged.len() < DAMAGE_REPORTS_MAX {
                    state.damaged.push(Damage {
                        segment: segment_id,
                        offset,
                        length,
                        key: key.clone(),
                        detail: error.to_string(),
                    });
                }
                // A record whose header is intact but whose key or value is not: its key now
                // points at it, so reads report the damage instead of serving an older value.
                if let (Some(header), Some(key)) = (header, key) {
                    if !header.is_tombstone() {
                        let mut entry = Entry::new(segment_id, offset as u32, header.value_len, 0);
                        entry.mark_damaged();
                        if let Some(old) = state.index.insert(Key::new(&key), entry) {
                            state.live_bytes -= old.value_len() as u64;
                        }
                        state.live_bytes += header.value_len as u64;
                    }
                    state.next_sequence = state.next_sequence.max(header.sequence + 1);
                    state.chain_head = header.link;
                    state.record_count += 1;
                }
            }
        })?;
        if let Some(error) = end.torn {
            tracing::warn!(namespace = name, segment = segment_id, offset = end.valid_end, cut_bytes = file_len - end.valid_end, %error, "torn tail cut off");
            file.set_len(end.valid_end)?;
            file.sync_all()?;
        }
        log_bytes += end.valid_end;
        if is_last {
            state.active_segment = segment_id;
            state.append_offset = end.valid_end.max(SEGMENT_HEADER_BYTES as u64);
        }
    }
    state.log_bytes = log_bytes;
    // Whatever was replayed (the tail, or everything after a rebuild) goes into the next
    // snapshot, so the next start reads less.
    let replayed = state.record_count != replay_base;
    state.changed_since_snapshot = replayed;
    state.snapshot_due = replayed;
    Ok(state)
}
