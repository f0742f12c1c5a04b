//! vmm-glue: vhost-user devices for VMs: virtio-blk over volumes, virtio-fs over flists.
//!
//! Layers, lowest first:
//! - [`sys`]: the only raw kernel calls (io_uring, flock, signal masks).
//! - [`io`]: the `QueueIo` trait over the io_uring ring, its synchronous fallback and a
//!   fault injector for tests.
//! - [`crypto`]: AES-256-XTS over 512-byte sectors, key files and the key check.
//! - [`volume`]: volumes on disk: a raw sparse data file plus a small metadata file
//!   (`docs/design.md`), create / open / list / resize / remove, the in-use lock.
//! - [`virtio`]: what both devices' backends share: the guest memory slot, common
//!   features, one queue per epoll thread, EVENT_IDX-aware notification.
//! - [`serve`]: the daemon loop both devices share: the socket bound once (a live one
//!   refused, a stale one replaced), removed on SIGINT/SIGTERM, one VMM after another.
//! - [`blk`]: the vhost-user-blk device: [`blk::request`] decodes untrusted descriptor
//!   chains, [`blk::backend`] turns requests into io_uring operations on the volume,
//!   [`blk::serve`] keeps the socket bound and serves one VMM after another.
//! - [`machine`]: supervised VMs (`zos vm start/list/stop`): a supervisor process per VM
//!   owns QEMU and its backends (flist root over virtio-fs, data disk over vhost-user-blk,
//!   configuration and host shares over virtiofsd), watches the boot and cleans up.
//! - [`fs`]: the vhost-user-fs device: [`fs::request`] decodes untrusted FUSE messages,
//!   [`fs::session`] answers them with flistfs's fs core, [`fs::backend`] pops chains and
//!   hands them to a bounded worker pool, [`fs::serve`] keeps the socket bound.
//!
//! Data flow of a guest write: the guest's virtqueue kick wakes the queue's worker thread;
//! it pops the chain, validates it, encrypts a copy when the volume is encrypted, and queues
//! a writev on the queue's io_uring; the ring's eventfd wakes the same thread, which writes
//! the status byte, fills the used ring and notifies the guest.
//!
//! Dependencies: rust-vmm's `vhost`, `vhost-user-backend`, `virtio-queue`, `vm-memory` and
//! `vmm-sys-util` (the vhost-user protocol, virtqueues, guest memory, eventfds);
//! `io-uring` (volume I/O); `xts-mode` + `aes` (encryption at rest); `blake3` (key check,
//! serials); `crc32fast` (metadata checksum); `hex` (key files); `flistfs` (the flist, its
//! fs core and chunk cache, for virtio-fs) and `erasure` (the chunk stores it reads);
//! `serde` + `serde_json` (the VM spec and status files of [`machine`], QMP).

pub mod blk;
pub mod crypto;
pub mod fs;
pub mod io;
pub mod machine;
pub mod serve;
pub mod sys;
pub mod virtio;
pub mod volume;
