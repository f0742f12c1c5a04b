//! The only place in this crate that maps memory or calls into the kernel directly.
//!
//! It owns: mapping an flist file read-only (memmap2). Everything above sees a `&[u8]`.

use std::fs::File;
use std::io;
use std::path::Path;

/// A read-only, private mapping of a whole file.
#[derive(Debug)]
pub struct Mapping {
    map: Option<memmap2::Mmap>,
}

impl Mapping {
    /// Maps `path` read-only. An empty file gives an empty slice (mmap refuses length 0).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let length_bytes = file.metadata()?.len();
        if length_bytes == 0 {
            return Ok(Self { map: None });
        }
        // SAFETY: the mapping is read-only and private. flists are immutable by contract: a
        // writer builds a new file and renames it into place, so the pages we map are never
        // truncated under us by our own tools. Every byte read through it is bounds- and
        // checksum-checked by the reader before being trusted.
        let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
        Ok(Self { map: Some(map) })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Some(map) => map,
            None => &[],
        }
    }
}
