//! The chunk codec: plaintext chunk ⇄ k+m framed shards. No I/O here.
//!
//! Encoding: blake3 of the plaintext; zstd (kept raw when compression does not pay);
//! AES-256-GCM with a fresh random nonce and the chunk's place (object id, chunk index) as
//! associated data, so a sealed chunk cannot be replayed elsewhere; Reed-Solomon k+m over the
//! sealed bytes; each shard framed with its index, codec parameters and a crc32.
//! Decoding checks all of it in reverse and never returns bytes that did not verify.
//! Byte layouts are in `docs/design.md`.

use crate::aead::Aead;

/// Bytes of the AES-256-GCM key.
pub const KEY_BYTES: usize = 32;
/// Bytes of the AES-GCM nonce stored at the head of each sealed chunk.
pub const NONCE_BYTES: usize = 12;
/// Bytes of the AES-GCM tag at the end of each sealed chunk.
pub const TAG_BYTES: usize = 16;
/// Bytes before the ciphertext in a sealed chunk: flags and nonce.
pub const SEALED_HEADER_BYTES: usize = 1 + NONCE_BYTES;
/// Headroom before the plaintext in a buffer given to [`ChunkCodec::encode_in_place`]: the
/// sealed chunk's flags and nonce go there.
pub const IN_PLACE_HEADROOM_BYTES: usize = SEALED_HEADER_BYTES;
/// Bytes of a shard frame's header.
pub const SHARD_HEADER_BYTES: usize = 20;
/// Shard payloads are padded to a multiple of this (reed-solomon-simd wants even sizes;
/// 64 keeps SIMD loops on whole vectors).
pub const SHARD_ALIGN_BYTES: usize = 64;
/// Largest shard frame: below zdb's 8 MiB value limit with room to spare.
pub const SHARD_BYTES_MAX: usize = 8 * 1024 * 1024 - 4096;
/// Most data shards per chunk.
pub const DATA_SHARDS_MAX: usize = 64;
/// Most parity shards per chunk.
pub const PARITY_SHARDS_MAX: usize = 64;
/// Largest plaintext chunk.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most bytes sealing may add to a chunk (header, tag, and what zstd adds to data it cannot
/// shrink is never kept): bounds a sealed length read from metadata.
const CHUNK_SLACK_BYTES: usize = 64 * 1024;

const SHARD_MAGIC: &[u8; 4] = b"ZSHD";
const SHARD_VERSION: u8 = 1;
const FLAG_COMPRESSED: u8 = 1;

/// Errors of the codec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// Parameters out of range.
    #[error("invalid codec parameters: {0}")]
    InvalidParameters(String),
    /// A shard frame is malformed or fails its checksum.
    #[error("bad shard: {0}")]
    BadShard(String),
    /// Fewer than k intact shards.
    #[error("only {available} intact shards, {needed} needed")]
    NotEnoughShards {
        /// Intact shards given.
        available: usize,
        /// Shards needed (k).
        needed: usize,
    },
    /// Reed-Solomon failed.
    #[error("reed-solomon: {0}")]
    ReedSolomon(String),
    /// Decryption failed: wrong key, or shards that belong to another chunk.
    #[error("chunk does not decrypt: wrong key, or forged or misplaced shards")]
    Decrypt,
    /// Decompression failed.
    #[error("chunk does not decompress: {0}")]
    Decompress(String),
    /// The plaintext does not have the hash recorded for it.
    #[error("chunk hash mismatch")]
    HashMismatch,
}

/// Which Reed-Solomon implementation (and so which parity math) a shard was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RsCodecId {
    /// reed-solomon-erasure 6, GF(2^8) Vandermonde-derived matrix (with `simd-accel`).
    Erasure = 1,
    /// reed-solomon-simd 3, GF(2^16) Leopard-style FFT.
    Simd = 2,
}

impl RsCodecId {
    /// The codec new objects use: the faster one at 4+2 in `perf/results/erasure.md`.
    pub const DEFAULT: RsCodecId = RsCodecId::Erasure;

    /// From the byte in a shard frame or metadata record.
    pub fn from_byte(byte: u8) -> Result<Self, CodecError> {
        match byte {
            1 => Ok(RsCodecId::Erasure),
            2 => Ok(RsCodecId::Simd),
            other => Err(CodecError::InvalidParameters(format!(
                "unknown reed-solomon codec id {other}"
            ))),
        }
    }

    /// Name used in configs.
    pub fn name(self) -> &'static str {
        match self {
            RsCodecId::Erasure => "reed-solomon-erasure",
            RsCodecId::Simd => "reed-solomon-simd",
        }
    }

    /// From a config name.
    pub fn from_name(name: &str) -> Result<Self, CodecError> {
        match name {
            "reed-solomon-erasure" => Ok(RsCodecId::Erasure),
            "reed-solomon-simd" => Ok(RsCodecId::Simd),
            other => Err(CodecError::InvalidParameters(format!(
                "unknown reed-solomon codec {other:?} (reed-solomon-erasure or reed-solomon-simd)"
            ))),
        }
    }
}

/// A Reed-Solomon coder for one k+m geometry.
pub struct ReedSolomon {
    id: RsCodecId,
    data_shards: usize,
    parity_shards: usize,
    erasure: Option<reed_solomon_erasure::galois_8::ReedSolomon>,
}

impl std::fmt::Debug for ReedSolomon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReedSolomon({:?}, {}+{})",
            self.id, self.data_shards, self.parity_shards
        )
    }
}

impl ReedSolomon {
    /// A coder for `data_shards` + `parity_shards`.
    pub fn new(
        id: RsCodecId,
        data_shards: usize,
        parity_shards: usize,
    ) -> Result<Self, CodecError> {
        if !(1..=DATA_SHARDS_MAX).contains(&data_shards)
            || !(1..=PARITY_SHARDS_MAX).contains(&parity_shards)
        {
            return Err(CodecError::InvalidParameters(format!(
                "{data_shards}+{parity_shards} shards: data must be 1..={DATA_SHARDS_MAX}, parity 1..={PARITY_SHARDS_MAX}"
            )));
        }
        let erasure = match id {
            RsCodecId::Erasure => Some(
                reed_solomon_erasure::galois_8::ReedSolomon::new(data_shards, parity_shards)
                    .map_err(|e| CodecError::ReedSolomon(format!("{e:?}")))?,
            ),
            RsCodecId::Simd => None,
        };
        Ok(ReedSolomon {
            id,
            data_shards,
            parity_shards,
            erasure,
        })
    }

    /// The implementation in use.
    pub fn id(&self) -> RsCodecId {
        self.id
    }

    /// k.
    pub fn data_shards(&self) -> usize {
        self.data_shards
    }

    /// m.
    pub fn parity_shards(&self) -> usize {
        self.parity_shards
    }

    /// Payload bytes of each shard for `sealed_bytes` of input.
    pub fn shard_bytes(&self, sealed_bytes: usize) -> usize {
        let per_shard = sealed_bytes.div_ceil(self.data_shards).max(1);
        per_shard.div_ceil(SHARD_ALIGN_BYTES) * SHARD_ALIGN_BYTES
    }

    /// Cuts `input` into k data shards (zero padded) and computes m parity shards.
    pub fn encode(&self, input: &[u8]) -> Result<Vec<Vec<u8>>, CodecError> {
        let shard_bytes = self.shard_bytes(input.len());
        let mut shards: Vec<Vec<u8>> = (0..self.data_shards)
            .map(|index| {
                let start = (index * shard_bytes).min(input.len());
                let end = ((index + 1) * shard_bytes).min(input.len());
                let mut shard = Vec::with_capacity(shard_bytes);
                shard.extend_from_slice(&input[start..end]);
                shard.resize(shard_bytes, 0);
                shard
            })
            .collect();
        self.add_parity(&mut shards)?;
        Ok(shards)
    }

