//! The runtime directory: one folder per VM holding its definition (`spec.json`), what its
//! supervisor reports (`status.json`), the supervisor's lock, sockets, logs and the console.
//!
//! ```text
//! STATE_DIR/NAME/
//!   spec.json        the checked VmSpec (written by `zos vm start`)
//!   status.json      Runtime: state, pids, sockets, accel (written by the supervisor only)
//!   lock             flock held by the supervisor for its whole life: held = VM alive
//!   supervisor.log   the supervisor's own log
//!   console.log      the guest's serial console
//!   qemu.log         QEMU's stderr
//!   qmp.sock         QEMU's QMP socket                     (runtime)
//!   root.sock        virtio-fs root (flist)                (runtime)
//!   config.sock      virtio-fs configuration share        (runtime)
//!   share-N.sock     virtio-fs host share N               (runtime)
//!   disk.sock        vhost-user-blk data disk              (runtime)
//!   *.log            each backend's log
//!   config/          the configuration share's folder    (runtime)
//!   disk, disk.zosvol  the data disk volume (unless --disk put it elsewhere)
//! ```
//! Runtime files go away when the VM stops; the logs and the data disk stay until
//! `zos vm stop --rm`. Both JSON files carry `format_version` ([`FORMAT_VERSION`]); a reader
//! refuses another version with an error naming the file.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::VmSpec;
use super::MachineError;

/// Environment variable overriding the state directory.
pub const STATE_DIR_ENV: &str = "ZOS_VM_STATE_DIR";

/// The default state directory: `/run/zos/vm` as root, else `$XDG_RUNTIME_DIR/zos/vm`,
/// else `zos-vm-UID` under the temporary directory.
pub fn default_state_dir() -> PathBuf {
    let uid = super::sys::effective_uid();
    if uid == 0 {
        return PathBuf::from("/run/zos/vm");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir).join("zos").join("vm");
    }
    std::env::temp_dir().join(format!("zos-vm-{uid}"))
}

/// What the supervisor says about its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Backends and QEMU starting, the guest booting.
    Starting,
    /// The guest reported that it is up.
    Running,
    /// Shutting down.
    Stopping,
    /// Ended cleanly; nothing runs.
    Stopped,
    /// Ended with an error (see the message); nothing runs.
    Failed,
    /// The status file says it runs but no supervisor holds the lock (killed).
    Dead,
}

impl VmState {
    /// The lowercase name shown by `zos vm list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }

    /// True for the states in which processes of the VM may run.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Starting | Self::Running | Self::Stopping)
    }
}

/// One supervised process: QEMU or a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// `qemu`, `root`, `config`, `disk` or `share-N`.
    pub role: String,
    pub pid: u32,
    /// The vhost-user (or QMP) socket it serves on.
    pub socket: Option<PathBuf>,
    pub log: PathBuf,
}

/// `status.json`: written by the supervisor at every change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Runtime {
    pub state: VmState,
    /// Why it failed, or how it ended.
    pub message: Option<String>,
    pub supervisor_pid: u32,
    /// The accelerator in use (never `auto`).
    pub accel: Option<String>,
    pub processes: Vec<ProcessInfo>,
    /// Seconds since the epoch.
    pub started_unix: u64,
    pub ready_unix: Option<u64>,
}

/// The files of one VM.
#[derive(Debug, Clone)]
pub struct VmPaths {
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn new(state_dir: &Path, name: &str) -> Self {
        Self {
            dir: state_dir.join(name),
        }
    }
    pub fn spec(&self) -> PathBuf {
        self.dir.join("spec.json")
    }
    pub fn status(&self) -> PathBuf {
        self.dir.join("status.json")
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }
    /// A backend's socket, by role.
    pub fn socket(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{role}.sock"))
    }
    /// A backend's log, by role.
    pub fn log(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{role}.log"))
    }

    /// Every socket this VM may have, for checks and clean-up.
    pub fn sockets(&self, spec: &VmSpec) -> Vec<PathBuf> {
        let mut sockets = vec![
            self.qmp(),
            self.socket("root"),
            self.socket("config"),
            self.socket("disk"),
        ];
        sockets.extend((0..spec.shares.len()).map(|index| self.socket(&format!("share-{index}"))));
        sockets
    }

