//! Segment files: a 32-byte segment header followed by records, appended only.
//!
//! ```text
//!  0  8  magic "ZDBSEG01"
//!  8  4  segment id (u32 LE, from 1)
//! 12  4  reserved, 0
//! 16  8  creation time, microseconds since the Unix epoch (u64 LE)
//! 24  4  reserved, 0
//! 28  4  crc32 of bytes 0..28
//! ```
//!
//! Also the recovery scanner: it walks a segment record by record, tells a torn tail (nothing
//! valid after the bad bytes) from damage in the middle (valid records follow), and never
//! trusts a length it has not checked.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::record::{self, Header, RecordError, HEADER_BYTES, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::sys::StorageIo;

/// Size of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 32;
const SEGMENT_MAGIC: [u8; 8] = *b"ZDBSEG01";
/// Bytes read at once while scanning a segment.
pub const SCAN_WINDOW_BYTES: usize = 4 * 1024 * 1024;
/// The largest record there can be.
pub const RECORD_BYTES_MAX: usize = HEADER_BYTES + KEY_BYTES_MAX + VALUE_BYTES_MAX;

/// Encodes the header of a new segment.
pub fn encode_header(segment_id: u32, created_us: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut out = [0u8; SEGMENT_HEADER_BYTES];
    out[..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&segment_id.to_le_bytes());
    out[16..24].copy_from_slice(&created_us.to_le_bytes());
    let crc = crc32fast::hash(&out[..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a segment header and returns its segment id.
pub fn decode_header(bytes: &[u8]) -> Result<u32, String> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(format!("segment header truncated to {} bytes", bytes.len()));
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err("not a segment file (bad magic)".into());
    }
    let stored = u32::from_le_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]);
    if stored != crc32fast::hash(&bytes[..28]) {
        return Err("segment header checksum mismatch".into());
    }
    Ok(u32::from_le_bytes([
        bytes[8], bytes[9], bytes[10], bytes[11],
    ]))
}

/// The file name of a segment.
pub fn file_name(segment_id: u32) -> String {
    format!("seg-{segment_id:08}.zdb")
}

/// The segment id of a segment file name, if it is one.
pub fn parse_file_name(name: &str) -> Option<u32> {
    name.strip_prefix("seg-")?
        .strip_suffix(".zdb")?
        .parse()
        .ok()
}

/// Segment ids present in `dir`, ascending.
pub fn list(dir: &Path) -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_file_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

pub fn path(dir: &Path, segment_id: u32) -> PathBuf {
    dir.join(file_name(segment_id))
}

/// What the scanner reports for each stretch of a segment.
#[derive(Debug)]
pub enum ScanEvent<'a> {
    /// A record whose header and checksum verify. `bytes` holds the whole record.
    Record {
        offset: u64,
        header: Header,
        bytes: &'a [u8],
    },
    /// Bytes that do not verify, followed by valid records (or by the segment's end when the
    /// segment is not the namespace's last). `header` is set when only the key or value is bad.
    Damaged {
        offset: u64,
        length: u64,
        header: Option<Header>,
        key: Option<Vec<u8>>,
        error: RecordError,
    },
}

/// How a scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// Where valid data ends; the append offset of the last segment.
    pub valid_end: u64,
    /// Set when the scan found a torn tail at `valid_end` (bytes after it to cut off).
    pub torn: Option<RecordError>,
}

/// A windowed reader over one segment file.
struct Window<'a> {
    io: &'a dyn StorageIo,
    file: &'a File,
    file_len: u64,
    start: u64,
    data: Vec<u8>,
}

impl<'a> Window<'a> {
    /// Makes `[offset, offset + want)` (clamped to the file) available and returns it.
    fn bytes(&mut self, offset: u64, want: usize) -> io::Result<&[u8]> {
        let end = (offset + want as u64).min(self.file_len);
        let have_end = self.start + self.data.len() as u64;
        if offset < self.start || end > have_end {
            let read_len =
                (self.file_len - offset).min(want.max(SCAN_WINDOW_BYTES) as u64) as usize;
            self.data.resize(read_len, 0);
            self.io.read_exact_at(self.file, offset, &mut self.data)?;
            self.start = offset;
        }
        let from = (offset - self.start) as usize;
        let to = (end - self.start) as usize;
        Ok(&self.data[from..to])
    }
}