    /// Computes the m parity shards of the k data shards `data` (all of one length) into
    /// `parity` (m slices of that length), without copying the data.
    pub fn parity_into(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError> {
        if data.len() != self.data_shards || parity.len() != self.parity_shards {
            return Err(CodecError::InvalidParameters(format!(
                "{}+{} shards given to a {}+{} coder",
                data.len(),
                parity.len(),
                self.data_shards,
                self.parity_shards
            )));
        }
        match &self.erasure {
            Some(coder) => coder
                .encode_sep(data, parity)
                .map_err(|e| CodecError::ReedSolomon(format!("{e:?}"))),
            None => {
                let computed =
                    reed_solomon_simd::encode(self.data_shards, self.parity_shards, data.iter())
                        .map_err(|e| CodecError::ReedSolomon(e.to_string()))?;
                for (target, shard) in parity.iter_mut().zip(computed) {
                    if target.len() != shard.len() {
                        return Err(CodecError::ReedSolomon("parity length differs".into()));
                    }
                    target.copy_from_slice(&shard);
                }
                Ok(())
            }
        }
    }

    /// Given the k data shards, appends the m parity shards.
    fn add_parity(&self, shards: &mut Vec<Vec<u8>>) -> Result<(), CodecError> {
        let shard_bytes = shards.first().map_or(0, Vec::len);
        match &self.erasure {
            Some(coder) => {
                shards.resize(self.data_shards + self.parity_shards, vec![0; shard_bytes]);
                coder
                    .encode(shards)
                    .map_err(|e| CodecError::ReedSolomon(format!("{e:?}")))?;
            }
            None => {
                let parity =
                    reed_solomon_simd::encode(self.data_shards, self.parity_shards, shards.iter())
                        .map_err(|e| CodecError::ReedSolomon(e.to_string()))?;
                shards.extend(parity);
            }
        }
        Ok(())
    }

    /// Fills in every missing shard (data and parity) from at least k present ones.
    /// All present shards must have the same length.
    pub fn reconstruct(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), CodecError> {
        let total = self.data_shards + self.parity_shards;
        if shards.len() != total {
            return Err(CodecError::InvalidParameters(format!(
                "{} shards given, {total} expected",
                shards.len()
            )));
        }
        let available = shards.iter().filter(|shard| shard.is_some()).count();
        if available < self.data_shards {
            return Err(CodecError::NotEnoughShards {
                available,
                needed: self.data_shards,
            });
        }
        if available == total {
            return Ok(());
        }
        let mut lengths = shards.iter().flatten().map(Vec::len);
        let first = lengths.next().unwrap_or(0);
        if lengths.any(|length| length != first) || first == 0 || first % 2 != 0 {
            return Err(CodecError::BadShard(
                "shards of one chunk differ in length".into(),
            ));
        }
        match &self.erasure {
            Some(coder) => coder
                .reconstruct(shards)
                .map_err(|e| CodecError::ReedSolomon(format!("{e:?}"))),
            None => {
                let data_missing = shards[..self.data_shards].iter().any(Option::is_none);
                if data_missing {
                    let originals = shards[..self.data_shards]
                        .iter()
                        .enumerate()
                        .filter_map(|(index, shard)| shard.as_ref().map(|shard| (index, shard)));
                    let recovery = shards[self.data_shards..]
                        .iter()
                        .enumerate()
                        .filter_map(|(index, shard)| shard.as_ref().map(|shard| (index, shard)));
                    let restored = reed_solomon_simd::decode(
                        self.data_shards,
                        self.parity_shards,
                        originals,
                        recovery,
                    )
                    .map_err(|e| CodecError::ReedSolomon(e.to_string()))?;
                    for (index, shard) in restored {
                        if let Some(slot) = shards.get_mut(index) {
                            *slot = Some(shard);
                        }
                    }
                }
                if shards[self.data_shards..].iter().any(Option::is_none) {
                    let data: Vec<Vec<u8>> = shards[..self.data_shards]
                        .iter()
                        .flatten()
                        .cloned()
                        .collect();
                    let parity = reed_solomon_simd::encode(
                        self.data_shards,
                        self.parity_shards,
                        data.iter(),
                    )
                    .map_err(|e| CodecError::ReedSolomon(e.to_string()))?;
                    for (slot, shard) in shards[self.data_shards..].iter_mut().zip(parity) {
                        if slot.is_none() {
                            *slot = Some(shard);
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// A shard frame's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// Reed-Solomon implementation.
    pub codec: RsCodecId,
    /// k.
    pub data_shards: u8,
    /// m.
    pub parity_shards: u8,
    /// This shard's index, 0..k+m (data shards first).
    pub index: u8,
}

/// The first 16 bytes of a frame's header (all but the crc) for a payload of `payload_bytes`.
fn header_prefix(header: ShardHeader, payload_bytes: usize) -> [u8; 16] {
    let mut prefix = [0u8; 16];
    prefix[..4].copy_from_slice(SHARD_MAGIC);
    prefix[4] = SHARD_VERSION;
    prefix[5] = header.codec as u8;
    prefix[6] = header.data_shards;
    prefix[7] = header.parity_shards;
    prefix[8] = header.index;
    prefix[12..16].copy_from_slice(&(payload_bytes as u32).to_le_bytes());
    prefix
}

/// Bytes of each shard framed at a time (a multiple of [`SHARD_ALIGN_BYTES`]): k+m stripes of
/// this size stay in a core's L2 cache while they are copied, coded and checksummed.
const STRIPE_BYTES: usize = 32 * 1024;

/// Frames a shard payload: header, crc32, payload. Returns the frame and its crc.
pub fn frame_shard(header: ShardHeader, payload: &[u8]) -> (Vec<u8>, u32) {
    let mut frame = Vec::with_capacity(SHARD_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&header_prefix(header, payload.len()));
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame);
    hasher.update(payload);
    let crc = hasher.finalize();
    frame.extend_from_slice(&crc.to_le_bytes());
    frame.extend_from_slice(payload);
    (frame, crc)
}

/// Checks a shard frame and returns its header, crc and payload. Torn, truncated, forged or
/// foreign bytes are errors.
pub fn parse_shard(frame: &[u8]) -> Result<(ShardHeader, u32, &[u8]), CodecError> {
    if frame.len() < SHARD_HEADER_BYTES {
        return Err(CodecError::BadShard(format!(
            "{} bytes, shorter than a header",
            frame.len()
        )));
    }
    if &frame[0..4] != SHARD_MAGIC {
        return Err(CodecError::BadShard("bad magic".into()));
    }
    if frame[4] != SHARD_VERSION {
        return Err(CodecError::BadShard(format!(
            "unknown version {}",
            frame[4]
        )));
    }
    let codec = RsCodecId::from_byte(frame[5]).map_err(|e| CodecError::BadShard(e.to_string()))?;
    let (data_shards, parity_shards, index) = (frame[6], frame[7], frame[8]);
    if data_shards == 0
        || parity_shards == 0
        || data_shards as usize > DATA_SHARDS_MAX
        || parity_shards as usize > PARITY_SHARDS_MAX
        || index as usize >= data_shards as usize + parity_shards as usize
    {
        return Err(CodecError::BadShard(format!(
            "shard {index} of {data_shards}+{parity_shards} is out of range"
        )));
    }
    if frame[9..12] != [0, 0, 0] {
        return Err(CodecError::BadShard("reserved header bytes are set".into()));
    }
    let payload_bytes = u32::from_le_bytes([frame[12], frame[13], frame[14], frame[15]]) as usize;
    if frame.len() != SHARD_HEADER_BYTES + payload_bytes {
        return Err(CodecError::BadShard(format!(
            "length {} does not match the header's payload length {payload_bytes}",
            frame.len()
        )));
    }
    let stored_crc = u32::from_le_bytes([frame[16], frame[17], frame[18], frame[19]]);
    let payload = &frame[SHARD_HEADER_BYTES..];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame[..16]);
    hasher.update(payload);
    if hasher.finalize() != stored_crc {
        return Err(CodecError::BadShard("crc32 mismatch".into()));
    }
    Ok((
        ShardHeader {
            codec,
            data_shards,
            parity_shards,
            index,
        },
        stored_crc,
        payload,
    ))
}

/// Where a chunk belongs; bound into the AEAD so sealed chunks cannot be moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlace {
    /// The object's random id.
    pub object_id: [u8; 16],
    /// The chunk's index in the object.
    pub chunk_index: u64,
}

impl ChunkPlace {
    fn associated_data(&self) -> [u8; 24] {
        let mut data = [0u8; 24];
        data[..16].copy_from_slice(&self.object_id);
        data[16..].copy_from_slice(&self.chunk_index.to_le_bytes());
        data
    }
}

/// What is known about an encoded chunk; goes into the object's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkInfo {
    /// blake3 of the plaintext.
    pub hash: [u8; 32],
    /// Plaintext bytes.
    pub plain_bytes: u32,
    /// Sealed (compressed and encrypted) bytes, before Reed-Solomon padding.
    pub sealed_bytes: u32,
    /// crc32 of each shard frame, in shard index order.
    pub shard_crcs: Vec<u32>,
}

/// A chunk cut into framed shards.
#[derive(Debug)]
pub struct EncodedChunk {
    /// Metadata for the chunk.
    pub info: ChunkInfo,
    /// Shard frames, index order.
    pub shards: Vec<Vec<u8>>,
    /// blake3 of the chunk alone, when it was hashed as the subtree at offset 0
    /// ([`ChunkHash::Subtree`]): the object's hash should it turn out to be the only chunk.
    pub whole_hash: Option<[u8; 32]>,
}

/// A chunk decoded by [`ChunkCodec::decode_verified`]: its plaintext lies in `buffer` at
/// `range`; the buffer can be reused once the plaintext is written.
#[derive(Debug)]
pub struct DecodedChunk {
    /// The buffer the chunk was decoded in.
    pub buffer: Vec<u8>,
    /// Where the plaintext lies in it.
    pub range: std::ops::Range<usize>,
}

impl DecodedChunk {
    /// The chunk's plaintext.
    pub fn plain(&self) -> &[u8] {
        &self.buffer[self.range.clone()]
    }
}

/// How the hash recorded for a chunk is computed.
///
/// blake3 is a tree hash: an object's hash can be merged from the chaining values of its
/// chunks ([`object_hash`]) when every chunk but the last is a whole power-of-two subtree.
/// Recording those chaining values instead of each chunk's own hash verifies the chunks
/// just as well and spares a second blake3 pass over the object on put and on get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkHash {
    /// blake3 of the chunk alone (objects of one chunk; objects written without tree hashes).
    Whole,
    /// The blake3 chaining value of the chunk as the subtree of its object's tree that starts
    /// `offset` bytes in (a multiple of [`blake3::CHUNK_LEN`]).
    Subtree {
        /// Bytes of the object before the chunk.
        offset: u64,
    },
}

impl ChunkHash {
    /// The hash of `plain` as recorded, and (for the subtree at offset 0) its whole hash too.
    pub fn hash(self, plain: &[u8]) -> Result<([u8; 32], Option<[u8; 32]>), CodecError> {
        use blake3::hazmat::HasherExt;
        match self {
            ChunkHash::Whole => Ok((*blake3::hash(plain).as_bytes(), None)),
            ChunkHash::Subtree { offset } => {
                if offset % blake3::CHUNK_LEN as u64 != 0 {
                    return Err(CodecError::InvalidParameters(format!(
                        "subtree offset {offset} is not a multiple of {}",
                        blake3::CHUNK_LEN
                    )));
                }
                // blake3's hazmat functions panic on subtrees it cannot place: refuse them.
                if plain.is_empty() {
                    return Err(CodecError::InvalidParameters(
                        "an empty chunk has no subtree hash".into(),
                    ));
                }
                if blake3::hazmat::max_subtree_len(offset)
                    .is_some_and(|max_bytes| plain.len() as u64 > max_bytes)
                {
                    return Err(CodecError::InvalidParameters(format!(
                        "{} bytes do not form one subtree at offset {offset}",
                        plain.len()
                    )));
                }
                let mut hasher = blake3::Hasher::new();
                hasher.set_input_offset(offset);
                hasher.update(plain);
                let whole = (offset == 0).then(|| *hasher.finalize().as_bytes());
                Ok((hasher.finalize_non_root(), whole))
            }
        }
    }
}

/// The blake3 hash of an object of `size` bytes from the recorded hashes of its chunks of
/// `chunk_bytes` (a power of two, at least [`blake3::CHUNK_LEN`]): the chunks' own hash for
/// an object of one chunk, else their subtree chaining values ([`ChunkHash::Subtree`]).
pub fn object_hash(
    chunk_hashes: &[[u8; 32]],
    chunk_bytes: u64,
    size: u64,
) -> Result<[u8; 32], CodecError> {
    use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, Mode};
    if !chunk_bytes.is_power_of_two() || chunk_bytes < blake3::CHUNK_LEN as u64 {
        return Err(CodecError::InvalidParameters(format!(
            "tree hashes need a power-of-two chunk size of at least {}, not {chunk_bytes}",
            blake3::CHUNK_LEN
        )));
    }
    if chunk_hashes.len() as u64 != size.div_ceil(chunk_bytes) {
        return Err(CodecError::InvalidParameters(format!(
            "{} chunk hashes for {size} bytes in chunks of {chunk_bytes}",
            chunk_hashes.len()
        )));
    }
    // Every left subtree is a power of two of at least `chunk_bytes`, so splits fall on
    // chunk boundaries; recursion depth is log2 of the chunk count.
    fn subtree(hashes: &[[u8; 32]], chunk_bytes: u64, bytes: u64) -> [u8; 32] {
        if hashes.len() <= 1 {
            return hashes.first().copied().unwrap_or_default();
        }
        let left_bytes = left_subtree_len(bytes);
        let left_chunks = (left_bytes / chunk_bytes) as usize;
        let left = subtree(&hashes[..left_chunks], chunk_bytes, left_bytes);
        let right = subtree(&hashes[left_chunks..], chunk_bytes, bytes - left_bytes);
        merge_subtrees_non_root(&left, &right, Mode::Hash)
    }
    match chunk_hashes {
        [] => Ok(*blake3::hash(b"").as_bytes()),
        [only] => Ok(*only),
        _ => {
            let left_bytes = left_subtree_len(size);
            let left_chunks = (left_bytes / chunk_bytes) as usize;
            let left = subtree(&chunk_hashes[..left_chunks], chunk_bytes, left_bytes);
            let right = subtree(&chunk_hashes[left_chunks..], chunk_bytes, size - left_bytes);
            Ok(*merge_subtrees_root(&left, &right, Mode::Hash).as_bytes())
        }
    }
}

/// Bytes of each of the three samples that decide whether a large chunk is worth compressing.
const COMPRESSION_SAMPLE_BYTES: usize = 16 * 1024;

/// Estimates from three samples (head, middle, tail) whether zstd can shrink `plain`: random
/// or already compressed data (most large objects) then skips a full compression attempt
/// that would be thrown away. Small chunks are always tried.
fn worth_compressing(plain: &[u8]) -> bool {
    if plain.len() < 8 * COMPRESSION_SAMPLE_BYTES {
        return true;
    }
    let middle = plain.len() / 2 - COMPRESSION_SAMPLE_BYTES / 2;
    let tail = plain.len() - COMPRESSION_SAMPLE_BYTES;
    thread_local! {
        // A compression context costs more to make than a sample costs to compress.
        static SAMPLER: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    SAMPLER.with(|sampler| {
        let mut sampler = sampler.borrow_mut();
        if sampler.is_none() {
            *sampler = zstd::bulk::Compressor::new(1).ok();
        }
        let mut output = vec![0u8; zstd::zstd_safe::compress_bound(COMPRESSION_SAMPLE_BYTES)];
        [0, middle, tail].iter().any(|&start| {
            let sample = &plain[start..start + COMPRESSION_SAMPLE_BYTES];
            match sampler.as_mut() {
                Some(compressor) => compressor
                    .compress_to_buffer(sample, &mut output)
                    .is_ok_and(|bytes| bytes < sample.len() * 97 / 100),
                None => zstd::bulk::compress(sample, 1)
                    .is_ok_and(|compressed| compressed.len() < sample.len() * 97 / 100),
            }
        })
    })
}

/// Most spare frame buffers a [`Scratch`] keeps.
pub const SCRATCH_FRAMES_MAX: usize = 2 * (DATA_SHARDS_MAX + PARITY_SHARDS_MAX);

/// Buffers [`ChunkCodec::encode_reusing`] builds in, kept from one chunk to the next.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The sealed chunk's buffer.
    pub sealed: Vec<u8>,
    /// Spare frame buffers.
    pub frames: Vec<Vec<u8>>,
}

impl Scratch {
    /// Gives frames back once written (at most [`SCRATCH_FRAMES_MAX`] are kept).
    pub fn recycle(&mut self, frames: impl IntoIterator<Item = Vec<u8>>) {
        for frame in frames {
            if self.frames.len() >= SCRATCH_FRAMES_MAX {
                break;
            }
            self.frames.push(frame);
        }
    }