    /// Removes the runtime files (sockets, the configuration share, the status's pids are
    /// kept as history). Missing files are fine.
    pub fn remove_runtime_files(&self, spec: &VmSpec) {
        for socket in self.sockets(spec) {
            // Best effort: a socket that is already gone is what we want.
            let _ = std::fs::remove_file(socket);
        }
        let _ = std::fs::remove_dir_all(self.config_dir());
    }

    pub fn read_spec(&self) -> Result<VmSpec, MachineError> {
        read_json(&self.spec())
    }

    pub fn write_spec(&self, spec: &VmSpec) -> Result<(), MachineError> {
        write_json(&self.spec(), spec)
    }

    pub fn read_runtime(&self) -> Result<Option<Runtime>, MachineError> {
        if !self.status().exists() {
            return Ok(None);
        }
        read_json(&self.status()).map(Some)
    }

    pub fn write_runtime(&self, runtime: &Runtime) -> Result<(), MachineError> {
        write_json(&self.status(), runtime)
    }

    /// Takes the supervisor lock without waiting: `Ok(None)` when another process holds it.
    pub fn try_lock(&self) -> Result<Option<File>, MachineError> {
        let path = self.lock();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| MachineError::Io {
                what: path.display().to_string(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(source)) => Err(MachineError::Io {
                what: format!("locking {}", path.display()),
                source,
            }),
        }
    }

    /// True while a supervisor holds this VM's lock.
    pub fn supervisor_alive(&self) -> Result<bool, MachineError> {
        if !self.lock().exists() {
            return Ok(false);
        }
        // Taking the lock and dropping it at once tells whether anyone else holds it.
        Ok(self.try_lock()?.is_none())
    }
}

/// The version of `spec.json` and `status.json`: a field beside the content, checked on
/// every read.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    format_version: u32,
    #[serde(flatten)]
    body: T,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, MachineError> {
    let bytes = std::fs::read(path).map_err(|source| MachineError::Io {
        what: path.display().to_string(),
        source,
    })?;
    let corrupt = |reason: String| MachineError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|error| corrupt(error.to_string()))?;
    match value
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
    {
        Some(version) if version == u64::from(FORMAT_VERSION) => {}
        Some(version) => {
            return Err(corrupt(format!(
                "format version {version} is not understood (this zos writes {FORMAT_VERSION})"
            )))
        }
        None => return Err(corrupt("no format_version field".to_owned())),
    }
    serde_json::from_value::<Versioned<T>>(value)
        .map(|versioned| versioned.body)
        .map_err(|error| corrupt(error.to_string()))
}

/// Writes through a temporary file and a rename, so readers never see half a file.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), MachineError> {
    let io = |source| MachineError::Io {
        what: path.display().to_string(),
        source,
    };
    let versioned = Versioned {
        format_version: FORMAT_VERSION,
        body: value,
    };
    let text = serde_json::to_vec_pretty(&versioned).map_err(|error| MachineError::Corrupt {
        path: path.to_owned(),
        reason: error.to_string(),
    })?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// The last `lines` lines of a text file (empty when unreadable), bounded to its last
/// 64 KiB so a long console does not get read whole.
pub fn tail(path: &Path, lines: usize) -> String {
    const TAIL_BYTES_MAX: u64 = 64 << 10;
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = length.saturating_sub(TAIL_BYTES_MAX);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes).replace('\r', "");
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_files_carry_their_version() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("status.json");
        let runtime = Runtime {
            state: VmState::Running,
            message: None,
            supervisor_pid: 7,
            accel: Some("tcg".to_owned()),
            processes: Vec::new(),
            started_unix: 1,
            ready_unix: Some(2),
        };
        write_json(&path, &runtime).unwrap_or_else(|e| panic!("{e}"));
        let back: Runtime = read_json(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.state, VmState::Running);
        assert_eq!(back.supervisor_pid, 7);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(
            &path,
            text.replace("\"format_version\": 1", "\"format_version\": 9"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let error = read_json::<Runtime>(&path).err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("format version 9")),
            "{error:?}"
        );
    }
}
