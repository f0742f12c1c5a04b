//! `zos vm`: Virtual machines: disks (vhost-user-blk), flist shares (vhost-user-fs), start and stop.
//!
//! Argument parsing only; the work is done by the library crates.

use std::path::PathBuf;

use anyhow::Context;
use vmm_glue::blk::serve::{self, ServeConfig};
use vmm_glue::crypto::VolumeKey;
use vmm_glue::volume::{self, Volume};

/// `zos vm` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// VM disks: volumes served to QEMU (or any vhost-user VMM) over vhost-user-blk.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Flist shares: an flist served to a VM over vhost-user-fs (virtio-fs).
    #[command(subcommand)]
    Fs(crate::vm_fs::FsCommand),
    /// VM lifecycle: start, list and stop supervised VMs.
    #[command(flatten)]
    Machine(crate::vm_machine::MachineCommand),
}

/// `zos vm disk` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DiskCommand {
    /// Create a volume: a sparse raw file VOL plus its metadata VOL.zosvol.
    ///
    /// The raw file is an ordinary disk image (guest byte N is file byte N when unencrypted),
    /// usable by qemu-img too. With --key-file the volume is encrypted at rest with
    /// AES-256-XTS (sector number as tweak) and the key is needed to serve it.
    ///
    /// Example: zos vm disk create /var/lib/zos/vm1.disk --size 20G
    Create {
        /// Path of the volume's data file.
        volume: PathBuf,
        /// Size with a binary unit: K, M, G, T mean KiB, MiB, GiB, TiB (e.g. 20G).
        #[arg(long)]
        size: String,
        /// Encrypt with this key file: 64 raw bytes or 128 hex characters
        /// (e.g. `head -c 64 /dev/urandom > vm1.key`).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// List the volumes in a directory (default: the current one).
    List {
        /// Directory to look in.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Grow a volume (never shrinks); refused while it is served.
    Resize {
        volume: PathBuf,
        /// New size, binary units (K, M, G, T).
        #[arg(long)]
        size: String,
    },
    /// Remove a volume's data and metadata; refused while it is served.
    Rm { volume: PathBuf },
    /// Serve a volume over vhost-user-blk on a unix socket, in the foreground.
    ///
    /// The socket stays bound until the process gets SIGINT or SIGTERM: when a VMM exits,
    /// the next one can connect to the same socket. QEMU side:
    ///   -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
    ///   -chardev socket,id=c1,path=SOCKET -device vhost-user-blk-pci,chardev=c1
    Serve {
        volume: PathBuf,
        /// Unix socket path to listen on (a stale socket file is replaced).
        #[arg(long)]
        socket: PathBuf,
        /// Serve read-only: the guest sees a read-only disk.
        #[arg(long)]
        readonly: bool,
        /// Key file of an encrypted volume (checked against the volume before serving).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Virtqueues offered (the guest uses at most one per vCPU).
        #[arg(long, default_value_t = serve::QUEUES_DEFAULT)]
        queues: usize,
        /// Exit when the first VMM disconnects instead of waiting for the next.
        #[arg(long)]
        once: bool,
        /// Bypass the host page cache (O_DIRECT); unaligned guest buffers are bounced.
        #[arg(long)]
        direct: bool,
    },
}

/// Runs one `zos vm` subcommand.
pub fn run(command: VmCommand) -> anyhow::Result<()> {
    match command {
        VmCommand::Disk(command) => disk(command),
        VmCommand::Fs(command) => crate::vm_fs::run(command),
        VmCommand::Machine(command) => crate::vm_machine::run(command),
    }
}

fn disk(command: DiskCommand) -> anyhow::Result<()> {
    match command {
        DiskCommand::Create {
            volume,
            size,
            key_file,
        } => {
            let size_bytes = volume::parse_size(&size)?;
            let key = key_file.as_deref().map(VolumeKey::from_file).transpose()?;
            let created = Volume::create(&volume, size_bytes, key.as_ref())
                .with_context(|| format!("creating volume {}", volume.display()))?;
            println!(
                "created {} ({} bytes{}, serial {})",
                created.data_path.display(),
                created.metadata.size_bytes,
                if created.encrypted() {
                    ", aes-256-xts"
                } else {
                    ""
                },
                created.metadata.serial_text()
            );
        }
        DiskCommand::List { dir } => {
            println!(
                "{:<40} {:>16} {:>16} {:<10} {:<8} SERIAL",
                "VOLUME", "SIZE", "ALLOCATED", "ENCRYPTED", "IN USE"
            );
            for entry in volume::list(&dir)
                .with_context(|| format!("listing volumes in {}", dir.display()))?
            {
                match entry {
                    Ok(volume) => println!(
                        "{:<40} {:>16} {:>16} {:<10} {:<8} {}",
                        volume.data_path.display(),
                        volume.metadata.size_bytes,
                        volume.allocated_bytes()?,
                        if volume.encrypted() { "yes" } else { "no" },
                        if volume.in_use()? { "yes" } else { "no" },
                        volume.metadata.serial_text()
                    ),
                    Err(error) => eprintln!("warning: {error}"),
                }
            }
        }
        DiskCommand::Resize { volume, size } => {
            let size_bytes = volume::parse_size(&size)?;
            let mut opened = Volume::open(&volume)?;
            opened.resize(size_bytes)?;
            println!("resized {} to {size_bytes} bytes", volume.display());
        }
        DiskCommand::Rm { volume } => {
            Volume::open(&volume)?.remove()?;
            println!("removed {}", volume.display());
        }
        DiskCommand::Serve {
            volume,
            socket,
            readonly,
            key_file,
            queues,
            once,
            direct,
        } => {
            let config = ServeConfig {
                volume,
                socket,
                read_only: readonly,
                key_file,
                num_queues: queues,
                direct,
                once,
            };
            serve::serve(&config).with_context(|| {
                format!(
                    "serving {} on {}",
                    config.volume.display(),
                    config.socket.display()
                )
            })?;
        }
    }
    Ok(())
}
