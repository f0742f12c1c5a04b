//! `zos vm fs`: an flist served to a VM over vhost-user-fs (virtio-fs).
//!
//! Argument parsing only; the device lives in `vmm_glue::fs`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use vmm_glue::fs::backend::{REQUEST_QUEUES_DEFAULT, WORKERS_DEFAULT};
use vmm_glue::fs::serve::{self, FsServeConfig};
use vmm_glue::fs::session::DIRECT_IO_FILE_BYTES_MIN_DEFAULT;

/// `zos vm fs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum FsCommand {
    /// Serve an flist (ours or rfs's) read-only over vhost-user-fs on a unix socket, in the
    /// foreground, fetching chunks on first read through the same chunk cache as
    /// `zos flist mount`.
    ///
    /// The socket stays bound until the process gets SIGINT or SIGTERM: when a VMM exits,
    /// the next one can connect to the same socket (--once to exit instead). QEMU side:
    ///   -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
    ///   -chardev socket,id=c0,path=SOCKET -device vhost-user-fs-pci,chardev=c0,tag=TAG
    /// and in the guest: mount -t virtiofs TAG /mnt
    ///
    /// Example: zos vm fs serve app.fl --socket /run/zos/app-fs.sock
    Serve {
        /// The flist to serve.
        flist: PathBuf,
        /// Unix socket path to listen on (a stale socket file is replaced).
        #[arg(long)]
        socket: PathBuf,
        /// Chunk cache folder, shared with `zos flist mount` [default: /var/cache/zos/chunks
        /// as root].
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Bound of the chunk cache in MiB.
        #[arg(long, default_value_t = serve::CACHE_BYTES_DEFAULT / 1048576)]
        cache_mib: u64,
        /// Read chunks from these stores instead of the flist's routes (`URL` or
        /// `XX-YY=URL`). Repeatable.
        #[arg(long = "store")]
        stores: Vec<String>,
        /// Milliseconds a store may take for one chunk before the read fails with EIO.
        #[arg(long, default_value_t = flistfs::source::STORE_TIMEOUT_MS_DEFAULT)]
        timeout_ms: u64,
        /// Worker threads answering the guest's requests.
        #[arg(long, default_value_t = WORKERS_DEFAULT)]
        threads: usize,
        /// Request queues offered (QEMU's num-request-queues may not exceed it).
        #[arg(long, default_value_t = REQUEST_QUEUES_DEFAULT)]
        queues: usize,
        /// Exit when the first VMM disconnects instead of waiting for the next.
        #[arg(long)]
        once: bool,
        /// Files of at least this many MiB bypass the guest's page cache (FOPEN_DIRECT_IO:
        /// every read reaches this server as one request); smaller ones are cached by the
        /// guest across opens. 0: every file direct.
        #[arg(long, default_value_t = DIRECT_IO_FILE_BYTES_MIN_DEFAULT >> 20)]
        direct_io_min_mib: u64,
        /// Bound of the decrypted chunks kept in memory, in MiB.
        #[arg(long, default_value_t = serve::MEMORY_CACHE_BYTES_DEFAULT >> 20)]
        memory_cache_mib: u64,
    },
}

/// Runs one `zos vm fs` subcommand.
pub fn run(command: FsCommand) -> anyhow::Result<()> {
    match command {
        FsCommand::Serve {
            flist,
            socket,
            cache,
            cache_mib,
            stores,
            timeout_ms,
            threads,
            queues,
            once,
            direct_io_min_mib,
            memory_cache_mib,
        } => {
            let config = FsServeConfig {
                cache: Some(cache.unwrap_or_else(flistfs::cache::default_dir)),
                cache_bytes: cache_mib.saturating_mul(1048576),
                stores,
                store_timeout: Duration::from_millis(timeout_ms),
                workers: threads,
                request_queues: queues,
                once,
                direct_io_file_bytes_min: direct_io_min_mib.saturating_mul(1 << 20),
                memory_cache_bytes: memory_cache_mib.saturating_mul(1 << 20),
                ..FsServeConfig::new(flist, socket)
            };
            serve::serve(&config).with_context(|| {
                format!(
                    "serving {} on {}",
                    config.flist.display(),
                    config.socket.display()
                )
            })
        }
    }
}
