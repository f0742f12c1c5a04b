//! Fuzzes the index snapshot reader `log::index_file::read` through a scratch file
//! (checks in `src/lib.rs`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

/// One scratch directory per fuzzing process, under `$TMPDIR` (a tmpfs there is faster).
fn scratch() -> &'static PathBuf {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dataplane-fuzz-{}", std::process::id()));
        if let Err(error) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {error}", dir.display());
        }
        dir
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dataplane_fuzz::check_index_file(data, scratch());
});
