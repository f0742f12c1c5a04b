//! The record: the unit appended to a segment. Layout and invariants are in
//! `dataplane/docs/design.md`; this module is the only code that encodes or decodes it.
//!
//! ```text
//!  0      4  magic "ZDBR"
//!  4      1  version (1)
//!  5      1  flags (bit 0: tombstone)
//!  6      1  key length (0..=255)
//!  7      1  reserved, 0
//!  8      4  value length (u32 LE, <= 8 MiB)
//! 12      8  timestamp, microseconds since the Unix epoch (u64 LE)
//! 20      8  record sequence number in its namespace (u64 LE)
//! 28      4  previous version of this key: segment id (u32 LE, 0 = none)
//! 32      4  previous version of this key: offset in that segment (u32 LE)
//! 36     32  chain link: blake3 keyed with the previous link, over the record's digest,
//!            the digest being blake3 over bytes 0..36, key and value
//! 68      4  reserved, 0
//! 72      4  header crc32 over bytes 0..72
//! 76      4  record crc32 over bytes 0..72, key and value
//! 80      .. key, then value
//! ```

use thiserror::Error;

/// Size of the fixed record header in bytes.
pub const HEADER_BYTES: usize = 80;
/// The record magic, "ZDBR".
pub const MAGIC: [u8; 4] = *b"ZDBR";
/// The only record version this build writes and reads.
pub const VERSION: u8 = 1;
/// Keys are at most this long (0-db's limit).
pub const KEY_BYTES_MAX: usize = 255;
/// Values are at most this long (0-db's limit).
pub const VALUE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Flag: this record deletes its key.
pub const FLAG_TOMBSTONE: u8 = 0x01;
/// Length of a chain link (blake3 output).
pub const LINK_BYTES: usize = 32;
/// Header bytes a record's digest covers (0..36: all but the link and the crcs).
const DIGESTED_HEADER_BYTES: usize = 36;
/// A digest message longer than this (one BLAKE3 chunk) is copied into one piece to hash.
const DIGEST_COPY_FROM_BYTES: usize = 1024;

/// What a decoder found wrong, precise enough to tell a torn tail from damage.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    #[error("record needs {needed} bytes, only {available} are there")]
    Truncated { needed: usize, available: usize },
    #[error("bad record magic {found:02x?}")]
    BadMagic { found: [u8; 4] },
    #[error("record header checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("unsupported record version {0}")]
    Version(u8),
    #[error("record length out of bounds: key {key_len}, value {value_len}")]
    Length { key_len: usize, value_len: usize },
    #[error("record checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    RecordChecksum { stored: u32, computed: u32 },
}

/// The decoded fixed header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u8,
    pub key_len: u8,
    pub value_len: u32,
    pub timestamp_us: u64,
    pub sequence: u64,
    pub prev_segment: u32,
    pub prev_offset: u32,
    pub link: [u8; LINK_BYTES],
    pub record_crc: u32,
}

impl Header {
    /// Total bytes of the record this header starts.
    pub fn record_bytes(&self) -> usize {
        HEADER_BYTES + self.key_len as usize + self.value_len as usize
    }

    pub fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }
}

/// What a new record says, before it is encoded.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub flags: u8,
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// crc32 of `value` (the caller has it already: it is what the index keeps).
    pub value_crc: u32,
    pub timestamp_us: u64,
    pub sequence: u64,
    pub prev_segment: u32,
    pub prev_offset: u32,
}

/// Appends the encoded record to `out` and returns its chain link and record crc.
/// `prev_link` is the chain link of the namespace's previous record.
pub fn encode(
    record: &NewRecord<'_>,
    prev_link: &[u8; LINK_BYTES],
    out: &mut Vec<u8>,
) -> ([u8; LINK_BYTES], u32) {
    let start = out.len();
    encode_unsealed(record, out);
    let (link, _) = seal(&mut out[start..], prev_link);
    (link, u32_at(out, start + 76))
}

