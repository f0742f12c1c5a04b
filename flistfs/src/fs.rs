//! The protocol-free filesystem core: what a mounted flist answers, whoever asks.
//!
//! It knows the open [`Flist`] and a [`ChunkSource`]; it knows nothing of FUSE, virtqueues
//! or stores. Inode ids are the flist's inode numbers plus one, so the root is 1 as FUSE
//! wants. Everything is read-only and immutable, so callers may cache attributes, entries
//! and pages for as long as they like.
//!
//! Errors carry the errno an adapter should answer with: a corrupt flist section or chunk
//! is `EIO` (and a log line), never wrong bytes.

use std::sync::Arc;

use crate::chunk::ChunkRef;
use crate::format::{mode, Flist, FormatError, Inode};

/// The root's id.
pub const ROOT_ID: u64 = 1;
/// Chunks fetched ahead of a read, as a hint to the source.
pub const READ_AHEAD_CHUNKS: u64 = 8;
/// Largest single read the core serves (adapters split larger ones).
pub const READ_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Block size reported in attributes and statfs.
pub const BLOCK_BYTES: u32 = 4096;

/// Where chunk plaintext comes from (the chunk cache over the stores, in a mount).
pub trait ChunkSource: Send + Sync {
    /// The verified plaintext of `chunk`. Errors are logged by the source and become EIO.
    fn fetch(&self, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>, String>;

    /// A hint that `chunks` will be read soon. Sources may fetch them in the background.
    fn prefetch(&self, chunks: &[ChunkRef]) {
        let _ = chunks;
    }

    /// Whether `chunk` can be had without asking a store (it is in a local cache).
    fn is_local(&self, chunk: &ChunkRef) -> bool {
        let _ = chunk;
        false
    }

    /// The verified plaintext of `chunk` if a local cache has it; never asks a store.
    fn fetch_local(&self, chunk: &ChunkRef) -> Option<Arc<Vec<u8>>> {
        let _ = chunk;
        None
    }
}

/// Errors of the core, each with its errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// No such entry (`ENOENT`).
    #[error("no such entry")]
    NotFound,
    /// Not a directory (`ENOTDIR`).
    #[error("not a directory")]
    NotDirectory,
    /// Is a directory (`EISDIR`).
    #[error("is a directory")]
    IsDirectory,
    /// Not a symlink or bad argument (`EINVAL`).
    #[error("invalid argument")]
    InvalidArgument,
    /// No such xattr (`ENODATA`).
    #[error("no such attribute")]
    NoAttribute,
    /// Buffer too small (`ERANGE`).
    #[error("result too large for the buffer")]
    Range,
    /// Permission denied (`EACCES`).
    #[error("permission denied")]
    Access,
    /// Read-only filesystem (`EROFS`).
    #[error("read-only filesystem")]
    ReadOnly,
    /// No data (or hole) at or after the offset (`ENXIO`).
    #[error("no such offset")]
    NoSuchOffset,
    /// Corrupt metadata or data, or a store that failed (`EIO`).
    #[error("I/O error: {0}")]
    Io(String),
}

impl FsError {
    /// The errno adapters answer with.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDirectory => libc::ENOTDIR,
            FsError::IsDirectory => libc::EISDIR,
            FsError::InvalidArgument => libc::EINVAL,
            FsError::NoAttribute => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::Access => libc::EACCES,
            FsError::ReadOnly => libc::EROFS,
            FsError::NoSuchOffset => libc::ENXIO,
            FsError::Io(_) => libc::EIO,
        }
    }
}

impl From<FormatError> for FsError {
    fn from(error: FormatError) -> Self {
        tracing::error!(%error, "flist metadata error");
        FsError::Io(error.to_string())
    }
}

/// Attributes of an inode, in `stat` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode id (flist number + 1).
    pub id: u64,
    /// `st_mode` with type bits.
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Device number.
    pub rdev: u64,
    /// Access time.
    pub atime: (i64, u32),
    /// Modification time.
    pub mtime: (i64, u32),
    /// Status change time.
    pub ctime: (i64, u32),
}

