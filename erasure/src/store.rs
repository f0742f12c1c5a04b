//! Chunk stores: where content-addressed chunks (flists) and shards (zstor) live.
//!
//! A [`ChunkStore`] maps an id (a few bytes, usually a hash) to a value. Backends:
//! - `dir:///path`: a local folder, one file per chunk ([`DirStore`]).
//! - `http://host/path`, `https://...`: read-only, same layout as `dir` ([`HttpStore`]).
//! - `zdb://[user:password@]host:port/namespace`: one zdb namespace.
//! - `zstor://CONFIG`: the erasure-coded pipeline over many zdb namespaces.
//!
//! Every backend is opened from its URL with [`open_store`] and used as
//! `Arc<dyn ChunkStore>`. This module knows nothing of shards or objects.

mod dir;
mod faulty;
mod http;
mod url;

use std::fmt::Debug;
use std::sync::Arc;

pub use dir::DirStore;
pub use faulty::{FaultPlan, FaultyStore};
pub use http::HttpStore;
pub use url::{StoreUrl, ZdbUrl};

/// Largest id a store accepts. zdb keys are at most 255 bytes; every backend agrees with it
/// so a chunk that fits one backend fits all of them.
pub const ID_BYTES_MAX: usize = 255;

/// Largest value a `dir` or `http` store reads or writes. zdb's own limit is 8 MiB; local
/// folders and web servers get more room for flists packed with large chunks.
pub const VALUE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Errors of chunk stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store URL could not be understood.
    #[error("invalid store url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The id is empty or longer than [`ID_BYTES_MAX`].
    #[error("invalid chunk id of {len} bytes (must be 1..={ID_BYTES_MAX})")]
    InvalidId {
        /// Length of the id given.
        len: usize,
    },
    /// The value is larger than the backend accepts.
    #[error("value of {len} bytes is larger than {max} bytes allowed by {store}")]
    ValueTooLarge {
        /// Length of the value.
        len: usize,
        /// The backend's limit.
        max: usize,
        /// The store URL.
        store: String,
    },
    /// A write or delete was asked of a read-only store.
    #[error("store {0} is read-only")]
    ReadOnly(String),
    /// The backend does not offer this operation.
    #[error("store {store} does not support {operation}")]
    Unsupported {
        /// The store URL.
        store: String,
        /// What was asked.
        operation: &'static str,
    },
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The backend could not be reached or answered with an error.
    #[error("backend {store}: {reason}")]
    Backend {
        /// The store URL.
        store: String,
        /// What went wrong.
        reason: String,
    },
    /// The backend answered, but the data it returned is corrupt.
    #[error("corrupt data from {store}: {reason}")]
    Corrupt {
        /// The store URL.
        store: String,
        /// What is wrong.
        reason: String,
    },
}

/// Usage figures of one store, as far as the backend knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Number of values stored, when known.
    pub entries: Option<u64>,
    /// Bytes used, when known.
    pub used_bytes: Option<u64>,
    /// Bytes still free, when known.
    pub free_bytes: Option<u64>,
}

/// A key/value store for chunks and shards.
///
/// Implementations check ids with [`check_id`], never hand back bytes they know to be
/// corrupt, and make `put` atomic: a reader sees the old value, the new value or nothing,
/// never a torn value.
#[async_trait::async_trait]
pub trait ChunkStore: Send + Sync + Debug {
    /// Returns the value stored under `id`, or `None` when there is none.
    async fn get(&self, id: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `data` under `id`, replacing any previous value.
    async fn put(&self, id: &[u8], data: &[u8]) -> Result<(), StoreError>;
    /// Tells whether a value is stored under `id`.
    async fn exists(&self, id: &[u8]) -> Result<bool, StoreError>;
    /// Removes the value under `id`; returns whether there was one.
    async fn delete(&self, id: &[u8]) -> Result<bool, StoreError>;
    /// Lists the ids that start with `prefix`, at most `limit` of them, in no set order.
    async fn list(&self, prefix: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let _ = (prefix, limit);
        Err(StoreError::Unsupported {
            store: self.url(),
            operation: "list",
        })
    }
    /// Reports what the backend knows of its size and free space.
    async fn usage(&self) -> Result<StoreUsage, StoreError> {
        Ok(StoreUsage::default())
    }
    /// The store's URL, without any password.
    fn url(&self) -> String;
    /// Whether `put` and `delete` are refused.
    fn is_read_only(&self) -> bool;
}

/// Checks that `id` is a valid chunk id for every backend.
pub fn check_id(id: &[u8]) -> Result<(), StoreError> {
    if id.is_empty() || id.len() > ID_BYTES_MAX {
        return Err(StoreError::InvalidId { len: id.len() });
    }
    Ok(())
}

/// Opens the store a URL names: `dir:///path`, `http(s)://...`, `zdb://...`, `zstor://...`.
///
/// `zdb` and `zstor` stores connect lazily: opening one does not touch the network.
pub fn open_store(url: &str) -> Result<Arc<dyn ChunkStore>, StoreError> {
    match StoreUrl::parse(url)? {
        StoreUrl::Dir(path) => Ok(Arc::new(DirStore::new(path))),
        StoreUrl::Http(base) => Ok(Arc::new(HttpStore::new(base)?)),
        StoreUrl::Zdb(zdb) => crate::zdb::open_zdb_store(zdb),
        StoreUrl::Zstor(target) => crate::zdb::open_zstor_store(&target),
    }
}
