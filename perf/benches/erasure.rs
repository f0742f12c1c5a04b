//! zstor's chunk pipeline, stage by stage, beside its limits and alternatives, in one run:
//! memcpy of the same bytes, blake3, zstd at the default level, AES-256-GCM, Reed-Solomon
//! encode and reconstruct at 4+2, 8+4 and 16+4 (reed-solomon-erasure with and without its
//! SIMD feature, reed-solomon-simd), crc32, and the whole chunk encode and decode on one
//! core; then the whole put pipeline (`Zstor::put` of a 64 MiB object over six stores that
//! drop what they are given) on every core, beside AES-256-GCM, its slowest necessary stage,
//! on one core and on every core.
//!
//! Run with `perf/erasure-bench.sh`, which writes `perf/results/erasure.md`.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use erasure::codec::{ChunkCodec, ChunkPlace, ReedSolomon, RsCodecId};

const CHUNK_BYTES: usize = 4 * 1024 * 1024;
const GEOMETRIES: [(usize, usize); 3] = [(4, 2), (8, 4), (16, 4)];

/// Incompressible bytes from a fixed seed (xorshift), like the acceptance test's objects.
fn chunk() -> Vec<u8> {
    fixtures::bytes::xorshift_bytes(0x9e37_79b9_7f4a_7c15, CHUNK_BYTES)
}

fn split(data: &[u8], data_shards: usize, parity_shards: usize) -> Vec<Vec<u8>> {
    let shard_bytes = data.len().div_ceil(data_shards).div_ceil(64) * 64;
    let mut shards: Vec<Vec<u8>> = data
        .chunks(shard_bytes)
        .map(|part| {
            let mut shard = part.to_vec();
            shard.resize(shard_bytes, 0);
            shard
        })
        .collect();
    shards.resize(data_shards + parity_shards, vec![0; shard_bytes]);
    shards
}

fn stages(c: &mut Criterion) {
    let data = chunk();
    let mut group = c.benchmark_group("stage");
    group.throughput(Throughput::Bytes(CHUNK_BYTES as u64));
    group.bench_function("memcpy", |b| {
        let mut target = vec![0u8; CHUNK_BYTES];
        b.iter(|| target.copy_from_slice(black_box(&data)))
    });
    group.bench_function("blake3", |b| b.iter(|| blake3::hash(black_box(&data))));
    group.bench_function("crc32", |b| b.iter(|| crc32fast::hash(black_box(&data))));
    group.bench_function("zstd-3", |b| {
        b.iter(|| zstd::bulk::compress(black_box(&data), 3).map(|out| out.len()))
    });
    let cipher = Aes256Gcm::new(&[7u8; 32].into());
    group.bench_function("aes-256-gcm", |b| {
        b.iter(|| {
            cipher
                .encrypt(Nonce::from_slice(&[1; 12]), black_box(&data[..]))
                .map(|out| out.len())
        })
    });
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[7u8; 32]).unwrap(),
    );
    group.bench_function("aes-256-gcm-ring", |b| {
        let mut buffer = Vec::with_capacity(CHUNK_BYTES + 16);
        b.iter(|| {
            buffer.clear();
            buffer.extend_from_slice(&data);
            let nonce = ring::aead::Nonce::assume_unique_for_key([1; 12]);
            ring_key
                .seal_in_place_append_tag(nonce, ring::aead::Aad::empty(), black_box(&mut buffer))
                .unwrap();
        })
    });
    group.finish();
}

