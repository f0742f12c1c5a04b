//! Plaintext copies of whole files, so that the FUSE adapter can hand a file's reads to
//! the kernel (FUSE passthrough) instead of answering each one.
//!
//! Why: the kernel caches a FUSE file's pages in 4 KiB folios while a local filesystem
//! uses large ones, so even fully cached reads of a mount ran at 28% of local ones. With
//! passthrough the kernel reads a local file instead, at local speed, and the mount process
//! is not involved at all.
//!
//! What it owns: naming a copy, writing it from verified chunks, checking one against the
//! flist, and deciding when to make one. Where copies live, their budget and their
//! eviction belong to [`ChunkCache`] (`<cache>/files/`); FUSE belongs to the adapter.
//!
//! - **Name**: a copy is named by a hash of the file's chunk list (size, and each chunk's
//!   offset, length, codec, id and key), so equal files in any flist share one copy.
//! - **Made** only when every chunk of the file is already local (in the memory or disk
//!   cache: typically right after the file was read whole), never by fetching from a store,
//!   by one background thread with a bounded queue. It is written from the chunks'
//!   plaintext, each verified against its id as every fetch is, into a private temporary
//!   file, then read back and checked ([`verify_copy`]) before it is renamed into place:
//!   no half-written or unchecked copy is ever used.
//! - **Checked** against the flist itself: in both codecs a chunk's key is a hash of its
//!   plaintext, so each chunk-sized range of a copy is hashed and compared with the key in
//!   the chunk list, holes must read as zeros, and the length must match. Each process
//!   checks a copy once before its first use (a copy made by another process, or left by
//!   an earlier run or a crash), then trusts it while it stays the same file: the cache
//!   folder is root's alone (0700), and whoever can write there can as well write the page
//!   cache.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, Weak};

use crate::cache::ChunkCache;
use crate::chunk::{self, ChunkRef};
use crate::format::{mode, Flist, FormatError, Inode};
use crate::fs::ChunkSource;

/// Files smaller than this get no copy: the FUSE page cache serves them well enough, and a
/// copy would cost a file in the cache for little gain.
pub const COPY_FILE_BYTES_MIN: u64 = 1024 * 1024;
/// Copies waiting to be made at most; later requests are dropped (and come again on the
/// next whole read or open).
pub const COPY_JOBS_QUEUED_MAX: usize = 64;
/// Bytes read at a time when checking a hole of a copy.
const HOLE_READ_BYTES: usize = 1024 * 1024;
const NAME_CONTEXT: &str = "zos flist plaintext copy name v1";

/// Errors of making or checking a copy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// The flist's metadata for the file is unreadable.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Reading or writing the copy failed.
    #[error("plaintext copy I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A chunk of the file is not in a local cache.
    #[error("chunk at byte {0} is not cached")]
    NotLocal(u64),
    /// The copy differs from the file the flist describes.
    #[error("plaintext copy differs from the flist at byte {offset}: {reason}")]
    Mismatch {
        /// Where the difference starts (a chunk's or hole's first byte).
        offset: u64,
        /// What differs.
        reason: &'static str,
    },
}

/// The name of `file`'s plaintext copy: a hash of its size and chunk list.
pub fn copy_name(flist: &Flist, file: &Inode) -> Result<[u8; 32], FormatError> {
    let mut hasher = blake3::Hasher::new_derive_key(NAME_CONTEXT);
    hasher.update(&file.record.size.to_le_bytes());
    for index in 0..flist.chunk_len(file)? {
        let chunk = flist.chunk(file, index)?;
        hasher.update(&chunk.file_offset.to_le_bytes());
        hasher.update(&chunk.plain_bytes.to_le_bytes());
        hasher.update(&[chunk.codec as u8]);
        hasher.update(&chunk.id);
        hasher.update(&chunk.key);
    }
    Ok(*hasher.finalize().as_bytes())
}

/// Writes `file`'s plaintext into `copy` from chunks the source has locally (each verified
/// by the source); holes are left unwritten. Fails with [`CopyError::NotLocal`] when a
/// chunk would need a store.
pub fn write_copy(
    flist: &Flist,
    file: &Inode,
    source: &dyn ChunkSource,
    copy: &File,
) -> Result<(), CopyError> {
    for index in 0..flist.chunk_len(file)? {
        let chunk = flist.chunk(file, index)?;
        let plain = source
            .fetch_local(&chunk)
            .ok_or(CopyError::NotLocal(chunk.file_offset))?;
        if !chunk::plain_matches(&chunk, &plain) {
            return Err(CopyError::Mismatch {
                offset: chunk.file_offset,
                reason: "the source's plaintext does not match the chunk's key",
            });
        }
        copy.write_all_at(&plain, chunk.file_offset)?;
    }
    Ok(())
}

