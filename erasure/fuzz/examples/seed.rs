//! Writes the seed corpus, `corpus/<target>/<name>`, with erasure's own encoders (shard
//! frames with real checksums, metadata records sealed with the checks' key). Run from
//! `erasure/fuzz`:
//!
//! ```text
//! cargo run --example seed
//! ```
//!
//! It overwrites the seeds it knows and leaves other files (kept fuzzer findings) alone.

use std::path::Path;

use erasure::codec::{ChunkCodec, ChunkInfo, ChunkPlace, ReedSolomon, RsCodecId};
use erasure::meta::{self, ChunkEntry, MetaCodec, Page};
use erasure_fuzz::{page_head, FUZZ_KEY};

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
    for (name, bytes) in shard_seeds() {
        seeds.push(("shard", name, bytes));
    }
    for (name, bytes) in meta_seeds() {
        seeds.push(("meta", name, bytes));
    }
    for (target, name, bytes) in seeds {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
    }
    println!("seeds written under {}", corpus.display());
    Ok(())
}

/// Text that compresses, so seeds reach the zstd path too.
fn text(bytes: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog. "
        .iter()
        .copied()
        .cycle()
        .take(bytes)
        .collect()
}

fn noise(seed: u64, bytes: usize) -> Vec<u8> {
    fixtures::bytes::xorshift_bytes(seed | 1, bytes)
}

fn shard_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    // Real frames, as the raw-frame half of the check sees them.
    for (id, k, m) in [(RsCodecId::Erasure, 4, 2), (RsCodecId::Simd, 8, 4)] {
        let codec = ChunkCodec::new(&FUZZ_KEY, ReedSolomon::new(id, k, m).unwrap(), 3);
        let place = ChunkPlace {
            object_id: [3; 16],
            chunk_index: 9,
        };
        let encoded = codec.encode(place, &text(1000)).unwrap();
        seeds.push((
            format!("frame-{}-{k}+{m}-data", id.name()),
            encoded.shards[0].clone(),
        ));
        seeds.push((
            format!("frame-{}-{k}+{m}-parity", id.name()),
            encoded.shards[k].clone(),
        ));
    }
    // Programs for the decode half: config (bit 0 codec, bit 1 zstd), k-1, m-1, one fate per
    // shard (0-1 keep, 2 drop, 3 flip, 4 truncate, 5 garbage, 6 swap, 7 forge), plaintext.
    let programs: [(&str, [u8; 3], &[u8], Vec<u8>); 8] = [
        ("all-kept-4+2", [0, 3, 1], &[0, 0, 0, 0, 0, 0], text(3000)),
        (
            "two-dropped-4+2-zstd",
            [2, 3, 1],
            &[2, 0, 2, 0, 0, 0],
            text(4000),
        ),
        (
            "flip-and-truncate-simd",
            [1, 3, 1],
            &[3, 4, 0, 0, 0, 0],
            noise(1, 2000),
        ),
        (
            "three-bad-4+2",
            [0, 3, 1],
            &[5, 6, 2, 0, 0, 0],
            noise(2, 700),
        ),
        ("forged-parity-8+4", [0, 7, 3], &[0; 8], noise(3, 4096)),
        (
            "forged-data-simd",
            [1, 3, 1],
            &[7, 0, 0, 0, 0, 0],
            noise(4, 999),
        ),
        ("empty-chunk-1+1", [0, 0, 0], &[0, 2], Vec::new()),
        ("one-byte-16+4", [3, 15, 3], &[2, 2, 2, 2, 0, 0], vec![0x42]),
    ];
    for (name, prefix, fates, plain) in programs {
        let mut input = prefix.to_vec();
        input.extend_from_slice(fates);
        if name == "forged-parity-8+4" {
            input.extend_from_slice(&[0, 0, 0, 0, 7, 7, 7, 7]);
        }
        input.extend_from_slice(&plain);
        seeds.push((name.to_string(), input));
    }
    seeds
}

fn entry(chunk: usize) -> ChunkEntry {
    ChunkEntry {
        info: ChunkInfo {
            hash: [chunk as u8; 32],
            plain_bytes: 4096,
            sealed_bytes: 4096 + 29,
            shard_crcs: (0..6).map(|shard| (chunk * 6 + shard) as u32).collect(),
        },
        placement: (0..6).map(|shard| ((chunk + shard) % 6) as u16).collect(),
    }
}

fn meta_seeds() -> Vec<(String, Vec<u8>)> {
    let codec = MetaCodec::new(&FUZZ_KEY);
    let mut seeds = Vec::new();
    let with_prefix = |mode: u8, chunk_count: u16, page: u8, body: &[u8]| {
        let mut input = vec![mode];
        input.extend_from_slice(&chunk_count.to_le_bytes());
        input.push(page);
        input.extend_from_slice(body);
        input
    };
    for chunk_count in [0u16, 1, 5, 4097] {
        let head = page_head(u64::from(chunk_count));
        seeds.push((
            format!("head-body-{chunk_count}-chunks"),
            with_prefix(0, chunk_count, 0, &meta::head_body(&head)),
        ));
        let (_, record) = codec.encode_head(&head).unwrap();
        seeds.push((
            format!("head-record-{chunk_count}-chunks"),
            with_prefix(2, chunk_count, 0, &record),
        ));
        // The full first page of 4097 chunks is 300 KiB: only its one-entry second page.
        let first_page = if chunk_count > 4096 { 1 } else { 0 };
        for page_index in first_page..head.page_count {
            let first = page_index as usize * meta::CHUNKS_PER_PAGE;
            let last = (first + meta::CHUNKS_PER_PAGE).min(chunk_count as usize);
            let page = Page {
                index: page_index,
                chunks: (first..last).map(entry).collect(),
            };
            seeds.push((
                format!("page-body-{chunk_count}-chunks-page-{page_index}"),
                with_prefix(
                    1,
                    chunk_count,
                    page_index as u8,
                    &meta::page_body(&head, &page),
                ),
            ));
            let (_, record) = codec.encode_page(&head, &page);
            seeds.push((
                format!("page-record-{chunk_count}-chunks-page-{page_index}"),
                with_prefix(3, chunk_count, page_index as u8, &record),
            ));
        }
    }
    let tombstone = meta::ObjectHead {
        deleted: true,
        size: 0,
        chunk_count: 0,
        page_count: 0,
        ..page_head(3)
    };
    seeds.push((
        "head-body-tombstone".into(),
        with_prefix(0, 0, 0, &meta::head_body(&tombstone)),
    ));
    seeds
}
