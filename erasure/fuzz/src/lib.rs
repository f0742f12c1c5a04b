//! The checks behind the fuzz targets of `erasure`, in one place: the libFuzzer targets in
//! `fuzz_targets/` call them, and `erasure/tests/fuzz_corpus.rs` compiles this same file as a
//! module (`#[path]`) to replay the committed corpus on stable in the ordinary test run.
//! Each check feeds arbitrary bytes to the decoders of bytes a backend hands back (shard
//! frames, metadata records) and panics when a promise is broken, so it may use only
//! `erasure`, `crc32fast` and std (what both places have).
//!
//! Targets (their corpus folders are `corpus/<target>/`):
//! - `shard`: `codec::parse_shard` on the raw bytes and with a fixed-up crc; then a chunk
//!   encoded from the bytes whose shards are dropped, damaged, truncated, swapped or forged
//!   as the bytes say, through `ChunkCodec::decode` and `rebuild_frames`.
//! - `meta`: `meta::parse_head_body` and `parse_page_body` on the raw bytes, and
//!   `MetaCodec::decode_head` / `decode_page` on the bytes as a whole record with a fixed-up
//!   crc (the seeds are real records sealed with [`FUZZ_KEY`]).

use erasure::codec::{
    frame_shard, parse_shard, ChunkCodec, ChunkHash, ChunkInfo, ChunkPlace, CodecError,
    ReedSolomon, RsCodecId, Scratch, KEY_BYTES, SHARD_HEADER_BYTES,
};
use erasure::meta::{self, ChunkEntry, MetaCodec, ObjectHead, Page, CHUNKS_PER_PAGE};

/// The fuzz targets, which are also the names of the corpus folders.
pub const TARGETS: [&str; 2] = ["shard", "meta"];

/// The key the checks and the seed records use.
pub const FUZZ_KEY: [u8; KEY_BYTES] = [0x5a; KEY_BYTES];

/// The object name of head records in the `meta` target.
pub const FUZZ_NAME: &[u8] = b"fuzz/object";

/// Largest plaintext the `shard` check encodes: keeps one run in the millisecond range.
pub const PLAIN_BYTES_MAX: usize = 4096;

/// Runs the check of `target` on `data`.
pub fn check(target: &str, data: &[u8]) {
    match target {
        "shard" => check_shard(data),
        "meta" => check_meta(data),
        other => panic!("no check for fuzz target {other:?} (known: {TARGETS:?})"),
    }
}

// ------------------------------------------------------------------------------- shard

