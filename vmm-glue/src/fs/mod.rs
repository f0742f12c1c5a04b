//! vhost-user-fs (virtio-fs): an flist served to a guest through flistfs's fs core.
//!
//! Layers, lowest first:
//! - [`abi`]: the FUSE wire structures and constants (little-endian, protocol 7.31).
//! - [`request`]: decodes the untrusted FUSE message a guest put in a descriptor chain.
//! - [`session`]: answers decoded requests from the fs core and the chunk source, writing
//!   replies (reads straight from chunk plaintext) into a reply sink.
//! - [`backend`]: the `VhostUserBackend`: one epoll thread per queue pops chains, a bounded
//!   worker pool answers them, EVENT_IDX-aware notifications.
//! - [`serve`]: the daemon loop that keeps the socket bound across VMM connections.
//! - [`sample`]: a small in-memory flist for the unit tests and the fuzz target.
//!
//! See `docs/design.md`, "virtio-fs request path", for the message layouts and limits.

pub mod abi;
pub mod backend;
pub mod request;
pub mod sample;
pub mod serve;
pub mod session;
