//! The put pipeline's last stage alone beside the whole put, against real backends: writing
//! an object's shard frames to the configured backends, with the put's placement and the
//! put's number of chunks in flight but nothing encoded (the frames are made once, before
//! the clock starts), interleaved with whole `Zstor::put`s of the same object from memory.
//! Both take their input from memory, so the ratio is what encoding, hashing and the
//! metadata cost a put on top of shipping its shards.
//!
//! usage: `cargo run --release -p perf --example store_stage -- CONFIG [OBJECT_MIB] [ROUNDS]`
//! (`perf/erasure-bench.sh` runs it against six local zdb servers). Prints `key value` lines:
//! best wall-clock throughput of each, and CPU nanoseconds per object byte of this process
//! and of the servers whose pids `ZDB_PIDS` lists (space separated), averaged over the
//! rounds. With every process on the same few cores, `cores / CPU per byte` is the most
//! either can reach; it is printed too. `STORE_STAGE_ONLY=put` (or `store`) runs one kind
//! only, for `perf record`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use erasure::codec::{ChunkCodec, ChunkHash, ChunkPlace, ReedSolomon, Scratch};
use erasure::config::Config;
use erasure::meta::shard_key;
use erasure::zstor::{Zstor, CHUNKS_IN_FLIGHT};
use futures::stream::{self, StreamExt, TryStreamExt};

