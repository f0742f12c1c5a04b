//! `zos vm fs serve`: opens an flist and its chunk source, binds the socket once, and serves
//! one VMM connection after another until signalled (or after the first with `once`).
//!
//! The socket stays bound for the daemon's whole life, so the next VMM never finds a socket
//! file with nobody behind it (the loop is [`crate::serve`]'s, shared with virtio-blk). The
//! flist, the chunk source (stores, on-disk cache, memory
//! cache) and the worker pool live as long as the daemon: a second guest finds the chunks
//! the first one read already cached. Each connection gets a fresh backend (queues, memory
//! map).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flistfs::cache::ChunkCache;
use flistfs::fs::{ChunkSource, FsCore};
use flistfs::source::{Route, SourceConfig, StoreSource};
use vhost::vhost_user::Listener;

use super::backend::{FsBackend, FsPool};
use super::session::{Session, SessionConfig};
use crate::serve::{ConnectionError, SocketError};
use crate::sys;

/// Default bound of the on-disk chunk cache (the same as `zos flist mount`'s).
pub const CACHE_BYTES_DEFAULT: u64 = flistfs::cache::CACHE_BYTES_DEFAULT;

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct FsServeConfig {
    /// The flist (ours or rfs's).
    pub flist: PathBuf,
    /// The unix socket to listen on.
    pub socket: PathBuf,
    /// On-disk chunk cache folder (None: memory cache only).
    pub cache: Option<PathBuf>,
    /// Bound of the on-disk cache.
    pub cache_bytes: u64,
    /// Store URLs (`URL` or `XX-YY=URL`) instead of the flist's own routes.
    pub stores: Vec<String>,
    /// Time one store call may take before the read fails with EIO.
    pub store_timeout: Duration,
    /// Worker threads answering requests.
    pub workers: usize,
    /// Request queues offered (QEMU's `num-request-queues` may not exceed it).
    pub request_queues: usize,
    /// Serve one VMM connection, then return.
    pub once: bool,
    /// Files of at least this size bypass the guest's page cache (`FOPEN_DIRECT_IO`).
    pub direct_io_file_bytes_min: u64,
    /// Bound of the decrypted chunks kept in memory.
    pub memory_cache_bytes: u64,
}

/// Default bound of the decrypted chunks kept in memory: larger than the FUSE mount's,
/// because a guest reading a file larger than it sequentially would otherwise miss on
/// every chunk (LRU evicts each chunk just before it is needed again).
pub const MEMORY_CACHE_BYTES_DEFAULT: u64 = 512 << 20;

impl FsServeConfig {
    /// Defaults for everything but the flist and the socket.
    pub fn new(flist: PathBuf, socket: PathBuf) -> Self {
        Self {
            flist,
            socket,
            cache: None,
            cache_bytes: CACHE_BYTES_DEFAULT,
            stores: Vec::new(),
            store_timeout: Duration::from_millis(flistfs::source::STORE_TIMEOUT_MS_DEFAULT),
            workers: super::backend::WORKERS_DEFAULT,
            request_queues: super::backend::REQUEST_QUEUES_DEFAULT,
            once: false,
            direct_io_file_bytes_min: super::session::DIRECT_IO_FILE_BYTES_MIN_DEFAULT,
            memory_cache_bytes: MEMORY_CACHE_BYTES_DEFAULT,
        }
    }
}

/// Errors of the serve loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsServeError {
    #[error("opening flist {path}: {message}")]
    Flist { path: PathBuf, message: String },
    #[error("store {url}: {message}")]
    Store { url: String, message: String },
    #[error("flist {0} names no store route (pass --store)")]
    NoStore(PathBuf),
    #[error("chunk cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The socket is served by another process, is no socket, or cannot be bound.
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("vhost-user: {0}")]
    VhostUser(String),
    #[error("setup: {0}")]
    Setup(std::io::Error),
}

