//! Profiles the whole put pipeline without the network: `Zstor::put` of an incompressible
//! object over six stores that drop what they are given, on a runtime with a worker per
//! core, beside the stages it cannot do without (blake3, AES-256-GCM, Reed-Solomon 4+2,
//! crc32 of every shard) run back to back on one chunk per core, with no copies, no tasks
//! and no I/O: the most the pipeline could reach on this machine.
//!
//! usage: `cargo run --release -p perf --example put_profile -- [CHUNK_KIB] [OBJECT_MIB] [ROUNDS]`
//! (`perf record -g` on it shows where the put's time goes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use erasure::codec::{ChunkCodec, ChunkHash, ChunkPlace, ReedSolomon, RsCodecId, Scratch};
use perf::sys::{process_cpu_ns, thread_cpu_ns};

fn incompressible(bytes: usize) -> Vec<u8> {
    fixtures::bytes::xorshift_bytes(0x9e37_79b9_7f4a_7c15, bytes)
}

/// Best (lowest) CPU nanoseconds per byte of `work` over `bytes`, on this thread.
fn cpu_ns_per_byte(bytes: usize, rounds: usize, mut work: impl FnMut()) -> f64 {
    work();
    (0..rounds)
        .map(|_| {
            let started = thread_cpu_ns();
            work();
            (thread_cpu_ns() - started) as f64 / bytes as f64
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse().expect("numbers: CHUNK_KIB OBJECT_MIB ROUNDS"))
        .collect();
    let chunk_bytes = args.first().copied().unwrap_or(4096) * 1024;
    let object_bytes = args.get(1).copied().unwrap_or(64) * 1024 * 1024;
    let rounds = args.get(2).copied().unwrap_or(10);
    let cores = std::thread::available_parallelism().map_or(1, |count| count.get());
    let object = incompressible(object_bytes);

    let zstor = perf::null_zstor(chunk_bytes).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(zstor.put(b"profile", &object[..], &|_| {}))
        .unwrap();
    let mut best_put = f64::MAX;
    let cpu_started = process_cpu_ns();
    let wall_started = Instant::now();
    for _ in 0..rounds {
        let started = Instant::now();
        runtime
            .block_on(zstor.put(b"profile", &object[..], &|_| {}))
            .unwrap();
        best_put = best_put.min(started.elapsed().as_secs_f64());
    }
    let put_cpu = (process_cpu_ns() - cpu_started) as f64 / (rounds * object_bytes) as f64;
    let put_busy =
        put_cpu * (rounds * object_bytes) as f64 / 1e9 / wall_started.elapsed().as_secs_f64();
    let put_gbs = object_bytes as f64 / best_put / 1e9;

    // Each stage alone on this thread, CPU time per byte of chunk.
    let chunk = &object[..chunk_bytes.min(object_bytes)];
    let stage_rounds = rounds.max(5);
    let reed_solomon = ReedSolomon::new(RsCodecId::DEFAULT, 4, 2).unwrap();
    let shard_bytes = reed_solomon.shard_bytes(chunk.len() + 29);
    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[7; 32]).unwrap(),
    );
    let mut buffer = Vec::with_capacity(4 * shard_bytes);
    buffer.extend_from_slice(chunk);
    let mut target = vec![0u8; chunk.len()];
    // Reading the input: every chunk of the object copied in from memory (the object is
    // larger than the caches, as a put's input is).
    let read = cpu_ns_per_byte(object.len(), stage_rounds, || {
        for piece in object.chunks(chunk.len()) {
            target[..piece.len()].copy_from_slice(std::hint::black_box(piece));
            std::hint::black_box(&mut target);
        }
    });
    let memcpy = cpu_ns_per_byte(chunk.len(), stage_rounds, || {
        target.copy_from_slice(std::hint::black_box(chunk));
        std::hint::black_box(&mut target);
    });
    let blake3 = cpu_ns_per_byte(chunk.len(), stage_rounds, || {
        std::hint::black_box(blake3::hash(std::hint::black_box(chunk)));
    });
    let aes = cpu_ns_per_byte(chunk.len(), stage_rounds, || {
        let nonce = ring::aead::Nonce::assume_unique_for_key([1; 12]);
        let tag = key
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), &mut buffer)
            .unwrap();
        std::hint::black_box(tag.as_ref()[0]);
    });
    buffer.resize(4 * shard_bytes, 0);
    let mut parity = vec![vec![0u8; shard_bytes]; 2];
    let rs = cpu_ns_per_byte(chunk.len(), stage_rounds, || {
        let data: Vec<&[u8]> = buffer.chunks(shard_bytes).collect();
        let mut parity_slices: Vec<&mut [u8]> =
            parity.iter_mut().map(|shard| &mut shard[..]).collect();
        reed_solomon.parity_into(&data, &mut parity_slices).unwrap();
    });
    // crc32 of every shard, data and parity: 1.5 bytes per chunk byte at 4+2.
    let crc = cpu_ns_per_byte(chunk.len(), stage_rounds, || {
        for shard in buffer
            .chunks(shard_bytes)
            .chain(parity.iter().map(|p| &p[..]))
        {
            std::hint::black_box(crc32fast::hash(shard));
        }
    });
    let sum = blake3 + aes + rs + crc;
    let codec = ChunkCodec::new(&[7; 32], reed_solomon, 3);
    let mut scratch = Scratch::default();
    let mut plain = vec![0u8; 13];
    let encode = cpu_ns_per_byte(chunk.len(), stage_rounds, || {
        plain.truncate(13);
        plain.extend_from_slice(chunk);
        let encoded = codec
            .encode_in_place(
                ChunkPlace {
                    object_id: [1; 16],
                    chunk_index: 1,
                },
                &mut plain,
                ChunkHash::Subtree { offset: 0 },
                &mut scratch,
            )
            .unwrap();
        scratch.recycle(encoded.shards);
    });
    // `key value` lines for perf/erasure-bench.sh; CPU nanoseconds per byte of data.
    println!("chunk_kib {}", chunk_bytes / 1024);
    println!("cores {cores}");
    for (name, value) in [
        ("read", read),
        ("memcpy", memcpy),
        ("blake3", blake3),
        ("aes-256-gcm", aes),
        ("rs-4+2", rs),
        ("crc32-all-shards", crc),
        ("stages-sum", sum),
        ("encode-in-place", encode),
        ("whole-put", put_cpu),
    ] {
        println!("cpu_ns_per_byte {name} {value:.4}");
    }
    println!("whole_put_wall_gbs {put_gbs:.3}");
    println!("whole_put_busy_cores {put_busy:.2}");
}