/// Checks `copy` against `file` as the flist describes it: the length, every chunk's
/// plaintext against its key, and zeros in every hole.
pub fn verify_copy(flist: &Flist, file: &Inode, copy: &File) -> Result<(), CopyError> {
    let size = file.record.size;
    if copy.metadata()?.len() != size {
        return Err(CopyError::Mismatch {
            offset: 0,
            reason: "length differs",
        });
    }
    let mut buffer = Vec::new();
    let mut position = 0u64;
    for index in 0..flist.chunk_len(file)? {
        let chunk: ChunkRef = flist.chunk(file, index)?;
        verify_zeros(copy, position, chunk.file_offset, &mut buffer)?;
        buffer.resize(chunk.plain_bytes as usize, 0);
        copy.read_exact_at(&mut buffer, chunk.file_offset)?;
        if !chunk::plain_matches(&chunk, &buffer) {
            return Err(CopyError::Mismatch {
                offset: chunk.file_offset,
                reason: "bytes do not hash to the chunk's key",
            });
        }
        position = chunk.file_offset + u64::from(chunk.plain_bytes);
    }
    verify_zeros(copy, position, size, &mut buffer)
}

fn verify_zeros(copy: &File, start: u64, end: u64, buffer: &mut Vec<u8>) -> Result<(), CopyError> {
    let mut position = start;
    while position < end {
        let step = (end - position).min(HOLE_READ_BYTES as u64) as usize;
        buffer.resize(step, 0);
        copy.read_exact_at(buffer, position)?;
        if buffer.iter().any(|&byte| byte != 0) {
            return Err(CopyError::Mismatch {
                offset: start,
                reason: "a hole holds data",
            });
        }
        position += step as u64;
    }
    Ok(())
}

/// Identity of a copy on disk: device, inode and birth time, so a copy deleted and made
/// again is checked again.
fn identity(file: &File) -> Option<(u64, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = file.metadata().ok()?;
    let born = metadata
        .created()
        .or_else(|_| metadata.modified())
        .unwrap_or(std::time::UNIX_EPOCH);
    Some((metadata.dev(), metadata.ino(), born))
}

#[derive(Default)]
struct State {
    /// Copies this process checked (or made), by name, with the identity checked.
    verified: HashMap<[u8; 32], (u64, u64, std::time::SystemTime)>,
    /// Inode numbers queued or being made.
    pending: HashSet<u32>,
    /// Inode numbers found with chunks missing; asked again only after a whole read.
    incomplete: HashSet<u32>,
}

/// The plaintext copies of one mounted flist's files.
pub struct Copies {
    flist: Arc<Flist>,
    source: Arc<dyn ChunkSource>,
    cache: Arc<ChunkCache>,
    state: Mutex<State>,
    jobs: SyncSender<u32>,
}

impl std::fmt::Debug for Copies {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Copies").finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Copies {
    /// Copies of `flist`'s files, made from `source`'s local chunks into `cache`, by a
    /// background thread that ends when the returned value is dropped.
    pub fn new(
        flist: Arc<Flist>,
        source: Arc<dyn ChunkSource>,
        cache: Arc<ChunkCache>,
    ) -> std::io::Result<Arc<Self>> {
        let (jobs, queue) = sync_channel::<u32>(COPY_JOBS_QUEUED_MAX);
        let copies = Arc::new(Self {
            flist,
            source,
            cache,
            state: Mutex::new(State::default()),
            jobs,
        });
        let weak: Weak<Self> = Arc::downgrade(&copies);
        std::thread::Builder::new()
            .name("flist-copies".into())
            .spawn(move || {
                while let Ok(number) = queue.recv() {
                    let Some(copies) = weak.upgrade() else {
                        return;
                    };
                    if let Err(error) = copies.make(number) {
                        tracing::warn!(%error, inode = number, "no plaintext copy made");
                    }
                    lock(&copies.state).pending.remove(&number);
                }
            })?;
        Ok(copies)
    }