/// Appends the record with its chain link and checksums still open: the engine seals records
/// later, in log order, off the path that answers the client (see [`seal`]). An unsealed
/// record only ever lives in memory: bytes 36..76 are zero and bytes 76..80 hold the value's
/// crc32 until [`seal`] replaces them.
pub fn encode_unsealed(record: &NewRecord<'_>, out: &mut Vec<u8>) {
    debug_assert!(record.key.len() <= KEY_BYTES_MAX);
    debug_assert!(record.value.len() <= VALUE_BYTES_MAX);
    out.reserve(HEADER_BYTES + record.key.len() + record.value.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(record.flags);
    out.push(record.key.len() as u8);
    out.push(0);
    out.extend_from_slice(&(record.value.len() as u32).to_le_bytes());
    out.extend_from_slice(&record.timestamp_us.to_le_bytes());
    out.extend_from_slice(&record.sequence.to_le_bytes());
    out.extend_from_slice(&record.prev_segment.to_le_bytes());
    out.extend_from_slice(&record.prev_offset.to_le_bytes());
    out.extend_from_slice(&[0u8; LINK_BYTES + 8]);
    out.extend_from_slice(&record.value_crc.to_le_bytes());
    out.extend_from_slice(record.key);
    out.extend_from_slice(record.value);
}

/// Values up to this size get their record crc computed over them again; above it the value's
/// own crc is combined in (cheaper than a second pass only for large values).
const CRC_COMBINE_FROM_BYTES: usize = 2048;

/// Seals the unsealed record at the start of `bytes` (written by [`encode_unsealed`]): its
/// chain link from `prev_link`, its header crc and its record crc. Returns the link and the
/// record's length.
pub fn seal(bytes: &mut [u8], prev_link: &[u8; LINK_BYTES]) -> ([u8; LINK_BYTES], usize) {
    let key_len = bytes[6] as usize;
    let value_len = u32_at(bytes, 8) as usize;
    let total = HEADER_BYTES + key_len + value_len;
    let value_crc = u32_at(bytes, 76);
    // The digest's message is header bytes 0..36, key and value. Bytes 36..80 (link,
    // reserved, crcs) are only filled in below, so the first 36 bytes are copied right
    // before the key and the message hashed in one piece: BLAKE3 then hashes a large value's
    // 1 KiB chunks side by side (SIMD) instead of one block after the other, as it must when
    // the message comes in two pieces that do not end on a chunk boundary.
    let message_start = HEADER_BYTES - DIGESTED_HEADER_BYTES;
    bytes.copy_within(..DIGESTED_HEADER_BYTES, message_start);
    let link = link_from(
        prev_link,
        blake3::hash(&bytes[message_start..total]).as_bytes(),
    );
    bytes[36..68].copy_from_slice(&link);
    bytes[68..72].fill(0);
    let header_crc = crc32fast::hash(&bytes[..72]);
    let mut hasher = crc32fast::Hasher::new_with_initial_len(header_crc, 72);
    if value_len >= CRC_COMBINE_FROM_BYTES {
        hasher.update(&bytes[HEADER_BYTES..HEADER_BYTES + key_len]);
        hasher.combine(&crc32fast::Hasher::new_with_initial_len(
            value_crc,
            value_len as u64,
        ));
    } else {
        hasher.update(&bytes[HEADER_BYTES..total]);
    }
    let record_crc = hasher.finalize();
    bytes[72..76].copy_from_slice(&header_crc.to_le_bytes());
    bytes[76..80].copy_from_slice(&record_crc.to_le_bytes());
    (link, total)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Checks a header's length, magic and version and reads its fields as they are stored (an
/// unsealed record holds placeholders where the link and record crc go).
fn decode_fields(bytes: &[u8]) -> Result<Header, RecordError> {
    if bytes.len() < HEADER_BYTES {
        return Err(RecordError::Truncated {
            needed: HEADER_BYTES,
            available: bytes.len(),
        });
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != MAGIC {
        return Err(RecordError::BadMagic { found: magic });
    }
    if bytes[4] != VERSION {
        return Err(RecordError::Version(bytes[4]));
    }
    let mut link = [0u8; LINK_BYTES];
    link.copy_from_slice(&bytes[36..68]);
    Ok(Header {
        flags: bytes[5],
        key_len: bytes[6],
        value_len: u32_at(bytes, 8),
        timestamp_us: u64_at(bytes, 12),
        sequence: u64_at(bytes, 20),
        prev_segment: u32_at(bytes, 28),
        prev_offset: u32_at(bytes, 32),
        link,
        record_crc: u32_at(bytes, 76),
    })
}

/// Decodes and checks a header (magic, version, header crc, length bounds). The key and
/// value are not checked here: see [`verify`].
pub fn decode_header(bytes: &[u8]) -> Result<Header, RecordError> {
    let header = decode_fields(bytes)?;
    let stored = u32_at(bytes, 72);
    let computed = crc32fast::hash(&bytes[..72]);
    if stored != computed {
        return Err(RecordError::HeaderChecksum { stored, computed });
    }
    if header.value_len as usize > VALUE_BYTES_MAX {
        return Err(RecordError::Length {
            key_len: header.key_len as usize,
            value_len: header.value_len as usize,
        });
    }
    Ok(header)
}

/// Decodes the header of an unsealed record (see [`encode_unsealed`]): only what the engine
/// itself wrote in memory, so nothing is checksummed yet; the link reads as zeros and the
/// record crc as 0. The lengths are still checked against `bytes`.
pub fn decode_unsealed(bytes: &[u8]) -> Result<Header, RecordError> {
    let header = Header {
        link: [0u8; LINK_BYTES],
        record_crc: 0,
        ..decode_fields(bytes)?
    };
    if header.value_len as usize > VALUE_BYTES_MAX || bytes.len() < header.record_bytes() {
        return Err(RecordError::Length {
            key_len: header.key_len as usize,
            value_len: header.value_len as usize,
        });
    }
    Ok(header)
}

/// Checks a whole record (`bytes` starts at its header and holds at least all of it) and
/// returns its header; `bytes[HEADER_BYTES..record_bytes]` are then the key and value.
pub fn verify(bytes: &[u8]) -> Result<Header, RecordError> {
    let header = decode_header(bytes)?;
    let total = header.record_bytes();
    if bytes.len() < total {
        return Err(RecordError::Truncated {
            needed: total,
            available: bytes.len(),
        });
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..72]);
    hasher.update(&bytes[HEADER_BYTES..total]);
    let computed = hasher.finalize();
    if computed != header.record_crc {
        return Err(RecordError::RecordChecksum {
            stored: header.record_crc,
            computed,
        });
    }
    Ok(header)
}

/// The digest of a verified record: blake3 over header bytes 0..36, key and value. The chain
/// links digests, so a record's place in the chain can be proven with its digest alone, and
/// the digests of records that compaction drops are kept (see `docs/design.md`).
pub fn digest(record: &[u8], header: &Header) -> [u8; LINK_BYTES] {
    let body = &record[HEADER_BYTES..header.record_bytes()];
    if DIGESTED_HEADER_BYTES + body.len() <= DIGEST_COPY_FROM_BYTES {
        // One chunk of BLAKE3: hashed block after block anyway.
        let mut content = blake3::Hasher::new();
        content.update(&record[..DIGESTED_HEADER_BYTES]);
        content.update(body);
        return *content.finalize().as_bytes();
    }
    // The message in one piece, so that its chunks are hashed side by side (see `seal`):
    // a copy costs far less than hashing them one after the other.
    let mut message = Vec::with_capacity(DIGESTED_HEADER_BYTES + body.len());
    message.extend_from_slice(&record[..DIGESTED_HEADER_BYTES]);
    message.extend_from_slice(body);
    *blake3::hash(&message).as_bytes()
}

/// The next link of a chain: blake3 keyed with the previous link, over the record's digest.
pub fn link_from(prev_link: &[u8; LINK_BYTES], digest: &[u8; LINK_BYTES]) -> [u8; LINK_BYTES] {
    *blake3::keyed_hash(prev_link, digest).as_bytes()
}

/// Recomputes the chain link of a verified record from the previous link.
pub fn chain_link(
    prev_link: &[u8; LINK_BYTES],
    record: &[u8],
    header: &Header,
) -> [u8; LINK_BYTES] {
    link_from(prev_link, &digest(record, header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &NewRecord {
                flags: 0,
                key,
                value,
                value_crc: crc32fast::hash(value),
                timestamp_us: 1_700_000_000_000_000,
                sequence: 42,
                prev_segment: 3,
                prev_offset: 4096,
            },
            &[9u8; LINK_BYTES],
            &mut out,
        );
        out
    }

    #[test]
    fn layout_is_as_documented() {
        let bytes = sample(b"key", b"value");
        assert_eq!(bytes.len(), HEADER_BYTES + 3 + 5);
        assert_eq!(&bytes[0..4], b"ZDBR");
        assert_eq!(bytes[4], 1);
        assert_eq!(bytes[6], 3);
        assert_eq!(u32_at(&bytes, 8), 5);
        assert_eq!(u64_at(&bytes, 20), 42);
        assert_eq!(&bytes[80..83], b"key");
        assert_eq!(&bytes[83..], b"value");
    }

    #[test]
    fn sealing_later_equals_encoding_at_once() {
        // Both crc paths: small values are hashed again, large ones combined.
        for value_len in [
            0usize,
            5,
            CRC_COMBINE_FROM_BYTES - 1,
            CRC_COMBINE_FROM_BYTES,
            9000,
        ] {
            let value: Vec<u8> = (0..value_len).map(|i| (i * 7) as u8).collect();
            let record = NewRecord {
                flags: 0,
                key: b"key",
                value: &value,
                value_crc: crc32fast::hash(&value),
                timestamp_us: 5,
                sequence: 6,
                prev_segment: 0,
                prev_offset: 0,
            };
            let mut unsealed = Vec::new();
            encode_unsealed(&record, &mut unsealed);
            let early = decode_unsealed(&unsealed).unwrap();
            assert_eq!(early.value_len as usize, value_len);
            assert_eq!(early.sequence, 6);
            assert!(
                verify(&unsealed).is_err(),
                "an unsealed record must not verify"
            );
            let (link, length) = seal(&mut unsealed, &[3u8; LINK_BYTES]);
            assert_eq!(length, unsealed.len());
            let header = verify(&unsealed).unwrap();
            assert_eq!(header.link, link);
            assert_eq!(chain_link(&[3u8; LINK_BYTES], &unsealed, &header), link);
        }
    }

    #[test]
    fn digest_is_blake3_of_the_documented_message() {
        // Around BLAKE3's 1 KiB chunks, where sealing and `digest` hash the message in one
        // piece: the digest stays blake3(bytes 0..36 || key || value), the link blake3 keyed
        // with the previous link over it.
        for value_len in [0usize, 5, 64, 971, 972, 973, 1024, 2048, 4096, 70_001] {
            let value: Vec<u8> = (0..value_len).map(|i| (i * 7 + 3) as u8).collect();
            let bytes = sample(b"some-key", &value);
            let header = decode_header(&bytes).unwrap();
            let mut message = bytes[..36].to_vec();
            message.extend_from_slice(b"some-key");
            message.extend_from_slice(&value);
            let expected = *blake3::hash(&message).as_bytes();
            assert_eq!(
                digest(&bytes, &header),
                expected,
                "value of {value_len} bytes"
            );
            assert_eq!(
                header.link,
                *blake3::keyed_hash(&[9u8; LINK_BYTES], &expected).as_bytes(),
                "value of {value_len} bytes"
            );
        }
    }

    #[test]
    fn chain_link_recomputes() {
        let bytes = sample(b"k", b"v");
        let header = verify(&bytes).unwrap();
        assert_eq!(chain_link(&[9u8; LINK_BYTES], &bytes, &header), header.link);
    }

    proptest! {
        #[test]
        fn roundtrip(key in proptest::collection::vec(any::<u8>(), 0..=255),
                     value in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let bytes = sample(&key, &value);
            let header = verify(&bytes).unwrap();
            prop_assert_eq!(header.key_len as usize, key.len());
            prop_assert_eq!(header.value_len as usize, value.len());
            prop_assert_eq!(&bytes[HEADER_BYTES..HEADER_BYTES + key.len()], &key[..]);
            prop_assert_eq!(&bytes[HEADER_BYTES + key.len()..], &value[..]);
        }

        #[test]
        fn any_flipped_byte_is_caught(value in proptest::collection::vec(any::<u8>(), 1..500),
                                      position in any::<proptest::sample::Index>(),
                                      bit in 0u8..8) {
            let mut bytes = sample(b"some-key", &value);
            let at = position.index(bytes.len());
            bytes[at] ^= 1 << bit;
            prop_assert!(verify(&bytes).is_err());
        }

        #[test]
        fn truncation_is_reported(value in proptest::collection::vec(any::<u8>(), 1..500),
                                  cut in any::<proptest::sample::Index>()) {
            let bytes = sample(b"k", &value);
            let keep = cut.index(bytes.len());
            let is_truncated = matches!(verify(&bytes[..keep]), Err(RecordError::Truncated { .. }));
            prop_assert!(is_truncated);
        }
    }
}
