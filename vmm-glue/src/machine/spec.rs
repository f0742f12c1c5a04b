//! What a VM is made of ([`VmSpec`]), built from the user's options ([`StartOptions`]) and
//! checked before anything is started, so that misuse gets a clear error and not a QEMU
//! message from the middle of a boot.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::MachineError;

/// Longest VM name (it is the guest's host name and part of socket paths).
pub const NAME_BYTES_MAX: usize = 32;
/// Longest virtio-fs tag the device accepts.
pub const TAG_BYTES_MAX: usize = 36;
/// Smallest guest memory that boots the test guest with room to spare.
pub const MEMORY_BYTES_MIN: u64 = 128 << 20;
/// Guest memory must be a whole number of MiB (QEMU's `-m` unit).
pub const MEMORY_ALIGNMENT_BYTES: u64 = 1 << 20;
/// What QEMU itself needs beyond the guest's RAM, counted against MemAvailable.
pub const QEMU_OVERHEAD_BYTES: u64 = 64 << 20;
/// Most host folders shared into one VM.
pub const SHARES_MAX: usize = 16;
/// Most virtual CPUs.
pub const CPUS_MAX: u32 = 64;
/// Longest unix socket path (sockaddr_un's 108 bytes, less the final NUL).
pub const SOCKET_PATH_BYTES_MAX: usize = 107;
/// Largest SSH key file accepted.
pub const SSH_KEY_BYTES_MAX: u64 = 64 << 10;
/// Default bound on a boot, start to ready.
pub const BOOT_TIMEOUT_SECS_DEFAULT: u64 = 180;
/// The virtio-fs tags the guest protocol reserves.
pub const TAG_ROOT: &str = "zos-root";
/// The configuration share's tag.
pub const TAG_CONFIG: &str = "zos-config";

/// Which QEMU accelerator runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when the guest comes up with it within the probe timeout, TCG otherwise.
    Auto,
    /// Hardware virtualisation (`-accel kvm -cpu host`).
    Kvm,
    /// QEMU's emulator (`-accel tcg -cpu max`).
    Tcg,
}

impl FromStr for Accel {
    type Err = MachineError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(MachineError::Invalid(format!(
                "unknown accelerator {other:?}: expected auto, kvm or tcg"
            ))),
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Auto => "auto",
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

/// Where the root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootSource {
    /// An flist served by `zos vm fs serve` (our vhost-user-fs backend).
    Flist {
        path: PathBuf,
        /// Stores to read chunks from instead of the flist's own routes.
        stores: Vec<String>,
        /// Chunk cache folder (the backend's default when absent).
        cache: Option<PathBuf>,
    },
    /// A host folder served by the passthrough backend (virtiofsd), read-only in the guest
    /// under the same overlay as an flist: for trying a tree before packing it.
    Directory { path: PathBuf },
}

impl RootSource {
    /// The file or folder, for listings.
    pub fn path(&self) -> &Path {
        match self {
            Self::Flist { path, .. } | Self::Directory { path } => path,
        }
    }
}

/// A host folder shared read-write with the guest, mounted at `/mnt/TAG` by the guest init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub host_dir: PathBuf,
    pub tag: String,
}

impl FromStr for Share {
    type Err = MachineError;
    /// `HOSTDIR:TAG` (split at the last colon, so the folder may contain colons).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (dir, tag) = text.rsplit_once(':').ok_or_else(|| {
            MachineError::Invalid(format!(
                "share {text:?}: expected HOSTDIR:TAG, e.g. /srv/data:data"
            ))
        })?;
        if dir.is_empty() {
            return Err(MachineError::Invalid(format!(
                "share {text:?}: the host folder is empty"
            )));
        }
        check_tag(tag)?;
        Ok(Self {
            host_dir: PathBuf::from(dir),
            tag: tag.to_owned(),
        })
    }
}

