//! dataplane: an append-only, log-structured key/value engine and `zdb`, a server that speaks
//! the 0-db dialect of the Redis protocol.
//!
//! Layers, bottom to top; a layer knows nothing of those above it:
//! - [`sys`]: the only place that talks to io_uring (or its positional-I/O fallback), behind
//!   the [`sys::StorageIo`] trait so tests can inject faults ([`fault`]).
//! - [`log`]: the on-disk formats: records, segment files, index snapshots, and the recovery
//!   scanner. Documented byte by byte in `docs/design.md`.
//! - [`engine`]: namespaces, the in-memory index, group commit, durability, recovery, reads;
//!   [`cache`] keeps hot values in memory.
//! - [`resp`]: RESP2 frames and their parser, and the 0-db commands over the engine.
//! - [`server`]: TCP and unix-socket listeners, connection limits, the connection loop.
//! - [`client`]: an async client for zdb's dialect, used by zstor.
//!
//! Dependencies and why: `io-uring` (all disk I/O), `crc32fast` (record and shard frames),
//! `blake3` (the hash chain), `tokio` (network I/O and the async client), `sha1` (0-db's
//! SECURE challenge hashes), `thiserror`/`anyhow` (errors), `clap` (the `zdb` command line),
//! `tracing` (logs), `hex` and `rand` (settings encoding, challenges), `bytes` (buffers).

pub mod cache;
pub mod client;
pub mod engine;
pub mod fault;
pub mod log;
pub mod resp;
pub mod server;
pub mod sys;
