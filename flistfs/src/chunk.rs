//! Chunks: how file content is cut, sealed and opened again.
//!
//! Two codecs exist. [`ChunkCodec::ZosV1`] is ours: convergent encryption, so that equal
//! plaintext gives equal stored bytes in any flist and is stored once.
//!
//! ```text
//! key    = blake3::derive_key("zos flist chunk key v1", plaintext)      32 bytes
//! body   = 0x01 ‖ zstd(plaintext)   if that is shorter, else 0x00 ‖ plaintext
//! stored = AES-256-GCM(key, nonce = 12 zero bytes, body)               body + 16-byte tag
//! id     = blake3(stored)                                              32 bytes
//! ```
//!
//! A fixed nonce is safe here because a key seals exactly one message: the key is a hash
//! of the plaintext, so the same key only ever seals the same body.
//!
//! [`ChunkCodec::Rfs`] is rfs's: `key = BLAKE2b-256(plaintext)`, `stored =
//! AES-256-GCM(key, nonce = key[..12], raw_snappy(plaintext))`, `id = BLAKE2b-256(stored)`.
//!
//! Opening a chunk checks everything: the stored bytes against the id, the AEAD tag, the
//! plaintext length, and the plaintext against the key. A chunk that fails any of these is
//! [`ChunkError::Corrupt`]: never wrong bytes.
//!
//! AES-256-GCM comes from ring (assembly with AES-NI and carry-less multiply): with the
//! pure-Rust aes-gcm crate, decryption was 57% of a mount's CPU time on cold reads (its
//! GHASH multiplies one block at a time). The bytes are standard AES-GCM either way.

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};

/// Default plaintext bytes per chunk for new flists (see `docs/design.md` for the choice).
pub const CHUNK_BYTES_DEFAULT: u32 = 1024 * 1024;
/// Smallest chunk size `pack` accepts.
pub const CHUNK_BYTES_MIN: u32 = 64 * 1024;
/// Largest chunk size any flist may record; bounds every allocation a chunk causes.
pub const CHUNK_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// rfs blocks hold this much plaintext (all but a file's last).
pub const RFS_BLOCK_BYTES: u32 = 512 * 1024;
/// Stored bytes may exceed plaintext by at most this (compression framing, AEAD tag).
pub const STORED_OVERHEAD_BYTES_MAX: u32 = 64 * 1024;

const KEY_CONTEXT: &str = "zos flist chunk key v1";
const BODY_RAW: u8 = 0;
const BODY_ZSTD: u8 = 1;
/// Bytes of the AES-GCM tag after the ciphertext.
const AEAD_TAG_BYTES: usize = 16;
const ZSTD_LEVEL: i32 = 3;

/// How a chunk was sealed. The discriminant is the on-disk byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ChunkCodec {
    /// zstd + AES-256-GCM, blake3 ids (this project).
    ZosV1 = 1,
    /// raw snappy + AES-256-GCM, BLAKE2b-256 ids (rfs).
    Rfs = 2,
}

impl ChunkCodec {
    /// The codec of an on-disk byte.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::ZosV1),
            2 => Some(Self::Rfs),
            _ => None,
        }
    }
}

/// Where one piece of a file's content lives and how to open it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    /// Offset of the chunk's first byte in the file.
    pub file_offset: u64,
    /// Plaintext bytes.
    pub plain_bytes: u32,
    /// Stored bytes, or 0 when unknown (rfs does not record it).
    pub stored_bytes: u32,
    /// How it was sealed.
    pub codec: ChunkCodec,
    /// Content address of the stored bytes.
    pub id: [u8; 32],
    /// Decryption key.
    pub key: [u8; 32],
}

/// A chunk sealed for storage.
#[derive(Debug, Clone)]
pub struct SealedChunk {
    /// Content address of `stored`.
    pub id: [u8; 32],
    /// Decryption key.
    pub key: [u8; 32],
    /// What goes to the store.
    pub stored: Vec<u8>,
}

/// Errors of sealing or opening a chunk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The stored bytes do not open to the plaintext the flist describes.
    #[error("chunk {id} is corrupt: {reason}")]
    Corrupt {
        /// Hex id.
        id: String,
        /// What check failed.
        reason: &'static str,
    },
    /// The chunk is larger than any flist may describe.
    #[error("chunk of {0} bytes exceeds the limit of {CHUNK_BYTES_MAX} bytes")]
    TooLarge(usize),
}

fn corrupt(id: &[u8; 32], reason: &'static str) -> ChunkError {
    ChunkError::Corrupt {
        id: hex::encode(id),
        reason,
    }
}

/// The hash a chunk's id is made of, for the codec.
pub fn stored_id(codec: ChunkCodec, stored: &[u8]) -> [u8; 32] {
    match codec {
        ChunkCodec::ZosV1 => *blake3::hash(stored).as_bytes(),
        ChunkCodec::Rfs => blake2b_256(stored),
    }
}

