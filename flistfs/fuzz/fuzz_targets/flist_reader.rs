//! Fuzzes the flist reader with arbitrary files and with arbitrary sections behind a valid
//! header.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flistfs::format::fuzz_read(data);
});