fn reed_solomon(c: &mut Criterion) {
    let data = chunk();
    for (data_shards, parity_shards) in GEOMETRIES {
        let geometry = format!("{data_shards}+{parity_shards}");
        let mut encode = c.benchmark_group(format!("rs-encode-{geometry}"));
        encode.throughput(Throughput::Bytes(CHUNK_BYTES as u64));
        let simd =
            reed_solomon_erasure::galois_8::ReedSolomon::new(data_shards, parity_shards).unwrap();
        let plain =
            reed_solomon_erasure_plain::galois_8::ReedSolomon::new(data_shards, parity_shards)
                .unwrap();
        let mut shards = split(&data, data_shards, parity_shards);
        encode.bench_function(
            BenchmarkId::from_parameter("reed-solomon-erasure-simd"),
            |b| b.iter(|| simd.encode(black_box(&mut shards)).unwrap()),
        );
        encode.bench_function(
            BenchmarkId::from_parameter("reed-solomon-erasure-plain"),
            |b| b.iter(|| plain.encode(black_box(&mut shards)).unwrap()),
        );
        encode.bench_function(BenchmarkId::from_parameter("reed-solomon-simd"), |b| {
            b.iter(|| {
                reed_solomon_simd::encode(
                    data_shards,
                    parity_shards,
                    black_box(&shards[..data_shards]),
                )
                .unwrap()
            })
        });
        encode.finish();

        // Lose the first m data shards (the worst case: every lost shard is data).
        let mut reconstruct = c.benchmark_group(format!("rs-reconstruct-{geometry}"));
        reconstruct.throughput(Throughput::Bytes(CHUNK_BYTES as u64));
        simd.encode(&mut shards).unwrap();
        let damaged: Vec<Option<Vec<u8>>> = shards
            .iter()
            .enumerate()
            .map(|(index, shard)| (index >= parity_shards).then(|| shard.clone()))
            .collect();
        reconstruct.bench_function(
            BenchmarkId::from_parameter("reed-solomon-erasure-simd"),
            |b| {
                b.iter(|| {
                    let mut work = damaged.clone();
                    simd.reconstruct_data(&mut work).unwrap();
                    work
                })
            },
        );
        reconstruct.bench_function(
            BenchmarkId::from_parameter("reed-solomon-erasure-plain"),
            |b| {
                b.iter(|| {
                    let mut work = damaged.clone();
                    plain.reconstruct_data(&mut work).unwrap();
                    work
                })
            },
        );
        let recovery =
            reed_solomon_simd::encode(data_shards, parity_shards, &shards[..data_shards]).unwrap();
        reconstruct.bench_function(BenchmarkId::from_parameter("reed-solomon-simd"), |b| {
            b.iter(|| {
                let originals = shards[..data_shards].iter().enumerate().skip(parity_shards);
                let recovered = recovery.iter().enumerate();
                reed_solomon_simd::decode(data_shards, parity_shards, originals, recovered).unwrap()
            })
        });
        reconstruct.finish();
    }
}

fn pipeline(c: &mut Criterion) {
    let data = chunk();
    let mut group = c.benchmark_group("pipeline-4+2");
    group.throughput(Throughput::Bytes(CHUNK_BYTES as u64));
    let place = ChunkPlace {
        object_id: [3; 16],
        chunk_index: 0,
    };
    for id in [RsCodecId::Erasure, RsCodecId::Simd] {
        let codec = ChunkCodec::new(&[5; 32], ReedSolomon::new(id, 4, 2).unwrap(), 3);
        group.bench_function(BenchmarkId::new("encode", id.name()), |b| {
            b.iter(|| codec.encode(place, black_box(&data)).unwrap())
        });
        let encoded = codec.encode(place, &data).unwrap();
        let mut frames: Vec<Option<Vec<u8>>> = encoded.shards.iter().cloned().map(Some).collect();
        frames[0] = None;
        frames[1] = None;
        group.bench_function(BenchmarkId::new("decode-2-lost", id.name()), |b| {
            b.iter(|| {
                codec
                    .decode(place, &encoded.info, black_box(&frames))
                    .unwrap()
            })
        });
    }
    group.finish();
}

const OBJECT_BYTES: usize = 64 * 1024 * 1024;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |count| count.get())
}

/// The whole put (read, object hash, chunk hash, zstd sampling, AES-256-GCM, Reed-Solomon,
/// crc32, frames, metadata) on a runtime with a worker per core, beside AES-256-GCM alone
/// on one core and on every core (one chunk per core per iteration).
fn whole_put(c: &mut Criterion) {
    let chunk = chunk();
    let object: Vec<u8> = (0..OBJECT_BYTES / CHUNK_BYTES)
        .flat_map(|index| chunk.iter().map(move |byte| byte.wrapping_add(index as u8)))
        .collect();
    let cores = cores();
    let mut group = c.benchmark_group("put-4+2");
    group.throughput(Throughput::Bytes(OBJECT_BYTES as u64));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .unwrap();
    let zstor = perf::null_zstor(CHUNK_BYTES).unwrap();
    group.bench_function(
        BenchmarkId::new("whole-put", format!("{cores}-cores")),
        |b| {
            b.iter(|| {
                runtime
                    .block_on(zstor.put(b"bench", black_box(&object[..]), &|_| {}))
                    .unwrap()
            })
        },
    );
    group.finish();

    let mut group = c.benchmark_group("aes-256-gcm-ring");
    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[7u8; 32]).unwrap(),
    );
    let seal = |buffer: &mut Vec<u8>| {
        buffer.clear();
        buffer.extend_from_slice(&chunk);
        let nonce = ring::aead::Nonce::assume_unique_for_key([1; 12]);
        key.seal_in_place_append_tag(nonce, ring::aead::Aad::empty(), black_box(buffer))
            .unwrap();
    };
    group.throughput(Throughput::Bytes((cores * CHUNK_BYTES) as u64));
    group.bench_function(
        BenchmarkId::new("all-cores", format!("{cores}-cores")),
        |b| {
            let mut buffers = vec![Vec::with_capacity(CHUNK_BYTES + 16); cores];
            b.iter(|| {
                std::thread::scope(|scope| {
                    for buffer in buffers.iter_mut() {
                        scope.spawn(|| seal(buffer));
                    }
                })
            })
        },
    );
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = stages, reed_solomon, pipeline, whole_put
}
criterion_main!(benches);