    /// A buffer of exactly `bytes` bytes of unspecified content, reused when one is spare.
    fn parity_frame(&mut self, bytes: usize) -> Vec<u8> {
        let mut frame = self.frames.pop().unwrap_or_default();
        if frame.len() >= bytes {
            frame.truncate(bytes);
        } else {
            frame.resize(bytes, 0);
        }
        frame
    }

    /// An empty buffer of at least `capacity` bytes, reused when one is spare.
    fn frame(&mut self, capacity: usize) -> Vec<u8> {
        match self.frames.pop() {
            Some(mut frame) => {
                frame.clear();
                frame.reserve(capacity);
                frame
            }
            None => Vec::with_capacity(capacity),
        }
    }
}

/// Encodes and decodes chunks with one key and geometry.
pub struct ChunkCodec {
    cipher: Aead,
    reed_solomon: ReedSolomon,
    compression_level: i32,
}

impl std::fmt::Debug for ChunkCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChunkCodec({:?}, zstd {})",
            self.reed_solomon, self.compression_level
        )
    }
}

impl ChunkCodec {
    /// A codec with `key`, Reed-Solomon `rs` and zstd `compression_level` (0 disables).
    pub fn new(key: &[u8; KEY_BYTES], reed_solomon: ReedSolomon, compression_level: i32) -> Self {
        ChunkCodec {
            cipher: Aead::new(key),
            reed_solomon,
            compression_level,
        }
    }

