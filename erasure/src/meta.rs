//! Object metadata records: an object's head (size, geometry, backends, page count) and its
//! chunk-list pages. Every record is framed (magic, version, kind, crc32) and its body is
//! sealed with AES-256-GCM under the config key, with the record's own key as associated
//! data, so a record copied under another key does not open. Byte layouts are in
//! `docs/design.md`. No I/O here.

use crate::aead::Aead;

use crate::codec::{
    ChunkInfo, RsCodecId, CHUNK_BYTES_MAX, DATA_SHARDS_MAX, KEY_BYTES, NONCE_BYTES,
    PARITY_SHARDS_MAX, SEALED_HEADER_BYTES, TAG_BYTES,
};

/// Chunks listed in one page record: at most 4096 × (40 + 6 × 128) bytes ≈ 3.3 MiB, under
/// zdb's 8 MiB value limit for any geometry.
pub const CHUNKS_PER_PAGE: usize = 4096;
/// Longest object name.
pub const NAME_BYTES_MAX: usize = 200;
/// Largest metadata record accepted from a backend.
pub const RECORD_BYTES_MAX: usize = 8 * 1024 * 1024;

const RECORD_MAGIC: &[u8; 4] = b"ZSMR";
const RECORD_VERSION: u8 = 1;
const RECORD_HEADER_BYTES: usize = 16;
const KIND_HEAD: u8 = 1;
const KIND_PAGE: u8 = 2;
const FLAG_DELETED: u8 = 1;
const FLAG_TREE_HASHES: u8 = 2;

/// Prefix of head keys; the object name follows.
pub const HEAD_PREFIX: &[u8] = b"zs:m:";
const PAGE_PREFIX: &[u8] = b"zs:p:";
const SHARD_PREFIX: &[u8] = b"zs:s:";

/// Errors of metadata records.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetaError {
    /// The record is malformed, truncated or fails its checksum.
    #[error("corrupt metadata record: {0}")]
    Corrupt(String),
    /// The record does not decrypt under this key at this place.
    #[error("metadata record does not decrypt: wrong key, or a record copied from another key")]
    Decrypt,
    /// An object name is empty or too long.
    #[error("object name of {0} bytes (must be 1..={NAME_BYTES_MAX})")]
    BadName(usize),
}

/// The key of an object's head record.
pub fn head_key(name: &[u8]) -> Result<Vec<u8>, MetaError> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(MetaError::BadName(name.len()));
    }
    Ok([HEAD_PREFIX, name].concat())
}

/// The key of page `page` of object `object_id`.
pub fn page_key(object_id: &[u8; 16], page: u32) -> Vec<u8> {
    [PAGE_PREFIX, object_id, &page.to_le_bytes()].concat()
}

/// The key of shard `index` of chunk `chunk` of object `object_id`.
pub fn shard_key(object_id: &[u8; 16], chunk: u64, index: u8) -> Vec<u8> {
    [SHARD_PREFIX, object_id, &chunk.to_le_bytes(), &[index]].concat()
}

/// An object's head record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    /// The object's name.
    pub name: Vec<u8>,
    /// Random id of this version of the object; shard and page keys derive from it.
    pub object_id: [u8; 16],
    /// Nanoseconds since the epoch when this version was written; the newest head wins.
    pub generation: u64,
    /// A tombstone: the object was deleted.
    pub deleted: bool,
    /// Chunk hashes are blake3 subtree chaining values ([`crate::codec::ChunkHash::Subtree`])
    /// and the content hash is merged from them; needs a power-of-two chunk size. Objects of
    /// one chunk record its plain blake3 either way.
    pub tree_hashes: bool,
    /// Plaintext bytes.
    pub size: u64,
    /// Plaintext bytes per chunk (the last may be shorter).
    pub chunk_bytes: u32,
    /// k.
    pub data_shards: u8,
    /// m.
    pub parity_shards: u8,
    /// Reed-Solomon implementation.
    pub codec: RsCodecId,
    /// Number of chunks.
    pub chunk_count: u64,
    /// Number of page records.
    pub page_count: u32,
    /// blake3 of the whole plaintext.
    pub content_hash: [u8; 32],
    /// Backends shards were placed on, by address; chunk entries index this table.
    pub backends: Vec<String>,
}

