//! `zos vm start`, `list` and `stop`: the commands' side of supervision.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::qemu::{Qmp, QEMU_PROGRAM};
use super::spec::{check_name, StartOptions, VmSpec, SOCKET_PATH_BYTES_MAX};
use super::state::{tail, ProcessInfo, VmPaths, VmState};
use super::supervisor::{find_in_path, find_virtiofsd, KVM_PROBE_TIMEOUT};
use super::sys::{self, ChildTie};
use super::MachineError;
use crate::volume::Volume;

/// Time `start` allows the supervisor beyond the boot timeout (backends, disk creation).
const START_MARGIN: Duration = Duration::from_secs(60);
/// How long `stop` waits for the supervisor after SIGTERM (it stops QEMU and the
/// backends, each with its own bound).
pub const SUPERVISOR_STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// Default bound on the guest's own shutdown after the ACPI power button.
pub const SHUTDOWN_TIMEOUT_SECS_DEFAULT: u64 = 30;
/// Polling period of the commands.
const TICK: Duration = Duration::from_millis(100);
/// Lines of the console quoted when a start fails.
const TAIL_LINES: usize = 20;

/// What `start` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    pub name: String,
    pub ssh_port: u16,
    pub accel: String,
    pub console: PathBuf,
    pub supervisor_pid: u32,
    pub boot_seconds: f64,
}

/// Checks the options, starts the VM's supervisor (a detached `zos_binary vm supervise`)
/// and waits until the guest is up, or fails with the console's last lines.
pub fn start(
    state_dir: &Path,
    options: &StartOptions,
    zos_binary: &Path,
) -> Result<Started, MachineError> {
    check_name(&options.name)?;
    let paths = VmPaths::new(state_dir, &options.name);
    std::fs::create_dir_all(&paths.dir).map_err(|source| MachineError::Io {
        what: format!("state folder {}", paths.dir.display()),
        source,
    })?;
    if paths.supervisor_alive()? {
        return Err(MachineError::NameInUse {
            name: options.name.clone(),
            supervisor_pid: paths
                .read_runtime()
                .ok()
                .flatten()
                .map(|runtime| runtime.supervisor_pid),
        });
    }
    let spec = options.check(&paths.dir)?;
    if find_in_path(QEMU_PROGRAM).is_none() {
        return Err(MachineError::Invalid(format!(
            "{QEMU_PROGRAM} is not on the PATH: apt-get install qemu-system-x86"
        )));
    }
    find_virtiofsd()?;
    for socket in paths.sockets(&spec) {
        let length = socket.as_os_str().len();
        if length > SOCKET_PATH_BYTES_MAX {
            return Err(MachineError::Invalid(format!(
                "socket path {} is {length} bytes, longer than the {SOCKET_PATH_BYTES_MAX} a unix socket allows: use a shorter --state-dir",
                socket.display()
            )));
        }
        if socket.exists() {
            if UnixStream::connect(&socket).is_ok() {
                return Err(MachineError::SocketTaken(socket));
            }
            // Nobody behind it: a leftover of a killed run.
            let _ = std::fs::remove_file(&socket);
        }
    }
    if spec.disk.exists() {
        let volume = Volume::open(&spec.disk).map_err(|error| {
            MachineError::Invalid(format!("data disk {}: {error}", spec.disk.display()))
        })?;
        if volume.metadata.size_bytes > spec.disk_bytes {
            return Err(MachineError::Invalid(format!(
                "data disk {} is {} bytes: it cannot shrink to --disksize {} bytes (volumes only grow)",
                spec.disk.display(),
                volume.metadata.size_bytes,
                spec.disk_bytes,
            )));
        }
        if volume.in_use().unwrap_or(false) {
            return Err(MachineError::Invalid(format!(
                "data disk {} is in use by another process",
                spec.disk.display()
            )));
        }
    }
    paths.write_spec(&spec)?;
    let _ = std::fs::remove_file(paths.status());

    let log_path = paths.supervisor_log();
    let io = |source| MachineError::Io {
        what: log_path.display().to_string(),
        source,
    };
    let log = std::fs::File::create(&log_path).map_err(io)?;
    let log_copy = log.try_clone().map_err(io)?;
    let mut command = Command::new(zos_binary);
    command
        .args(["vm", "supervise", &spec.name, "--state-dir"])
        .arg(state_dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log_copy)
        .stderr(log);
    sys::tie_child(&mut command, ChildTie::Detached);
    let started = Instant::now();
    let mut supervisor = command.spawn().map_err(|source| MachineError::Spawn {
        program: zos_binary.display().to_string(),
        source,
    })?;
    let kvm_probe = if spec.accel == super::spec::Accel::Auto {
        KVM_PROBE_TIMEOUT
    } else {
        Duration::ZERO
    };
    let deadline = started + Duration::from_secs(spec.boot_timeout_secs) + kvm_probe + START_MARGIN;
    let failure = |reason: String| MachineError::BootFailed {
        reason,
        console_tail: tail(&paths.console(), TAIL_LINES),
    };
    loop {
        let exited = supervisor.try_wait().ok().flatten();
        // Read after try_wait, so a supervisor that wrote its last status and exited is
        // seen with that status.
        if let Some(runtime) = paths.read_runtime().ok().flatten() {
            match runtime.state {
                VmState::Running => {
                    return Ok(Started {
                        name: spec.name.clone(),
                        ssh_port: spec.ssh_port,
                        accel: runtime.accel.unwrap_or_default(),
                        console: paths.console(),
                        supervisor_pid: runtime.supervisor_pid,
                        boot_seconds: started.elapsed().as_secs_f64(),
                    })
                }
                VmState::Failed | VmState::Stopped => {
                    // The message already carries the console's tail when the boot failed.
                    return Err(MachineError::Invalid(format!(
                        "VM {} did not start: {}",
                        spec.name,
                        runtime
                            .message
                            .unwrap_or_else(|| "no reason given".to_owned())
                    )));
                }
                _ => {}
            }
        }
        if let Some(status) = exited {
            return Err(failure(format!(
                "the supervisor exited ({status}); its log ends with:\n{}",
                tail(&paths.supervisor_log(), TAIL_LINES)
            )));
        }
        if Instant::now() >= deadline {
            // The supervisor stops QEMU and the backends on SIGTERM.
            let _ = sys::send_signal(supervisor.id(), libc::SIGTERM);
            return Err(failure(format!(
                "no answer from the supervisor within {:?}",
                deadline - started
            )));
        }
        std::thread::sleep(TICK);
    }
}