/// BLAKE2b with a 32-byte digest (not a truncated BLAKE2b-512).
pub fn blake2b_256(bytes: &[u8]) -> [u8; 32] {
    let mut hasher = Blake2b::<U32>::new();
    hasher.update(bytes);
    hasher.finalize().into()
}

/// Seals `plain` with [`ChunkCodec::ZosV1`].
pub fn seal(plain: &[u8]) -> Result<SealedChunk, ChunkError> {
    if plain.len() > CHUNK_BYTES_MAX as usize {
        return Err(ChunkError::TooLarge(plain.len()));
    }
    let key = blake3::derive_key(KEY_CONTEXT, plain);
    let mut body = Vec::with_capacity(plain.len() / 2 + 64);
    body.push(BODY_ZSTD);
    // Compression failing is not a reason to fail: keep the raw bytes then.
    let compressed = zstd::bulk::compress(plain, ZSTD_LEVEL).ok();
    match compressed {
        Some(compressed) if compressed.len() < plain.len() => body.extend_from_slice(&compressed),
        _ => {
            body.clear();
            body.push(BODY_RAW);
            body.extend_from_slice(plain);
        }
    }
    let stored = aes_seal(&key, &[0u8; 12], &body);
    let id = *blake3::hash(&stored).as_bytes();
    Ok(SealedChunk { id, key, stored })
}

/// Seals `plain` as rfs does (used to write rfs flists in tests and by `convert`).
pub fn seal_rfs(plain: &[u8]) -> Result<SealedChunk, ChunkError> {
    if plain.len() > CHUNK_BYTES_MAX as usize {
        return Err(ChunkError::TooLarge(plain.len()));
    }
    let key = blake2b_256(plain);
    let compressed = snap::raw::Encoder::new()
        .compress_vec(plain)
        .map_err(|_| ChunkError::TooLarge(plain.len()))?;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&key[..12]);
    let stored = aes_seal(&key, &nonce, &compressed);
    let id = blake2b_256(&stored);
    Ok(SealedChunk { id, key, stored })
}

fn aead_key(key: &[u8; 32]) -> ring::aead::LessSafeKey {
    // ring refuses only keys of the wrong length, and the type fixes the length.
    let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
        .unwrap_or_else(|_| unreachable!("an AES-256 key of 32 bytes"));
    ring::aead::LessSafeKey::new(unbound)
}

fn aes_seal(key: &[u8; 32], nonce: &[u8; 12], body: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(body.len() + AEAD_TAG_BYTES);
    stored.extend_from_slice(body);
    // AES-GCM sealing only fails for messages over 64 GiB; ours are at most a few MiB.
    let sealed = aead_key(key).seal_in_place_append_tag(
        ring::aead::Nonce::assume_unique_for_key(*nonce),
        ring::aead::Aad::empty(),
        &mut stored,
    );
    match sealed {
        Ok(()) => stored,
        Err(_) => Vec::new(),
    }
}

/// Decrypts `stored` where it lies and drops the tag: `stored` becomes the body. `None`
/// when it does not authenticate.
fn aes_open_in_place(key: &[u8; 32], nonce: &[u8; 12], stored: &mut Vec<u8>) -> Option<()> {
    let body_bytes = aead_key(key)
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(*nonce),
            ring::aead::Aad::empty(),
            stored,
        )
        .ok()?
        .len();
    stored.truncate(body_bytes);
    Some(())
}

/// Checks the stored bytes of `chunk` against its id (and their size against the limits),
/// the first check of [`open`].
pub fn check_stored(chunk: &ChunkRef, stored: &[u8]) -> Result<(), ChunkError> {
    let id = &chunk.id;
    if chunk.plain_bytes > CHUNK_BYTES_MAX {
        return Err(ChunkError::TooLarge(chunk.plain_bytes as usize));
    }
    if stored.len() > (CHUNK_BYTES_MAX + STORED_OVERHEAD_BYTES_MAX) as usize {
        return Err(corrupt(id, "stored bytes larger than any chunk"));
    }
    if stored_id(chunk.codec, stored) != *id {
        return Err(corrupt(id, "stored bytes do not hash to the chunk id"));
    }
    Ok(())
}

/// Whether `plain` is the plaintext `chunk` describes: its length and its key (the key is
/// a hash of the plaintext in both codecs). This is how a plaintext copy of a file is
/// checked against the flist without the stored chunks.
pub fn plain_matches(chunk: &ChunkRef, plain: &[u8]) -> bool {
    plain.len() == chunk.plain_bytes as usize && plain_key(chunk.codec, plain) == chunk.key
}

/// The key of `plain` under `codec`.
fn plain_key(codec: ChunkCodec, plain: &[u8]) -> [u8; 32] {
    match codec {
        ChunkCodec::ZosV1 => blake3::derive_key(KEY_CONTEXT, plain),
        ChunkCodec::Rfs => blake2b_256(plain),
    }
}

