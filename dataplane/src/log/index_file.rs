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
//!     4  segment id   4 offset   4 value length   4 value crc32   4 timestamp (s)   1 flags
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
const ENTRY_FIXED_BYTES: usize = 1 + 4 * 5 + 1;

/// The in-memory index of a namespace: key to where its live record is. foldhash is seeded
/// at random per process (keys are chosen by clients) and several times faster than SipHash.
pub type Index = std::collections::HashMap<Box<[u8]>, Entry, foldhash::fast::RandomState>;

/// Where a key's live record is, and what the index needs to know of it without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub segment: u32,
    pub offset: u32,
    pub value_len: u32,
    pub value_crc: u32,
    pub timestamp_s: u32,
    pub flags: u8,
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
    for (key, entry) in index {
        out.push(key.len() as u8);
        out.extend_from_slice(key);
        for word in [
            entry.segment,
            entry.offset,
            entry.value_len,
            entry.value_crc,
            entry.timestamp_s,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.push(entry.flags);
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

/// Reads and checks a snapshot. `Ok(None)` when there is none.
#[allow(clippy::type_complexity)]
pub fn read(path: &Path) -> Result<Option<(SnapshotMeta, Index)>, SnapshotError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    decode(&bytes).map(Some)
}

fn damaged(what: &str) -> SnapshotError {
    SnapshotError::Damaged(what.to_string())
}

#[allow(clippy::type_complexity)]
fn decode(bytes: &[u8]) -> Result<(SnapshotMeta, Index), SnapshotError> {
    if bytes.len() < HEADER_BYTES + 4 {
        return Err(damaged("shorter than its header"));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    if stored != crc32fast::hash(body) {
        return Err(damaged("checksum mismatch"));
    }
    if body[..8] != MAGIC {
        return Err(damaged("bad magic"));
    }
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let u32_at = |at: usize| {
        let mut word = [0u8; 4];
        word.copy_from_slice(&body[at..at + 4]);
        u32::from_le_bytes(word)
    };
    let count = u64_at(8);
    let mut chain_head = [0u8; LINK_BYTES];
    chain_head.copy_from_slice(&body[48..80]);
    let meta = SnapshotMeta {
        covered_segment: u32_at(16),
        covered_offset: u64_at(24),
        next_sequence: u64_at(32),
        next_id: u64_at(40),
        chain_head,
        record_count: u64_at(80),
    };
    // Each entry takes at least ENTRY_FIXED_BYTES: a count beyond that is a lie.
    if count > ((body.len() - HEADER_BYTES) / ENTRY_FIXED_BYTES) as u64 {
        return Err(damaged("entry count larger than the file"));
    }
    let mut index = Index::with_capacity_and_hasher(count as usize, Default::default());
    let mut at = HEADER_BYTES;
    for _ in 0..count {
        let key_len = *body.get(at).ok_or_else(|| damaged("entry past the end"))? as usize;
        let end = at + 1 + key_len + ENTRY_FIXED_BYTES - 1;
        if end > body.len() {
            return Err(damaged("entry past the end"));
        }
        let key: Box<[u8]> = body[at + 1..at + 1 + key_len].into();
        let fixed = at + 1 + key_len;
        let entry = Entry {
            segment: u32_at(fixed),
            offset: u32_at(fixed + 4),
            value_len: u32_at(fixed + 8),
            value_crc: u32_at(fixed + 12),
            timestamp_s: u32_at(fixed + 16),
            flags: body[fixed + 20],
        };
        index.insert(key, entry);
        at = end;
    }
    if at != body.len() {
        return Err(damaged("trailing bytes after the last entry"));
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
            let entry = Entry {
                segment: 1,
                offset: i * 100,
                value_len: i,
                value_crc: i ^ 7,
                timestamp_s: i,
                flags: 0,
            };
            index.insert(format!("key{i}").into_bytes().into_boxed_slice(), entry);
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