/// One line of `zos vm list`.
#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    pub name: String,
    pub state: String,
    pub message: Option<String>,
    pub memory_bytes: u64,
    pub cpus: u32,
    pub disk_bytes: u64,
    pub disk: PathBuf,
    /// The flist (or root folder) the root filesystem comes from.
    pub root: PathBuf,
    pub ssh_port: u16,
    pub accel: Option<String>,
    pub supervisor_pid: Option<u32>,
    pub processes: Vec<ProcessInfo>,
    pub shares: Vec<super::spec::Share>,
    pub console: PathBuf,
    pub dir: PathBuf,
}

/// Every VM in `state_dir`, sorted by name (an unreadable one is skipped with a warning).
pub fn list(state_dir: &Path) -> Result<Vec<VmInfo>, MachineError> {
    let entries = match std::fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(MachineError::Io {
                what: state_dir.display().to_string(),
                source,
            })
        }
    };
    let mut infos = Vec::new();
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let paths = VmPaths::new(state_dir, &name);
        if !paths.spec().exists() {
            continue;
        }
        match info(&paths) {
            Ok(info) => infos.push(info),
            Err(error) => tracing::warn!("skipping {}: {error}", paths.dir.display()),
        }
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(infos)
}

fn info(paths: &VmPaths) -> Result<VmInfo, MachineError> {
    let spec = paths.read_spec()?;
    let runtime = paths.read_runtime()?;
    let alive = paths.supervisor_alive()?;
    let state = match &runtime {
        Some(runtime) if runtime.state.is_live() && !alive => VmState::Dead,
        Some(runtime) => runtime.state,
        None if alive => VmState::Starting,
        None => VmState::Stopped,
    };
    let live = state.is_live();
    Ok(VmInfo {
        name: spec.name.clone(),
        state: state.as_str().to_owned(),
        message: runtime.as_ref().and_then(|r| r.message.clone()),
        memory_bytes: spec.memory_bytes,
        cpus: spec.cpus,
        disk_bytes: spec.disk_bytes,
        disk: spec.disk.clone(),
        root: spec.root.path().to_owned(),
        ssh_port: spec.ssh_port,
        accel: runtime.as_ref().and_then(|r| r.accel.clone()),
        supervisor_pid: runtime.as_ref().filter(|_| live).map(|r| r.supervisor_pid),
        processes: runtime
            .filter(|_| live)
            .map(|r| r.processes)
            .unwrap_or_default(),
        shares: spec.shares.clone(),
        console: paths.console(),
        dir: paths.dir.clone(),
    })
}