impl From<ConnectionError> for FsServeError {
    fn from(error: ConnectionError) -> Self {
        match error {
            ConnectionError::VhostUser(message) => FsServeError::VhostUser(message),
            ConnectionError::Setup(source) => FsServeError::Setup(source),
        }
    }
}

/// Opens the flist and its chunk source and builds the session that answers the guest.
pub fn open_session(config: &FsServeConfig) -> Result<Session, FsServeError> {
    let flist = flistfs::open_any(&config.flist).map_err(|error| FsServeError::Flist {
        path: config.flist.clone(),
        message: error.to_string(),
    })?;
    let texts: Vec<String> = if config.stores.is_empty() {
        flist
            .tags()
            .map_err(|error| FsServeError::Flist {
                path: config.flist.clone(),
                message: error.to_string(),
            })?
            .into_iter()
            .filter(|(key, _)| *key == b"route")
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .collect()
    } else {
        config.stores.clone()
    };
    let mut routes = Vec::with_capacity(texts.len());
    for text in &texts {
        let route = Route::parse(text).map_err(|error| FsServeError::Store {
            url: text.clone(),
            message: error.to_string(),
        })?;
        let store =
            erasure::store::open_store(&route.url).map_err(|error| FsServeError::Store {
                url: flistfs::source::strip_password(&route.url),
                message: error.to_string(),
            })?;
        routes.push((route, store));
    }
    if routes.is_empty() && flist.chunk_count() > 0 {
        return Err(FsServeError::NoStore(config.flist.clone()));
    }
    let cache = match &config.cache {
        Some(directory) => Some(Arc::new(
            ChunkCache::open(directory, config.cache_bytes).map_err(|source| {
                FsServeError::Cache {
                    path: directory.clone(),
                    source,
                }
            })?,
        )),
        None => None,
    };
    let source_config = SourceConfig {
        store_timeout: config.store_timeout,
        memory_cache_bytes: config.memory_cache_bytes,
    };
    let source: Arc<dyn ChunkSource> =
        Arc::new(StoreSource::new(routes, cache, source_config).map_err(FsServeError::Setup)?);
    let core = FsCore::new(Arc::new(flist), source);
    Ok(Session::new(
        core,
        SessionConfig {
            direct_io_file_bytes_min: config.direct_io_file_bytes_min,
        },
    ))
}

/// Serves the flist until SIGINT/SIGTERM (which end the process after removing the
/// socket), or for one connection with `once`.
pub fn serve(config: &FsServeConfig) -> Result<(), FsServeError> {
    // Signals are taken by one thread with sigwait; block them before any thread starts.
    sys::block_termination_signals().map_err(FsServeError::Setup)?;
    let session = Arc::new(open_session(config)?);
    crate::serve::check_socket_path(&config.socket)?;
    let mut listener = crate::serve::bind(&config.socket)?;
    let pool = FsPool::new(session.clone(), config.workers).map_err(FsServeError::Setup)?;
    tracing::info!(
        flist = %config.flist.display(),
        socket = %config.socket.display(),
        inodes = session.core().flist().inode_count(),
        workers = config.workers,
        request_queues = config.request_queues,
        "serving vhost-user-fs"
    );
    crate::serve::exit_on_termination_signal(config.socket.clone(), || {})
        .map_err(FsServeError::Setup)?;
    loop {
        serve_connection(config, &pool, &mut listener)?;
        if config.once {
            let _ = std::fs::remove_file(&config.socket);
            pool.stop();
            return Ok(());
        }
    }
}

fn serve_connection(
    config: &FsServeConfig,
    pool: &Arc<FsPool>,
    listener: &mut Listener,
) -> Result<(), FsServeError> {
    let memory = crate::serve::new_guest_memory();
    let backend = FsBackend::new(pool.clone(), config.request_queues, memory.clone());
    crate::serve::serve_connection("zos-vm-fs", backend, memory, listener, |_| Ok(()))?;
    Ok(())
}