/// Opens the stored bytes of `chunk` into its plaintext, checking everything.
pub fn open(chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
    check_stored(chunk, stored)?;
    open_checked(chunk, stored.to_vec())
}

/// Opens stored bytes that passed [`check_stored`], decrypting them where they lie (no
/// second buffer of a chunk's size), and checks the rest: the AEAD tag, the plaintext
/// length and the plaintext against the key.
pub fn open_checked(chunk: &ChunkRef, mut stored: Vec<u8>) -> Result<Vec<u8>, ChunkError> {
    let id = &chunk.id;
    if chunk.plain_bytes > CHUNK_BYTES_MAX {
        return Err(ChunkError::TooLarge(chunk.plain_bytes as usize));
    }
    let expected_bytes = chunk.plain_bytes as usize;
    let plain = match chunk.codec {
        ChunkCodec::ZosV1 => {
            aes_open_in_place(&chunk.key, &[0u8; 12], &mut stored)
                .ok_or_else(|| corrupt(id, "AEAD tag mismatch"))?;
            let mut body = stored;
            let kind = *body.first().ok_or_else(|| corrupt(id, "empty body"))?;
            match kind {
                // Shifted in place: no second buffer of a chunk's size.
                BODY_RAW => {
                    body.drain(..1);
                    body
                }
                BODY_ZSTD => zstd::bulk::decompress(&body[1..], expected_bytes)
                    .map_err(|_| corrupt(id, "zstd data invalid"))?,
                _ => return Err(corrupt(id, "unknown body kind")),
            }
        }
        ChunkCodec::Rfs => {
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&chunk.key[..12]);
            aes_open_in_place(&chunk.key, &nonce, &mut stored)
                .ok_or_else(|| corrupt(id, "AEAD tag mismatch"))?;
            let compressed = stored;
            let decompressed_bytes = snap::raw::decompress_len(&compressed)
                .map_err(|_| corrupt(id, "snappy header invalid"))?;
            if decompressed_bytes != expected_bytes {
                return Err(corrupt(id, "plaintext length differs from the flist's"));
            }
            snap::raw::Decoder::new()
                .decompress_vec(&compressed)
                .map_err(|_| corrupt(id, "snappy data invalid"))?
        }
    };
    if plain.len() != expected_bytes {
        return Err(corrupt(id, "plaintext length differs from the flist's"));
    }
    if plain_key(chunk.codec, &plain) != chunk.key {
        return Err(corrupt(id, "plaintext does not match its key"));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(codec: ChunkCodec, sealed: &SealedChunk, plain_bytes: usize) -> ChunkRef {
        ChunkRef {
            file_offset: 0,
            plain_bytes: plain_bytes as u32,
            stored_bytes: sealed.stored.len() as u32,
            codec,
            id: sealed.id,
            key: sealed.key,
        }
    }

    #[test]
    fn zos_chunks_round_trip_and_converge() {
        for plain in [
            vec![],
            vec![7u8; 100_000],
            (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ] {
            let first = seal(&plain).unwrap();
            let second = seal(&plain).unwrap();
            assert_eq!(first.id, second.id, "equal plaintext must give equal ids");
            assert_eq!(first.stored, second.stored);
            let chunk = reference(ChunkCodec::ZosV1, &first, plain.len());
            assert_eq!(open(&chunk, &first.stored).unwrap(), plain);
        }
        assert_ne!(seal(b"a").unwrap().id, seal(b"b").unwrap().id);
    }

    #[test]
    fn rfs_chunks_round_trip() {
        let plain: Vec<u8> = (0..600_000u32).map(|i| (i % 13) as u8).collect();
        let sealed = seal_rfs(&plain).unwrap();
        assert_eq!(sealed.id, blake2b_256(&sealed.stored));
        let chunk = reference(ChunkCodec::Rfs, &sealed, plain.len());
        assert_eq!(open(&chunk, &sealed.stored).unwrap(), plain);
    }

    #[test]
    fn any_flipped_bit_is_refused() {
        let plain = vec![42u8; 5000];
        for codec in [ChunkCodec::ZosV1, ChunkCodec::Rfs] {
            let sealed = if codec == ChunkCodec::ZosV1 {
                seal(&plain)
            } else {
                seal_rfs(&plain)
            }
            .unwrap();
            let chunk = reference(codec, &sealed, plain.len());
            for position in [0, sealed.stored.len() / 2, sealed.stored.len() - 1] {
                let mut bad = sealed.stored.clone();
                bad[position] ^= 1;
                assert!(matches!(
                    open(&chunk, &bad),
                    Err(ChunkError::Corrupt { .. })
                ));
            }
            let mut wrong_length = chunk;
            wrong_length.plain_bytes += 1;
            assert!(open(&wrong_length, &sealed.stored).is_err());
        }
    }
}