fn main() {
    let mut args = std::env::args().skip(1);
    let config_path = PathBuf::from(args.next().expect("usage: CONFIG [OBJECT_MIB] [ROUNDS]"));
    let object_mib: usize = args
        .next()
        .map_or(256, |arg| arg.parse().expect("OBJECT_MIB"));
    let rounds: usize = args.next().map_or(3, |arg| arg.parse().expect("ROUNDS"));
    let config = Config::load(&config_path).unwrap();
    let chunk_bytes = config.chunk_size;
    let object_bytes = object_mib * 1024 * 1024;
    let object = fixtures::bytes::xorshift_bytes(0x05ee_d0f5_ba5e, object_bytes);
    let chunk_count = object_bytes.div_ceil(chunk_bytes);
    let backend_count = config.backends.len();
    let shard_count = config.data_shards + config.parity_shards;

    // Every chunk's frames are made before the clock starts, with the codec the put uses:
    // the stage alone reads them from memory, as the put's writes read frames just made.
    let reed_solomon = ReedSolomon::new(
        erasure::codec::RsCodecId::DEFAULT,
        config.data_shards,
        config.parity_shards,
    )
    .unwrap();
    let codec = ChunkCodec::new(&[7; 32], reed_solomon, config.compression_level);
    let chunks: Vec<Vec<Vec<u8>>> = object
        .chunks(chunk_bytes)
        .enumerate()
        .map(|(index, chunk)| {
            let mut plain = vec![0u8; erasure::codec::IN_PLACE_HEADROOM_BYTES];
            plain.extend_from_slice(chunk);
            let place = ChunkPlace {
                object_id: [1; 16],
                chunk_index: index as u64,
            };
            codec
                .encode_in_place(place, &mut plain, ChunkHash::Whole, &mut Scratch::default())
                .unwrap()
                .shards
        })
        .collect();
    let frame_bytes: usize = chunks.iter().flatten().map(Vec::len).sum();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let zstor = Zstor::open(config).unwrap();
    let stores: Vec<_> = (0..backend_count)
        .map(|index| zstor.backend_store(index).unwrap())
        .collect();

    let store_round = |round: usize| {
        let object_id = [round as u8; 16]; // the put's are random
        runtime.block_on(async {
            stream::iter(0..chunk_count as u64)
                .map(|chunk| {
                    let (stores, frames) = (&stores, &chunks[chunk as usize]);
                    async move {
                        let writes = (0..shard_count).map(|index| {
                            let store = &stores[(chunk as usize + index) % backend_count];
                            let key = shard_key(&object_id, chunk, index as u8);
                            async move { store.put(&key, &frames[index]).await }
                        });
                        futures::future::try_join_all(writes).await
                    }
                })
                .buffered(CHUNKS_IN_FLIGHT)
                .try_collect::<Vec<_>>()
                .await
                .unwrap();
        });
    };
    // Seconds of each timed round, in order.
    let mut store_times: Vec<f64> = Vec::new();
    let mut put_times: Vec<f64> = Vec::new();
    // CPU seconds (this process, the servers named in ZDB_PIDS) spent in each kind of round.
    let server_pids: Vec<u32> = std::env::var("ZDB_PIDS")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    let cpu_now = || {
        (
            perf::sys::process_cpu_ns() as f64 / 1e9,
            perf::sys::processes_cpu_seconds(&server_pids).unwrap(),
        )
    };
    let (mut store_cpu, mut put_cpu) = ((0.0, 0.0), (0.0, 0.0));
    // One warm-up of each (connections, page cache of the servers' files), then rounds that
    // alternate which of the two goes first.
    // Nothing is deleted between rounds (each writes new keys): deletes would leave garbage
    // for the servers' automatic compaction, whose work would land in either kind of round.
    store_round(0);
    runtime
        .block_on(zstor.put(b"store-stage-0", &object[..], &|_| {}))
        .unwrap();
    for round in 1..=rounds {
        let mut timed_store = || {
            let (cpu, started) = (cpu_now(), Instant::now());
            store_round(round);
            store_times.push(started.elapsed().as_secs_f64());
            let after = cpu_now();
            store_cpu.0 += after.0 - cpu.0;
            store_cpu.1 += after.1 - cpu.1;
        };
        let name = format!("store-stage-{round}");
        let mut timed_put = || {
            let (cpu, started) = (cpu_now(), Instant::now());
            runtime
                .block_on(zstor.put(name.as_bytes(), &object[..], &|_| {}))
                .unwrap();
            put_times.push(started.elapsed().as_secs_f64());
            let after = cpu_now();
            put_cpu.0 += after.0 - cpu.0;
            put_cpu.1 += after.1 - cpu.1;
        };
        let only = std::env::var("STORE_STAGE_ONLY").unwrap_or_default();
        if only == "put" {
            timed_put();
        } else if only == "store" {
            timed_store();
        } else if round % 2 == 0 {
            timed_store();
            timed_put();
        } else {
            timed_put();
            timed_store();
        }
    }
    let mib = object_bytes as f64 / (1024.0 * 1024.0);
    println!("object_mib {object_mib}");
    println!("chunk_kib {}", chunk_bytes / 1024);
    println!("frame_bytes {frame_bytes}");
    let best = |times: &[f64]| times.iter().copied().fold(f64::MAX, f64::min);
    let (best_store, best_put) = (best(&store_times), best(&put_times));
    println!("store_alone_mib_s {:.1}", mib / best_store);
    println!("whole_put_mib_s {:.1}", mib / best_put);
    println!("put_over_store {:.3}", best_store / best_put);
    // The two of one round ran next to each other, so a slow minute of a shared machine
    // weighs on both: the median of the rounds' ratios is the steadier figure.
    let mut ratios: Vec<f64> = store_times
        .iter()
        .zip(&put_times)
        .map(|(store, put)| store / put)
        .collect();
    if !ratios.is_empty() {
        let rounds_text: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        println!("put_over_store_rounds {}", rounds_text.join(","));
        ratios.sort_by(f64::total_cmp);
        println!("put_over_store_median {:.3}", ratios[ratios.len() / 2]);
    }
    // CPU nanoseconds per object byte, averaged over the timed rounds.
    let per_byte = |seconds: f64| seconds * 1e9 / (rounds * object_bytes) as f64;
    println!("store_client_cpu_ns_per_byte {:.3}", per_byte(store_cpu.0));
    println!("store_servers_cpu_ns_per_byte {:.3}", per_byte(store_cpu.1));
    println!("put_client_cpu_ns_per_byte {:.3}", per_byte(put_cpu.0));
    println!("put_servers_cpu_ns_per_byte {:.3}", per_byte(put_cpu.1));
    if !server_pids.is_empty() {
        let cores = std::thread::available_parallelism().map_or(1, |count| count.get()) as f64;
        let bound = |cpu: (f64, f64)| cores * 1e9 / per_byte(cpu.0 + cpu.1) / (1024.0 * 1024.0);
        println!("cores {cores}");
        println!("store_cpu_bound_mib_s {:.1}", bound(store_cpu));
        println!("put_cpu_bound_mib_s {:.1}", bound(put_cpu));
    }
}