/// One chunk's entry in a page: its codec info and where each shard is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkEntry {
    /// Codec info (hash, sizes, shard crcs).
    pub info: ChunkInfo,
    /// For each shard index, the index of its backend in [`ObjectHead::backends`].
    pub placement: Vec<u16>,
}

/// One page of an object's chunk list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Page number.
    pub index: u32,
    /// Entries for chunks `index * CHUNKS_PER_PAGE ..`.
    pub chunks: Vec<ChunkEntry>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], MetaError> {
        if self.bytes.len() < count {
            return Err(MetaError::Corrupt(format!("{} truncated", self.what)));
        }
        let (head, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, MetaError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, MetaError> {
        let bytes = self.take(2)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }
    fn u32(&mut self) -> Result<u32, MetaError> {
        let mut array = [0; 4];
        array.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(array))
    }
    fn u64(&mut self) -> Result<u64, MetaError> {
        let mut array = [0; 8];
        array.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(array))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], MetaError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }
    fn bytes16(&mut self) -> Result<&'a [u8], MetaError> {
        let length = self.u16()? as usize;
        self.take(length)
    }
    fn finish(&self) -> Result<(), MetaError> {
        if !self.bytes.is_empty() {
            return Err(MetaError::Corrupt(format!(
                "{} has {} trailing bytes",
                self.what,
                self.bytes.len()
            )));
        }
        Ok(())
    }
}

/// Seals and opens metadata records with the config key.
pub struct MetaCodec {
    cipher: Aead,
}

impl std::fmt::Debug for MetaCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetaCodec")
    }
}

impl MetaCodec {
    /// A codec with the config key.
    pub fn new(key: &[u8; KEY_BYTES]) -> Self {
        MetaCodec {
            cipher: Aead::new(key),
        }
    }

    fn seal(&self, kind: u8, record_key: &[u8], body: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let mut sealed_body = Vec::with_capacity(NONCE_BYTES + body.len() + 16);
        self.cipher
            .seal_into(nonce, record_key, body, &mut sealed_body);
        let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + sealed_body.len());
        record.extend_from_slice(RECORD_MAGIC);
        record.push(RECORD_VERSION);
        record.push(kind);
        record.extend_from_slice(&[0, 0]);
        record.extend_from_slice(&(sealed_body.len() as u32).to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&record);
        hasher.update(&sealed_body);
        record.extend_from_slice(&hasher.finalize().to_le_bytes());
        record.extend_from_slice(&sealed_body);
        record
    }

    fn open(&self, kind: u8, record_key: &[u8], record: &[u8]) -> Result<Vec<u8>, MetaError> {
        if record.len() < RECORD_HEADER_BYTES || record.len() > RECORD_BYTES_MAX {
            return Err(MetaError::Corrupt(format!(
                "record of {} bytes",
                record.len()
            )));
        }
        if &record[..4] != RECORD_MAGIC {
            return Err(MetaError::Corrupt("bad magic".into()));
        }
        if record[4] != RECORD_VERSION {
            return Err(MetaError::Corrupt(format!("unknown version {}", record[4])));
        }
        if record[6..8] != [0, 0] {
            return Err(MetaError::Corrupt("reserved header bytes are set".into()));
        }
        if record[5] != kind {
            return Err(MetaError::Corrupt(format!(
                "record kind {} where {kind} was expected",
                record[5]
            )));
        }
        let body_bytes =
            u32::from_le_bytes([record[8], record[9], record[10], record[11]]) as usize;
        if record.len() != RECORD_HEADER_BYTES + body_bytes || body_bytes < NONCE_BYTES {
            return Err(MetaError::Corrupt("length does not match header".into()));
        }
        let stored_crc = u32::from_le_bytes([record[12], record[13], record[14], record[15]]);
        let body = &record[RECORD_HEADER_BYTES..];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&record[..12]);
        hasher.update(body);
        if hasher.finalize() != stored_crc {
            return Err(MetaError::Corrupt("crc32 mismatch".into()));
        }
        self.cipher.open(record_key, body).ok_or(MetaError::Decrypt)
    }

    /// Encodes a head record; returns (key, record).
    pub fn encode_head(&self, head: &ObjectHead) -> Result<(Vec<u8>, Vec<u8>), MetaError> {
        let key = head_key(&head.name)?;
        let record = self.seal(KIND_HEAD, &key, &head_body(head));
        Ok((key, record))
    }

    /// Decodes the head record stored under the head key of `name`.
    pub fn decode_head(&self, name: &[u8], record: &[u8]) -> Result<ObjectHead, MetaError> {
        let key = head_key(name)?;
        let body = self.open(KIND_HEAD, &key, record)?;
        parse_head_body(name, &body)
    }

    /// Encodes page `page` of `head`; returns (key, record).
    pub fn encode_page(&self, head: &ObjectHead, page: &Page) -> (Vec<u8>, Vec<u8>) {
        let key = page_key(&head.object_id, page.index);
        let record = self.seal(KIND_PAGE, &key, &page_body(head, page));
        (key, record)
    }

    /// Decodes page `index` of `head`.
    pub fn decode_page(
        &self,
        head: &ObjectHead,
        index: u32,
        record: &[u8],
    ) -> Result<Page, MetaError> {
        let key = page_key(&head.object_id, index);
        let body = self.open(KIND_PAGE, &key, record)?;
        parse_page_body(head, index, &body)
    }
}

