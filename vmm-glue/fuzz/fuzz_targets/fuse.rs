//! Fuzzes the virtio-fs request path: a FUSE message (as gathered from a chain's readable
//! descriptors) decoded and answered from a small in-memory flist, the reply checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vmm_glue::fs::request::fuzz_decode(data.get(4..).unwrap_or_default());
    vmm_glue::fs::sample::fuzz_handle(data);
});
