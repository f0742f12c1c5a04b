//! Builds an flist in memory and writes it out.
//!
//! The builder holds a tree (directories keep their children in a sorted map, so the
//! written directory entries come out sorted). `finish` lays the sections out, checksums
//! each, and closes the header with its own checksum.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::{
    encode_chunk_record, encode_pair, mode, name_is_valid, FormatError, InodeRecord, SectionKind,
    FLAGS_KNOWN, HEADER_CHECKSUM_BYTES, HEADER_FIXED_BYTES, INODE_COUNT_MAX, MAGIC, ROOT_INODE,
    SECTION_ALIGN_BYTES, SECTION_COUNT, SECTION_ENTRY_BYTES, SYMLINK_TARGET_BYTES_MAX,
    TAG_KEY_BYTES_MAX, TAG_VALUE_BYTES_MAX, VERSION, XATTR_NAME_BYTES_MAX, XATTR_VALUE_BYTES_MAX,
};
use crate::chunk::{ChunkRef, CHUNK_BYTES_MAX};

/// The metadata of one inode, as the caller knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InodeMeta {
    /// `st_mode` with type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (regular files; symlinks get their target length).
    pub size: u64,
    /// Device number.
    pub rdev: u64,
    /// Access time (seconds, nanoseconds).
    pub atime: (i64, u32),
    /// Modification time.
    pub mtime: (i64, u32),
    /// Status change time.
    pub ctime: (i64, u32),
}

#[derive(Debug, Clone)]
struct Draft {
    meta: InodeMeta,
    parent: u32,
    children: BTreeMap<Vec<u8>, u32>,
    chunks: Vec<ChunkRef>,
    symlink_target: Vec<u8>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Directory entries naming this inode (hard links count here).
    names: u32,
}

/// Builds an flist.
#[derive(Debug, Clone)]
pub struct FlistBuilder {
    inodes: Vec<Draft>,
    tags: Vec<(Vec<u8>, Vec<u8>)>,
    chunk_bytes: u32,
}

fn invalid(message: String) -> FormatError {
    FormatError::Invalid(message)
}

impl FlistBuilder {
    /// A builder holding only the root directory, with `root` as its metadata (its type
    /// bits are forced to directory). `chunk_bytes` is recorded in the header.
    pub fn new(root: InodeMeta, chunk_bytes: u32) -> Self {
        let mut meta = root;
        meta.mode = (meta.mode & !mode::TYPE_MASK) | mode::DIRECTORY;
        let root = Draft {
            meta,
            parent: ROOT_INODE,
            children: BTreeMap::new(),
            chunks: Vec::new(),
            symlink_target: Vec::new(),
            xattrs: BTreeMap::new(),
            names: 1,
        };
        Self {
            inodes: vec![root],
            tags: Vec::new(),
            chunk_bytes,
        }
    }

    /// Number of inodes so far.
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// The metadata of `inode`.
    pub fn meta(&self, inode: u32) -> Option<&InodeMeta> {
        self.inodes.get(inode as usize).map(|draft| &draft.meta)
    }

    /// Replaces the metadata of `inode`, keeping its type.
    pub fn set_meta(&mut self, inode: u32, meta: InodeMeta) -> Result<(), FormatError> {
        let draft = self.draft_mut(inode)?;
        let kind = draft.meta.mode & mode::TYPE_MASK;
        if meta.mode & mode::TYPE_MASK != kind {
            return Err(invalid(format!(
                "inode {inode}: cannot change its file type"
            )));
        }
        draft.meta = meta;
        Ok(())
    }

    fn draft_mut(&mut self, inode: u32) -> Result<&mut Draft, FormatError> {
        self.inodes
            .get_mut(inode as usize)
            .ok_or_else(|| invalid(format!("no inode {inode}")))
    }

    /// The child `name` of directory `parent`, if any.
    pub fn child(&self, parent: u32, name: &[u8]) -> Option<u32> {
        self.inodes
            .get(parent as usize)?
            .children
            .get(name)
            .copied()
    }

