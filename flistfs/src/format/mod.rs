//! The flist file format, version 1: layout constants, the records, and the errors.
//!
//! `docs/design.md` has the byte diagrams. This module owns the bytes; it knows nothing of
//! chunk stores, caches or FUSE. [`writer`] builds a file from a tree in memory, [`reader`]
//! opens one without trusting any offset it has not checked.

pub mod reader;
pub mod writer;

pub use reader::{DirEntry, Flist, Inode};
pub use writer::{FlistBuilder, InodeMeta};

use crate::chunk::ChunkRef;

/// First 8 bytes of every flist.
pub const MAGIC: [u8; 8] = *b"ZOSFLIST";
/// The only version this code reads and writes.
pub const VERSION: u32 = 1;
/// Bytes of the fixed part of the header, before the section table.
pub const HEADER_FIXED_BYTES: usize = 48;
/// Bytes of one section table entry.
pub const SECTION_ENTRY_BYTES: usize = 56;
/// Bytes of the header checksum that closes the header.
pub const HEADER_CHECKSUM_BYTES: usize = 32;
/// Sections a version 1 file has, each exactly once.
pub const SECTION_COUNT: usize = 6;
/// Bytes of one inode record.
pub const INODE_BYTES: usize = 96;
/// Bytes of one directory entry record.
pub const DIRENT_BYTES: usize = 16;
/// Bytes of one chunk record.
pub const CHUNK_RECORD_BYTES: usize = 88;
/// Bytes of one xattr or tag record (both are name/value pairs).
pub const PAIR_BYTES: usize = 24;
/// Sections start at multiples of this, so records can be read in place.
pub const SECTION_ALIGN_BYTES: usize = 8;

/// Longest file name, as on Linux.
pub const NAME_BYTES_MAX: usize = 255;
/// Longest symlink target.
pub const SYMLINK_TARGET_BYTES_MAX: usize = 4096;
/// Longest xattr name, as on Linux.
pub const XATTR_NAME_BYTES_MAX: usize = 255;
/// Largest xattr value, as on Linux.
pub const XATTR_VALUE_BYTES_MAX: usize = 64 * 1024;
/// Longest tag key.
pub const TAG_KEY_BYTES_MAX: usize = 255;
/// Largest tag value.
pub const TAG_VALUE_BYTES_MAX: usize = 64 * 1024;
/// Most inodes one flist may hold (inode numbers are u32 on disk).
pub const INODE_COUNT_MAX: u64 = u32::MAX as u64 - 1;

/// Header flags a version 1 reader understands (none yet); any other bit is refused.
pub const FLAGS_KNOWN: u32 = 0;

/// The root directory is always inode 0.
pub const ROOT_INODE: u32 = 0;

/// What a section holds. The discriminant is the on-disk `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SectionKind {
    /// Fixed-size inode records, indexed by inode number.
    Inodes = 1,
    /// Directory entries, one contiguous run per directory, sorted by name bytes.
    Dirents = 2,
    /// Chunk records, one contiguous run per regular file, sorted by file offset.
    Chunks = 3,
    /// Extended attributes, one contiguous run per inode.
    Xattrs = 4,
    /// Tags of the whole flist (metadata and store routes).
    Tags = 5,
    /// Bytes referenced by the others: names, symlink targets, xattr and tag data.
    Strings = 6,
}

impl SectionKind {
    /// All kinds, in the order a writer lays them out.
    pub const ALL: [SectionKind; SECTION_COUNT] = [
        SectionKind::Inodes,
        SectionKind::Dirents,
        SectionKind::Chunks,
        SectionKind::Xattrs,
        SectionKind::Tags,
        SectionKind::Strings,
    ];

    /// Position in [`SectionKind::ALL`].
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// The kind of an on-disk value, if known.
    pub fn from_u32(value: u32) -> Option<Self> {
        Self::ALL.get((value as usize).wrapping_sub(1)).copied()
    }

