//! QEMU's side: the command line of a VM ([`qemu_args`]) and a minimal QMP client
//! ([`Qmp`]) for `system_powerdown`.
//!
//! Guest RAM is a shared memfd (`memory-backend-memfd,share=on` plus `-numa
//! node,memdev=mem`): vhost-user backends map it to reach the virtqueues.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::spec::{Accel, VmSpec, TAG_CONFIG, TAG_ROOT};
use super::state::VmPaths;
use super::MachineError;

/// The QEMU binary.
pub const QEMU_PROGRAM: &str = "qemu-system-x86_64";
/// Bound on one QMP exchange.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest QMP line read (greetings and replies are a few hundred bytes).
const QMP_LINE_BYTES_MAX: usize = 64 << 10;
/// The guest port QEMU's user network forwards the host's SSH port to.
pub const GUEST_SSH_PORT: u16 = 22;

/// QEMU's arguments for `spec` under `accel` (never `Auto`), with the sockets and logs of
/// `paths`.
pub fn qemu_args(spec: &VmSpec, paths: &VmPaths, accel: Accel) -> Vec<String> {
    let memory_mib = spec.memory_bytes >> 20;
    let path = |path: &Path| path.display().to_string();
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|item| (*item).to_owned()));
    match accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg | Accel::Auto => push(&["-accel", "tcg", "-cpu", "max"]),
    }
    push(&[
        "-name",
        &spec.name,
        "-smp",
        &spec.cpus.to_string(),
        "-m",
        &format!("{memory_mib}M"),
        "-object",
        &format!("memory-backend-memfd,id=mem,size={memory_mib}M,share=on"),
        "-numa",
        "node,memdev=mem",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-chardev",
        &format!("file,id=console,path={}", path(&paths.console())),
        "-serial",
        "chardev:console",
        "-qmp",
        &format!("unix:{},server=on,wait=off", path(&paths.qmp())),
        "-kernel",
        &path(&spec.kernel),
        "-initrd",
        &path(&spec.initrd),
        "-append",
        &format!("console=ttyS0 quiet panic=-1 zos.vm={}", spec.name),
    ]);
    let mut fs_device = |id: &str, socket: &Path, tag: &str| {
        push(&[
            "-chardev",
            &format!("socket,id={id},path={}", path(socket)),
            "-device",
            &format!("vhost-user-fs-pci,chardev={id},tag={tag}"),
        ]);
    };
    fs_device("root", &paths.socket("root"), TAG_ROOT);
    fs_device("config", &paths.socket("config"), TAG_CONFIG);
    for (index, share) in spec.shares.iter().enumerate() {
        let role = format!("share-{index}");
        fs_device(&role, &paths.socket(&role), &share.tag);
    }
    push(&[
        "-chardev",
        &format!("socket,id=disk,path={}", path(&paths.socket("disk"))),
        "-device",
        "vhost-user-blk-pci,chardev=disk",
        "-netdev",
        &format!(
            "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:{GUEST_SSH_PORT}",
            spec.ssh_port
        ),
        "-device",
        "virtio-net-pci,netdev=net0",
    ]);
    args
}

/// A QMP connection that has left capabilities negotiation.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to `socket`, reads the greeting and sends `qmp_capabilities`.
    pub fn connect(socket: &Path) -> Result<Self, MachineError> {
        let qmp_error = |reason: String| MachineError::Qmp {
            socket: socket.to_owned(),
            reason,
        };
        let stream = UnixStream::connect(socket).map_err(|error| qmp_error(error.to_string()))?;
        stream
            .set_read_timeout(Some(QMP_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(QMP_TIMEOUT)))
            .map_err(|error| qmp_error(error.to_string()))?;
        let writer = stream
            .try_clone()
            .map_err(|error| qmp_error(error.to_string()))?;
        let mut qmp = Self {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message(socket)?;
        if greeting.get("QMP").is_none() {
            return Err(qmp_error(format!("unexpected greeting {greeting}")));
        }
        qmp.execute(socket, "qmp_capabilities")?;
        Ok(qmp)
    }

    /// Runs one command without arguments; skips events until its reply.
    pub fn execute(&mut self, socket: &Path, command: &str) -> Result<(), MachineError> {
        let request = serde_json::json!({ "execute": command }).to_string();
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .map_err(|error| MachineError::Qmp {
                socket: socket.to_owned(),
                reason: format!("sending {command}: {error}"),
            })?;
        let deadline = Instant::now() + QMP_TIMEOUT;
        while Instant::now() < deadline {
            let message = self.read_message(socket)?;
            if message.get("return").is_some() {
                return Ok(());
            }
            if let Some(error) = message.get("error") {
                return Err(MachineError::Qmp {
                    socket: socket.to_owned(),
                    reason: format!("{command}: {error}"),
                });
            }
            // Anything else is an asynchronous event (e.g. POWERDOWN): keep reading.
        }
        Err(MachineError::Qmp {
            socket: socket.to_owned(),
            reason: format!("no reply to {command} within {QMP_TIMEOUT:?}"),
        })
    }

    fn read_message(&mut self, socket: &Path) -> Result<serde_json::Value, MachineError> {
        let mut line = Vec::new();
        let qmp_error = |reason: String| MachineError::Qmp {
            socket: socket.to_owned(),
            reason,
        };
        // Bounded read of one line: QMP sends one JSON object per line.
        let read = (&mut self.reader)
            .take(QMP_LINE_BYTES_MAX as u64)
            .read_until(b'\n', &mut line)
            .map_err(|error| qmp_error(error.to_string()))?;
        if read == 0 {
            return Err(qmp_error("QEMU closed the connection".to_owned()));
        }
        serde_json::from_slice(&line).map_err(|error| {
            qmp_error(format!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&line)
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::spec::{RootSource, Share};
    use std::path::PathBuf;

    #[test]
    fn memory_is_shared_memfd_with_a_numa_node() {
        let spec = VmSpec {
            name: "vm1".to_owned(),
            memory_bytes: 512 << 20,
            cpus: 2,
            disk_bytes: 1 << 30,
            disk: PathBuf::from("/s/vm1/disk"),
            root: RootSource::Directory {
                path: PathBuf::from("/r"),
            },
            kernel: PathBuf::from("/k"),
            initrd: PathBuf::from("/i"),
            authorized_keys: None,
            shares: vec![Share {
                host_dir: PathBuf::from("/h"),
                tag: "data".to_owned(),
            }],
            accel: Accel::Auto,
            ssh_port: 2222,
            boot_timeout_secs: 60,
        };
        let args = qemu_args(&spec, &VmPaths::new(Path::new("/s"), "vm1"), Accel::Tcg).join(" ");
        assert!(args.contains("-m 512M"), "{args}");
        assert!(
            args.contains(
                "-object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem"
            ),
            "{args}"
        );
        assert!(
            args.contains("vhost-user-fs-pci,chardev=root,tag=zos-root"),
            "{args}"
        );
        assert!(
            args.contains("vhost-user-fs-pci,chardev=share-0,tag=data"),
            "{args}"
        );
        assert!(
            args.contains("socket,id=share-0,path=/s/vm1/share-0.sock"),
            "{args}"
        );
        assert!(args.contains("vhost-user-blk-pci,chardev=disk"), "{args}");
        assert!(args.contains("hostfwd=tcp:127.0.0.1:2222-:22"), "{args}");
        assert!(args.contains("-accel tcg"), "{args}");
    }
}
