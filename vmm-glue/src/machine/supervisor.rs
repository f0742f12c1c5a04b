//! The supervisor: one process per VM that owns QEMU and the backends.
//!
//! It holds the VM's lock for its whole life, so "the lock is held" means "the VM's
//! processes may run". Its children are spawned with `PR_SET_PDEATHSIG` (SIGTERM), so even a
//! SIGKILLed supervisor leaves nothing running. Every wait is bounded.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::qemu::{qemu_args, QEMU_PROGRAM};
use super::spec::{Accel, RootSource, VmSpec};
use super::state::{now_unix, tail, ProcessInfo, Runtime, VmPaths, VmState};
use super::sys::{self, ChildTie};
use super::MachineError;
use crate::volume::Volume;

/// Printed by the guest once it is up (the test guest's rootfs prints it after dropbear
/// starts).
pub const MARKER_READY: &str = "ZOS-VM-READY";
/// Printed by the guest's init when it cannot boot, followed by the reason.
pub const MARKER_FAILED: &str = "ZOS-VM-FAILED:";
/// How long `--accel auto` gives KVM to bring the guest up before falling back to TCG.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the backends binding their sockets.
pub const BACKEND_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a child gets between SIGTERM and SIGKILL.
pub const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a backend's exit waits for QEMU's to show before it counts as a failure.
const BACKEND_EXIT_GRACE: Duration = Duration::from_secs(3);
/// The supervisor's polling period.
const TICK: Duration = Duration::from_millis(100);
/// How often the SSH port is probed while booting.
const SSH_PROBE_PERIOD: Duration = Duration::from_secs(1);
/// Bound on one SSH banner probe.
const SSH_PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// Console bytes read per tick while looking for the markers.
const CONSOLE_READ_BYTES_MAX: u64 = 1 << 20;
/// Lines of a log quoted in an error.
const TAIL_LINES: usize = 20;

/// The passthrough virtio-fs daemon: `$ZOS_VIRTIOFSD`, else Debian's Rust `virtiofsd`
/// package (`/usr/libexec/virtiofsd`), else QEMU's own (`/usr/lib/qemu/virtiofsd`, in
/// Debian 12's qemu-system-common), else `virtiofsd` on the PATH.
pub fn find_virtiofsd() -> Result<PathBuf, MachineError> {
    if let Some(path) = std::env::var_os("ZOS_VIRTIOFSD").filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(MachineError::Invalid(format!(
                "ZOS_VIRTIOFSD={} is not a file",
                path.display()
            )))
        };
    }
    let candidates = ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .or_else(|| find_in_path("virtiofsd"))
        .ok_or_else(|| {
            MachineError::Invalid(
                "virtiofsd (the passthrough virtio-fs daemon for the configuration share and host shares) is missing: apt-get install virtiofsd (or qemu-system-common on Debian 12)".to_owned(),
            )
        })
}

/// `program` on the PATH.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// One supervised child.
struct Supervised {
    role: String,
    child: Child,
    socket: Option<PathBuf>,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Supervised {
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            // An error here means the child was already reaped: treat as gone.
            self.exited = match self.child.try_wait() {
                Ok(status) => status,
                Err(_) => Some(ExitStatus::default()),
            };
        }
        self.exited
    }

    fn info(&self) -> ProcessInfo {
        ProcessInfo {
            role: self.role.clone(),
            pid: self.child.id(),
            socket: self.socket.clone(),
            log: self.log.clone(),
        }
    }
}

/// The children of one boot attempt; stopped on drop as a last resort.
#[derive(Default)]
struct Children {
    backends: Vec<Supervised>,
    qemu: Option<Supervised>,
}

impl Children {
    fn infos(&self) -> Vec<ProcessInfo> {
        self.qemu
            .iter()
            .chain(self.backends.iter())
            .map(Supervised::info)
            .collect()
    }