/// The plaintext body of a head record (before sealing).
pub fn head_body(head: &ObjectHead) -> Vec<u8> {
    let mut body =
        Vec::with_capacity(128 + head.backends.iter().map(|b| b.len() + 2).sum::<usize>());
    body.extend_from_slice(&head.object_id);
    body.extend_from_slice(&head.generation.to_le_bytes());
    let mut flags = 0;
    if head.deleted {
        flags |= FLAG_DELETED;
    }
    if head.tree_hashes {
        flags |= FLAG_TREE_HASHES;
    }
    body.push(flags);
    body.extend_from_slice(&head.size.to_le_bytes());
    body.extend_from_slice(&head.chunk_bytes.to_le_bytes());
    body.push(head.data_shards);
    body.push(head.parity_shards);
    body.push(head.codec as u8);
    body.push(0);
    body.extend_from_slice(&head.chunk_count.to_le_bytes());
    body.extend_from_slice(&head.page_count.to_le_bytes());
    body.extend_from_slice(&head.content_hash);
    body.extend_from_slice(&(head.backends.len() as u16).to_le_bytes());
    for backend in &head.backends {
        body.extend_from_slice(&(backend.len() as u16).to_le_bytes());
        body.extend_from_slice(backend.as_bytes());
    }
    body
}

