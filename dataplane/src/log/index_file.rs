//! The index snapshot: the in-memory index of one namespace written to disk so that a restart
//! reads it instead of every segment. It covers the log up to a recorded point; the records
//! after that point (the tail) are scanned on start.
//!
//! ```text
//! header (96 bytes)
//!  0  8  magic "ZDBIDX01"
//!  8  8  entry count (u64 LE)
//! 16  4  covered up to: segment id (u32 LE)
//! 20  4  reserved, 0
//! 24  8  covered up to: offset in that segment (u64 LE)
//! 32  8  next record sequence number (u64 LE)
//! 40  8  next seq-mode id (u64 LE)
//! 48 32  chain head (link of the last covered record)
//! 80  8  records in the log up to the covered point (u64 LE)
//! 88  8  reserved, 0
//! entries, each
//!     1  key length, then the key
//!     4  segment id   4 offset   4 value length   4 value crc32   1 flags (bit 0: damaged)
//! trailer
//!     4  crc32 of everything before it
//! ```
//!
//! A snapshot is written to a temporary file, synced and renamed over the old one, so a crash
//! leaves either the old or the new snapshot. One that does not check is ignored (and the
//! namespace rebuilt from its segments).

use std::io::{self, Write};
use std::path::Path;

use thiserror::Error;

use super::record::LINK_BYTES;

const MAGIC: [u8; 8] = *b"ZDBIDX01";
const HEADER_BYTES: usize = 96;
const ENTRY_FIXED_BYTES: usize = 1 + 4 * 4 + 1;

type Shard = hashbrown::HashTable<(Key, Entry)>;

/// Shards of the index. Each grows on its own, so growing never needs twice the memory of
/// the whole index at once (nor pauses to move all of it).
const SHARDS: usize = 16;

/// The in-memory index of a namespace: key to where its live record is. One foldhash per
/// operation (seeded at random per process, since clients choose the keys) picks the shard
/// and the slot. A slot is 40 bytes (a key of up to 22 bytes inline, an [`Entry`] of 16), so
/// a million 16-byte keys take under 100 MB, including while the index grows.
#[derive(Clone)]
pub struct Index {
    hasher: foldhash::fast::FixedState,
    shards: Vec<Shard>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("len", &self.len()).finish()
    }
}

impl Default for Index {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl Index {
    pub fn with_capacity(capacity: usize) -> Self {
        let hasher = foldhash::fast::FixedState::with_seed(rand::random());
        let shards = (0..SHARDS)
            .map(|_| Shard::with_capacity(capacity / SHARDS))
            .collect();
        Index { hasher, shards }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    /// The shard of a hash: bits the tables themselves do not use (they take the low bits
    /// for the bucket and the top seven as tags).
    fn shard(hash: u64) -> usize {
        (hash >> 48) as usize % SHARDS
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        let hash = self.hash(key);
        self.shards[Self::shard(hash)]
            .find(hash, |(k, _)| k.as_bytes() == key)
            .map(|(_, e)| e)
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let hash = self.hash(key);
        self.shards[Self::shard(hash)]
            .find_mut(hash, |(k, _)| k.as_bytes() == key)
            .map(|(_, e)| e)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    pub fn insert(&mut self, key: Key, entry: Entry) -> Option<Entry> {
        use std::hash::BuildHasher;
        let hash = self.hash(key.as_bytes());
        let hasher = &self.hasher;
        let shard = &mut self.shards[Self::shard(hash)];
        // One probe finds the key or the free slot for it.
        match shard.entry(
            hash,
            |(k, _)| *k == key,
            |(k, _)| hasher.hash_one(k.as_bytes()),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut occupied) => {
                Some(std::mem::replace(&mut occupied.get_mut().1, entry))
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert((key, entry));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let hash = self.hash(key);
        let shard = &mut self.shards[Self::shard(hash)];
        match shard.find_entry(hash, |(k, _)| k.as_bytes() == key) {
            Ok(occupied) => Some(occupied.remove().0 .1),
            Err(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.is_empty())
    }

    pub fn clear(&mut self) {
        self.shards.iter_mut().for_each(|s| s.clear());
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, e)| (k, e)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &Entry> {
        self.iter().map(|(_, v)| v)
    }
}

impl PartialEq for Index {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k.as_bytes()) == Some(v))
    }
}

/// Bytes of a key kept inline in the index (longer keys are allocated on their own).
pub const KEY_INLINE_BYTES: usize = 22;

/// A key as the index keeps it: inline when short, so that most keys cost no allocation.
#[derive(Clone)]
pub enum Key {
    Inline(u8, [u8; KEY_INLINE_BYTES]),
    Heap(Box<[u8]>),
}

impl Key {
    pub fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= KEY_INLINE_BYTES {
            let mut inline = [0u8; KEY_INLINE_BYTES];
            inline[..bytes.len()].copy_from_slice(bytes);
            Key::Inline(bytes.len() as u8, inline)
        } else {
            Key::Heap(bytes.into())
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline(length, bytes) => &bytes[..*length as usize],
            Key::Heap(bytes) => bytes,
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

// Hashes exactly as `[u8]` does, so that the index can be searched with a plain slice.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Where a key's live record is, and what the index needs to know of it without reading it:
/// 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub segment: u32,
    pub offset: u32,
    /// Value length in the low 31 bits; the top bit marks a record found damaged.
    length_and_flags: u32,
    pub value_crc: u32,
}

const DAMAGED_BIT: u32 = 1 << 31;

impl Entry {
    pub fn new(segment: u32, offset: u32, value_len: u32, value_crc: u32) -> Self {
        Entry {
            segment,
            offset,
            length_and_flags: value_len & !DAMAGED_BIT,
            value_crc,
        }
    }

