//! The chain archive (`chain.zdc`): the digests of records that compaction dropped, so that
//! the hash chain stays verifiable, and provable link by link, after their bytes are gone.
//!
//! ```text
//! header (16 bytes)   0 8 magic "ZDBCHN01"   8 4 reserved   12 4 crc32 of bytes 0..12
//! entries (44 bytes)  0 8 sequence (u64 LE)  8 32 record digest   40 4 crc32 of bytes 0..40
//! ```
//!
//! Append-only. An entry that does not check at the end of the file is the torn tail of an
//! interrupted append and is ignored; anywhere else it is damage, reported by the reader.
//! The same sequence may appear twice (a compaction interrupted before it removed its input
//! segments archives their dropped records again); readers keep one and check they agree.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use super::record::LINK_BYTES;

const MAGIC: [u8; 8] = *b"ZDBCHN01";
const HEADER_BYTES: usize = 16;
const ENTRY_BYTES: usize = 44;

/// The archive's file name in a namespace's data folder.
pub const FILE_NAME: &str = "chain.zdc";

fn header() -> [u8; HEADER_BYTES] {
    let mut out = [0u8; HEADER_BYTES];
    out[..8].copy_from_slice(&MAGIC);
    let crc = crc32fast::hash(&out[..12]);
    out[12..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Appends entries and makes them durable before returning.
pub fn append(dir: &Path, entries: &[(u64, [u8; LINK_BYTES])]) -> io::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let path = dir.join(FILE_NAME);
    let exists = path.exists();
    let mut file = File::options().create(true).append(true).open(&path)?;
    let mut out = Vec::with_capacity(HEADER_BYTES + entries.len() * ENTRY_BYTES);
    if !exists || file.metadata()?.len() == 0 {
        out.extend_from_slice(&header());
    }
    for (sequence, digest) in entries {
        let start = out.len();
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(digest);
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    file.write_all(&out)?;
    file.sync_all()?;
    if !exists {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads every entry. Errors name the offset of the first damaged entry.
pub fn read(dir: &Path) -> Result<Vec<(u64, [u8; LINK_BYTES])>, String> {
    let bytes = match std::fs::read(dir.join(FILE_NAME)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(format!("{FILE_NAME}: {error}")),
    };
    if bytes.len() < HEADER_BYTES || bytes[..HEADER_BYTES] != header() {
        return Err(format!("{FILE_NAME}: bad header"));
    }
    let mut entries = Vec::with_capacity((bytes.len() - HEADER_BYTES) / ENTRY_BYTES);
    let mut at = HEADER_BYTES;
    while at + ENTRY_BYTES <= bytes.len() {
        let entry = &bytes[at..at + ENTRY_BYTES];
        let stored = u32::from_le_bytes([entry[40], entry[41], entry[42], entry[43]]);
        if stored != crc32fast::hash(&entry[..40]) {
            if at + ENTRY_BYTES == bytes.len() {
                break; // torn tail of an interrupted append
            }
            return Err(format!("{FILE_NAME}: damaged entry at offset {at}"));
        }
        let mut sequence = [0u8; 8];
        sequence.copy_from_slice(&entry[..8]);
        let mut digest = [0u8; LINK_BYTES];
        digest.copy_from_slice(&entry[8..40]);
        entries.push((u64::from_le_bytes(sequence), digest));
        at += ENTRY_BYTES;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
        append(dir.path(), &[(1, [1u8; 32]), (2, [2u8; 32])]).unwrap();
        append(dir.path(), &[(5, [5u8; 32])]).unwrap();
        assert_eq!(
            read(dir.path()).unwrap(),
            vec![(1, [1u8; 32]), (2, [2u8; 32]), (5, [5u8; 32])]
        );
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES + 10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read(dir.path()).unwrap_err().contains("offset 16"));
    }
}
