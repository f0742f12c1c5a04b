//! zstor: erasure-coded object storage over many zdb backends.
//!
//! Layers (bottom to top): shard codec (crc32 framed Reed-Solomon shards), chunk pipeline
//! (blake3, zstd, AES-256-GCM), chunk stores (zdb, dir, http, zstor), object metadata, and
//! the operations on top (put, get, check, repair) with the daemon's HTTP API.
//!
//! - [`store`]: the [`store::ChunkStore`] trait and its backends, opened from a URL.
//!
//! Why each dependency is here is said beside it in `Cargo.toml`.

mod aead;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod meta;
pub mod queue;
pub mod store;
mod zdb;
pub mod zstor;

pub use zdb::ZdbStore;

pub use store::{open_store, ChunkStore, StoreError};