/// One entry handed out by [`FsCore::readdir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirItem {
    /// Offset to resume after this entry.
    pub next_offset: u64,
    /// Inode id.
    pub id: u64,
    /// `st_mode` type bits.
    pub kind: u32,
    /// Name.
    pub name: Vec<u8>,
}

/// What `statfs` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Total 4 KiB blocks (sum of file sizes).
    pub blocks: u64,
    /// Inodes.
    pub files: u64,
    /// Block size.
    pub block_bytes: u32,
    /// Longest name.
    pub name_bytes_max: u32,
}

/// Zeros handed out for holes, a slice at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// One run of a read's answer.
#[derive(Clone)]
enum Piece {
    /// Bytes `range` of a chunk's plaintext.
    Chunk {
        plain: Arc<Vec<u8>>,
        range: std::ops::Range<usize>,
    },
    /// This many zero bytes (a hole).
    Zeros(usize),
}

/// The answer of [`FsCore::read_data`]: the bytes read, in order, as borrowed runs of
/// chunk plaintext and holes, without a copy.
#[derive(Clone, Default)]
pub struct ReadData {
    pieces: Vec<Piece>,
}

impl std::fmt::Debug for ReadData {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ReadData")
            .field("len", &self.len())
            .field("pieces", &self.pieces.len())
            .finish()
    }
}

impl ReadData {
    /// Bytes read.
    pub fn len(&self) -> usize {
        self.pieces
            .iter()
            .map(|piece| match piece {
                Piece::Chunk { range, .. } => range.len(),
                Piece::Zeros(count) => *count,
            })
            .sum()
    }

    /// Whether nothing was read (at or past the end of the file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes as one slice when they come from a single chunk (the common case), or
    /// `None` when they span several chunks or a hole.
    pub fn as_single_slice(&self) -> Option<&[u8]> {
        match self.pieces.as_slice() {
            [] => Some(&[]),
            [Piece::Chunk { plain, range }] => plain.get(range.clone()),
            _ => None,
        }
    }

    /// The bytes as consecutive slices (holes as slices of a static zero buffer), for
    /// vectored writes.
    pub fn slices(&self) -> Vec<&[u8]> {
        let mut out = Vec::with_capacity(self.pieces.len());
        for piece in &self.pieces {
            match piece {
                Piece::Chunk { plain, range } => {
                    out.push(plain.get(range.clone()).unwrap_or_default())
                }
                Piece::Zeros(count) => {
                    let mut left = *count;
                    while left > 0 {
                        let step = left.min(ZEROS.len());
                        out.push(&ZEROS[..step]);
                        left -= step;
                    }
                }
            }
        }
        out
    }

    /// Copies the bytes into the front of `out` and returns how many were copied (the
    /// smaller of [`ReadData::len`] and `out.len()`).
    pub fn copy_to(&self, out: &mut [u8]) -> usize {
        let mut written = 0;
        for slice in self.slices() {
            let count = slice.len().min(out.len() - written);
            out[written..written + count].copy_from_slice(&slice[..count]);
            written += count;
            if count < slice.len() {
                break;
            }
        }
        written
    }

    /// The bytes in one owned buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        if let Some(slice) = self.as_single_slice() {
            return slice.to_vec();
        }
        let mut out = Vec::with_capacity(self.len());
        for slice in self.slices() {
            out.extend_from_slice(slice);
        }
        out
    }
}

/// The filesystem core over one flist.
pub struct FsCore {
    flist: Arc<Flist>,
    chunks: Arc<dyn ChunkSource>,
    /// Where the last read of a file ended, by inode id modulo the slot count: tells
    /// sequential reads (fetch ahead) from random ones (fetch only what is asked).
    read_ends: Vec<std::sync::Mutex<(u64, u64)>>,
}

/// Slots remembering where recent reads ended (files read at once, roughly).
const READ_END_SLOTS: usize = 256;

impl std::fmt::Debug for FsCore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FsCore")
            .field("inodes", &self.flist.inode_count())
            .finish()
    }
}