    pub fn value_len(&self) -> u32 {
        self.length_and_flags & !DAMAGED_BIT
    }

    pub fn is_damaged(&self) -> bool {
        self.length_and_flags & DAMAGED_BIT != 0
    }

    pub fn mark_damaged(&mut self) {
        self.length_and_flags |= DAMAGED_BIT;
    }

    fn flags(&self) -> u8 {
        u8::from(self.is_damaged())
    }
}

/// Entry flag: the record failed verification when it was scanned or read.
pub const ENTRY_DAMAGED: u8 = 0x01;

/// Namespace-wide state saved with the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub covered_segment: u32,
    pub covered_offset: u64,
    pub next_sequence: u64,
    pub next_id: u64,
    pub chain_head: [u8; LINK_BYTES],
    pub record_count: u64,
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("index snapshot I/O: {0}")]
    Io(#[from] io::Error),
    #[error("index snapshot is damaged: {0}")]
    Damaged(String),
}

/// Writes a snapshot atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write(path: &Path, meta: &SnapshotMeta, index: &Index) -> Result<(), SnapshotError> {
    let mut out = Vec::with_capacity(HEADER_BYTES + index.len() * 40 + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(index.len() as u64).to_le_bytes());
    out.extend_from_slice(&meta.covered_segment.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&meta.covered_offset.to_le_bytes());
    out.extend_from_slice(&meta.next_sequence.to_le_bytes());
    out.extend_from_slice(&meta.next_id.to_le_bytes());
    out.extend_from_slice(&meta.chain_head);
    out.extend_from_slice(&meta.record_count.to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    for (key, entry) in index.iter() {
        let key = key.as_bytes();
        out.push(key.len() as u8);
        out.extend_from_slice(key);
        for word in [
            entry.segment,
            entry.offset,
            entry.value_len(),
            entry.value_crc,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.push(entry.flags());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let temporary = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&out)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Reads and checks a snapshot, streaming: memory holds the index being built, never the
/// whole file. `Ok(None)` when there is none.
pub fn read(path: &Path) -> Result<Option<(SnapshotMeta, Index)>, SnapshotError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let file_len = file.metadata()?.len();
    decode(std::io::BufReader::with_capacity(1 << 20, file), file_len).map(Some)
}

fn damaged(what: &str) -> SnapshotError {
    SnapshotError::Damaged(what.to_string())
}

/// Reads exactly `buf.len()` bytes into `buf` and adds them to the running checksum; a short
/// file is damage, not an I/O error.
fn take(
    reader: &mut impl io::Read,
    crc: &mut crc32fast::Hasher,
    buf: &mut [u8],
) -> Result<(), SnapshotError> {
    reader.read_exact(buf).map_err(|error| match error.kind() {
        io::ErrorKind::UnexpectedEof => damaged("truncated"),
        _ => SnapshotError::Io(error),
    })?;
    crc.update(buf);
    Ok(())
}

fn decode(
    mut reader: impl io::Read,
    file_len: u64,
) -> Result<(SnapshotMeta, Index), SnapshotError> {
    if file_len < (HEADER_BYTES + 4) as u64 {
        return Err(damaged("shorter than its header"));
    }
    let mut crc = crc32fast::Hasher::new();
    let mut header = [0u8; HEADER_BYTES];
    take(&mut reader, &mut crc, &mut header)?;
    if header[..8] != MAGIC {
        return Err(damaged("bad magic"));
    }
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let u32_at = |bytes: &[u8], at: usize| {
        let mut word = [0u8; 4];
        word.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(word)
    };
    let count = u64_at(8);
    let mut chain_head = [0u8; LINK_BYTES];
    chain_head.copy_from_slice(&header[48..80]);
    let meta = SnapshotMeta {
        covered_segment: u32_at(&header, 16),
        covered_offset: u64_at(24),
        next_sequence: u64_at(32),
        next_id: u64_at(40),
        chain_head,
        record_count: u64_at(80),
    };
    // Each entry takes at least ENTRY_FIXED_BYTES: a count beyond that is a lie.
    if count > (file_len - (HEADER_BYTES + 4) as u64) / ENTRY_FIXED_BYTES as u64 {
        return Err(damaged("entry count larger than the file"));
    }
    let mut index = Index::with_capacity(count as usize);
    let mut consumed = HEADER_BYTES as u64;
    let mut key = [0u8; 256];
    let mut fixed = [0u8; ENTRY_FIXED_BYTES - 1];
    for _ in 0..count {
        take(&mut reader, &mut crc, &mut key[..1])?;
        let key_len = key[0] as usize;
        take(&mut reader, &mut crc, &mut key[1..1 + key_len])?;
        take(&mut reader, &mut crc, &mut fixed)?;
        let mut entry = Entry::new(
            u32_at(&fixed, 0),
            u32_at(&fixed, 4),
            u32_at(&fixed, 8),
            u32_at(&fixed, 12),
        );
        if fixed[16] & ENTRY_DAMAGED != 0 {
            entry.mark_damaged();
        }
        index.insert(Key::new(&key[1..1 + key_len]), entry);
        consumed += (key_len + ENTRY_FIXED_BYTES) as u64;
    }
    if consumed + 4 != file_len {
        return Err(damaged("trailing bytes after the last entry"));
    }
    let computed = crc.finalize();
    let mut trailer = [0u8; 4];
    reader
        .read_exact(&mut trailer)
        .map_err(|_| damaged("truncated"))?;
    if u32::from_le_bytes(trailer) != computed {
        return Err(damaged("checksum mismatch"));
    }
    Ok((meta, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.zdx");
        let meta = SnapshotMeta {
            covered_segment: 2,
            covered_offset: 12345,
            next_sequence: 99,
            next_id: 7,
            chain_head: [5u8; LINK_BYTES],
            record_count: 98,
        };
        let mut index = Index::default();
        for i in 0..100u32 {
            let entry = Entry::new(1, i * 100, i, i ^ 7);
            index.insert(Key::new(format!("key{i}").as_bytes()), entry);
        }
        write(&path, &meta, &index).unwrap();
        let (meta2, index2) = read(&path).unwrap().unwrap();
        assert_eq!(meta, meta2);
        assert_eq!(index, index2);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[200] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read(&path).is_err());
        std::fs::write(&path, &bytes[..50]).unwrap();
        assert!(read(&path).is_err());
        assert!(read(&dir.path().join("missing")).unwrap().is_none());
    }
}
