//! `zos vm start|list|stop`: supervised VMs (QEMU plus their vhost-user backends).
//!
//! Argument parsing only; the supervisor lives in `vmm_glue::machine`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use vmm_glue::machine::lifecycle::{self, StopHow, SHUTDOWN_TIMEOUT_SECS_DEFAULT};
use vmm_glue::machine::spec::{Accel, RootSource, Share, StartOptions, BOOT_TIMEOUT_SECS_DEFAULT};
use vmm_glue::machine::state::{default_state_dir, STATE_DIR_ENV};
use vmm_glue::machine::supervisor;

/// Where the VMs' state lives (shared by start, list, stop).
#[derive(Debug, clap::Args)]
pub struct StateDirArg {
    /// Runtime folder of the VMs [default: /run/zos/vm as root, else $XDG_RUNTIME_DIR/zos/vm].
    #[arg(long, env = STATE_DIR_ENV)]
    state_dir: Option<PathBuf>,
}

impl StateDirArg {
    fn resolve(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(default_state_dir)
    }
}

/// The options of `zos vm start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// VM name: letters, digits, '-' and '_' (also the guest's host name).
    #[arg(short = 'n', long)]
    name: String,
    /// Guest memory, binary units (512M, 2G); checked against MemAvailable.
    #[arg(long, default_value = "1G")]
    mem: String,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Size of the data disk (the guest's /dev/vda), binary units; an existing disk
    /// grows to it.
    #[arg(long, default_value = "20G")]
    disksize: String,
    /// Data disk volume [default: disk in the VM's state folder].
    #[arg(long)]
    disk: Option<PathBuf>,
    /// The flist of the root filesystem (served read-only, with a tmpfs overlay on top
    /// in the guest).
    #[arg(
        long,
        required_unless_present = "root_dir",
        conflicts_with = "root_dir"
    )]
    flist: Option<PathBuf>,
    /// Read the flist's chunks from this store instead of its own routes. Repeatable.
    #[arg(long = "store", requires = "flist")]
    stores: Vec<String>,
    /// Chunk cache folder of the flist backend [default: the backend's].
    #[arg(long, requires = "flist")]
    cache: Option<PathBuf>,
    /// A host folder as the root filesystem instead of an flist (through virtiofsd),
    /// e.g. to try a tree before packing it.
    #[arg(long)]
    root_dir: Option<PathBuf>,
    /// Guest kernel [default: vmlinuz of the test guest image, $ZOS_GUEST_DIR or
    /// ~/.cache/zos-guest, built by fixtures/guest/build.sh].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest initramfs; it must follow the zos-vm boot protocol (see the README)
    /// [default: base.cpio.gz of the test guest image].
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Public key file (authorized_keys format) installed for root in the guest.
    #[arg(long)]
    ssh_key: Option<PathBuf>,
    /// Share a host folder read-write as HOSTDIR:TAG; the guest mounts it at /mnt/TAG.
    /// Repeatable.
    #[arg(long = "share")]
    shares: Vec<String>,
    /// Accelerator: auto tries KVM and falls back to TCG when the guest does not come up.
    #[arg(long, default_value = "auto")]
    accel: String,
    /// Host port (on 127.0.0.1) for the guest's SSH port [default: a free one].
    #[arg(long)]
    ssh_port: Option<u16>,
    /// Seconds the guest has to come up.
    #[arg(long, default_value_t = BOOT_TIMEOUT_SECS_DEFAULT)]
    boot_timeout: u64,
    #[command(flatten)]
    state: StateDirArg,
}