    /// QEMU first (the guest lets go of the backends), then the backends; SIGTERM, then
    /// SIGKILL after [`CHILD_STOP_TIMEOUT`].
    fn stop_all(&mut self) {
        if let Some(qemu) = self.qemu.as_mut() {
            stop_group(std::slice::from_mut(qemu));
        }
        stop_group(&mut self.backends);
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn stop_group(group: &mut [Supervised]) {
    for member in group.iter_mut() {
        if member.poll().is_none() {
            // ESRCH (already gone) is fine.
            let _ = sys::send_signal(member.child.id(), libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + CHILD_STOP_TIMEOUT;
    while Instant::now() < deadline && group.iter_mut().any(|member| member.poll().is_none()) {
        std::thread::sleep(TICK);
    }
    for member in group.iter_mut() {
        if member.poll().is_none() {
            tracing::warn!(role = %member.role, pid = member.child.id(), "did not stop on SIGTERM: killing it");
            let _ = member.child.kill();
            let _ = member.child.wait();
            member.exited = Some(ExitStatus::default());
        }
    }
}

/// How one boot attempt ended.
enum AttemptEnd {
    /// The VM ran and ended (guest power-off, or a signal to the supervisor).
    Ended(String),
    /// KVM did not bring the guest up: try the next accelerator.
    Retry(String),
    Failed(MachineError),
}

/// Runs the supervisor of VM `name` in `state_dir` until the VM ends. `zos_binary` runs the
/// backends (`zos vm fs serve`, `zos vm disk serve`).
pub fn supervise(state_dir: &Path, name: &str, zos_binary: &Path) -> Result<(), MachineError> {
    let paths = VmPaths::new(state_dir, name);
    let _lock = paths.try_lock()?.ok_or_else(|| MachineError::NameInUse {
        name: name.to_owned(),
        supervisor_pid: paths
            .read_runtime()
            .ok()
            .flatten()
            .map(|runtime| runtime.supervisor_pid),
    })?;
    sys::install_termination_handler().map_err(|source| MachineError::Io {
        what: "installing the signal handlers".to_owned(),
        source,
    })?;
    let spec = paths.read_spec()?;
    let mut runtime = Runtime {
        state: VmState::Starting,
        message: None,
        supervisor_pid: sys::own_pid(),
        accel: None,
        processes: Vec::new(),
        started_unix: now_unix(),
        ready_unix: None,
    };
    paths.write_runtime(&runtime)?;
    tracing::info!(vm = %spec.name, "supervising");
    let mut supervisor = Supervisor {
        spec: &spec,
        paths: &paths,
        runtime: &mut runtime,
        zos_binary,
    };
    let result = supervisor.run();
    paths.remove_runtime_files(&spec);
    runtime.processes.clear();
    match &result {
        Ok(message) => {
            tracing::info!(vm = %spec.name, "{message}");
            runtime.state = VmState::Stopped;
            runtime.message = Some(message.clone());
        }
        Err(error) => {
            tracing::error!(vm = %spec.name, "{error}");
            runtime.state = VmState::Failed;
            runtime.message = Some(error.to_string());
        }
    }
    paths.write_runtime(&runtime)?;
    result.map(|_| ())
}

struct Supervisor<'a> {
    spec: &'a VmSpec,
    paths: &'a VmPaths,
    runtime: &'a mut Runtime,
    zos_binary: &'a Path,
}

impl Supervisor<'_> {
    fn run(&mut self) -> Result<String, MachineError> {
        self.prepare_disk()?;
        self.write_config()?;
        let accels = match self.spec.accel {
            Accel::Kvm => vec![Accel::Kvm],
            Accel::Tcg => vec![Accel::Tcg],
            Accel::Auto if Path::new("/dev/kvm").exists() => vec![Accel::Kvm, Accel::Tcg],
            Accel::Auto => vec![Accel::Tcg],
        };
        let probing_kvm = self.spec.accel == Accel::Auto;
        for (index, accel) in accels.iter().enumerate() {
            let probing = probing_kvm && index + 1 < accels.len();
            let mut children = Children::default();
            let end = self.attempt(*accel, probing, &mut children);
            self.runtime.state = VmState::Stopping;
            // Best effort: the status is informational while stopping.
            let _ = self.paths.write_runtime(self.runtime);
            children.stop_all();
            self.paths.remove_runtime_files(self.spec);
            match end {
                AttemptEnd::Ended(message) => return Ok(message),
                AttemptEnd::Failed(error) => return Err(error),
                AttemptEnd::Retry(reason) => {
                    tracing::warn!(
                        "KVM did not bring the guest up ({reason}): falling back to TCG"
                    );
                    self.write_config()?;
                }
            }
        }
        Err(MachineError::BootFailed {
            reason: "no accelerator brought the guest up".to_owned(),
            console_tail: tail(&self.paths.console(), TAIL_LINES),
        })
    }

    /// Opens the data disk, growing it to the asked size, or creates it.
    fn prepare_disk(&self) -> Result<(), MachineError> {
        let disk = &self.spec.disk;
        let volume_error = |error: crate::volume::VolumeError| {
            MachineError::Invalid(format!("data disk {}: {error}", disk.display()))
        };
        if disk.exists() || crate::volume::metadata_path(disk).exists() {
            let mut volume = Volume::open(disk).map_err(volume_error)?;
            let current = volume.metadata.size_bytes;
            if current < self.spec.disk_bytes {
                volume.resize(self.spec.disk_bytes).map_err(volume_error)?;
                tracing::info!(disk = %disk.display(), "grew the data disk to {} bytes", self.spec.disk_bytes);
            } else if current > self.spec.disk_bytes {
                return Err(MachineError::Invalid(format!(
                    "data disk {} is {current} bytes: it cannot shrink to {} (volumes only grow)",
                    disk.display(),
                    self.spec.disk_bytes
                )));
            }
        } else {
            Volume::create(disk, self.spec.disk_bytes, None).map_err(volume_error)?;
            tracing::info!(disk = %disk.display(), "created the data disk ({} bytes)", self.spec.disk_bytes);
        }
        Ok(())
    }

    /// The configuration share: `authorized_keys`, `shares` (one tag per line) and
    /// `hostname`.
    fn write_config(&self) -> Result<(), MachineError> {
        let dir = self.paths.config_dir();
        let io = |what: &Path| {
            let what = what.display().to_string();
            move |source| MachineError::Io { what, source }
        };
        // A leftover from an earlier run is replaced whole.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        if let Some(keys) = &self.spec.authorized_keys {
            let path = dir.join("authorized_keys");
            std::fs::write(&path, keys).map_err(io(&path))?;
        }
        let mut shares = String::new();
        for share in &self.spec.shares {
            shares.push_str(&share.tag);
            shares.push('\n');
        }
        let path = dir.join("shares");
        std::fs::write(&path, shares).map_err(io(&path))?;
        let path = dir.join("hostname");
        std::fs::write(&path, format!("{}\n", self.spec.name)).map_err(io(&path))
    }

    fn spawn(
        &self,
        role: &str,
        mut command: Command,
        socket: Option<PathBuf>,
        log: PathBuf,
    ) -> Result<Supervised, MachineError> {
        let program = command.get_program().to_string_lossy().into_owned();
        let log_file = File::create(&log).map_err(|source| MachineError::Io {
            what: log.display().to_string(),
            source,
        })?;
        let log_copy = log_file.try_clone().map_err(|source| MachineError::Io {
            what: log.display().to_string(),
            source,
        })?;
        if let Some(socket) = &socket {
            // Our own path in our own folder: a file there is a leftover of an earlier run.
            let _ = std::fs::remove_file(socket);
        }
        command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_copy)
            .stderr(log_file);
        sys::tie_child(&mut command, ChildTie::DiesWithParent);
        let child = command
            .spawn()
            .map_err(|source| MachineError::Spawn { program, source })?;
        tracing::info!(role, pid = child.id(), "started");
        Ok(Supervised {
            role: role.to_owned(),
            child,
            socket,
            log,
            exited: None,
        })
    }

    fn spawn_backends(&self, children: &mut Children) -> Result<(), MachineError> {
        let virtiofsd = find_virtiofsd()?;
        let passthrough = |dir: &Path, socket: &Path| {
            let mut command = Command::new(&virtiofsd);
            command
                .arg(format!("--socket-path={}", socket.display()))
                .arg("-o")
                .arg(format!("source={}", dir.display()))
                .args(["-o", "cache=auto"]);
            command
        };
        let socket = self.paths.socket("root");
        let command = match &self.spec.root {
            RootSource::Flist {
                path,
                stores,
                cache,
            } => {
                let mut command = Command::new(self.zos_binary);
                command
                    .args(["vm", "fs", "serve"])
                    .arg(path)
                    .arg("--socket")
                    .arg(&socket);
                if let Some(cache) = cache {
                    command.arg("--cache").arg(cache);
                }
                for store in stores {
                    command.arg("--store").arg(store);
                }
                command
            }
            RootSource::Directory { path } => passthrough(path, &socket),
        };
        children.backends.push(self.spawn(
            "root",
            command,
            Some(socket),
            self.paths.log("root"),
        )?);
        let socket = self.paths.socket("config");
        let command = passthrough(&self.paths.config_dir(), &socket);
        children.backends.push(self.spawn(
            "config",
            command,
            Some(socket),
            self.paths.log("config"),
        )?);
        for (index, share) in self.spec.shares.iter().enumerate() {
            let role = format!("share-{index}");
            let socket = self.paths.socket(&role);
            let command = passthrough(&share.host_dir, &socket);
            children.backends.push(self.spawn(
                &role,
                command,
                Some(socket),
                self.paths.log(&role),
            )?);
        }
        let socket = self.paths.socket("disk");
        let mut command = Command::new(self.zos_binary);
        command
            .args(["vm", "disk", "serve"])
            .arg(&self.spec.disk)
            .arg("--socket")
            .arg(&socket);
        children.backends.push(self.spawn(
            "disk",
            command,
            Some(socket),
            self.paths.log("disk"),
        )?);
        Ok(())
    }

    /// Waits until every backend's socket exists; a backend that exits first is an error.
    fn wait_for_sockets(&self, children: &mut Children) -> Result<Option<i32>, MachineError> {
        let deadline = Instant::now() + BACKEND_START_TIMEOUT;
        loop {
            if let Some(signal) = sys::take_termination_signal() {
                return Ok(Some(signal));
            }
            let mut all_bound = true;
            for backend in children.backends.iter_mut() {
                if let Some(status) = backend.poll() {
                    return Err(backend_exited(backend, status));
                }
                if backend
                    .socket
                    .as_ref()
                    .is_some_and(|socket| !socket.exists())
                {
                    all_bound = false;
                }
            }
            if all_bound {
                // bind() makes the file, listen() follows right after: give it a moment.
                std::thread::sleep(TICK);
                return Ok(None);
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = children
                    .backends
                    .iter()
                    .filter(|backend| backend.socket.as_ref().is_some_and(|s| !s.exists()))
                    .map(|backend| {
                        format!(
                            "{} (log: {})",
                            backend.role,
                            tail(&backend.log, 3).replace('\n', " | ")
                        )
                    })
                    .collect();
                return Err(MachineError::Invalid(format!(
                    "backends did not bind their sockets within {BACKEND_START_TIMEOUT:?}: {}",
                    missing.join("; ")
                )));
            }
            std::thread::sleep(TICK);
        }
    }

    fn attempt(&mut self, accel: Accel, probing: bool, children: &mut Children) -> AttemptEnd {
        match self.attempt_inner(accel, probing, children) {
            Ok(end) => end,
            Err(error) => AttemptEnd::Failed(error),
        }
    }

    fn attempt_inner(
        &mut self,
        accel: Accel,
        probing: bool,
        children: &mut Children,
    ) -> Result<AttemptEnd, MachineError> {
        tracing::info!(%accel, "starting the backends");
        self.runtime.state = VmState::Starting;
        self.runtime.accel = Some(accel.to_string());
        self.spawn_backends(children)?;
        self.runtime.processes = children.infos();
        self.paths.write_runtime(self.runtime)?;
        if let Some(signal) = self.wait_for_sockets(children)? {
            return Ok(AttemptEnd::Ended(format!(
                "stopped by signal {signal} before the boot"
            )));
        }
        // A fresh console per attempt: the markers must come from this boot.
        File::create(self.paths.console()).map_err(|source| MachineError::Io {
            what: self.paths.console().display().to_string(),
            source,
        })?;
        let mut command = Command::new(QEMU_PROGRAM);
        command.args(qemu_args(self.spec, self.paths, accel));
        let qemu = self.spawn(
            "qemu",
            command,
            Some(self.paths.qmp()),
            self.paths.qemu_log(),
        )?;
        children.qemu = Some(qemu);
        self.runtime.processes = children.infos();
        self.paths.write_runtime(self.runtime)?;

        let boot_timeout = if probing {
            KVM_PROBE_TIMEOUT
        } else {
            Duration::from_secs(self.spec.boot_timeout_secs)
        };
        let boot_deadline = Instant::now() + boot_timeout;
        let mut console = ConsoleWatch::new(self.paths.console());
        let mut next_ssh_probe = Instant::now() + SSH_PROBE_PERIOD;
        let mut ready = false;
        loop {
            if let Some(signal) = sys::take_termination_signal() {
                tracing::info!(signal, "stopping on signal");
                return Ok(AttemptEnd::Ended(format!("stopped by signal {signal}")));
            }
            if let Some(qemu) = children.qemu.as_mut() {
                if let Some(status) = qemu.poll() {
                    let qemu_tail = tail(&self.paths.qemu_log(), TAIL_LINES);
                    if ready {
                        return Ok(AttemptEnd::Ended(format!(
                            "the guest powered off (QEMU {status})"
                        )));
                    }
                    let reason = format!("QEMU exited ({status}) with {accel}: {qemu_tail}");
                    return Ok(if probing {
                        AttemptEnd::Retry(reason)
                    } else {
                        AttemptEnd::Failed(MachineError::BootFailed {
                            reason,
                            console_tail: tail(&self.paths.console(), TAIL_LINES),
                        })
                    });
                }
            }
            if let Some(index) = children
                .backends
                .iter_mut()
                .position(|backend| backend.poll().is_some())
            {
                // virtiofsd ends with its connection, so a guest power-off can show as a
                // backend exit a moment before QEMU's own: give QEMU's exit time to show.
                let grace = Instant::now() + BACKEND_EXIT_GRACE;
                while Instant::now() < grace
                    && children
                        .qemu
                        .as_mut()
                        .is_some_and(|qemu| qemu.poll().is_none())
                {
                    std::thread::sleep(TICK);
                }
                if children
                    .qemu
                    .as_mut()
                    .is_some_and(|qemu| qemu.poll().is_some())
                {
                    continue;
                }
                let backend = &mut children.backends[index];
                let status = backend.poll().unwrap_or_default();
                return Err(backend_exited(backend, status));
            }
            if !ready {
                match console.scan() {
                    ConsoleSignal::Failed(line) => {
                        return Err(MachineError::BootFailed {
                            reason: line,
                            console_tail: tail(&self.paths.console(), TAIL_LINES),
                        })
                    }
                    ConsoleSignal::Ready => ready = true,
                    ConsoleSignal::Nothing => {}
                }
                if !ready && Instant::now() >= next_ssh_probe {
                    next_ssh_probe = Instant::now() + SSH_PROBE_PERIOD;
                    ready = ssh_answers(self.spec.ssh_port);
                }
                if ready {
                    tracing::info!(%accel, port = self.spec.ssh_port, "the guest is up");
                    self.runtime.state = VmState::Running;
                    self.runtime.ready_unix = Some(now_unix());
                    self.paths.write_runtime(self.runtime)?;
                } else if Instant::now() >= boot_deadline {
                    let reason = format!(
                        "no {MARKER_READY} on the console and no SSH answer on port {} within {boot_timeout:?} ({accel})",
                        self.spec.ssh_port
                    );
                    return Ok(if probing {
                        AttemptEnd::Retry(reason)
                    } else {
                        AttemptEnd::Failed(MachineError::BootFailed {
                            reason,
                            console_tail: tail(&self.paths.console(), TAIL_LINES),
                        })
                    });
                }
            }
            std::thread::sleep(TICK);
        }
    }
}

fn backend_exited(backend: &Supervised, status: ExitStatus) -> MachineError {
    MachineError::BackendExited {
        role: backend.role.clone(),
        status: status.to_string(),
        log_tail: tail(&backend.log, TAIL_LINES),
    }
}

/// True when something on `port` of 127.0.0.1 greets like an SSH server. QEMU's user
/// network accepts the host connection even when nothing listens in the guest, so the
/// banner is what counts.
fn ssh_answers(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, SSH_PROBE_TIMEOUT) else {
        return false;
    };
    if stream.set_read_timeout(Some(SSH_PROBE_TIMEOUT)).is_err() {
        return false;
    }
    let mut banner = [0u8; 4];
    stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
}