    /// Record size in bytes, or `None` for the byte area.
    pub fn record_bytes(self) -> Option<usize> {
        match self {
            SectionKind::Inodes => Some(INODE_BYTES),
            SectionKind::Dirents => Some(DIRENT_BYTES),
            SectionKind::Chunks => Some(CHUNK_RECORD_BYTES),
            SectionKind::Xattrs | SectionKind::Tags => Some(PAIR_BYTES),
            SectionKind::Strings => None,
        }
    }

    /// Lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Inodes => "inodes",
            SectionKind::Dirents => "dirents",
            SectionKind::Chunks => "chunks",
            SectionKind::Xattrs => "xattrs",
            SectionKind::Tags => "tags",
            SectionKind::Strings => "strings",
        }
    }
}

/// Errors of opening or reading an flist.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The file could not be read.
    #[error("reading the flist: {0}")]
    Io(#[from] std::io::Error),
    /// The file is shorter than what its structure needs.
    #[error("truncated flist: {0}")]
    Truncated(String),
    /// The first bytes are not an flist's.
    #[error("not an flist: bad magic {0:02x?} (expected \"ZOSFLIST\")")]
    BadMagic([u8; 8]),
    /// A version this code does not read.
    #[error("flist version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u32),
    /// The header's own checksum does not match.
    #[error("flist header checksum mismatch: the header is corrupt")]
    HeaderChecksum,
    /// The header is structurally wrong.
    #[error("invalid flist header: {0}")]
    InvalidHeader(String),
    /// A section's checksum does not match its bytes.
    #[error("flist section {0} fails its checksum: the flist is corrupt")]
    SectionChecksum(&'static str),
    /// A record points outside what it may point to, or holds an impossible value.
    #[error("corrupt flist: {0}")]
    Corrupt(String),
    /// What a writer was given cannot be written.
    #[error("invalid flist content: {0}")]
    Invalid(String),
}

/// The decoded fields of an inode record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InodeRecord {
    /// `st_mode`, with the file type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count (directories: 2 + subdirectories; files: number of names).
    pub nlink: u32,
    /// Size in bytes (regular files: content; symlinks: target length).
    pub size: u64,
    /// Device number of character and block devices.
    pub rdev: u64,
    /// Access time, seconds.
    pub atime_sec: i64,
    /// Modification time, seconds.
    pub mtime_sec: i64,
    /// Status change time, seconds.
    pub ctime_sec: i64,
    /// Access time, nanoseconds.
    pub atime_nsec: u32,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Status change time, nanoseconds.
    pub ctime_nsec: u32,
    /// Parent directory (the root is its own parent).
    pub parent: u32,
    /// Directories: first dirent; regular files: first chunk; symlinks: target offset in
    /// strings; others: 0.
    pub data_start: u64,
    /// Directories: dirent count; regular files: chunk count; symlinks: target length.
    pub data_count: u32,
    /// Number of xattrs.
    pub xattr_count: u32,
    /// First xattr record.
    pub xattr_start: u64,
}

pub(crate) fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(buf)
}

pub(crate) fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(buf)
}

pub(crate) fn i64_at(bytes: &[u8], offset: usize) -> i64 {
    u64_at(bytes, offset) as i64
}

impl InodeRecord {
    /// Encodes into exactly [`INODE_BYTES`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&self.nlink.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.rdev.to_le_bytes());
        out.extend_from_slice(&self.atime_sec.to_le_bytes());
        out.extend_from_slice(&self.mtime_sec.to_le_bytes());
        out.extend_from_slice(&self.ctime_sec.to_le_bytes());
        out.extend_from_slice(&self.atime_nsec.to_le_bytes());
        out.extend_from_slice(&self.mtime_nsec.to_le_bytes());
        out.extend_from_slice(&self.ctime_nsec.to_le_bytes());
        out.extend_from_slice(&self.parent.to_le_bytes());
        out.extend_from_slice(&self.data_start.to_le_bytes());
        out.extend_from_slice(&self.data_count.to_le_bytes());
        out.extend_from_slice(&self.xattr_count.to_le_bytes());
        out.extend_from_slice(&self.xattr_start.to_le_bytes());
        debug_assert_eq!(out.len() - start, INODE_BYTES);
    }

    /// Decodes from a slice of exactly [`INODE_BYTES`].
    pub fn decode(bytes: &[u8]) -> Self {
        debug_assert_eq!(bytes.len(), INODE_BYTES);
        Self {
            mode: u32_at(bytes, 0),
            uid: u32_at(bytes, 4),
            gid: u32_at(bytes, 8),
            nlink: u32_at(bytes, 12),
            size: u64_at(bytes, 16),
            rdev: u64_at(bytes, 24),
            atime_sec: i64_at(bytes, 32),
            mtime_sec: i64_at(bytes, 40),
            ctime_sec: i64_at(bytes, 48),
            atime_nsec: u32_at(bytes, 56),
            mtime_nsec: u32_at(bytes, 60),
            ctime_nsec: u32_at(bytes, 64),
            parent: u32_at(bytes, 68),
            data_start: u64_at(bytes, 72),
            data_count: u32_at(bytes, 80),
            xattr_count: u32_at(bytes, 84),
            xattr_start: u64_at(bytes, 88),
        }
    }
}