/// The options of `zos vm start`, as given.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub name: String,
    /// Guest memory with a binary unit (`2G`).
    pub memory: String,
    pub cpus: u32,
    /// Data disk size with a binary unit (`20G`).
    pub disk_size: String,
    /// The data disk volume (default: `disk` in the VM's state folder).
    pub disk: Option<PathBuf>,
    pub root: RootSource,
    /// Kernel and initramfs (default: the test guest image, see [`default_guest_dir`]).
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// A public key file (`authorized_keys` format) for root in the guest.
    pub ssh_key: Option<PathBuf>,
    pub shares: Vec<Share>,
    pub accel: Accel,
    /// Host port for the guest's SSH port (a free one when absent).
    pub ssh_port: Option<u16>,
    pub boot_timeout_secs: u64,
}

/// A checked VM definition, stored as `spec.json` in the VM's state folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    pub memory_bytes: u64,
    pub cpus: u32,
    pub disk_bytes: u64,
    pub disk: PathBuf,
    pub root: RootSource,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The `authorized_keys` text given with `--ssh-key` (copied at start).
    pub authorized_keys: Option<String>,
    pub shares: Vec<Share>,
    pub accel: Accel,
    pub ssh_port: u16,
    pub boot_timeout_secs: u64,
}

/// The test guest image folder (`fixtures/guest/build.sh OUT_DIR`), the default source of
/// the kernel and initramfs: `$ZOS_GUEST_DIR`, else `$XDG_CACHE_HOME/zos-guest`, else
/// `$HOME/.cache/zos-guest` (the same lookup as the test harness).
pub fn default_guest_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(dir) = non_empty("ZOS_GUEST_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = non_empty("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("zos-guest"));
    }
    non_empty("HOME").map(|home| PathBuf::from(home).join(".cache").join("zos-guest"))
}

/// Checks a VM name: 1 to 32 of `a-z A-Z 0-9 - _`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), MachineError> {
    let valid = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(MachineError::Invalid(format!(
            "VM name {name:?}: use 1 to {NAME_BYTES_MAX} letters, digits, '-' or '_', starting with a letter or digit"
        )))
    }
}

fn check_tag(tag: &str) -> Result<(), MachineError> {
    let valid = !tag.is_empty()
        && tag.len() <= TAG_BYTES_MAX
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !tag.starts_with('.');
    if !valid {
        return Err(MachineError::Invalid(format!(
            "share tag {tag:?}: use 1 to {TAG_BYTES_MAX} letters, digits, '-', '_' or '.' (it names /mnt/TAG in the guest)"
        )));
    }
    if tag == TAG_ROOT || tag == TAG_CONFIG {
        return Err(MachineError::Invalid(format!(
            "share tag {tag:?} is reserved for the VM's own root and configuration shares"
        )));
    }
    Ok(())
}

/// Parses a size with a binary unit (K, M, G, T), for error messages naming `what`.
pub fn parse_size(what: &str, text: &str) -> Result<u64, MachineError> {
    crate::volume::parse_size(text)
        .map_err(|error| MachineError::Invalid(format!("{what}: {error}")))
}

/// The kernel's MemAvailable, in bytes.
pub fn memory_available_bytes() -> Result<u64, MachineError> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|source| MachineError::Io {
        what: "/proc/meminfo".to_owned(),
        source,
    })?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| MachineError::Invalid("/proc/meminfo has no MemAvailable line".to_owned()))
}

fn must_be_file(what: &str, path: &Path) -> Result<PathBuf, MachineError> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => absolute(path),
        Ok(_) => Err(MachineError::Invalid(format!(
            "{what} {} is not a regular file",
            path.display()
        ))),
        Err(error) => Err(MachineError::Invalid(format!(
            "{what} {} cannot be used: {error}",
            path.display()
        ))),
    }
}

fn must_be_dir(what: &str, path: &Path) -> Result<PathBuf, MachineError> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => absolute(path),
        Ok(_) => Err(MachineError::Invalid(format!(
            "{what} {} is not a folder",
            path.display()
        ))),
        Err(error) => Err(MachineError::Invalid(format!(
            "{what} {} cannot be used: {error}",
            path.display()
        ))),
    }
}