enum ConsoleSignal {
    Nothing,
    Ready,
    Failed(String),
}

/// Reads the console as it grows and looks for the readiness and failure markers.
struct ConsoleWatch {
    path: PathBuf,
    offset: u64,
    /// The unfinished last line, carried to the next read.
    partial: String,
}

impl ConsoleWatch {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    fn scan(&mut self) -> ConsoleSignal {
        let Ok(mut file) = File::open(&self.path) else {
            return ConsoleSignal::Nothing;
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err()
            || (&mut file)
                .take(CONSOLE_READ_BYTES_MAX)
                .read_to_end(&mut bytes)
                .is_err()
        {
            return ConsoleSignal::Nothing;
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut signal = ConsoleSignal::Nothing;
        let text = std::mem::take(&mut self.partial);
        let mut lines = text.split('\n').peekable();
        while let Some(line) = lines.next() {
            if lines.peek().is_none() {
                // Not finished yet (no newline): keep for the next read, bounded.
                if line.len() <= 4096 {
                    self.partial = line.to_owned();
                }
                if line.trim_end_matches('\r') == MARKER_READY {
                    signal = ConsoleSignal::Ready;
                }
                break;
            }
            let line = line.trim_end_matches('\r');
            if let Some(reason) = line.find(MARKER_FAILED).map(|at| &line[at..]) {
                return ConsoleSignal::Failed(reason.to_owned());
            }
            if line.trim() == MARKER_READY {
                signal = ConsoleSignal::Ready;
            }
        }
        signal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_markers_are_found_across_reads() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("console.log");
        std::fs::write(&path, "booting\nZOS-VM-RE").unwrap_or_else(|e| panic!("{e}"));
        let mut watch = ConsoleWatch::new(path.clone());
        assert!(matches!(watch.scan(), ConsoleSignal::Nothing));
        std::fs::write(&path, "booting\nZOS-VM-READY\r\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(watch.scan(), ConsoleSignal::Ready));

        std::fs::write(&path, "x\nZOS-VM-FAILED: no root\n").unwrap_or_else(|e| panic!("{e}"));
        let mut watch = ConsoleWatch::new(path);
        match watch.scan() {
            ConsoleSignal::Failed(reason) => assert_eq!(reason, "ZOS-VM-FAILED: no root"),
            _ => panic!("failure marker not seen"),
        }
    }

    #[test]
    fn nothing_listening_is_not_ssh() {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        drop(listener);
        assert!(!ssh_answers(port));
    }
}
