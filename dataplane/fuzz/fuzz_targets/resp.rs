//! Fuzzes `resp::frame::parse_command` over pipelined buffers (checks in `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dataplane_fuzz::check_resp(data);
});