    /// The Reed-Solomon coder.
    pub fn reed_solomon(&self) -> &ReedSolomon {
        &self.reed_solomon
    }

    /// Compresses (when it pays) and encrypts a chunk: `flags | nonce | ciphertext+tag`.
    pub fn seal(&self, place: ChunkPlace, plain: &[u8]) -> Result<Vec<u8>, CodecError> {
        let mut sealed = Vec::new();
        self.seal_into(place, plain, 0, &mut sealed)?;
        Ok(sealed)
    }

    /// `plain` compressed, when compression is on and pays.
    fn compress(&self, plain: &[u8]) -> Option<Vec<u8>> {
        if self.compression_level <= 0 || plain.is_empty() || !worth_compressing(plain) {
            return None;
        }
        zstd::bulk::compress(plain, self.compression_level)
            .ok()
            .filter(|compressed| compressed.len() < plain.len())
    }

    /// [`Self::encode_hashed`] of the plaintext in `buffer` after
    /// [`IN_PLACE_HEADROOM_BYTES`] bytes of headroom. A chunk stored raw (most large data)
    /// is encrypted where it lies, without being copied: `buffer` then holds the sealed
    /// chunk, and the caller may reuse its allocation.
    pub fn encode_in_place(
        &self,
        place: ChunkPlace,
        buffer: &mut Vec<u8>,
        hashing: ChunkHash,
        scratch: &mut Scratch,
    ) -> Result<EncodedChunk, CodecError> {
        let Some(plain) = buffer.get(IN_PLACE_HEADROOM_BYTES..) else {
            return Err(CodecError::InvalidParameters(format!(
                "buffer of {} bytes has no room for the sealed chunk's header",
                buffer.len()
            )));
        };
        if plain.len() > CHUNK_BYTES_MAX {
            return Err(CodecError::InvalidParameters(format!(
                "chunk of {} bytes, more than {CHUNK_BYTES_MAX}",
                plain.len()
            )));
        }
        let plain_bytes = plain.len();
        let (hash, whole_hash) = hashing.hash(plain)?;
        let data_shards = self.reed_solomon.data_shards;
        let room_bytes = TAG_BYTES + data_shards * (SHARD_ALIGN_BYTES + 1);
        let info = |sealed_bytes: usize, shard_crcs| ChunkInfo {
            hash,
            plain_bytes: plain_bytes as u32,
            sealed_bytes: sealed_bytes as u32,
            shard_crcs,
        };
        if let Some(compressed) = self.compress(plain) {
            let mut sealed = std::mem::take(&mut scratch.sealed);
            sealed.clear();
            sealed.reserve(SEALED_HEADER_BYTES + compressed.len() + room_bytes);
            sealed.push(FLAG_COMPRESSED);
            let mut aad = [0u8; 25];
            aad[..24].copy_from_slice(&place.associated_data());
            aad[24] = FLAG_COMPRESSED;
            self.cipher
                .seal_into(rand::random(), &aad, &compressed, &mut sealed);
            let sealed_bytes = sealed.len();
            let result = self.frame_sealed(&mut sealed, sealed_bytes, scratch);
            scratch.sealed = sealed;
            let (shards, shard_crcs) = result?;
            return Ok(EncodedChunk {
                info: info(sealed_bytes, shard_crcs),
                shards,
                whole_hash,
            });
        }
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let mut aad = [0u8; 25];
        aad[..24].copy_from_slice(&place.associated_data());
        buffer[0] = 0;
        buffer[1..SEALED_HEADER_BYTES].copy_from_slice(&nonce);
        let tag = self
            .cipher
            .seal_in_place(nonce, &aad, &mut buffer[SEALED_HEADER_BYTES..]);
        buffer.reserve(room_bytes);
        buffer.extend_from_slice(&tag);
        let sealed_bytes = buffer.len();
        let (shards, shard_crcs) = self.frame_sealed(buffer, sealed_bytes, scratch)?;
        Ok(EncodedChunk {
            info: info(sealed_bytes, shard_crcs),
            shards,
            whole_hash,
        })
    }