/// The absolute, symlink-free form of an existing path (the supervisor runs elsewhere).
fn absolute(path: &Path) -> Result<PathBuf, MachineError> {
    std::fs::canonicalize(path).map_err(|source| MachineError::Io {
        what: path.display().to_string(),
        source,
    })
}

/// Reads and checks an `authorized_keys`-style public key file.
fn read_public_keys(path: &Path) -> Result<String, MachineError> {
    let path = must_be_file("SSH key file", path)?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if size > SSH_KEY_BYTES_MAX {
        return Err(MachineError::Invalid(format!(
            "SSH key file {} is {size} bytes: larger than {SSH_KEY_BYTES_MAX}; give the public key (.pub)",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|source| MachineError::Io {
        what: path.display().to_string(),
        source,
    })?;
    if text.contains("PRIVATE KEY") {
        return Err(MachineError::Invalid(format!(
            "SSH key file {} holds a private key: give the public key (the .pub file)",
            path.display()
        )));
    }
    let keys: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let looks_like_key = |line: &&str| {
        line.split_whitespace().any(|word| {
            word.starts_with("ssh-") || word.starts_with("ecdsa-") || word.starts_with("sk-")
        })
    };
    if keys.is_empty() || !keys.iter().all(looks_like_key) {
        return Err(MachineError::Invalid(format!(
            "SSH key file {} is not in authorized_keys format (lines such as `ssh-ed25519 AAAA... comment`)",
            path.display()
        )));
    }
    let mut out = keys.join("\n");
    out.push('\n');
    Ok(out)
}

impl StartOptions {
    /// Checks every option and resolves defaults; `vm_dir` is the VM's state folder (the
    /// default home of its data disk). Does not look at whether the name is in use.
    pub fn check(&self, vm_dir: &Path) -> Result<VmSpec, MachineError> {
        check_name(&self.name)?;
        let memory_bytes = parse_size("--mem", &self.memory)?;
        if memory_bytes < MEMORY_BYTES_MIN || memory_bytes % MEMORY_ALIGNMENT_BYTES != 0 {
            return Err(MachineError::Invalid(format!(
                "--mem {}: give a whole number of MiB, at least {} MiB",
                self.memory,
                MEMORY_BYTES_MIN >> 20
            )));
        }
        let available_bytes = memory_available_bytes()?;
        if memory_bytes + QEMU_OVERHEAD_BYTES > available_bytes {
            return Err(MachineError::NotEnoughMemory {
                asked_mib: memory_bytes >> 20,
                available_mib: available_bytes >> 20,
            });
        }
        if self.cpus == 0 || self.cpus > CPUS_MAX {
            return Err(MachineError::Invalid(format!(
                "--cpus {}: give 1 to {CPUS_MAX}",
                self.cpus
            )));
        }
        let disk_bytes = parse_size("--disksize", &self.disk_size)?;
        let disk = match &self.disk {
            Some(disk) => {
                let parent = disk
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                must_be_dir("the folder of --disk", parent)?.join(disk.file_name().ok_or_else(
                    || MachineError::Invalid(format!("--disk {}: not a file path", disk.display())),
                )?)
            }
            None => vm_dir.join("disk"),
        };
        let root = match &self.root {
            RootSource::Flist {
                path,
                stores,
                cache,
            } => RootSource::Flist {
                path: must_be_file("flist", path)?,
                stores: stores.clone(),
                cache: cache
                    .as_deref()
                    .map(|cache| {
                        std::fs::create_dir_all(cache).map_err(|source| MachineError::Io {
                            what: format!("chunk cache folder {}", cache.display()),
                            source,
                        })?;
                        absolute(cache)
                    })
                    .transpose()?,
            },
            RootSource::Directory { path } => RootSource::Directory {
                path: must_be_dir("root folder", path)?,
            },
        };
        let guest_dir = default_guest_dir();
        let default_image = |file: &str, flag: &str| -> Result<PathBuf, MachineError> {
            let path = guest_dir.as_ref().map(|dir| dir.join(file));
            match path {
                Some(path) if path.is_file() => Ok(path),
                _ => Err(MachineError::Invalid(format!(
                    "no {flag} given and the test guest image is not built{}: run fixtures/guest/build.sh DIR (and set ZOS_GUEST_DIR=DIR) or pass {flag}",
                    guest_dir
                        .as_ref()
                        .map(|dir| format!(" (no {file} in {})", dir.display()))
                        .unwrap_or_default()
                ))),
            }
        };
        let kernel = match &self.kernel {
            Some(kernel) => must_be_file("kernel", kernel)?,
            None => absolute(&default_image("vmlinuz", "--kernel")?)?,
        };
        let initrd = match &self.initrd {
            Some(initrd) => must_be_file("initrd", initrd)?,
            None => absolute(&default_image("base.cpio.gz", "--initrd")?)?,
        };
        let authorized_keys = self.ssh_key.as_deref().map(read_public_keys).transpose()?;
        if self.shares.len() > SHARES_MAX {
            return Err(MachineError::Invalid(format!(
                "{} shares: at most {SHARES_MAX}",
                self.shares.len()
            )));
        }
        let mut shares = Vec::with_capacity(self.shares.len());
        for share in &self.shares {
            if shares.iter().any(|other: &Share| other.tag == share.tag) {
                return Err(MachineError::Invalid(format!(
                    "share tag {:?} is given twice",
                    share.tag
                )));
            }
            shares.push(Share {
                host_dir: must_be_dir("shared folder", &share.host_dir)?,
                tag: share.tag.clone(),
            });
        }
        let ssh_port = match self.ssh_port {
            Some(0) => {
                return Err(MachineError::Invalid(
                    "--ssh-port 0: give a port number, or leave it out for a free one".to_owned(),
                ))
            }
            Some(port) => {
                if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                    return Err(MachineError::Invalid(format!(
                        "--ssh-port {port}: the port is taken on 127.0.0.1"
                    )));
                }
                port
            }
            None => free_port()?,
        };
        if self.boot_timeout_secs == 0 {
            return Err(MachineError::Invalid(
                "--boot-timeout 0: give a number of seconds".to_owned(),
            ));
        }
        Ok(VmSpec {
            name: self.name.clone(),
            memory_bytes,
            cpus: self.cpus,
            disk_bytes,
            disk,
            root,
            kernel,
            initrd,
            authorized_keys,
            shares,
            accel: self.accel,
            ssh_port,
            boot_timeout_secs: self.boot_timeout_secs,
        })
    }
}

/// A TCP port on 127.0.0.1 that nobody listens on right now.
fn free_port() -> Result<u16, MachineError> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|source| MachineError::Io {
            what: "finding a free port on 127.0.0.1".to_owned(),
            source,
        })?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|source| MachineError::Io {
            what: "finding a free port on 127.0.0.1".to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        assert!(check_name("vm-1_a").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"a".repeat(NAME_BYTES_MAX + 1)).is_err());
        let share: Share = "/srv/a:b:data".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(share.host_dir, PathBuf::from("/srv/a:b"));
        assert_eq!(share.tag, "data");
        assert!("/srv".parse::<Share>().is_err());
        assert!(":tag".parse::<Share>().is_err());
        assert!("/srv:zos-root".parse::<Share>().is_err());
        assert!("/srv:a/b".parse::<Share>().is_err());
    }

    #[test]
    fn accel_parses() {
        assert_eq!("tcg".parse::<Accel>().ok(), Some(Accel::Tcg));
        assert!("xen".parse::<Accel>().is_err());
    }

    #[test]
    fn meminfo_is_read() {
        assert!(memory_available_bytes().is_ok_and(|bytes| bytes > 0));
    }
}