fn to_number(id: u64) -> Result<u32, FsError> {
    id.checked_sub(1)
        .and_then(|number| u32::try_from(number).ok())
        .ok_or(FsError::NotFound)
}

impl FsCore {
    /// A core over `flist`, reading content from `chunks`.
    pub fn new(flist: Arc<Flist>, chunks: Arc<dyn ChunkSource>) -> Self {
        Self {
            flist,
            chunks,
            read_ends: (0..READ_END_SLOTS)
                .map(|_| std::sync::Mutex::new((0, 0)))
                .collect(),
        }
    }

    /// The flist served.
    pub fn flist(&self) -> &Arc<Flist> {
        &self.flist
    }

    fn inode(&self, id: u64) -> Result<Inode, FsError> {
        let number = to_number(id)?;
        if u64::from(number) >= self.flist.inode_count() {
            return Err(FsError::NotFound);
        }
        Ok(self.flist.inode(number)?)
    }

    fn attr_of(inode: &Inode) -> Attr {
        let record = &inode.record;
        Attr {
            id: u64::from(inode.number) + 1,
            mode: record.mode,
            nlink: record.nlink,
            uid: record.uid,
            gid: record.gid,
            size: record.size,
            blocks: record.size.div_ceil(512),
            rdev: record.rdev,
            atime: (record.atime_sec, record.atime_nsec),
            mtime: (record.mtime_sec, record.mtime_nsec),
            ctime: (record.ctime_sec, record.ctime_nsec),
        }
    }

    /// Attributes of `id`.
    pub fn getattr(&self, id: u64) -> Result<Attr, FsError> {
        Ok(Self::attr_of(&self.inode(id)?))
    }

