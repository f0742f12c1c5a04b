//! Fuzzes the record decoder and encoder of `log::record` (checks in `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dataplane_fuzz::check_record(data);
});