/// `zos vm` lifecycle subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum MachineCommand {
    /// Start a VM whose root filesystem is an flist, and wait until the guest is up.
    ///
    /// Starts, under one supervisor process per VM: `zos vm fs serve` for the root
    /// filesystem (virtio-fs tag zos-root), `zos vm disk serve` for the data disk
    /// (vhost-user-blk, created at --disksize in the VM's state folder), virtiofsd for a
    /// small configuration share (tag zos-config: SSH keys, share tags, host name) and for
    /// each --share, then QEMU with user-mode networking (guest port 22 forwarded to a free
    /// port on 127.0.0.1) and the serial console logged to console.log. Returns once the
    /// guest prints ZOS-VM-READY on its console or its SSH port answers; otherwise fails
    /// with the console's last lines. When the guest powers off, the supervisor stops the
    /// backends and removes the sockets.
    ///
    /// Example: zos vm start -n web --mem 2G --disksize 20G --flist web.fl --ssh-key ~/.ssh/id_ed25519.pub --share /srv/www:www
    Start(Box<StartArgs>),
    /// List the VMs: name, state, memory, disk, flist, SSH port, processes and sockets.
    List {
        /// Machine-readable output (every field, full paths).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Stop a VM: ACPI power button (the guest shuts down), then after --timeout QEMU is
    /// stopped; the backends are stopped and the sockets removed.
    Stop {
        /// The VM's name (see zos vm list).
        name: String,
        /// Seconds the guest has to shut down before QEMU is stopped.
        #[arg(long, default_value_t = SHUTDOWN_TIMEOUT_SECS_DEFAULT)]
        timeout: u64,
        /// Skip the guest's shutdown: stop QEMU at once.
        #[arg(long)]
        force: bool,
        /// Also delete the VM's state folder: logs, and the data disk when it is there.
        #[arg(long)]
        rm: bool,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// The per-VM supervisor that `zos vm start` runs in the background.
    #[command(hide = true)]
    Supervise {
        name: String,
        #[command(flatten)]
        state: StateDirArg,
    },
}

/// Runs one `zos vm` lifecycle subcommand.
pub fn run(command: MachineCommand) -> anyhow::Result<()> {
    let zos_binary = || std::env::current_exe().context("finding the zos binary");
    match command {
        MachineCommand::Start(arguments) => {
            let StartArgs {
                name,
                mem,
                cpus,
                disksize,
                disk,
                flist,
                stores,
                cache,
                root_dir,
                kernel,
                initrd,
                ssh_key,
                shares,
                accel,
                ssh_port,
                boot_timeout,
                state,
            } = *arguments;
            let root = match (flist, root_dir) {
                (Some(path), _) => RootSource::Flist {
                    path,
                    stores,
                    cache,
                },
                (None, Some(path)) => RootSource::Directory { path },
                (None, None) => anyhow::bail!("give --flist (or --root-dir)"),
            };
            let shares = shares
                .iter()
                .map(|share| share.parse::<Share>())
                .collect::<Result<Vec<_>, _>>()?;
            let options = StartOptions {
                name,
                memory: mem,
                cpus,
                disk_size: disksize,
                disk,
                root,
                kernel,
                initrd,
                ssh_key,
                shares,
                accel: accel.parse::<Accel>()?,
                ssh_port,
                boot_timeout_secs: boot_timeout,
            };
            let started = lifecycle::start(&state.resolve(), &options, &zos_binary()?)?;
            println!(
                "started {} ({}, up in {:.1} s): ssh -p {} root@127.0.0.1; console: {}",
                started.name,
                started.accel,
                started.boot_seconds,
                started.ssh_port,
                started.console.display()
            );
        }
        MachineCommand::List { json, state } => {
            let state_dir = state.resolve();
            let vms = lifecycle::list(&state_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vms)?);
                return Ok(());
            }
            println!(
                "{:<16} {:<9} {:>7} {:>9} {:>6} {:<28} {:<40} SOCKETS",
                "NAME", "STATE", "MEM", "DISK", "SSH", "FLIST", "PIDS"
            );
            for vm in vms {
                let pids: Vec<String> = vm
                    .supervisor_pid
                    .map(|pid| format!("supervisor={pid}"))
                    .into_iter()
                    .chain(
                        vm.processes
                            .iter()
                            .map(|process| format!("{}={}", process.role, process.pid)),
                    )
                    .collect();
                let sockets: Vec<String> = vm
                    .processes
                    .iter()
                    .filter_map(|process| process.socket.as_ref())
                    .filter_map(|socket| socket.file_name())
                    .map(|name| name.to_string_lossy().into_owned())
                    .collect();
                println!(
                    "{:<16} {:<9} {:>7} {:>9} {:>6} {:<28} {:<40} {}",
                    vm.name,
                    vm.state,
                    format!("{}M", vm.memory_bytes >> 20),
                    format!("{}M", vm.disk_bytes >> 20),
                    vm.ssh_port,
                    vm.root.display(),
                    if pids.is_empty() {
                        "-".to_owned()
                    } else {
                        pids.join(",")
                    },
                    if sockets.is_empty() {
                        "-".to_owned()
                    } else {
                        sockets.join(",")
                    }
                );
            }
            eprintln!(
                "(state folder {}; sockets are in STATE/NAME/)",
                state_dir.display()
            );
        }
        MachineCommand::Stop {
            name,
            timeout,
            force,
            rm,
            state,
        } => {
            let stopped = lifecycle::stop(
                &state.resolve(),
                &name,
                Duration::from_secs(timeout),
                force,
                rm,
            )?;
            let how = match stopped.how {
                StopHow::NotRunning => "it was not running; leftovers removed",
                StopHow::Clean => "the guest shut down",
                StopHow::Terminated if force => "QEMU stopped at once (--force)",
                StopHow::Terminated => "QEMU stopped: the guest did not shut down in time",
                StopHow::Killed => "killed: the supervisor did not answer",
            };
            println!(
                "stopped {} in {:.1} s ({how}){}",
                stopped.name,
                stopped.seconds,
                if stopped.removed {
                    "; state folder removed"
                } else {
                    ""
                }
            );
        }
        MachineCommand::Supervise { name, state } => {
            supervisor::supervise(&state.resolve(), &name, &zos_binary()?)?;
        }
    }
    Ok(())
}