    /// [`Self::seal`] into `sealed` (cleared first), reserving `room_bytes` to spare (the
    /// Reed-Solomon padding, so that padding never moves the sealed bytes).
    fn seal_into(
        &self,
        place: ChunkPlace,
        plain: &[u8],
        room_bytes: usize,
        sealed: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let mut flags = 0u8;
        let compressed = self.compress(plain);
        let body: &[u8] = match &compressed {
            Some(compressed) => {
                flags |= FLAG_COMPRESSED;
                compressed
            }
            None => plain,
        };
        let nonce_bytes: [u8; NONCE_BYTES] = rand::random();
        let mut aad = [0u8; 25];
        aad[..24].copy_from_slice(&place.associated_data());
        aad[24] = flags;
        sealed.clear();
        sealed.reserve(SEALED_HEADER_BYTES + body.len() + TAG_BYTES + room_bytes);
        sealed.push(flags);
        self.cipher.seal_into(nonce_bytes, &aad, body, sealed);
        Ok(())
    }

    /// Decrypts and decompresses a sealed chunk and checks its hash (blake3 of the chunk).
    pub fn open(
        &self,
        place: ChunkPlace,
        sealed: &[u8],
        info: &ChunkInfo,
    ) -> Result<Vec<u8>, CodecError> {
        self.open_with(place, sealed, info, ChunkHash::Whole)
    }

    /// [`Self::open`] for a chunk whose recorded hash is computed as `hashing` says.
    pub fn open_with(
        &self,
        place: ChunkPlace,
        sealed: &[u8],
        info: &ChunkInfo,
        hashing: ChunkHash,
    ) -> Result<Vec<u8>, CodecError> {
        if sealed.len() < SEALED_HEADER_BYTES + TAG_BYTES {
            return Err(CodecError::Decrypt);
        }
        let flags = sealed[0];
        let mut aad = [0u8; 25];
        aad[..24].copy_from_slice(&place.associated_data());
        aad[24] = flags;
        let body = self
            .cipher
            .open(&aad, &sealed[1..])
            .ok_or(CodecError::Decrypt)?;
        let plain = if flags & FLAG_COMPRESSED != 0 {
            zstd::bulk::decompress(&body, info.plain_bytes as usize)
                .map_err(|e| CodecError::Decompress(e.to_string()))?
        } else {
            body
        };
        if plain.len() != info.plain_bytes as usize || hashing.hash(&plain)?.0 != info.hash {
            return Err(CodecError::HashMismatch);
        }
        Ok(plain)
    }

    /// Encodes one plaintext chunk into k+m shard frames.
    ///
    /// Copies are kept to what the output needs: the sealed chunk is encrypted in place, the
    /// data shards are slices of it copied once into their frames (checksummed block by
    /// block as they are copied, while the bytes are in cache), and Reed-Solomon writes the
    /// parity straight into the parity frames.
    pub fn encode(&self, place: ChunkPlace, plain: &[u8]) -> Result<EncodedChunk, CodecError> {
        self.encode_reusing(place, plain, &mut Scratch::default())
    }

    /// [`Self::encode`] with buffers from `scratch`: the sealed chunk's buffer is put back
    /// there, the frames are built in its spare buffers (callers hand written frames back
    /// through [`Scratch::recycle`]). Fresh multi-megabyte buffers cost a page fault per
    /// 4 KiB every time; reused ones do not.
    pub fn encode_reusing(
        &self,
        place: ChunkPlace,
        plain: &[u8],
        scratch: &mut Scratch,
    ) -> Result<EncodedChunk, CodecError> {
        self.encode_hashed(place, plain, ChunkHash::Whole, scratch)
    }

    /// [`Self::encode_reusing`] with the chunk's hash computed as `hashing` says.
    pub fn encode_hashed(
        &self,
        place: ChunkPlace,
        plain: &[u8],
        hashing: ChunkHash,
        scratch: &mut Scratch,
    ) -> Result<EncodedChunk, CodecError> {
        if plain.len() > CHUNK_BYTES_MAX {
            return Err(CodecError::InvalidParameters(format!(
                "chunk of {} bytes, more than {CHUNK_BYTES_MAX}",
                plain.len()
            )));
        }
        let (hash, whole_hash) = hashing.hash(plain)?;
        let reed_solomon = &self.reed_solomon;
        let data_shards = reed_solomon.data_shards;
        let mut sealed = std::mem::take(&mut scratch.sealed);
        self.seal_into(
            place,
            plain,
            data_shards * (SHARD_ALIGN_BYTES + 1),
            &mut sealed,
        )?;
        let sealed_bytes = sealed.len();
        let result = self.frame_sealed(&mut sealed, sealed_bytes, scratch);
        scratch.sealed = sealed;
        let (shards, shard_crcs) = result?;
        Ok(EncodedChunk {
            info: ChunkInfo {
                hash,
                plain_bytes: plain.len() as u32,
                sealed_bytes: sealed_bytes as u32,
                shard_crcs,
            },
            shards,
            whole_hash,
        })
    }

