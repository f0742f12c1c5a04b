//! Fuzzes the metadata decoders: head and page bodies, and whole sealed records (checks in
//! `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    erasure_fuzz::check_meta(data);
});