/// Parses the opened body of `name`'s head record. Everything a head may not say (unknown
/// flags, a reserved byte set, counts that disagree with the size) is [`MetaError::Corrupt`].
pub fn parse_head_body(name: &[u8], body: &[u8]) -> Result<ObjectHead, MetaError> {
    head_key(name)?;
    let mut reader = Reader {
        bytes: body,
        what: "head record",
    };
    let object_id = reader.array::<16>()?;
    let generation = reader.u64()?;
    let flags = reader.u8()?;
    if flags & !(FLAG_DELETED | FLAG_TREE_HASHES) != 0 {
        return Err(MetaError::Corrupt(format!(
            "head record has unknown flags {flags:#04x}"
        )));
    }
    let size = reader.u64()?;
    let chunk_bytes = reader.u32()?;
    let data_shards = reader.u8()?;
    let parity_shards = reader.u8()?;
    let codec =
        RsCodecId::from_byte(reader.u8()?).map_err(|e| MetaError::Corrupt(e.to_string()))?;
    if reader.u8()? != 0 {
        return Err(MetaError::Corrupt(
            "head record reserved byte is set".into(),
        ));
    }
    let chunk_count = reader.u64()?;
    let page_count = reader.u32()?;
    let content_hash = reader.array::<32>()?;
    let backend_count = reader.u16()? as usize;
    // Each address takes at least its 2-byte length: no allocation beyond the body's size.
    let mut backends = Vec::with_capacity(backend_count.min(reader.bytes.len() / 2));
    for _ in 0..backend_count {
        let address = reader.bytes16()?;
        backends.push(
            String::from_utf8(address.to_vec())
                .map_err(|_| MetaError::Corrupt("backend address is not UTF-8".into()))?,
        );
    }
    reader.finish()?;
    let head = ObjectHead {
        name: name.to_vec(),
        object_id,
        generation,
        deleted: flags & FLAG_DELETED != 0,
        tree_hashes: flags & FLAG_TREE_HASHES != 0,
        size,
        chunk_bytes,
        data_shards,
        parity_shards,
        codec,
        chunk_count,
        page_count,
        content_hash,
        backends,
    };
    let expected_chunks = if chunk_bytes == 0 {
        0
    } else {
        size.div_ceil(chunk_bytes as u64)
    };
    let expected_pages = chunk_count.div_ceil(CHUNKS_PER_PAGE as u64);
    let total_shards = data_shards as usize + parity_shards as usize;
    if !head.deleted
        && (chunk_bytes == 0
            || chunk_count != expected_chunks
            || page_count as u64 != expected_pages
            || data_shards == 0
            || parity_shards == 0
            || data_shards as usize > DATA_SHARDS_MAX
            || parity_shards as usize > PARITY_SHARDS_MAX
            || head.backends.len() < total_shards
            || (head.tree_hashes
                && (!chunk_bytes.is_power_of_two() || (chunk_bytes as usize) < blake3::CHUNK_LEN)))
    {
        return Err(MetaError::Corrupt(
            "head record fields are inconsistent".into(),
        ));
    }
    Ok(head)
}

/// The plaintext body of page record `page` of `head` (before sealing).
pub fn page_body(head: &ObjectHead, page: &Page) -> Vec<u8> {
    let total = (head.data_shards + head.parity_shards) as usize;
    let mut body = Vec::with_capacity(8 + page.chunks.len() * (40 + 6 * total));
    body.extend_from_slice(&page.index.to_le_bytes());
    body.extend_from_slice(&(page.chunks.len() as u32).to_le_bytes());
    for chunk in &page.chunks {
        body.extend_from_slice(&chunk.info.hash);
        body.extend_from_slice(&chunk.info.plain_bytes.to_le_bytes());
        body.extend_from_slice(&chunk.info.sealed_bytes.to_le_bytes());
        for index in 0..total {
            let crc = chunk.info.shard_crcs.get(index).copied().unwrap_or(0);
            let backend = chunk.placement.get(index).copied().unwrap_or(u16::MAX);
            body.extend_from_slice(&crc.to_le_bytes());
            body.extend_from_slice(&backend.to_le_bytes());
        }
    }
    body
}

