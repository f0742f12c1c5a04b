//! flistfs: the flist image format, pack and unpack, the fs core and its FUSE adapter.
//!
//! Layers (bottom to top): format (memory-mapped sections), chunk cache over the chunk
//! stores of `erasure`, the protocol-free fs core, and the FUSE adapter.
//!
//! This crate is being built; see the flistfs issue.
