//! Supervised VMs: `zos vm start`, `list` and `stop`.
//!
//! A VM is QEMU plus its vhost-user backends, owned by one small supervisor process:
//! - [`spec`]: the options, checked into a [`spec::VmSpec`] before anything starts (names,
//!   sizes, files, shares, MemAvailable, ports).
//! - [`state`]: the runtime directory, one folder per VM: its spec, the supervisor's status
//!   file and lock, sockets, logs, console, data disk.
//! - [`qemu`]: QEMU's command line and a small QMP client (`system_powerdown`).
//! - [`supervisor`]: the process `zos vm start` leaves behind: it starts the backends
//!   (`zos vm fs serve` for the flist root, `zos vm disk serve` for the data disk,
//!   virtiofsd for the configuration share and the host shares), then QEMU; watches the
//!   console for the guest's readiness (or the SSH port answering); falls back from KVM to
//!   TCG under `--accel auto`; and when QEMU ends, or on SIGTERM, stops everything and
//!   removes the runtime files. Its children die with it (`PR_SET_PDEATHSIG`).
//! - [`lifecycle`]: what the commands do: start (check, spawn the supervisor, wait until
//!   the guest is up or report the console's last lines), list, stop (ACPI power button
//!   through QMP, then SIGTERM, then SIGKILL, each bounded).
//! - [`sys`]: signals, child set-up before exec, `/proc` reads: the only `unsafe` here.
//!
//! The guest side (what the initramfs does with the shares) is described in the crate's
//! README, section `zos vm start`.

pub mod lifecycle;
pub mod qemu;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod sys;

use std::path::PathBuf;

/// Errors of VM supervision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MachineError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "not enough memory: the VM asks for {asked_mib} MiB (plus QEMU's own), the host has {available_mib} MiB available (MemAvailable)"
    )]
    NotEnoughMemory { asked_mib: u64, available_mib: u64 },
    #[error("VM {name} is already running{}: stop it first (zos vm stop {name}) or pick another name", .supervisor_pid.map(|pid| format!(" (supervisor pid {pid})")).unwrap_or_default())]
    NameInUse {
        name: String,
        supervisor_pid: Option<u32>,
    },
    #[error("no VM named {name} in {}: see zos vm list", .state_dir.display())]
    NoSuchVm { name: String, state_dir: PathBuf },
    #[error("socket path {} is taken: a process is listening on it", .0.display())]
    SocketTaken(PathBuf),
    #[error("{program} could not be started: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{}: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("QMP on {}: {reason}", .socket.display())]
    Qmp { socket: PathBuf, reason: String },
    #[error("the {role} backend exited ({status}); its log ends with:\n{log_tail}")]
    BackendExited {
        role: String,
        status: String,
        log_tail: String,
    },
    #[error("the guest did not come up: {reason}\n--- last console lines ---\n{console_tail}")]
    BootFailed {
        reason: String,
        console_tail: String,
    },
    #[error("processes of VM {name} are still running after stop: {pids:?}")]
    LeftBehind { name: String, pids: Vec<u32> },
}
