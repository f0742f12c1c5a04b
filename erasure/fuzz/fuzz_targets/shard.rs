//! Fuzzes `codec::parse_shard` and the chunk decoder over damaged and forged shards (checks
//! in `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    erasure_fuzz::check_shard(data);
});
