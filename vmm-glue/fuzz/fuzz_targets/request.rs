//! Fuzzes the virtio-blk request parser with arbitrary descriptor lists and guest memory.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vmm_glue::blk::request::fuzz_parse(data);
});