    /// Finds `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        let directory = self.inode(parent)?;
        if !directory.is_dir() {
            return Err(FsError::NotDirectory);
        }
        let number = match name {
            b"." => Some(directory.number),
            b".." => Some(directory.record.parent),
            _ => self.flist.lookup(&directory, name)?,
        };
        let number = number.ok_or(FsError::NotFound)?;
        Ok(Self::attr_of(&self.flist.inode(number)?))
    }

    /// Lists directory `id` from `offset` (0 is `.`, 1 is `..`, then the entries), calling
    /// `emit` for each until it returns `false` (the caller's buffer is full).
    pub fn readdir(
        &self,
        id: u64,
        offset: u64,
        mut emit: impl FnMut(DirItem) -> bool,
    ) -> Result<(), FsError> {
        let directory = self.inode(id)?;
        if !directory.is_dir() {
            return Err(FsError::NotDirectory);
        }
        let entry_count = self.flist.dir_len(&directory)?;
        let mut position = offset;
        while position < entry_count + 2 {
            let item = match position {
                0 => DirItem {
                    next_offset: 1,
                    id,
                    kind: mode::DIRECTORY,
                    name: b".".to_vec(),
                },
                1 => DirItem {
                    next_offset: 2,
                    id: u64::from(directory.record.parent) + 1,
                    kind: mode::DIRECTORY,
                    name: b"..".to_vec(),
                },
                _ => {
                    let entry = self.flist.dir_entry(&directory, position - 2)?;
                    let child = self.flist.inode(entry.inode)?;
                    DirItem {
                        next_offset: position + 1,
                        id: u64::from(entry.inode) + 1,
                        kind: child.kind(),
                        name: entry.name.to_vec(),
                    }
                }
            };
            if !emit(item) {
                break;
            }
            position += 1;
        }
        Ok(())
    }

    /// The target of symlink `id`.
    pub fn readlink(&self, id: u64) -> Result<Vec<u8>, FsError> {
        let inode = self.inode(id)?;
        if inode.kind() != mode::SYMLINK {
            return Err(FsError::InvalidArgument);
        }
        Ok(self.flist.symlink_target(&inode)?.to_vec())
    }

    /// Checks that `id` may be opened (regular files only for reading; no writes).
    pub fn open(&self, id: u64, write: bool) -> Result<(), FsError> {
        let inode = self.inode(id)?;
        if write {
            return Err(FsError::ReadOnly);
        }
        if inode.is_dir() {
            return Err(FsError::IsDirectory);
        }
        Ok(())
    }

    /// Reads up to `size` bytes of file `id` at `offset`. Holes read as zeros; a chunk that
    /// cannot be fetched or fails verification is `EIO`.
    pub fn read(&self, id: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        Ok(self.read_data(id, offset, size)?.to_vec())
    }

    /// Like [`FsCore::read`], without copying: the answer borrows the chunks' plaintext
    /// (shared with the chunk source's memory cache), so an adapter can hand the bytes
    /// straight to the kernel or into guest memory. Most reads lie inside one chunk, and
    /// then [`ReadData::as_single_slice`] gives them as one slice.
    pub fn read_data(&self, id: u64, offset: u64, size: u32) -> Result<ReadData, FsError> {
        let inode = self.inode(id)?;
        if inode.is_dir() {
            return Err(FsError::IsDirectory);
        }
        if inode.kind() != mode::REGULAR {
            return Err(FsError::InvalidArgument);
        }
        let file_bytes = inode.record.size;
        if offset >= file_bytes {
            return Ok(ReadData::default());
        }
        let end = file_bytes.min(offset + u64::from(size.min(READ_BYTES_MAX)));
        let mut pieces = Vec::new();
        let mut position = offset;
        let mut last_index = None;
        while position < end {
            match self.flist.chunk_at(&inode, position)? {
                Some((index, chunk)) => {
                    let plain = self.chunks.fetch(&chunk).map_err(FsError::Io)?;
                    let chunk_end = chunk.file_offset + u64::from(chunk.plain_bytes);
                    let copy_end = end.min(chunk_end);
                    let from = (position - chunk.file_offset) as usize;
                    let to = (copy_end - chunk.file_offset) as usize;
                    if plain.get(from..to).is_none() {
                        return Err(FsError::Io("chunk shorter than its record".into()));
                    }
                    pieces.push(Piece::Chunk {
                        plain,
                        range: from..to,
                    });
                    position = copy_end;
                    last_index = Some(index);
                }
                None => {
                    // A hole: zeros up to the next chunk or the end.
                    let next_start = self.next_chunk_start(&inode, position)?.unwrap_or(end);
                    let hole_end = end.min(next_start.max(position + 1));
                    pieces.push(Piece::Zeros((hole_end - position) as usize));
                    position = hole_end;
                }
            }
        }
        if let Some(index) = last_index {
            if self.is_sequential(id, offset, end) {
                self.read_ahead(&inode, index)?;
            }
        }
        Ok(ReadData { pieces })
    }

    /// Whether a read of `offset..end` of file `id` continues an earlier one (starts at
    /// the file's beginning, or within a few reads of where the last one ended: the
    /// kernel's read-ahead requests may arrive a little out of order). Records `end`.
    fn is_sequential(&self, id: u64, offset: u64, end: u64) -> bool {
        const NEARBY_BYTES: u64 = 8 * 1024 * 1024;
        let slot = &self.read_ends[(id % READ_END_SLOTS as u64) as usize];
        let mut last = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let sequential = offset == 0 || (last.0 == id && offset.abs_diff(last.1) <= NEARBY_BYTES);
        if last.0 != id || end > last.1 || !sequential {
            *last = (id, end);
        }
        sequential
    }

    fn next_chunk_start(&self, inode: &Inode, position: u64) -> Result<Option<u64>, FsError> {
        // First chunk whose start is after `position` (binary search on starts).
        let (mut low, mut high) = (0u64, self.flist.chunk_len(inode)?);
        while low < high {
            let middle = low + (high - low) / 2;
            if self.flist.chunk(inode, middle)?.file_offset <= position {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        if low < self.flist.chunk_len(inode)? {
            Ok(Some(self.flist.chunk(inode, low)?.file_offset))
        } else {
            Ok(None)
        }
    }

    fn read_ahead(&self, inode: &Inode, index: u64) -> Result<(), FsError> {
        let count = self.flist.chunk_len(inode)?;
        let upcoming: Vec<ChunkRef> = (index + 1..count.min(index + 1 + READ_AHEAD_CHUNKS))
            .map(|next| self.flist.chunk(inode, next))
            .collect::<Result<_, _>>()?;
        if !upcoming.is_empty() {
            self.chunks.prefetch(&upcoming);
        }
        Ok(())
    }

    /// `lseek(2)` with `SEEK_DATA` (`hole == false`) or `SEEK_HOLE`: the first offset at
    /// or after `offset` that holds data, or that is in a hole (the end of the file counts
    /// as one). Lets `cp` and `tar` keep sparse files sparse.
    pub fn seek_data_or_hole(&self, id: u64, offset: u64, hole: bool) -> Result<u64, FsError> {
        let inode = self.inode(id)?;
        if inode.kind() != mode::REGULAR {
            return Err(FsError::InvalidArgument);
        }
        let size = inode.record.size;
        if offset >= size {
            return Err(FsError::NoSuchOffset);
        }
        let mut position = offset;
        loop {
            let in_chunk = self.flist.chunk_at(&inode, position)?;
            match (in_chunk, hole) {
                (None, true) | (Some(_), false) => return Ok(position),
                (Some((_, chunk)), true) => {
                    position = chunk.file_offset + u64::from(chunk.plain_bytes)
                }
                (None, false) => match self.next_chunk_start(&inode, position)? {
                    Some(start) => position = start,
                    None => return Err(FsError::NoSuchOffset),
                },
            }
            if position >= size {
                return if hole {
                    Ok(size)
                } else {
                    Err(FsError::NoSuchOffset)
                };
            }
        }
    }

    /// The value of xattr `name` of `id`.
    pub fn getxattr(&self, id: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        let inode = self.inode(id)?;
        self.flist
            .xattrs(&inode)?
            .into_iter()
            .find(|(candidate, _)| *candidate == name)
            .map(|(_, value)| value.to_vec())
            .ok_or(FsError::NoAttribute)
    }

    /// The xattr names of `id`, each followed by a NUL, as `listxattr(2)` returns them.
    pub fn listxattr(&self, id: u64) -> Result<Vec<u8>, FsError> {
        let inode = self.inode(id)?;
        let mut out = Vec::new();
        for (name, _) in self.flist.xattrs(&inode)? {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    /// `access(2)` for a caller with `uid` and `gid`: read and execute by mode bits, writes
    /// never (root may read anything and execute what has any execute bit).
    pub fn access(&self, id: u64, mask: i32, uid: u32, gid: u32) -> Result<(), FsError> {
        let attr = self.getattr(id)?;
        if mask & libc::W_OK != 0 {
            return Err(FsError::ReadOnly);
        }
        let permissions = attr.mode & 0o777;
        let wanted = (if mask & libc::R_OK != 0 { 4 } else { 0 })
            | (if mask & libc::X_OK != 0 { 1 } else { 0 });
        if uid == 0 {
            let executable =
                permissions & 0o111 != 0 || attr.mode & mode::TYPE_MASK == mode::DIRECTORY;
            return if wanted & 1 == 0 || executable {
                Ok(())
            } else {
                Err(FsError::Access)
            };
        }
        let granted = if uid == attr.uid {
            permissions >> 6
        } else if gid == attr.gid {
            permissions >> 3
        } else {
            permissions
        } & 7;
        if granted & wanted == wanted {
            Ok(())
        } else {
            Err(FsError::Access)
        }
    }

    /// Filesystem totals.
    pub fn statfs(&self) -> StatFs {
        StatFs {
            blocks: self.flist.file_bytes().div_ceil(u64::from(BLOCK_BYTES)),
            files: self.flist.inode_count(),
            block_bytes: BLOCK_BYTES,
            name_bytes_max: crate::format::NAME_BYTES_MAX as u32,
        }
    }
}
