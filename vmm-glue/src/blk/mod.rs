//! vhost-user-blk: a virtio-blk device over a [`crate::volume::Volume`].
//!
//! - [`request`]: decodes and validates the guest's descriptor chains (untrusted input).
//! - [`backend`]: the `VhostUserBackend`: one worker per queue, each with its own io_uring;
//!   requests complete out of order as the ring completes them, bounded in flight.
//! - [`serve`]: the daemon loop that keeps the socket bound across VMM connections.

pub mod backend;
pub mod request;
pub mod serve;