/// Scans `file` from `start` to its end, calling `visit` for every record and damaged stretch.
/// `is_last` says whether bad bytes with nothing valid after them are a torn tail (last
/// segment: reported in [`ScanEnd::torn`], not visited) or damage (any other segment).
pub fn scan(
    io: &dyn StorageIo,
    file: &File,
    start: u64,
    is_last: bool,
    mut visit: impl FnMut(ScanEvent<'_>),
) -> io::Result<ScanEnd> {
    let file_len = file.metadata()?.len();
    let mut window = Window {
        io,
        file,
        file_len,
        start: 0,
        data: Vec::new(),
    };
    let mut offset = start;
    while offset < file_len {
        let head = window.bytes(offset, HEADER_BYTES)?;
        let problem = match record::decode_header(head) {
            Ok(header) => {
                let total = header.record_bytes();
                let bytes = window.bytes(offset, total)?;
                match record::verify(bytes) {
                    Ok(header) => {
                        visit(ScanEvent::Record {
                            offset,
                            header,
                            bytes,
                        });
                        offset += total as u64;
                        continue;
                    }
                    Err(error) => (Some(header), error),
                }
            }
            Err(error) => (None, error),
        };
        let (header, error) = problem;
        // Where does valid data resume? After a record whose header is intact, at its end
        // if a valid record (or a clean end of segment) follows; otherwise at the next
        // position where a whole record verifies.
        let known_end = header
            .map(|h| offset + h.record_bytes() as u64)
            .filter(|&end| end <= file_len);
        let resume = match known_end {
            Some(end) if end == file_len && !is_last => Some(end),
            Some(end) if end < file_len && valid_record_at(&mut window, end)? => Some(end),
            _ => find_next_record(&mut window, offset + 1)?,
        };
        match resume {
            Some(next) => {
                let key = match (&header, known_end) {
                    (Some(h), Some(_)) => {
                        let bytes = window.bytes(offset, HEADER_BYTES + h.key_len as usize)?;
                        Some(bytes[HEADER_BYTES..].to_vec())
                    }
                    _ => None,
                };
                visit(ScanEvent::Damaged {
                    offset,
                    length: next - offset,
                    header,
                    key,
                    error,
                });
                offset = next;
            }
            None if is_last => {
                return Ok(ScanEnd {
                    valid_end: offset,
                    torn: Some(error),
                })
            }
            None => {
                visit(ScanEvent::Damaged {
                    offset,
                    length: file_len - offset,
                    header: None,
                    key: None,
                    error,
                });
                offset = file_len;
            }
        }
    }
    Ok(ScanEnd {
        valid_end: offset,
        torn: None,
    })
}

fn valid_record_at(window: &mut Window<'_>, offset: u64) -> io::Result<bool> {
    let head = window.bytes(offset, HEADER_BYTES)?;
    let Ok(header) = record::decode_header(head) else {
        return Ok(false);
    };
    let bytes = window.bytes(offset, header.record_bytes())?;
    Ok(record::verify(bytes).is_ok())
}

/// The first offset at or after `from` where a whole record verifies.
fn find_next_record(window: &mut Window<'_>, from: u64) -> io::Result<Option<u64>> {
    let mut at = from;
    while at + HEADER_BYTES as u64 <= window.file_len {
        let chunk = window.bytes(at, SCAN_WINDOW_BYTES)?.to_vec();
        let mut position = 0;
        while let Some(found) = find_magic(&chunk[position..]) {
            let candidate = at + (position + found) as u64;
            if valid_record_at(window, candidate)? {
                return Ok(Some(candidate));
            }
            position += found + 1;
        }
        if chunk.len() < record::MAGIC.len() {
            break;
        }
        // Overlap by the magic's length so a magic across the boundary is seen.
        at += (chunk.len() - (record::MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}

fn find_magic(haystack: &[u8]) -> Option<usize> {
    haystack
        .windows(record::MAGIC.len())
        .position(|w| w == record::MAGIC)
}