/// How a VM was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopHow {
    /// It was not running; leftovers were cleaned.
    NotRunning,
    /// The guest shut down after the ACPI power button.
    Clean,
    /// The supervisor stopped QEMU (SIGTERM) after the guest did not shut down in time.
    Terminated,
    /// The supervisor did not answer either: everything was SIGKILLed.
    Killed,
}

/// What `stop` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Stopped {
    pub name: String,
    pub how: StopHow,
    pub seconds: f64,
    pub removed: bool,
}

/// Stops VM `name`: the ACPI power button through QMP (unless `force`), then, after
/// `timeout`, SIGTERM to the supervisor (which stops QEMU and the backends), then SIGKILL.
/// Checks that none of the VM's processes remain. `remove` deletes its state folder too
/// (logs, and the data disk when it lives there).
pub fn stop(
    state_dir: &Path,
    name: &str,
    timeout: Duration,
    force: bool,
    remove: bool,
) -> Result<Stopped, MachineError> {
    check_name(name)?;
    let paths = VmPaths::new(state_dir, name);
    if !paths.spec().exists() {
        return Err(MachineError::NoSuchVm {
            name: name.to_owned(),
            state_dir: state_dir.to_owned(),
        });
    }
    let spec: VmSpec = paths.read_spec()?;
    let started = Instant::now();
    let runtime = paths.read_runtime()?;
    let processes: Vec<ProcessInfo> = runtime
        .as_ref()
        .map(|runtime| runtime.processes.clone())
        .unwrap_or_default();
    let mut how = StopHow::NotRunning;
    if paths.supervisor_alive()? {
        how = StopHow::Clean;
        let mut stopped = false;
        if !force {
            match Qmp::connect(&paths.qmp())
                .and_then(|mut qmp| qmp.execute(&paths.qmp(), "system_powerdown"))
            {
                Ok(()) => stopped = wait_for_supervisor(&paths, timeout)?,
                Err(error) => tracing::warn!("{error}: stopping QEMU instead"),
            }
        }
        if !stopped {
            how = StopHow::Terminated;
            if let Some(runtime) = &runtime {
                let _ = sys::send_signal(runtime.supervisor_pid, libc::SIGTERM);
            }
            stopped = wait_for_supervisor(&paths, SUPERVISOR_STOP_TIMEOUT)?;
        }
        if !stopped {
            how = StopHow::Killed;
            let pids = runtime
                .iter()
                .map(|runtime| runtime.supervisor_pid)
                .chain(processes.iter().map(|process| process.pid));
            for pid in pids {
                if sys::process_running(pid) {
                    let _ = sys::send_signal(pid, libc::SIGKILL);
                }
            }
            wait_for_supervisor(&paths, Duration::from_secs(5))?;
        }
    }
    paths.remove_runtime_files(&spec);
    // Children get SIGTERM when the supervisor dies: give them their bounded moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut remaining: Vec<u32>;
    loop {
        remaining = processes
            .iter()
            .map(|process| process.pid)
            .filter(|pid| sys::process_running(*pid))
            .collect();
        if remaining.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(TICK);
    }
    if !remaining.is_empty() {
        return Err(MachineError::LeftBehind {
            name: name.to_owned(),
            pids: remaining,
        });
    }
    if remove {
        std::fs::remove_dir_all(&paths.dir).map_err(|source| MachineError::Io {
            what: format!("removing {}", paths.dir.display()),
            source,
        })?;
    }
    Ok(Stopped {
        name: name.to_owned(),
        how,
        seconds: started.elapsed().as_secs_f64(),
        removed: remove,
    })
}

/// Waits (bounded) until no supervisor holds the VM's lock.
fn wait_for_supervisor(paths: &VmPaths, timeout: Duration) -> Result<bool, MachineError> {
    let deadline = Instant::now() + timeout;
    loop {
        if !paths.supervisor_alive()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(TICK);
    }
}