    /// The children of directory `parent`, sorted by name.
    pub fn children(&self, parent: u32) -> Vec<(Vec<u8>, u32)> {
        self.inodes
            .get(parent as usize)
            .map(|draft| {
                draft
                    .children
                    .iter()
                    .map(|(name, &inode)| (name.clone(), inode))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adds a new inode named `name` in directory `parent`. `chunks` are for regular files
    /// (sorted by offset, inside `meta.size`), `symlink_target` for symlinks.
    pub fn add(
        &mut self,
        parent: u32,
        name: &[u8],
        meta: InodeMeta,
        chunks: Vec<ChunkRef>,
        symlink_target: &[u8],
    ) -> Result<u32, FormatError> {
        if !mode::type_is_known(meta.mode) {
            return Err(invalid(format!(
                "{}: unknown file type in mode {:o}",
                show(name),
                meta.mode
            )));
        }
        let kind = meta.mode & mode::TYPE_MASK;
        if kind != mode::REGULAR && !chunks.is_empty() {
            return Err(invalid(format!(
                "{}: only regular files have chunks",
                show(name)
            )));
        }
        if kind == mode::SYMLINK {
            if symlink_target.is_empty() || symlink_target.len() > SYMLINK_TARGET_BYTES_MAX {
                return Err(invalid(format!(
                    "{}: symlink target of {} bytes",
                    show(name),
                    symlink_target.len()
                )));
            }
        } else if !symlink_target.is_empty() {
            return Err(invalid(format!(
                "{}: only symlinks have targets",
                show(name)
            )));
        }
        let mut meta = meta;
        if kind == mode::SYMLINK {
            meta.size = symlink_target.len() as u64;
        }
        if kind == mode::DIRECTORY {
            meta.size = 4096;
        }
        check_chunks(name, &meta, &chunks)?;
        if self.inodes.len() as u64 >= INODE_COUNT_MAX {
            return Err(invalid(format!("more than {INODE_COUNT_MAX} inodes")));
        }
        let inode = self.inodes.len() as u32;
        self.insert_name(parent, name, inode)?;
        self.inodes.push(Draft {
            meta,
            parent,
            children: BTreeMap::new(),
            chunks,
            symlink_target: symlink_target.to_vec(),
            xattrs: BTreeMap::new(),
            names: 1,
        });
        Ok(inode)
    }

    fn insert_name(&mut self, parent: u32, name: &[u8], inode: u32) -> Result<(), FormatError> {
        if !name_is_valid(name) {
            return Err(invalid(format!(
                "refusing entry name {}: names must be 1-255 bytes without '/' or NUL and not '.' or '..'",
                show(name)
            )));
        }
        let directory = self.draft_mut(parent)?;
        if directory.meta.mode & mode::TYPE_MASK != mode::DIRECTORY {
            return Err(invalid(format!(
                "inode {parent} is not a directory (adding {})",
                show(name)
            )));
        }
        if directory.children.contains_key(name) {
            return Err(invalid(format!(
                "duplicate entry {} in directory inode {parent}",
                show(name)
            )));
        }
        directory.children.insert(name.to_vec(), inode);
        Ok(())
    }

    /// Adds a hard link `name` in `parent` to the existing non-directory `target`.
    pub fn link(&mut self, parent: u32, name: &[u8], target: u32) -> Result<(), FormatError> {
        let kind = self
            .inodes
            .get(target as usize)
            .ok_or_else(|| {
                invalid(format!(
                    "hard link {} to missing inode {target}",
                    show(name)
                ))
            })?
            .meta
            .mode
            & mode::TYPE_MASK;
        if kind == mode::DIRECTORY {
            return Err(invalid(format!("hard link {} to a directory", show(name))));
        }
        self.insert_name(parent, name, target)?;
        self.draft_mut(target)?.names += 1;
        Ok(())
    }

    /// Removes the entry `name` from `parent` (used for OCI whiteouts). The inode stays
    /// allocated but unreachable if this was its last name; `finish` drops nothing, so
    /// callers remove before they add where they can.
    pub fn unlink(&mut self, parent: u32, name: &[u8]) -> Result<Option<u32>, FormatError> {
        let removed = self.draft_mut(parent)?.children.remove(name);
        if let Some(inode) = removed {
            let draft = self.draft_mut(inode)?;
            draft.names = draft.names.saturating_sub(1);
        }
        Ok(removed)
    }

    /// Removes every entry of directory `parent` (OCI opaque directories).
    pub fn clear_directory(&mut self, parent: u32) -> Result<(), FormatError> {
        let names: Vec<Vec<u8>> = self.draft_mut(parent)?.children.keys().cloned().collect();
        for name in names {
            self.unlink(parent, &name)?;
        }
        Ok(())
    }

    /// Sets an extended attribute of `inode`.
    pub fn set_xattr(&mut self, inode: u32, name: &[u8], value: &[u8]) -> Result<(), FormatError> {
        if name.is_empty() || name.len() > XATTR_NAME_BYTES_MAX || name.contains(&0) {
            return Err(invalid(format!("xattr name {} is not valid", show(name))));
        }
        if value.len() > XATTR_VALUE_BYTES_MAX {
            return Err(invalid(format!(
                "xattr {} value of {} bytes",
                show(name),
                value.len()
            )));
        }
        self.draft_mut(inode)?
            .xattrs
            .insert(name.to_vec(), value.to_vec());
        Ok(())
    }

    /// Adds a tag. Keys may repeat (`route` does, one per store).
    pub fn add_tag(&mut self, key: &[u8], value: &[u8]) -> Result<(), FormatError> {
        if key.is_empty() || key.len() > TAG_KEY_BYTES_MAX || value.len() > TAG_VALUE_BYTES_MAX {
            return Err(invalid(format!(
                "tag {} of {} bytes is not valid",
                show(key),
                value.len()
            )));
        }
        self.tags.push((key.to_vec(), value.to_vec()));
        Ok(())
    }

    /// Removes every tag with `key`.
    pub fn remove_tags(&mut self, key: &[u8]) {
        self.tags.retain(|(existing, _)| existing != key);
    }

    /// Lays out the file. Inodes are renumbered breadth-first from the root so that
    /// unreachable ones (after unlinks) are dropped and each directory's children sit
    /// close together.
    pub fn finish(&self) -> Result<Vec<u8>, FormatError> {
        // Renumber: breadth-first from the root, each inode once (hard links share).
        let mut order: Vec<u32> = vec![ROOT_INODE];
        let mut new_number: Vec<Option<u32>> = vec![None; self.inodes.len()];
        new_number[ROOT_INODE as usize] = Some(0);
        let mut link_counts: Vec<u32> = vec![0; self.inodes.len()];
        let mut cursor = 0;
        while cursor < order.len() {
            let old = order[cursor] as usize;
            cursor += 1;
            for &child in self.inodes[old].children.values() {
                link_counts[child as usize] += 1;
                if new_number[child as usize].is_none() {
                    new_number[child as usize] = Some(order.len() as u32);
                    order.push(child);
                }
            }
        }
        let number = |old: u32| new_number[old as usize].unwrap_or(0);

        let mut strings: Vec<u8> = Vec::new();
        let mut inodes = Vec::with_capacity(order.len() * super::INODE_BYTES);
        let mut dirents = Vec::new();
        let mut chunks = Vec::new();
        let mut xattrs = Vec::new();
        let mut dirent_count: u64 = 0;
        let mut chunk_count: u64 = 0;
        let mut xattr_count: u64 = 0;
        for &old in &order {
            let draft = &self.inodes[old as usize];
            let kind = draft.meta.mode & mode::TYPE_MASK;
            let (data_start, data_count) = match kind {
                mode::DIRECTORY => {
                    let start = dirent_count;
                    for (name, &child) in &draft.children {
                        let name_offset = strings.len() as u64;
                        strings.extend_from_slice(name);
                        dirents.extend_from_slice(&name_offset.to_le_bytes());
                        dirents.extend_from_slice(&(name.len() as u32).to_le_bytes());
                        dirents.extend_from_slice(&number(child).to_le_bytes());
                        dirent_count += 1;
                    }
                    (start, draft.children.len() as u32)
                }
                mode::REGULAR => {
                    let start = chunk_count;
                    for chunk in &draft.chunks {
                        encode_chunk_record(chunk, &mut chunks);
                        chunk_count += 1;
                    }
                    (start, draft.chunks.len() as u32)
                }
                mode::SYMLINK => {
                    let start = strings.len() as u64;
                    strings.extend_from_slice(&draft.symlink_target);
                    (start, draft.symlink_target.len() as u32)
                }
                _ => (0, 0),
            };
            let xattr_start = xattr_count;
            for (name, value) in &draft.xattrs {
                let name_offset = strings.len() as u64;
                strings.extend_from_slice(name);
                let value_offset = strings.len() as u64;
                strings.extend_from_slice(value);
                encode_pair(
                    name_offset,
                    name.len() as u32,
                    value.len() as u32,
                    value_offset,
                    &mut xattrs,
                );
                xattr_count += 1;
            }
            let nlink = if kind == mode::DIRECTORY {
                let subdirectories = draft
                    .children
                    .values()
                    .filter(|&&child| {
                        self.inodes[child as usize].meta.mode & mode::TYPE_MASK == mode::DIRECTORY
                    })
                    .count() as u32;
                2 + subdirectories
            } else {
                link_counts[old as usize].max(1)
            };
            let meta = &draft.meta;
            InodeRecord {
                mode: meta.mode,
                uid: meta.uid,
                gid: meta.gid,
                nlink,
                size: meta.size,
                rdev: meta.rdev,
                atime_sec: meta.atime.0,
                mtime_sec: meta.mtime.0,
                ctime_sec: meta.ctime.0,
                atime_nsec: meta.atime.1,
                mtime_nsec: meta.mtime.1,
                ctime_nsec: meta.ctime.1,
                parent: number(draft.parent),
                data_start,
                data_count,
                xattr_count: draft.xattrs.len() as u32,
                xattr_start,
            }
            .encode(&mut inodes);
        }
        let mut tags = Vec::new();
        for (key, value) in &self.tags {
            let key_offset = strings.len() as u64;
            strings.extend_from_slice(key);
            let value_offset = strings.len() as u64;
            strings.extend_from_slice(value);
            encode_pair(
                key_offset,
                key.len() as u32,
                value.len() as u32,
                value_offset,
                &mut tags,
            );
        }
        let bodies: [&[u8]; SECTION_COUNT] = [&inodes, &dirents, &chunks, &xattrs, &tags, &strings];
        Ok(assemble(&bodies, self.chunk_bytes))
    }

    /// Writes the flist to `path` atomically (a temporary file renamed into place), so a
    /// mapped flist is never changed under a reader.
    pub fn write_to(&self, path: &Path) -> Result<(), FormatError> {
        let bytes = self.finish()?;
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, path)?;
        Ok(())
    }
}

fn check_chunks(name: &[u8], meta: &InodeMeta, chunks: &[ChunkRef]) -> Result<(), FormatError> {
    let mut end: u64 = 0;
    for chunk in chunks {
        if chunk.plain_bytes == 0 || chunk.plain_bytes > CHUNK_BYTES_MAX {
            return Err(invalid(format!(
                "{}: chunk of {} bytes",
                show(name),
                chunk.plain_bytes
            )));
        }
        if chunk.file_offset < end {
            return Err(invalid(format!(
                "{}: chunks overlap or are out of order",
                show(name)
            )));
        }
        end = chunk.file_offset + u64::from(chunk.plain_bytes);
        if end > meta.size {
            return Err(invalid(format!(
                "{}: chunk ends at {end}, past the size {}",
                show(name),
                meta.size
            )));
        }
    }
    Ok(())
}

/// Lays out header and sections. Public to the crate so tests can forge files.
pub(crate) fn assemble(bodies: &[&[u8]; SECTION_COUNT], chunk_bytes: u32) -> Vec<u8> {
    let header_bytes =
        HEADER_FIXED_BYTES + SECTION_COUNT * SECTION_ENTRY_BYTES + HEADER_CHECKSUM_BYTES;
    let align = |offset: usize| offset.div_ceil(SECTION_ALIGN_BYTES) * SECTION_ALIGN_BYTES;
    let mut offsets = [0usize; SECTION_COUNT];
    let mut position = align(header_bytes);
    for (index, body) in bodies.iter().enumerate() {
        offsets[index] = position;
        position = align(position + body.len());
    }
    let file_bytes = position;
    let mut out = Vec::with_capacity(file_bytes);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&FLAGS_KNOWN.to_le_bytes());
    out.extend_from_slice(&(header_bytes as u32).to_le_bytes());
    out.extend_from_slice(&(SECTION_COUNT as u32).to_le_bytes());
    out.extend_from_slice(&(file_bytes as u64).to_le_bytes());
    out.extend_from_slice(&chunk_bytes.to_le_bytes());
    out.extend_from_slice(&[0u8; 12]);
    debug_assert_eq!(out.len(), HEADER_FIXED_BYTES);
    for (index, kind) in SectionKind::ALL.iter().enumerate() {
        out.extend_from_slice(&(*kind as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(offsets[index] as u64).to_le_bytes());
        out.extend_from_slice(&(bodies[index].len() as u64).to_le_bytes());
        out.extend_from_slice(blake3::hash(bodies[index]).as_bytes());
    }
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    debug_assert_eq!(out.len(), header_bytes);
    for (index, body) in bodies.iter().enumerate() {
        out.resize(offsets[index], 0);
        out.extend_from_slice(body);
    }
    out.resize(file_bytes, 0);
    out
}

/// A name for messages: UTF-8 where it is, escaped bytes where not.
pub fn show(name: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(name)).replace('\u{fffd}', "\\u{fffd}")
}