    /// Cuts a sealed chunk into k+m frames; returns them and their crcs.
    fn frame_sealed(
        &self,
        sealed: &mut Vec<u8>,
        sealed_bytes: usize,
        scratch: &mut Scratch,
    ) -> Result<(Vec<Vec<u8>>, Vec<u32>), CodecError> {
        let reed_solomon = &self.reed_solomon;
        let data_shards = reed_solomon.data_shards;
        let total = data_shards + reed_solomon.parity_shards;
        let shard_bytes = reed_solomon.shard_bytes(sealed_bytes);
        if SHARD_HEADER_BYTES + shard_bytes > SHARD_BYTES_MAX {
            return Err(CodecError::InvalidParameters(format!(
                "shard of {} bytes exceeds {SHARD_BYTES_MAX}: lower the chunk size or raise data shards",
                SHARD_HEADER_BYTES + shard_bytes
            )));
        }
        // The last data shard is zero padded.
        sealed.resize(data_shards * shard_bytes, 0);
        let header = |index: usize| ShardHeader {
            codec: reed_solomon.id,
            data_shards: data_shards as u8,
            parity_shards: reed_solomon.parity_shards as u8,
            index: index as u8,
        };
        // One pass over the sealed chunk, a stripe of every shard at a time while it is in
        // the core's cache: copy the data stripes into their frames, checksum them, compute
        // the parity stripes from the copies straight into the parity frames, checksum those.
        let mut hashers: Vec<crc32fast::Hasher> = Vec::with_capacity(total);
        let mut data_frames: Vec<Vec<u8>> = (0..data_shards)
            .map(|index| {
                let mut frame = scratch.frame(SHARD_HEADER_BYTES + shard_bytes);
                frame.extend_from_slice(&header_prefix(header(index), shard_bytes));
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&frame);
                hashers.push(hasher);
                frame.extend_from_slice(&[0; 4]);
                frame
            })
            .collect();
        // Reed-Solomon overwrites every parity byte: a reused buffer keeps its old bytes
        // instead of being zeroed first.
        let mut parity_frames: Vec<Vec<u8>> = (data_shards..total)
            .map(|index| {
                let mut frame = scratch.parity_frame(SHARD_HEADER_BYTES + shard_bytes);
                frame[..16].copy_from_slice(&header_prefix(header(index), shard_bytes));
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&frame[..16]);
                hashers.push(hasher);
                frame
            })
            .collect();
        let mut start = 0;
        while start < shard_bytes {
            let end = (start + STRIPE_BYTES).min(shard_bytes);
            for (index, frame) in data_frames.iter_mut().enumerate() {
                let stripe = &sealed[index * shard_bytes + start..index * shard_bytes + end];
                frame.extend_from_slice(stripe);
                hashers[index].update(stripe);
            }
            let data: Vec<&[u8]> = data_frames
                .iter()
                .map(|frame| &frame[SHARD_HEADER_BYTES + start..SHARD_HEADER_BYTES + end])
                .collect();
            let mut parity: Vec<&mut [u8]> = parity_frames
                .iter_mut()
                .map(|frame| &mut frame[SHARD_HEADER_BYTES + start..SHARD_HEADER_BYTES + end])
                .collect();
            reed_solomon.parity_into(&data, &mut parity)?;
            for (hasher, stripe) in hashers[data_shards..].iter_mut().zip(&parity) {
                hasher.update(stripe);
            }
            start = end;
        }
        let mut shards = data_frames;
        shards.append(&mut parity_frames);
        let mut shard_crcs = Vec::with_capacity(total);
        for (frame, hasher) in shards.iter_mut().zip(hashers) {
            let crc = hasher.finalize();
            frame[16..20].copy_from_slice(&crc.to_le_bytes());
            shard_crcs.push(crc);
        }
        Ok((shards, shard_crcs))
    }

    /// Checks one shard frame against the chunk's metadata; returns its payload.
    pub fn verify_shard<'a>(
        &self,
        info: &ChunkInfo,
        index: usize,
        frame: &'a [u8],
    ) -> Result<&'a [u8], CodecError> {
        let (header, crc, payload) = parse_shard(frame)?;
        let expected_bytes = self.reed_solomon.shard_bytes(info.sealed_bytes as usize);
        if header.index as usize != index
            || header.codec != self.reed_solomon.id
            || header.data_shards as usize != self.reed_solomon.data_shards
            || header.parity_shards as usize != self.reed_solomon.parity_shards
            || payload.len() != expected_bytes
            || info.shard_crcs.get(index) != Some(&crc)
        {
            return Err(CodecError::BadShard(format!(
                "shard {index} does not belong to this chunk"
            )));
        }
        Ok(payload)
    }

    /// Rebuilds a chunk from shard frames (`None` for missing ones); frames that do not
    /// verify count as missing. Returns the plaintext and the indexes of bad frames.
    pub fn decode(
        &self,
        place: ChunkPlace,
        info: &ChunkInfo,
        frames: &[Option<Vec<u8>>],
    ) -> Result<(Vec<u8>, Vec<usize>), CodecError> {
        self.decode_with(place, info, frames, ChunkHash::Whole)
    }

    /// [`Self::decode`] for a chunk whose recorded hash is computed as `hashing` says.
    pub fn decode_with(
        &self,
        place: ChunkPlace,
        info: &ChunkInfo,
        frames: &[Option<Vec<u8>>],
        hashing: ChunkHash,
    ) -> Result<(Vec<u8>, Vec<usize>), CodecError> {
        let (mut payloads, bad) = self.verified_payloads(info, frames);
        let data_shards = self.reed_solomon.data_shards;
        if payloads[..data_shards].iter().any(Option::is_none) {
            self.reed_solomon.reconstruct(&mut payloads)?;
        }
        let sealed_bytes = info.sealed_bytes as usize;
        let mut sealed = Vec::with_capacity(sealed_bytes + SHARD_ALIGN_BYTES);
        for payload in payloads[..data_shards].iter().flatten() {
            sealed.extend_from_slice(payload);
        }
        if sealed.len() < sealed_bytes {
            return Err(CodecError::BadShard(
                "reconstructed chunk is too short".into(),
            ));
        }
        sealed.truncate(sealed_bytes);
        let plain = self.open_with(place, &sealed, info, hashing)?;
        Ok((plain, bad))
    }

    /// [`Self::decode_with`] for frames that already passed [`Self::verify_shard`] (`None`
    /// for the others), built in the caller's buffers: the data shards are gathered into
    /// `sealed` (one copy), decrypted where they lie and, when compressed, decompressed into
    /// `spare`. Returns the decoded chunk (in one of the two buffers) and the buffer it did
    /// not need, both for reuse. Lengths are checked again (cheaply); the crcs are not, the
    /// AEAD tag and the chunk hash still are.
    pub fn decode_verified(
        &self,
        place: ChunkPlace,
        info: &ChunkInfo,
        frames: &[Option<Vec<u8>>],
        hashing: ChunkHash,
        mut sealed: Vec<u8>,
        mut spare: Vec<u8>,
    ) -> Result<(DecodedChunk, Vec<u8>), CodecError> {
        let reed_solomon = &self.reed_solomon;
        let data_shards = reed_solomon.data_shards;
        let total = data_shards + reed_solomon.parity_shards;
        let sealed_bytes = info.sealed_bytes as usize;
        let plain_bytes = info.plain_bytes as usize;
        if plain_bytes > CHUNK_BYTES_MAX || sealed_bytes > CHUNK_BYTES_MAX + CHUNK_SLACK_BYTES {
            return Err(CodecError::InvalidParameters(format!(
                "chunk of {plain_bytes} bytes ({sealed_bytes} sealed), more than {CHUNK_BYTES_MAX}"
            )));
        }
        let shard_bytes = reed_solomon.shard_bytes(sealed_bytes);
        if frames.len() > total
            || frames
                .iter()
                .flatten()
                .any(|frame| frame.len() != SHARD_HEADER_BYTES + shard_bytes)
        {
            return Err(CodecError::BadShard(
                "shard frames do not match the chunk's geometry".into(),
            ));
        }
        fn payload(frame: &[u8]) -> &[u8] {
            &frame[SHARD_HEADER_BYTES..]
        }
        sealed.clear();
        sealed.reserve(sealed_bytes);
        let data_present =
            frames.len() >= data_shards && frames[..data_shards].iter().all(Option::is_some);
        if data_present {
            for frame in frames[..data_shards].iter().flatten() {
                let wanted = (sealed_bytes - sealed.len()).min(shard_bytes);
                sealed.extend_from_slice(&payload(frame)[..wanted]);
                if sealed.len() == sealed_bytes {
                    break;
                }
            }
        } else {
            // Degraded: rebuild the missing data shards from the parity ones.
            let mut payloads: Vec<Option<Vec<u8>>> = (0..total)
                .map(|index| {
                    frames
                        .get(index)
                        .and_then(Option::as_ref)
                        .map(|frame| payload(frame).to_vec())
                })
                .collect();
            reed_solomon.reconstruct(&mut payloads)?;
            for shard in payloads[..data_shards].iter().flatten() {
                let wanted = (sealed_bytes - sealed.len()).min(shard.len());
                sealed.extend_from_slice(&shard[..wanted]);
            }
        }
        if sealed.len() != sealed_bytes || sealed_bytes < SEALED_HEADER_BYTES + TAG_BYTES {
            return Err(CodecError::BadShard(
                "reconstructed chunk is too short".into(),
            ));
        }
        let flags = sealed[0];
        let mut aad = [0u8; 25];
        aad[..24].copy_from_slice(&place.associated_data());
        aad[24] = flags;
        let opened_bytes = self
            .cipher
            .open_in_place(&aad, &mut sealed[1..])
            .ok_or(CodecError::Decrypt)?;
        let opened = SEALED_HEADER_BYTES..SEALED_HEADER_BYTES + opened_bytes;
        let (decoded, unused) = if flags & FLAG_COMPRESSED != 0 {
            spare.clear();
            spare.reserve(plain_bytes);
            let written = zstd::bulk::Decompressor::new()
                .and_then(|mut decompressor| {
                    decompressor.decompress_to_buffer(&sealed[opened], &mut spare)
                })
                .map_err(|e| CodecError::Decompress(e.to_string()))?;
            let decoded = DecodedChunk {
                buffer: spare,
                range: 0..written,
            };
            (decoded, sealed)
        } else {
            let decoded = DecodedChunk {
                buffer: sealed,
                range: opened,
            };
            (decoded, spare)
        };
        if decoded.range.len() != plain_bytes || hashing.hash(decoded.plain())?.0 != info.hash {
            return Err(CodecError::HashMismatch);
        }
        Ok((decoded, unused))
    }

    /// The verified payloads of `frames` by index, and the indexes of frames that failed.
    pub fn verified_payloads(
        &self,
        info: &ChunkInfo,
        frames: &[Option<Vec<u8>>],
    ) -> (Vec<Option<Vec<u8>>>, Vec<usize>) {
        let total = self.reed_solomon.data_shards + self.reed_solomon.parity_shards;
        let mut bad = Vec::new();
        let mut payloads = vec![None; total];
        for (index, frame) in frames.iter().enumerate().take(total) {
            if let Some(frame) = frame {
                match self.verify_shard(info, index, frame) {
                    Ok(payload) => payloads[index] = Some(payload.to_vec()),
                    Err(_) => bad.push(index),
                }
            }
        }
        (payloads, bad)
    }

    /// Rebuilds the frames of the shards at `wanted` from the verified frames given.
    pub fn rebuild_frames(
        &self,
        info: &ChunkInfo,
        frames: &[Option<Vec<u8>>],
        wanted: &[usize],
    ) -> Result<Vec<(usize, Vec<u8>)>, CodecError> {
        let (mut payloads, _) = self.verified_payloads(info, frames);
        self.reed_solomon.reconstruct(&mut payloads)?;
        let mut rebuilt = Vec::with_capacity(wanted.len());
        for &index in wanted {
            let payload = payloads
                .get(index)
                .and_then(Option::as_ref)
                .ok_or_else(|| CodecError::InvalidParameters(format!("no shard index {index}")))?;
            let header = ShardHeader {
                codec: self.reed_solomon.id,
                data_shards: self.reed_solomon.data_shards as u8,
                parity_shards: self.reed_solomon.parity_shards as u8,
                index: index as u8,
            };
            let (frame, crc) = frame_shard(header, payload);
            if info.shard_crcs.get(index) != Some(&crc) {
                return Err(CodecError::BadShard(format!(
                    "rebuilt shard {index} does not match its recorded crc"
                )));
            }
            rebuilt.push((index, frame));
        }
        Ok(rebuilt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn codec(id: RsCodecId, k: usize, m: usize) -> ChunkCodec {
        ChunkCodec::new(&[7; KEY_BYTES], ReedSolomon::new(id, k, m).unwrap(), 3)
    }

    const PLACE: ChunkPlace = ChunkPlace {
        object_id: [1; 16],
        chunk_index: 5,
    };

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
        /// Any k of the k+m shards rebuild the chunk, for both implementations.
        #[test]
        fn any_k_shards_reconstruct(
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            k in 1usize..8, m in 1usize..5, simd in any::<bool>(), seed in any::<u64>(),
        ) {
            let id = if simd { RsCodecId::Simd } else { RsCodecId::Erasure };
            let codec = codec(id, k, m);
            let encoded = codec.encode(PLACE, &data).unwrap();
            prop_assert_eq!(encoded.shards.len(), k + m);
            // Drop a seeded choice of m shards.
            let mut order: Vec<usize> = (0..k + m).collect();
            let mut state = seed;
            for i in (1..order.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (state >> 33) as usize % (i + 1));
            }
            let mut frames: Vec<Option<Vec<u8>>> = encoded.shards.iter().cloned().map(Some).collect();
            for &index in &order[..m] {
                frames[index] = None;
            }
            let (plain, bad) = codec.decode(PLACE, &encoded.info, &frames).unwrap();
            prop_assert_eq!(&plain, &data);
            prop_assert!(bad.is_empty());
            // The dropped shards are rebuilt byte for byte.
            let rebuilt = codec.rebuild_frames(&encoded.info, &frames, &order[..m]).unwrap();
            for (index, frame) in rebuilt {
                prop_assert_eq!(&frame, &encoded.shards[index]);
            }
        }

        /// Any single flipped bit in any shard is caught; the chunk still decodes from the rest.
        #[test]
        fn flipped_bits_are_caught(
            data in proptest::collection::vec(any::<u8>(), 1..5_000),
            shard in 0usize..6, position in any::<prop::sample::Index>(), bit in 0u8..8,
        ) {
            let codec = codec(RsCodecId::DEFAULT, 4, 2);
            let encoded = codec.encode(PLACE, &data).unwrap();
            let mut frames: Vec<Option<Vec<u8>>> = encoded.shards.iter().cloned().map(Some).collect();
            let frame = frames[shard].as_mut().unwrap();
            let at = position.index(frame.len());
            frame[at] ^= 1 << bit;
            let (plain, bad) = codec.decode(PLACE, &encoded.info, &frames).unwrap();
            prop_assert_eq!(plain, data);
            prop_assert_eq!(bad, vec![shard]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
        /// An object's hash merged from its chunks' subtree hashes is blake3 of the object.
        #[test]
        fn tree_hashes_merge_into_the_object_hash(
            size in 0usize..40_000, chunk_log in 10u32..14, seed in any::<u8>(),
        ) {
            let chunk_bytes = 1usize << chunk_log;
            let object: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(seed | 1)).collect();
            let chunks: Vec<&[u8]> = object.chunks(chunk_bytes).collect();
            let hashes: Vec<[u8; 32]> = if chunks.len() == 1 {
                vec![ChunkHash::Whole.hash(chunks[0]).unwrap().0]
            } else {
                chunks
                    .iter()
                    .enumerate()
                    .map(|(index, chunk)| {
                        let offset = (index * chunk_bytes) as u64;
                        let (hash, whole) = ChunkHash::Subtree { offset }.hash(chunk).unwrap();
                        assert_eq!(whole.is_some(), offset == 0);
                        hash
                    })
                    .collect()
            };
            let merged = object_hash(&hashes, chunk_bytes as u64, size as u64).unwrap();
            prop_assert_eq!(merged, *blake3::hash(&object).as_bytes());
        }
    }

    #[test]
    fn subtree_hashes_need_aligned_offsets_and_chunk_sizes() {
        assert!(ChunkHash::Subtree { offset: 1000 }.hash(b"x").is_err());
        assert!(ChunkHash::Subtree { offset: 1024 }
            .hash(&[0; 2048])
            .is_err());
        assert!(ChunkHash::Subtree { offset: 2048 }.hash(&[0; 2048]).is_ok());
        assert!(object_hash(&[[0; 32]; 2], 3000, 6000).is_err());
        assert!(object_hash(&[[0; 32]; 2], 1024, 5000).is_err());
    }

    #[test]
    fn chunks_encoded_in_place_decode_like_any_other() {
        // 300 kB chunks make shards of several stripes, for both codecs.
        let simd = codec(RsCodecId::Simd, 3, 2);
        let codec = codec(RsCodecId::DEFAULT, 4, 2);
        let mut scratch = Scratch::default();
        let random: Vec<u8> = (0..300_000).map(|_| rand::random::<u8>()).collect();
        for (codec, plain) in [
            (&codec, Vec::new()),
            (&codec, vec![0u8; 200_000]),
            (&codec, random.clone()),
            (&simd, random),
        ] {
            let mut buffer = vec![0xAA; IN_PLACE_HEADROOM_BYTES];
            buffer.extend_from_slice(&plain);
            let hashing = if plain.is_empty() {
                assert!(ChunkHash::Subtree { offset: 0 }.hash(&plain).is_err());
                ChunkHash::Whole
            } else {
                ChunkHash::Subtree { offset: 0 }
            };
            let encoded = codec
                .encode_in_place(PLACE, &mut buffer, hashing, &mut scratch)
                .unwrap();
            if !plain.is_empty() {
                assert_eq!(encoded.whole_hash, Some(*blake3::hash(&plain).as_bytes()));
            }
            // Lose the first data shard and the last parity shard: the rest rebuild both,
            // byte for byte, through whole-shard Reed-Solomon.
            let mut frames: Vec<Option<Vec<u8>>> =
                encoded.shards.iter().cloned().map(Some).collect();
            let last = frames.len() - 1;
            frames[0] = None;
            frames[last] = None;
            let (decoded, bad) = codec
                .decode_with(PLACE, &encoded.info, &frames, hashing)
                .unwrap();
            assert_eq!(decoded, plain);
            assert!(bad.is_empty());
            for (index, frame) in codec
                .rebuild_frames(&encoded.info, &frames, &[0, last])
                .unwrap()
            {
                assert_eq!(frame, encoded.shards[index]);
            }
            scratch.recycle(encoded.shards);
        }
        assert!(codec
            .encode_in_place(PLACE, &mut vec![0; 5], ChunkHash::Whole, &mut scratch)
            .is_err());
    }

    #[test]
    fn decode_verified_matches_decode_and_reuses_its_buffers() {
        let codec = codec(RsCodecId::DEFAULT, 4, 2);
        let random: Vec<u8> = (0..300_000).map(|_| rand::random::<u8>()).collect();
        for plain in [random, vec![7u8; 100_000], b"x".to_vec()] {
            let encoded = codec.encode(PLACE, &plain).unwrap();
            let all: Vec<Option<Vec<u8>>> = encoded.shards.iter().cloned().map(Some).collect();
            // All data shards; two data shards lost (rebuilt from parity).
            let mut degraded = all.clone();
            degraded[0] = None;
            degraded[2] = None;
            for frames in [&all, &degraded] {
                let sealed = Vec::with_capacity(1 << 20);
                let (decoded, unused) = codec
                    .decode_verified(
                        PLACE,
                        &encoded.info,
                        frames,
                        ChunkHash::Whole,
                        sealed,
                        Vec::new(),
                    )
                    .unwrap();
                assert_eq!(decoded.plain(), &plain[..]);
                // A raw chunk is decrypted in the buffer its shards were gathered into; a
                // compressed one is decompressed into the spare and hands that buffer back.
                let compressed = (encoded.info.sealed_bytes as usize) < plain.len();
                let gathered = if compressed { &unused } else { &decoded.buffer };
                assert_eq!(
                    gathered.capacity(),
                    1 << 20,
                    "the gathered buffer is reused"
                );
            }
            // A frame of the wrong length, the wrong place, a wrong hash: errors.
            let mut short = all.clone();
            short[1].as_mut().unwrap().pop();
            assert!(matches!(
                codec.decode_verified(
                    PLACE,
                    &encoded.info,
                    &short,
                    ChunkHash::Whole,
                    Vec::new(),
                    Vec::new()
                ),
                Err(CodecError::BadShard(_))
            ));
            let elsewhere = ChunkPlace {
                chunk_index: 9,
                ..PLACE
            };
            assert_eq!(
                codec
                    .decode_verified(
                        elsewhere,
                        &encoded.info,
                        &all,
                        ChunkHash::Whole,
                        Vec::new(),
                        Vec::new()
                    )
                    .unwrap_err(),
                CodecError::Decrypt
            );
            let mut info = encoded.info.clone();
            info.hash[0] ^= 1;
            assert_eq!(
                codec
                    .decode_verified(PLACE, &info, &all, ChunkHash::Whole, Vec::new(), Vec::new())
                    .unwrap_err(),
                CodecError::HashMismatch
            );
        }
    }

    #[test]
    fn too_few_shards_is_a_clear_error() {
        let codec = codec(RsCodecId::DEFAULT, 4, 2);
        let encoded = codec.encode(PLACE, b"some bytes").unwrap();
        let mut frames: Vec<Option<Vec<u8>>> = encoded.shards.into_iter().map(Some).collect();
        frames[0] = None;
        frames[2] = None;
        frames[5] = None;
        assert_eq!(
            codec.decode(PLACE, &encoded.info, &frames).unwrap_err(),
            CodecError::NotEnoughShards {
                available: 3,
                needed: 4
            }
        );
    }

    #[test]
    fn wrong_key_or_place_fails_to_decrypt() {
        let codec_a = codec(RsCodecId::DEFAULT, 4, 2);
        let codec_b = ChunkCodec::new(
            &[8; KEY_BYTES],
            ReedSolomon::new(RsCodecId::DEFAULT, 4, 2).unwrap(),
            3,
        );
        let encoded = codec_a.encode(PLACE, b"secret data").unwrap();
        let frames: Vec<Option<Vec<u8>>> = encoded.shards.into_iter().map(Some).collect();
        assert_eq!(
            codec_b.decode(PLACE, &encoded.info, &frames).unwrap_err(),
            CodecError::Decrypt
        );
        let elsewhere = ChunkPlace {
            chunk_index: 6,
            ..PLACE
        };
        assert_eq!(
            codec_a
                .decode(elsewhere, &encoded.info, &frames)
                .unwrap_err(),
            CodecError::Decrypt
        );
    }

    #[test]
    fn mostly_random_chunks_with_a_compressible_part_are_still_compressed() {
        let codec = codec(RsCodecId::DEFAULT, 4, 2);
        let mut data: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
        data[(1 << 20) - 300_000..].fill(0);
        let encoded = codec.encode(PLACE, &data).unwrap();
        assert!((encoded.info.sealed_bytes as usize) < data.len() - 200_000);
    }

    #[test]
    fn compressible_chunks_are_compressed_and_random_ones_are_not() {
        let codec = codec(RsCodecId::DEFAULT, 4, 2);
        let zeros = codec.encode(PLACE, &vec![0u8; 1 << 20]).unwrap();
        assert!(zeros.info.sealed_bytes < 10_000);
        let random: Vec<u8> = (0..1 << 16).map(|_| rand::random::<u8>()).collect();
        let encoded = codec.encode(PLACE, &random).unwrap();
        assert_eq!(
            encoded.info.sealed_bytes as usize,
            random.len() + SEALED_HEADER_BYTES + TAG_BYTES
        );
    }

    #[test]
    fn truncated_and_foreign_frames_are_rejected() {
        let codec = codec(RsCodecId::DEFAULT, 4, 2);
        let encoded = codec.encode(PLACE, b"abc").unwrap();
        let frame = &encoded.shards[1];
        assert!(parse_shard(&frame[..frame.len() - 1]).is_err());
        assert!(parse_shard(&frame[..10]).is_err());
        assert!(parse_shard(b"").is_err());
        assert!(codec.verify_shard(&encoded.info, 2, frame).is_err());
        let other = codec.encode(PLACE, b"abd").unwrap();
        assert!(codec
            .verify_shard(&encoded.info, 0, &other.shards[0])
            .is_err());
    }
}
