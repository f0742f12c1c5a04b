//! flistfs: the flist image format, pack and unpack, the fs core and its FUSE adapter.
//!
//! Layers, bottom to top; a layer knows only those below it:
//!
//! - [`sys`]: the only module that maps memory (memmap2).
//! - [`chunk`]: how file content is sealed into stored chunks and opened again
//!   (convergent AES-256-GCM; also rfs's codec).
//! - [`format`]: the flist file itself: a checksummed header and memory-mapped,
//!   individually checksummed sections (inodes, sorted directory entries, chunk lists,
//!   xattrs, tags, strings). [`format::FlistBuilder`] writes one, [`format::Flist`] reads one
//!   in place without trusting any unchecked offset.
//! - [`rfs`]: reads rfs `.fl` flists (SQLite) into our format, and writes them (tests,
//!   `convert`).
//! - [`fs`]: the protocol-free filesystem core (lookup, getattr, readdir, readlink, read,
//!   xattrs, statfs) over an open flist and a [`fs::ChunkSource`]. FUSE and virtio-fs are
//!   thin adapters over it.
//! - [`cache`] and [`source`]: the machine-wide chunk cache on disk and the chunk source
//!   of a mount (stores, caches, single flight, read-ahead).
//! - [`copies`]: plaintext copies of whole files in the cache folder, made from verified
//!   chunks and checked against the flist, for FUSE passthrough.
//! - [`fuse`]: the FUSE adapter over the core; files with a copy are opened in passthrough
//!   (the kernel reads the copy itself).
//!
//! Data flows one way on each path: pack walks a source tree, seals chunks and writes the
//! flist; a mount maps the flist, and each read asks the chunk source for the chunks it
//! covers.
//!
//! Why each dependency: memmap2 (mapping), blake3 (checksums, ids, keys), ring's AES-256-GCM
//! and zstd (our chunk codec), rusqlite with bundled SQLite (rfs flists are SQLite files), blake2 and
//! snap (rfs's chunk codec), thiserror and tracing (errors and logs).

pub mod cache;
pub mod chunk;
pub mod copies;
pub mod format;
pub mod fs;
pub mod fuse;
pub mod oci;
pub mod pack;
pub mod rfs;
pub mod source;
pub mod sys;
pub mod unpack;

pub use format::{Flist, FlistBuilder, FormatError, InodeMeta};

/// Errors of [`open_any`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Our format refused the file.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The rfs reader refused the file.
    #[error(transparent)]
    Rfs(#[from] rfs::RfsError),
}

/// Opens an flist of either kind: ours (mapped in place) or rfs's (SQLite, read into our
/// format in memory).
pub fn open_any(path: &std::path::Path) -> Result<Flist, OpenError> {
    if rfs::is_rfs(path) {
        let builder = rfs::read(path)?;
        Ok(Flist::from_bytes(builder.finish()?)?)
    } else {
        Ok(Flist::open(path)?)
    }
}
