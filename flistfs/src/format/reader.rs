//! Opens an flist and reads it in place, trusting nothing it has not checked.
//!
//! `open` reads only the header: magic, version, flags, the header checksum, and that every
//! section lies inside the file with a size its records divide. A section's checksum is
//! verified the first time an operation needs that section (once per open flist), so
//! opening costs the same for ten entries or ten million. Every offset read from a record
//! is bounds-checked before use.

use std::path::Path;
use std::sync::OnceLock;

use super::{
    mode, name_is_valid, u32_at, u64_at, FormatError, InodeRecord, SectionKind, CHUNK_RECORD_BYTES,
    DIRENT_BYTES, FLAGS_KNOWN, HEADER_CHECKSUM_BYTES, HEADER_FIXED_BYTES, INODE_BYTES,
    INODE_COUNT_MAX, MAGIC, PAIR_BYTES, ROOT_INODE, SECTION_COUNT, SECTION_ENTRY_BYTES,
    SYMLINK_TARGET_BYTES_MAX, VERSION,
};
use crate::chunk::{ChunkCodec, ChunkRef, CHUNK_BYTES_MAX};
use crate::sys::Mapping;

#[derive(Debug)]
enum Backing {
    Mapped(Mapping),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(mapping) => mapping.bytes(),
            Backing::Owned(bytes) => bytes,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Section {
    offset: usize,
    length: usize,
    checksum: [u8; 32],
}

/// A name and its value (xattrs, tags), borrowed from the flist.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// An open flist.
#[derive(Debug)]
pub struct Flist {
    backing: Backing,
    sections: [Section; SECTION_COUNT],
    verified: [OnceLock<bool>; SECTION_COUNT],
    chunk_bytes: u32,
}

/// An inode: its number and record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inode {
    /// Inode number (0 is the root).
    pub number: u32,
    /// The record.
    pub record: InodeRecord,
}

impl Inode {
    /// The file type bits of the mode.
    pub fn kind(&self) -> u32 {
        self.record.mode & mode::TYPE_MASK
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == mode::DIRECTORY
    }
}

/// One directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// The name (valid: no `/`, no NUL, not `.` or `..`).
    pub name: &'a [u8],
    /// The inode it names.
    pub inode: u32,
}

fn corrupt(message: String) -> FormatError {
    FormatError::Corrupt(message)
}