/// Encodes a chunk record into exactly [`CHUNK_RECORD_BYTES`].
pub(crate) fn encode_chunk_record(chunk: &ChunkRef, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&chunk.file_offset.to_le_bytes());
    out.extend_from_slice(&chunk.plain_bytes.to_le_bytes());
    out.extend_from_slice(&chunk.stored_bytes.to_le_bytes());
    out.push(chunk.codec as u8);
    out.extend_from_slice(&[0u8; 7]);
    out.extend_from_slice(&chunk.id);
    out.extend_from_slice(&chunk.key);
    debug_assert_eq!(out.len() - start, CHUNK_RECORD_BYTES);
}

/// Encodes a name/value record (xattrs and tags) into exactly [`PAIR_BYTES`].
pub(crate) fn encode_pair(
    name_offset: u64,
    name_len: u32,
    value_len: u32,
    value_offset: u64,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&name_offset.to_le_bytes());
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(&value_len.to_le_bytes());
    out.extend_from_slice(&value_offset.to_le_bytes());
}

/// Whether `name` is a name a directory may hold: not empty, not `.` or `..`, no `/` or
/// NUL, at most [`NAME_BYTES_MAX`] bytes. Both writer and reader enforce it, so nothing
/// read from an flist can make a path escape its directory.
pub fn name_is_valid(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name != b"."
        && name != b".."
        && !name.iter().any(|&byte| byte == b'/' || byte == 0)
}

/// `st_mode` file type bits.
pub mod mode {
    /// Mask of the type bits.
    pub const TYPE_MASK: u32 = 0o170000;
    /// Directory.
    pub const DIRECTORY: u32 = 0o040000;
    /// Regular file.
    pub const REGULAR: u32 = 0o100000;
    /// Symbolic link.
    pub const SYMLINK: u32 = 0o120000;
    /// Character device.
    pub const CHAR_DEVICE: u32 = 0o020000;
    /// Block device.
    pub const BLOCK_DEVICE: u32 = 0o060000;
    /// Named pipe.
    pub const FIFO: u32 = 0o010000;
    /// Unix socket.
    pub const SOCKET: u32 = 0o140000;

    /// Whether `mode` has one of the seven known types.
    pub fn type_is_known(mode: u32) -> bool {
        matches!(
            mode & TYPE_MASK,
            DIRECTORY | REGULAR | SYMLINK | CHAR_DEVICE | BLOCK_DEVICE | FIFO | SOCKET
        )
    }
}