    fn regular_file(&self, id: u64) -> Option<Inode> {
        let number = u32::try_from(id.checked_sub(1)?).ok()?;
        if u64::from(number) >= self.flist.inode_count() {
            return None;
        }
        let inode = self.flist.inode(number).ok()?;
        let size = inode.record.size;
        (inode.kind() == mode::REGULAR
            && size >= COPY_FILE_BYTES_MIN
            && size <= self.cache.copy_bytes_max())
        .then_some(inode)
    }

    /// Whether file `id` (an fs-core inode id) is one that gets a copy (a regular file of
    /// [`COPY_FILE_BYTES_MIN`] or more that fits the cache's share for copies).
    pub fn wanted(&self, id: u64) -> bool {
        self.regular_file(id).is_some()
    }

    /// The copy of file `id`, open and locked against eviction, if one exists and is
    /// intact. The first use of a copy in this process checks it whole
    /// ([`verify_copy`]); a copy that fails is logged and deleted, and `None` returned.
    pub fn open(&self, id: u64) -> Option<File> {
        let inode = self.regular_file(id)?;
        let name = copy_name(&self.flist, &inode).ok()?;
        let file = self.cache.open_copy(&name)?;
        let identity = identity(&file)?;
        if lock(&self.state).verified.get(&name) == Some(&identity) {
            return Some(file);
        }
        match verify_copy(&self.flist, &inode, &file) {
            Ok(()) => {
                lock(&self.state).verified.insert(name, identity);
                Some(file)
            }
            Err(error) => {
                tracing::error!(%error, copy = %hex::encode(name), "plaintext copy is corrupt; deleting it");
                drop(file);
                self.cache.discard_copy(&name);
                None
            }
        }
    }

    /// Asks for a copy of file `id` to be made in the background, unless it is being made
    /// or was found incomplete since the last whole read.
    pub fn request(&self, id: u64) {
        let Some(inode) = self.regular_file(id) else {
            return;
        };
        {
            let mut state = lock(&self.state);
            if state.incomplete.contains(&inode.number) || !state.pending.insert(inode.number) {
                return;
            }
        }
        if self.jobs.try_send(inode.number).is_err() {
            lock(&self.state).pending.remove(&inode.number);
        }
    }

    /// Notes that file `id` was just read to its end (its chunks are likely all local
    /// now) and asks for its copy.
    pub fn read_to_end(&self, id: u64) {
        if let Some(number) = id.checked_sub(1).and_then(|n| u32::try_from(n).ok()) {
            lock(&self.state).incomplete.remove(&number);
        }
        self.request(id);
    }

    /// Makes the copy of file `id` now, in the caller's thread (tests, and tools that
    /// want it at once). `Ok(false)` when a chunk is not local or the file gets no copy.
    pub fn make_now(&self, id: u64) -> Result<bool, CopyError> {
        match id.checked_sub(1).and_then(|n| u32::try_from(n).ok()) {
            Some(number) => self.make(number),
            None => Ok(false),
        }
    }

    fn make(&self, number: u32) -> Result<bool, CopyError> {
        let Some(inode) = self.regular_file(u64::from(number) + 1) else {
            return Ok(false);
        };
        let name = copy_name(&self.flist, &inode)?;
        if self.cache.open_copy(&name).is_some() {
            return Ok(true);
        }
        for index in 0..self.flist.chunk_len(&inode)? {
            if !self.source.is_local(&self.flist.chunk(&inode, index)?) {
                lock(&self.state).incomplete.insert(number);
                return Ok(false);
            }
        }
        let made = self.cache.put_copy(
            &name,
            inode.record.size,
            |file| {
                write_copy(&self.flist, &inode, self.source.as_ref(), file)
                    .map_err(std::io::Error::other)
            },
            |file| verify_copy(&self.flist, &inode, file).map_err(|error| error.to_string()),
        );
        match made {
            Ok(Some(file)) => {
                if let Some(identity) = identity(&file) {
                    lock(&self.state).verified.insert(name, identity);
                }
                tracing::debug!(copy = %hex::encode(name), bytes = inode.record.size, "plaintext copy made");
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(error) => {
                if error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<CopyError>())
                    .is_some_and(|inner| matches!(inner, CopyError::NotLocal(_)))
                {
                    lock(&self.state).incomplete.insert(number);
                    return Ok(false);
                }
                Err(error.into())
            }
        }
    }
}