impl Flist {
    /// Maps and opens the flist at `path`.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        Self::with_backing(Backing::Mapped(Mapping::open(path)?))
    }

    /// Opens an flist held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, FormatError> {
        Self::with_backing(Backing::Owned(bytes))
    }

    fn with_backing(backing: Backing) -> Result<Self, FormatError> {
        let bytes = backing.bytes();
        if bytes.len() < HEADER_FIXED_BYTES {
            return Err(FormatError::Truncated(format!(
                "{} bytes, shorter than the {HEADER_FIXED_BYTES}-byte header",
                bytes.len()
            )));
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[..8]);
        if magic != MAGIC {
            return Err(FormatError::BadMagic(magic));
        }
        let version = u32_at(bytes, 8);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let flags = u32_at(bytes, 12);
        let header_bytes = u32_at(bytes, 16) as usize;
        let section_count = u32_at(bytes, 20) as usize;
        let file_bytes = u64_at(bytes, 24);
        let chunk_bytes = u32_at(bytes, 32);
        let expected_header_bytes =
            HEADER_FIXED_BYTES + SECTION_COUNT * SECTION_ENTRY_BYTES + HEADER_CHECKSUM_BYTES;
        if section_count != SECTION_COUNT || header_bytes != expected_header_bytes {
            return Err(FormatError::InvalidHeader(format!(
                "{section_count} sections in a {header_bytes}-byte header (version 1 has {SECTION_COUNT} in {expected_header_bytes})"
            )));
        }
        if bytes.len() < header_bytes {
            return Err(FormatError::Truncated(format!(
                "{} bytes, shorter than the {header_bytes}-byte header",
                bytes.len()
            )));
        }
        let checksum_offset = header_bytes - HEADER_CHECKSUM_BYTES;
        if blake3::hash(&bytes[..checksum_offset]).as_bytes()
            != &bytes[checksum_offset..header_bytes]
        {
            return Err(FormatError::HeaderChecksum);
        }
        if file_bytes != bytes.len() as u64 {
            return Err(FormatError::Truncated(format!(
                "the header says {file_bytes} bytes, the file has {}",
                bytes.len()
            )));
        }
        if flags & !FLAGS_KNOWN != 0 {
            return Err(FormatError::InvalidHeader(format!(
                "unknown flags {flags:#x}"
            )));
        }
        if bytes[36..HEADER_FIXED_BYTES].iter().any(|&byte| byte != 0) {
            return Err(FormatError::InvalidHeader(
                "reserved header bytes are not zero".into(),
            ));
        }
        if chunk_bytes > CHUNK_BYTES_MAX {
            return Err(FormatError::InvalidHeader(format!(
                "chunk size {chunk_bytes} above {CHUNK_BYTES_MAX}"
            )));
        }
        let mut sections: [Option<Section>; SECTION_COUNT] = [None; SECTION_COUNT];
        for index in 0..SECTION_COUNT {
            let entry =
                &bytes[HEADER_FIXED_BYTES + index * SECTION_ENTRY_BYTES..][..SECTION_ENTRY_BYTES];
            let kind_value = u32_at(entry, 0);
            let kind = SectionKind::from_u32(kind_value).ok_or_else(|| {
                FormatError::InvalidHeader(format!("unknown section kind {kind_value}"))
            })?;
            if u32_at(entry, 4) != 0 {
                return Err(FormatError::InvalidHeader(format!(
                    "section {}: reserved bits set",
                    kind.name()
                )));
            }
            let offset = u64_at(entry, 8);
            let length = u64_at(entry, 16);
            let end = offset.checked_add(length);
            if offset < header_bytes as u64 || end.is_none_or(|end| end > file_bytes) {
                return Err(FormatError::InvalidHeader(format!(
                    "section {} at {offset}+{length} lies outside the file's {header_bytes}..{file_bytes}",
                    kind.name()
                )));
            }
            if let Some(record_bytes) = kind.record_bytes() {
                if !length.is_multiple_of(record_bytes as u64) {
                    return Err(FormatError::InvalidHeader(format!(
                        "section {} of {length} bytes is not whole {record_bytes}-byte records",
                        kind.name()
                    )));
                }
            }
            if sections[kind.index()].is_some() {
                return Err(FormatError::InvalidHeader(format!(
                    "section {} appears twice",
                    kind.name()
                )));
            }
            let mut checksum = [0u8; 32];
            checksum.copy_from_slice(&entry[24..56]);
            sections[kind.index()] = Some(Section {
                offset: offset as usize,
                length: length as usize,
                checksum,
            });
        }
        let mut checked = [Section {
            offset: 0,
            length: 0,
            checksum: [0; 32],
        }; SECTION_COUNT];
        for (index, section) in sections.iter().enumerate() {
            // Every kind appears at most once and there are SECTION_COUNT entries, so all are here.
            checked[index] =
                section.ok_or_else(|| FormatError::InvalidHeader("a section is missing".into()))?;
        }
        // Sections may not overlap, and the only bytes outside them are alignment padding,
        // which must be zero: then every byte of the file is covered by some check.
        let mut layout: Vec<Section> = checked.to_vec();
        layout.sort_by_key(|section| (section.offset, section.length));
        let mut position = header_bytes;
        for section in layout.iter().chain(std::iter::once(&Section {
            offset: bytes.len(),
            length: 0,
            checksum: [0; 32],
        })) {
            if section.offset < position || section.offset - position >= super::SECTION_ALIGN_BYTES
            {
                return Err(FormatError::InvalidHeader(format!(
                    "sections overlap or leave a gap at byte {position}"
                )));
            }
            if bytes[position..section.offset]
                .iter()
                .any(|&byte| byte != 0)
            {
                return Err(FormatError::InvalidHeader(format!(
                    "padding at byte {position} is not zero"
                )));
            }
            position = section.offset + section.length;
        }
        let inode_count = checked[SectionKind::Inodes.index()].length / INODE_BYTES;
        if inode_count == 0 || inode_count as u64 > INODE_COUNT_MAX {
            return Err(FormatError::InvalidHeader(format!(
                "{inode_count} inodes (the root is missing)"
            )));
        }
        Ok(Self {
            backing,
            sections: checked,
            verified: Default::default(),
            chunk_bytes,
        })
    }

    /// Bytes of the section of `kind`, its checksum verified on first use.
    fn section(&self, kind: SectionKind) -> Result<&[u8], FormatError> {
        let section = &self.sections[kind.index()];
        let body = &self.backing.bytes()[section.offset..section.offset + section.length];
        let good = *self.verified[kind.index()].get_or_init(|| {
            let good = blake3::hash(body).as_bytes() == &section.checksum;
            if !good {
                tracing::error!(section = kind.name(), "flist section fails its checksum");
            }
            good
        });
        if good {
            Ok(body)
        } else {
            Err(FormatError::SectionChecksum(kind.name()))
        }
    }

    fn record(&self, kind: SectionKind, index: u64) -> Result<&[u8], FormatError> {
        let body = self.section(kind)?;
        let record_bytes = kind.record_bytes().unwrap_or(1);
        let count = (body.len() / record_bytes) as u64;
        if index >= count {
            return Err(corrupt(format!(
                "{} record {index} of {count}",
                kind.name()
            )));
        }
        let start = index as usize * record_bytes;
        Ok(&body[start..start + record_bytes])
    }

    fn string(&self, offset: u64, length: u64, what: &str) -> Result<&[u8], FormatError> {
        let strings = self.section(SectionKind::Strings)?;
        let end = offset.checked_add(length);
        match end {
            Some(end) if end <= strings.len() as u64 => Ok(&strings[offset as usize..end as usize]),
            _ => Err(corrupt(format!(
                "{what} at {offset}+{length} outside the strings section"
            ))),
        }
    }

    /// The chunk size recorded at pack time.
    pub fn chunk_bytes(&self) -> u32 {
        self.chunk_bytes
    }

    /// Total size of the file in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.backing.bytes().len() as u64
    }

    /// Number of inodes (known from the header alone).
    pub fn inode_count(&self) -> u64 {
        (self.sections[SectionKind::Inodes.index()].length / INODE_BYTES) as u64
    }

    /// Number of chunk records (known from the header alone).
    pub fn chunk_count(&self) -> u64 {
        (self.sections[SectionKind::Chunks.index()].length / CHUNK_RECORD_BYTES) as u64
    }

    /// Verifies every section's checksum now (for `inspect` and tests).
    pub fn verify_all(&self) -> Result<(), FormatError> {
        for kind in SectionKind::ALL {
            self.section(kind)?;
        }
        Ok(())
    }

    /// The root directory.
    pub fn root(&self) -> Result<Inode, FormatError> {
        let root = self.inode(ROOT_INODE)?;
        if !root.is_dir() {
            return Err(corrupt("the root inode is not a directory".into()));
        }
        Ok(root)
    }

    /// Inode `number`.
    pub fn inode(&self, number: u32) -> Result<Inode, FormatError> {
        let record = InodeRecord::decode(self.record(SectionKind::Inodes, u64::from(number))?);
        if !mode::type_is_known(record.mode) {
            return Err(corrupt(format!(
                "inode {number} has unknown type in mode {:o}",
                record.mode
            )));
        }
        if u64::from(record.parent) >= self.inode_count() {
            return Err(corrupt(format!(
                "inode {number} has parent {} out of range",
                record.parent
            )));
        }
        Ok(Inode { number, record })
    }

    fn dirent_range(&self, directory: &Inode) -> Result<(u64, u64), FormatError> {
        if !directory.is_dir() {
            return Err(corrupt(format!(
                "inode {} is not a directory",
                directory.number
            )));
        }
        let count = (self.sections[SectionKind::Dirents.index()].length / DIRENT_BYTES) as u64;
        let start = directory.record.data_start;
        let end = start.checked_add(u64::from(directory.record.data_count));
        match end {
            Some(end) if end <= count => Ok((start, end)),
            _ => Err(corrupt(format!(
                "directory inode {} has entries outside the dirents section",
                directory.number
            ))),
        }
    }

    /// Number of entries of `directory` (without `.` and `..`).
    pub fn dir_len(&self, directory: &Inode) -> Result<u64, FormatError> {
        let (start, end) = self.dirent_range(directory)?;
        Ok(end - start)
    }

    /// Entry `index` of `directory`, in name order.
    pub fn dir_entry(&self, directory: &Inode, index: u64) -> Result<DirEntry<'_>, FormatError> {
        let (start, end) = self.dirent_range(directory)?;
        if index >= end - start {
            return Err(corrupt(format!(
                "directory {} has no entry {index}",
                directory.number
            )));
        }
        let record = self.record(SectionKind::Dirents, start + index)?;
        let name = self.string(u64_at(record, 0), u64::from(u32_at(record, 8)), "a name")?;
        let inode = u32_at(record, 12);
        if !name_is_valid(name) {
            return Err(corrupt(format!(
                "directory {} holds an invalid name {:?}",
                directory.number, name
            )));
        }
        if u64::from(inode) >= self.inode_count() || inode == ROOT_INODE {
            return Err(corrupt(format!(
                "directory {} entry {index} names inode {inode}",
                directory.number
            )));
        }
        Ok(DirEntry { name, inode })
    }

    /// Finds `name` in `directory` by binary search over its sorted entries.
    pub fn lookup(&self, directory: &Inode, name: &[u8]) -> Result<Option<u32>, FormatError> {
        let (mut low, mut high) = (0u64, self.dir_len(directory)?);
        while low < high {
            let middle = low + (high - low) / 2;
            let entry = self.dir_entry(directory, middle)?;
            match entry.name.cmp(name) {
                std::cmp::Ordering::Equal => return Ok(Some(entry.inode)),
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
            }
        }
        Ok(None)
    }

    /// Resolves a `/`-separated path from the root, without following symlinks.
    pub fn resolve(&self, path: &[u8]) -> Result<Option<Inode>, FormatError> {
        let mut current = self.root()?;
        for component in path
            .split(|&byte| byte == b'/')
            .filter(|part| !part.is_empty() && *part != b".")
        {
            if !current.is_dir() {
                return Ok(None);
            }
            let next = if component == b".." {
                Some(current.record.parent)
            } else {
                self.lookup(&current, component)?
            };
            match next {
                Some(number) => current = self.inode(number)?,
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// The target of a symlink.
    pub fn symlink_target(&self, inode: &Inode) -> Result<&[u8], FormatError> {
        if inode.kind() != mode::SYMLINK {
            return Err(corrupt(format!("inode {} is not a symlink", inode.number)));
        }
        let length = u64::from(inode.record.data_count);
        if length == 0 || length > SYMLINK_TARGET_BYTES_MAX as u64 {
            return Err(corrupt(format!(
                "symlink {} has a target of {length} bytes",
                inode.number
            )));
        }
        self.string(inode.record.data_start, length, "a symlink target")
    }

    /// Number of chunks of a regular file.
    pub fn chunk_len(&self, file: &Inode) -> Result<u64, FormatError> {
        Ok(self.chunk_range(file)?.1 - self.chunk_range(file)?.0)
    }

    fn chunk_range(&self, file: &Inode) -> Result<(u64, u64), FormatError> {
        if file.kind() != mode::REGULAR {
            return Err(corrupt(format!(
                "inode {} is not a regular file",
                file.number
            )));
        }
        let start = file.record.data_start;
        let end = start.checked_add(u64::from(file.record.data_count));
        match end {
            Some(end) if end <= self.chunk_count() => Ok((start, end)),
            _ => Err(corrupt(format!(
                "file inode {} has chunks outside the chunks section",
                file.number
            ))),
        }
    }

    /// Chunk `index` of a regular file, checked to lie inside the file.
    pub fn chunk(&self, file: &Inode, index: u64) -> Result<ChunkRef, FormatError> {
        let (start, end) = self.chunk_range(file)?;
        if index >= end - start {
            return Err(corrupt(format!(
                "file {} has no chunk {index}",
                file.number
            )));
        }
        let record = self.record(SectionKind::Chunks, start + index)?;
        let codec = ChunkCodec::from_u8(record[16]).ok_or_else(|| {
            corrupt(format!(
                "file {} chunk {index} has unknown codec {}",
                file.number, record[16]
            ))
        })?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&record[24..56]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&record[56..88]);
        let chunk = ChunkRef {
            file_offset: u64_at(record, 0),
            plain_bytes: u32_at(record, 8),
            stored_bytes: u32_at(record, 12),
            codec,
            id,
            key,
        };
        let chunk_end = chunk.file_offset.checked_add(u64::from(chunk.plain_bytes));
        if chunk.plain_bytes == 0
            || chunk.plain_bytes > CHUNK_BYTES_MAX
            || chunk_end.is_none_or(|chunk_end| chunk_end > file.record.size)
        {
            return Err(corrupt(format!(
                "file {} chunk {index} lies outside the file",
                file.number
            )));
        }
        Ok(chunk)
    }

    /// The chunk holding byte `offset` of a file, or `None` for a hole (zeros).
    pub fn chunk_at(
        &self,
        file: &Inode,
        offset: u64,
    ) -> Result<Option<(u64, ChunkRef)>, FormatError> {
        let (mut low, mut high) = (0u64, self.chunk_len(file)?);
        while low < high {
            let middle = low + (high - low) / 2;
            let chunk = self.chunk(file, middle)?;
            if offset < chunk.file_offset {
                high = middle;
            } else if offset >= chunk.file_offset + u64::from(chunk.plain_bytes) {
                low = middle + 1;
            } else {
                return Ok(Some((middle, chunk)));
            }
        }
        Ok(None)
    }

    /// Extended attributes of an inode, in name order.
    pub fn xattrs(&self, inode: &Inode) -> Result<Vec<Pair<'_>>, FormatError> {
        let count = (self.sections[SectionKind::Xattrs.index()].length / PAIR_BYTES) as u64;
        let start = inode.record.xattr_start;
        let end = start.checked_add(u64::from(inode.record.xattr_count));
        if end.is_none_or(|end| end > count) {
            return Err(corrupt(format!(
                "inode {} has xattrs outside the xattrs section",
                inode.number
            )));
        }
        (start..start + u64::from(inode.record.xattr_count))
            .map(|index| self.pair(SectionKind::Xattrs, index))
            .collect()
    }

    /// Tags, in the order written (keys may repeat).
    pub fn tags(&self) -> Result<Vec<Pair<'_>>, FormatError> {
        let count = (self.sections[SectionKind::Tags.index()].length / PAIR_BYTES) as u64;
        (0..count)
            .map(|index| self.pair(SectionKind::Tags, index))
            .collect()
    }

    fn pair(&self, kind: SectionKind, index: u64) -> Result<Pair<'_>, FormatError> {
        let record = self.record(kind, index)?;
        let name = self.string(u64_at(record, 0), u64::from(u32_at(record, 8)), "a name")?;
        let value = self.string(u64_at(record, 16), u64::from(u32_at(record, 12)), "a value")?;
        Ok((name, value))
    }
}