/// Parses the opened body of page `index` of `head`. Entries must agree with the head: the
/// right page and count, sizes within the chunk size, shards on backends of its table.
pub fn parse_page_body(head: &ObjectHead, index: u32, body: &[u8]) -> Result<Page, MetaError> {
    let mut reader = Reader {
        bytes: body,
        what: "page record",
    };
    let stored_index = reader.u32()?;
    let count = reader.u32()? as usize;
    let expected = head
        .chunk_count
        .saturating_sub(index as u64 * CHUNKS_PER_PAGE as u64)
        .min(CHUNKS_PER_PAGE as u64) as usize;
    if stored_index != index || count != expected {
        return Err(MetaError::Corrupt(format!(
            "page {stored_index} with {count} chunks where page {index} with {expected} was expected"
        )));
    }
    let total = (head.data_shards + head.parity_shards) as usize;
    let mut chunks = Vec::with_capacity(count);
    for _ in 0..count {
        let hash = reader.array::<32>()?;
        let plain_bytes = reader.u32()?;
        let sealed_bytes = reader.u32()?;
        if plain_bytes > head.chunk_bytes || plain_bytes as usize > CHUNK_BYTES_MAX {
            return Err(MetaError::Corrupt(format!(
                "chunk of {plain_bytes} bytes in an object of {}-byte chunks",
                head.chunk_bytes
            )));
        }
        // Compression is kept only when it shrinks the chunk, so sealing adds at most the
        // flags, nonce and tag.
        if sealed_bytes as usize > plain_bytes as usize + SEALED_HEADER_BYTES + TAG_BYTES {
            return Err(MetaError::Corrupt(format!(
                "sealed chunk of {sealed_bytes} bytes for {plain_bytes} plaintext bytes"
            )));
        }
        let mut shard_crcs = Vec::with_capacity(total);
        let mut placement = Vec::with_capacity(total);
        for _ in 0..total {
            shard_crcs.push(reader.u32()?);
            let backend = reader.u16()?;
            if backend as usize >= head.backends.len() {
                return Err(MetaError::Corrupt(format!(
                    "shard placed on backend {backend}, not in the table"
                )));
            }
            placement.push(backend);
        }
        chunks.push(ChunkEntry {
            info: ChunkInfo {
                hash,
                plain_bytes,
                sealed_bytes,
                shard_crcs,
            },
            placement,
        });
    }
    reader.finish()?;
    Ok(Page { index, chunks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(chunk_count: u64) -> ObjectHead {
        ObjectHead {
            name: b"photos/cat.jpg".to_vec(),
            object_id: [9; 16],
            generation: 77,
            deleted: false,
            tree_hashes: false,
            size: chunk_count * 1000,
            chunk_bytes: 1000,
            data_shards: 4,
            parity_shards: 2,
            codec: RsCodecId::Erasure,
            chunk_count,
            page_count: chunk_count.div_ceil(CHUNKS_PER_PAGE as u64) as u32,
            content_hash: [3; 32],
            backends: (0..6).map(|i| format!("zdb://127.0.0.1:{i}/ns")).collect(),
        }
    }

    proptest! {
        #[test]
        fn pages_round_trip(count in 0usize..50, seed in any::<u32>()) {
            let codec = MetaCodec::new(&[1; 32]);
            let head = head(count as u64);
            let page = Page {
                index: 0,
                chunks: (0..count)
                    .map(|i| ChunkEntry {
                        info: ChunkInfo {
                            hash: [i as u8; 32],
                            plain_bytes: 1000,
                            sealed_bytes: seed % 1029,
                            shard_crcs: (0..6).map(|s| seed ^ s).collect(),
                        },
                        placement: (0..6).map(|s| ((i + s as usize) % 6) as u16).collect(),
                    })
                    .collect(),
            };
            let (_, record) = codec.encode_page(&head, &page);
            prop_assert_eq!(codec.decode_page(&head, 0, &record).unwrap(), page);
        }

        /// No truncation or bit flip of a head record is ever accepted.
        #[test]
        fn damaged_heads_are_rejected(cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()) {
            let codec = MetaCodec::new(&[1; 32]);
            let (_, record) = codec.encode_head(&head(3)).unwrap();
            prop_assert!(codec.decode_head(b"photos/cat.jpg", &record[..cut.index(record.len())]).is_err());
            let mut flipped = record.clone();
            flipped[flip.index(record.len())] ^= 0x10;
            prop_assert!(codec.decode_head(b"photos/cat.jpg", &flipped).is_err());
        }
    }

    #[test]
    fn heads_round_trip_and_are_bound_to_their_key() {
        let codec = MetaCodec::new(&[1; 32]);
        let original = head(5000);
        let (key, record) = codec.encode_head(&original).unwrap();
        assert_eq!(key, b"zs:m:photos/cat.jpg");
        assert_eq!(
            codec.decode_head(b"photos/cat.jpg", &record).unwrap(),
            original
        );
        assert_eq!(
            codec.decode_head(b"photos/dog.jpg", &record).unwrap_err(),
            MetaError::Decrypt
        );
        assert_eq!(
            MetaCodec::new(&[2; 32])
                .decode_head(b"photos/cat.jpg", &record)
                .unwrap_err(),
            MetaError::Decrypt
        );
        assert!(head_key(b"").is_err());
        assert!(head_key(&[b'x'; NAME_BYTES_MAX + 1]).is_err());
    }
}