/// A builder holding the whole tree of `flist` (to change its tags, or convert it).
pub fn builder_from_flist(flist: &Flist) -> Result<FlistBuilder, FormatError> {
    fn meta_of(record: &InodeRecord) -> InodeMeta {
        InodeMeta {
            mode: record.mode,
            uid: record.uid,
            gid: record.gid,
            size: record.size,
            rdev: record.rdev,
            atime: (record.atime_sec, record.atime_nsec),
            mtime: (record.mtime_sec, record.mtime_nsec),
            ctime: (record.ctime_sec, record.ctime_nsec),
        }
    }
    let root = flist.root()?;
    let mut builder = FlistBuilder::new(meta_of(&root.record), flist.chunk_bytes());
    for (name, value) in flist.xattrs(&root)? {
        builder.set_xattr(ROOT_INODE, name, value)?;
    }
    let mut placed: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
    let mut queue = std::collections::VecDeque::from([(root, ROOT_INODE)]);
    while let Some((directory, ours)) = queue.pop_front() {
        for index in 0..flist.dir_len(&directory)? {
            let entry = flist.dir_entry(&directory, index)?;
            if let Some(&existing) = placed.get(&entry.inode) {
                builder.link(ours, entry.name, existing)?;
                continue;
            }
            let child = flist.inode(entry.inode)?;
            let chunks = if child.kind() == mode::REGULAR {
                (0..flist.chunk_len(&child)?)
                    .map(|index| flist.chunk(&child, index))
                    .collect::<Result<_, _>>()?
            } else {
                Vec::new()
            };
            let target = if child.kind() == mode::SYMLINK {
                flist.symlink_target(&child)?
            } else {
                &[]
            };
            let number = builder.add(ours, entry.name, meta_of(&child.record), chunks, target)?;
            for (name, value) in flist.xattrs(&child)? {
                builder.set_xattr(number, name, value)?;
            }
            // Directories are recorded too: a second name for one (a cycle in a forged
            // flist) is then refused by `link`.
            placed.insert(entry.inode, number);
            if child.is_dir() {
                queue.push_back((child, number));
            }
        }
    }
    for (key, value) in flist.tags()? {
        builder.add_tag(key, value)?;
    }
    Ok(builder)
}

/// Reads everything reachable in `bytes` as an flist, ignoring errors: the fuzz target's
/// body. It must never panic, loop or allocate without bound, whatever the bytes.
pub fn exercise(bytes: Vec<u8>) {
    let Ok(flist) = Flist::from_bytes(bytes) else {
        return;
    };
    let _ = flist.verify_all();
    let _ = flist.tags();
    let _ = flist.resolve(b"/a/../b/./c");
    let Ok(root) = flist.root() else { return };
    let mut seen = std::collections::HashSet::from([root.number]);
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(inode) = queue.pop_front() {
        let _ = flist.xattrs(&inode);
        match inode.kind() {
            mode::DIRECTORY => {
                let Ok(length) = flist.dir_len(&inode) else {
                    continue;
                };
                for index in 0..length {
                    let Ok(entry) = flist.dir_entry(&inode, index) else {
                        continue;
                    };
                    let _ = flist.lookup(&inode, entry.name);
                    if seen.insert(entry.inode) {
                        if let Ok(child) = flist.inode(entry.inode) {
                            queue.push_back(child);
                        }
                    }
                }
            }
            mode::REGULAR => {
                let Ok(length) = flist.chunk_len(&inode) else {
                    continue;
                };
                for index in 0..length {
                    let _ = flist.chunk(&inode, index);
                }
                let _ = flist.chunk_at(&inode, inode.record.size / 2);
            }
            mode::SYMLINK => {
                let _ = flist.symlink_target(&inode);
            }
            _ => {}
        }
    }
}

/// The fuzz target: `data` as a whole file, then `data` cut into six section bodies (by
/// the little-endian u16 lengths in its first 12 bytes) behind a valid header with valid
/// checksums, so that the fuzzer reaches the record checks behind the checksums.
pub fn fuzz_read(data: &[u8]) {
    exercise(data.to_vec());
    if data.len() < 2 * SECTION_COUNT {
        return;
    }
    let (lengths, mut rest) = data.split_at(2 * SECTION_COUNT);
    let mut bodies: [&[u8]; SECTION_COUNT] = [&[]; SECTION_COUNT];
    for (index, body) in bodies.iter_mut().enumerate() {
        let wanted = usize::from(u16::from_le_bytes([
            lengths[2 * index],
            lengths[2 * index + 1],
        ]));
        let (taken, left) = rest.split_at(wanted.min(rest.len()));
        *body = taken;
        rest = left;
    }
    exercise(writer::assemble(&bodies, crate::chunk::CHUNK_BYTES_DEFAULT));
}