/// Writes a crc32 over bytes 0..16 and the payload into bytes 16..20 of a frame, so that
/// inputs get past the checksum to the header checks.
pub fn fix_shard_crc(frame: &mut [u8]) {
    if frame.len() < SHARD_HEADER_BYTES {
        return;
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame[..16]);
    hasher.update(&frame[SHARD_HEADER_BYTES..]);
    let crc = hasher.finalize();
    frame[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// An accepted frame is canonical: framing its header and payload again gives its bytes.
fn check_parse_shard(frame: &[u8]) {
    if let Ok((header, crc, payload)) = parse_shard(frame) {
        assert!(
            (header.index as usize) < header.data_shards as usize + header.parity_shards as usize,
            "accepted shard index {} of {}+{}",
            header.index,
            header.data_shards,
            header.parity_shards
        );
        let (again, again_crc) = frame_shard(header, payload);
        assert_eq!(again_crc, crc, "crc of a re-framed shard differs");
        assert!(again == frame, "an accepted frame is not canonical");
    }
}

/// What the `shard` check does to one shard, from one byte of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShardFate {
    Keep,
    Drop,
    FlipBit,
    Truncate,
    /// Bytes from the input in place of the frame.
    Garbage,
    /// Another shard's frame in its place.
    Swap,
    /// A well-framed payload from the input, with its crc also written into the metadata:
    /// what a writer that controls both a backend and the metadata (but not the key) makes.
    Forge,
}

fn fate(byte: u8) -> ShardFate {
    match byte % 8 {
        0..=1 => ShardFate::Keep,
        2 => ShardFate::Drop,
        3 => ShardFate::FlipBit,
        4 => ShardFate::Truncate,
        5 => ShardFate::Garbage,
        6 => ShardFate::Swap,
        _ => ShardFate::Forge,
    }
}

/// `length` bytes cycled from `material` (zeros when it is empty), starting at `offset`.
fn cycled(material: &[u8], offset: usize, length: usize) -> Vec<u8> {
    if material.is_empty() {
        return vec![0; length];
    }
    (0..length)
        .map(|at| material[(offset + at) % material.len()])
        .collect()
}

/// The shard decoder never returns bytes other than the chunk that was encoded: with at
/// least k untouched shards it returns that chunk, and whatever else it is given (dropped,
/// flipped, truncated, swapped, garbage or forged shards) it either returns that chunk or
/// an error, without panicking.
pub fn check_shard(data: &[u8]) {
    check_parse_shard(data);
    let mut fixed = data.to_vec();
    fix_shard_crc(&mut fixed);
    check_parse_shard(&fixed);

    // Layout: config (bit 0 codec, bit 1 zstd, bit 2 subtree hash), k-1, m-1, one fate byte
    // per shard, then the plaintext / material.
    let [config, k_byte, m_byte, rest @ ..] = data else {
        return;
    };
    let id = if config & 1 == 0 {
        RsCodecId::Erasure
    } else {
        RsCodecId::Simd
    };
    let data_shards = 1 + *k_byte as usize % 8;
    let parity_shards = 1 + *m_byte as usize % 4;
    let total = data_shards + parity_shards;
    let (fates, material) = rest.split_at(total.min(rest.len()));
    let fates: Vec<ShardFate> = (0..total)
        .map(|index| fates.get(index).copied().map_or(ShardFate::Keep, fate))
        .collect();
    let plain = &material[..material.len().min(PLAIN_BYTES_MAX)];
    let level = if config & 2 == 0 { 0 } else { 3 };
    let reed_solomon = match ReedSolomon::new(id, data_shards, parity_shards) {
        Ok(reed_solomon) => reed_solomon,
        Err(error) => panic!("{data_shards}+{parity_shards} refused: {error}"),
    };
    let codec = ChunkCodec::new(&FUZZ_KEY, reed_solomon, level);
    let place = ChunkPlace {
        object_id: [config.wrapping_mul(31); 16],
        chunk_index: u64::from(*k_byte),
    };
    // Bit 2: the chunk's hash is its blake3 subtree hash at a 4 MiB-aligned offset.
    let hashing = if config & 4 != 0 && !plain.is_empty() {
        ChunkHash::Subtree {
            offset: u64::from(*k_byte) << 22,
        }
    } else {
        ChunkHash::Whole
    };
    let encoded = match codec.encode_hashed(place, plain, hashing, &mut Scratch::default()) {
        Ok(encoded) => encoded,
        Err(error) => panic!("encoding {} bytes: {error}", plain.len()),
    };
    let mut info: ChunkInfo = encoded.info.clone();
    let mut frames: Vec<Option<Vec<u8>>> = encoded.shards.iter().cloned().map(Some).collect();
    let mut forged = false;
    for (index, fate) in fates.iter().enumerate() {
        let original = &encoded.shards[index];
        let offset = index * 7 + usize::from(*config);
        frames[index] = match fate {
            ShardFate::Keep => Some(original.clone()),
            ShardFate::Drop => None,
            ShardFate::FlipBit => {
                let mut frame = original.clone();
                let at = offset % frame.len();
                frame[at] ^= 1 << (offset % 8);
                Some(frame)
            }
            ShardFate::Truncate => Some(original[..offset % original.len()].to_vec()),
            ShardFate::Garbage => Some(cycled(material, offset, offset % (original.len() + 1))),
            ShardFate::Swap => Some(encoded.shards[(index + 1 + offset) % total].clone()),
            ShardFate::Forge => {
                let payload = cycled(material, offset, original.len() - SHARD_HEADER_BYTES);
                let header = match parse_shard(original) {
                    Ok((header, _, _)) => header,
                    Err(error) => panic!("a fresh shard does not parse: {error}"),
                };
                let (frame, crc) = frame_shard(header, &payload);
                if frame != *original {
                    forged = true;
                }
                info.shard_crcs[index] = crc;
                Some(frame)
            }
        };
    }
    let intact = frames
        .iter()
        .zip(&encoded.shards)
        .filter(|(frame, original)| frame.as_ref() == Some(original))
        .count();
    match codec.decode_with(place, &info, &frames, hashing) {
        Ok((decoded, _bad)) => assert!(
            decoded == plain,
            "decode returned {} bytes that are not the {}-byte chunk ({data_shards}+{parity_shards}, {id:?}, fates {fates:?})",
            decoded.len(),
            plain.len()
        ),
        Err(error) => {
            // Untouched shards (and no forged metadata) always decode.
            assert!(
                forged || intact < data_shards,
                "{intact} intact shards of {data_shards}+{parity_shards} ({id:?}) failed: {error} (fates {fates:?})"
            );
            if !forged {
                assert!(
                    matches!(error, CodecError::NotEnoughShards { .. }),
                    "without forgery only missing shards may fail a decode, got {error}"
                );
            }
        }
    }
    // Rebuilding the shards that are not intact gives the original frames back, or fails.
    let wanted: Vec<usize> = (0..total)
        .filter(|&index| frames[index].as_ref() != Some(&encoded.shards[index]))
        .collect();
    if let Ok(rebuilt) = codec.rebuild_frames(&info, &frames, &wanted) {
        if !forged {
            for (index, frame) in rebuilt {
                assert!(
                    frame == encoded.shards[index],
                    "shard {index} rebuilt differently"
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------- meta

/// Header bytes of a metadata record (magic, version, kind, reserved, length, crc).
const RECORD_HEADER_BYTES: usize = 16;

/// Writes a crc32 over bytes 0..12 and everything after byte 16 into bytes 12..16 of a
/// record, so that inputs get past the checksum to the AEAD and the body parser.
pub fn fix_record_crc(record: &mut [u8]) {
    if record.len() < RECORD_HEADER_BYTES {
        return;
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&record[..12]);
    hasher.update(&record[RECORD_HEADER_BYTES..]);
    let crc = hasher.finalize();
    record[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// The head the `meta` check's page records belong to: 4+2 over six backends with
/// `chunk_count` chunks of 4 KiB.
pub fn page_head(chunk_count: u64) -> ObjectHead {
    ObjectHead {
        name: FUZZ_NAME.to_vec(),
        object_id: [0x11; 16],
        generation: 1,
        deleted: false,
        tree_hashes: chunk_count % 2 == 1,
        size: chunk_count * 4096,
        chunk_bytes: 4096,
        data_shards: 4,
        parity_shards: 2,
        codec: RsCodecId::Erasure,
        chunk_count,
        page_count: chunk_count.div_ceil(CHUNKS_PER_PAGE as u64) as u32,
        content_hash: [0x22; 32],
        backends: (0..6)
            .map(|index| format!("zdb://127.0.0.1:{}/ns", 9900 + index))
            .collect(),
    }
}

fn check_head(codec: &MetaCodec, head: &ObjectHead) {
    let (_, record) = match codec.encode_head(head) {
        Ok(encoded) => encoded,
        Err(error) => panic!("an accepted head does not encode: {error}"),
    };
    match codec.decode_head(&head.name, &record) {
        Ok(again) => assert!(again == *head, "head changed on a round trip"),
        Err(error) => panic!("a re-encoded head does not decode: {error}"),
    }
}

fn check_page(codec: &MetaCodec, head: &ObjectHead, index: u32, page: &Page) {
    assert_eq!(page.index, index);
    let expected = head
        .chunk_count
        .saturating_sub(u64::from(index) * CHUNKS_PER_PAGE as u64)
        .min(CHUNKS_PER_PAGE as u64) as usize;
    assert_eq!(page.chunks.len(), expected, "page entry count");
    for ChunkEntry { info, placement } in &page.chunks {
        assert_eq!(info.shard_crcs.len(), 6);
        assert!(placement.iter().all(|&backend| (backend as usize) < 6));
        assert!(info.plain_bytes <= head.chunk_bytes);
    }
    let (_, record) = codec.encode_page(head, page);
    match codec.decode_page(head, index, &record) {
        Ok(again) => assert!(again == *page, "page changed on a round trip"),
        Err(error) => panic!("a re-encoded page does not decode: {error}"),
    }
}

/// Metadata decoders accept only what their encoders write (bodies are canonical), accepted
/// records survive a round trip, and nothing panics or allocates on a count's word.
///
/// Input layout: a mode byte (0 head body, 1 page body, 2 head record, 3 page record), two
/// bytes of chunk count and a page index byte (for pages), then the body or record.
pub fn check_meta(data: &[u8]) {
    let codec = MetaCodec::new(&FUZZ_KEY);
    let [mode, count_low, count_high, page_byte, body @ ..] = data else {
        return;
    };
    let chunk_count = u64::from(u16::from_le_bytes([*count_low, *count_high]));
    let head = page_head(chunk_count);
    let index = u32::from(*page_byte) % (head.page_count + 1);
    match mode % 4 {
        0 => {
            if let Ok(parsed) = meta::parse_head_body(FUZZ_NAME, body) {
                assert!(
                    meta::head_body(&parsed) == body,
                    "an accepted head body is not canonical"
                );
                check_head(&codec, &parsed);
            }
        }
        1 => {
            if let Ok(page) = meta::parse_page_body(&head, index, body) {
                assert!(
                    meta::page_body(&head, &page) == body,
                    "an accepted page body is not canonical"
                );
                check_page(&codec, &head, index, &page);
            }
        }
        2 => {
            let mut record = body.to_vec();
            fix_record_crc(&mut record);
            for record in [body, &record[..]] {
                if let Ok(parsed) = codec.decode_head(FUZZ_NAME, record) {
                    check_head(&codec, &parsed);
                }
            }
        }
        _ => {
            let mut record = body.to_vec();
            fix_record_crc(&mut record);
            for record in [body, &record[..]] {
                if let Ok(page) = codec.decode_page(&head, index, record) {
                    check_page(&codec, &head, index, &page);
                }
            }
        }
    }
}
