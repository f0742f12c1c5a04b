//! Volumes: a raw sparse data file (guest byte N is file byte N when unencrypted) and a
//! small metadata file beside it, `VOL.zosvol` (format in `docs/design.md`).
//!
//! The data file is an ordinary raw image, so qemu-img and qemu-storage-daemon work on it
//! too. A process serving a volume holds an exclusive `flock` on the data file; resize and
//! remove take the same lock, so they refuse a volume in use.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::crypto::{SectorCipher, VolumeKey, SECTOR_BYTES};

/// Suffix of the metadata file beside a volume's data file.
pub const METADATA_SUFFIX: &str = ".zosvol";
/// Metadata magic.
const MAGIC: [u8; 8] = *b"ZOSVOLM\0";
/// The metadata version this code writes and reads.
const VERSION: u16 = 1;
/// Metadata bytes, checksum included.
pub const METADATA_BYTES: usize = 128;
/// Serial (virtio-blk GET_ID) bytes.
pub const SERIAL_BYTES: usize = 20;
/// Largest volume: 64 TiB (the sector count stays well inside every guest's limits).
pub const VOLUME_BYTES_MAX: u64 = 64 << 40;
const FLAG_ENCRYPTED: u16 = 1;
const CIPHER_NONE: u8 = 0;
const CIPHER_AES_256_XTS: u8 = 1;

/// Errors of volume management.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    #[error("volume {0} does not exist (no {1}); create it with `zos vm disk create`")]
    Missing(PathBuf, PathBuf),
    #[error("volume {0} already exists")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata {path} is corrupt or not a volume: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("volume {0} is in use by another process (is `zos vm disk serve` running on it?)")]
    InUse(PathBuf),
    #[error("invalid size {text:?}: {reason}")]
    Size { text: String, reason: String },
    #[error("volume {path} is {current} bytes; resize only grows it (asked for {requested})")]
    Shrink {
        path: PathBuf,
        current: u64,
        requested: u64,
    },
    #[error("volume {0} is encrypted: give its key with --key-file")]
    KeyRequired(PathBuf),
    #[error("volume {0} is not encrypted: it takes no --key-file")]
    KeyUnexpected(PathBuf),
    #[error("the key does not match volume {0} (key check failed): wrong key file?")]
    WrongKey(PathBuf),
    #[error(transparent)]
    Key(#[from] crate::crypto::KeyError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Parses a size: a number with an optional binary suffix K, M, G, T (KiB..TiB; `B`, `iB`
/// accepted after it). The result must be a positive multiple of 512 bytes.
pub fn parse_size(text: &str) -> Result<u64, VolumeError> {
    let error = |reason: &str| VolumeError::Size {
        text: text.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    let number: u64 = digits
        .parse()
        .map_err(|_| error("expected a number such as 20G"))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(error("unknown unit: use K, M, G or T (binary)")),
    };
    let bytes = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| error("too large"))?;
    if bytes == 0 {
        return Err(error("a volume needs at least one sector"));
    }
    if bytes % SECTOR_BYTES as u64 != 0 {
        return Err(error("not a multiple of 512 bytes"));
    }
    if bytes > VOLUME_BYTES_MAX {
        return Err(error("larger than the 64 TiB limit"));
    }
    Ok(bytes)
}

/// A volume's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub size_bytes: u64,
    pub serial: [u8; SERIAL_BYTES],
    /// The key check of an encrypted volume, `None` when unencrypted.
    pub key_check: Option<[u8; 32]>,
}

impl Metadata {
    /// Encodes to the fixed 128-byte layout.
    pub fn encode(&self) -> [u8; METADATA_BYTES] {
        let mut bytes = [0u8; METADATA_BYTES];
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..10].copy_from_slice(&VERSION.to_le_bytes());
        let flags = if self.key_check.is_some() {
            FLAG_ENCRYPTED
        } else {
            0
        };
        bytes[10..12].copy_from_slice(&flags.to_le_bytes());
        bytes[12..16].copy_from_slice(&(SECTOR_BYTES as u32).to_le_bytes());
        bytes[16..24].copy_from_slice(&self.size_bytes.to_le_bytes());
        bytes[24..44].copy_from_slice(&self.serial);
        bytes[44] = if self.key_check.is_some() {
            CIPHER_AES_256_XTS
        } else {
            CIPHER_NONE
        };
        if let Some(check) = &self.key_check {
            bytes[48..80].copy_from_slice(check);
        }
        let checksum = crc32fast::hash(&bytes[..METADATA_BYTES - 4]);
        bytes[METADATA_BYTES - 4..].copy_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Decodes and validates; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != METADATA_BYTES {
            return Err(format!("{} bytes, expected {METADATA_BYTES}", bytes.len()));
        }
        if bytes[0..8] != MAGIC {
            return Err("bad magic at offset 0".to_owned());
        }
        let stored = u32::from_le_bytes([bytes[124], bytes[125], bytes[126], bytes[127]]);
        let computed = crc32fast::hash(&bytes[..METADATA_BYTES - 4]);
        if stored != computed {
            return Err(format!(
                "checksum mismatch at offset 124 (stored {stored:08x}, computed {computed:08x})"
            ));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(format!(
                "version {version} at offset 8, this build reads {VERSION}"
            ));
        }
        let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
        if flags & !FLAG_ENCRYPTED != 0 {
            return Err(format!("unknown flags {flags:#06x} at offset 10"));
        }
        let sector_bytes = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if sector_bytes as usize != SECTOR_BYTES {
            return Err(format!(
                "sector size {sector_bytes} at offset 12, expected 512"
            ));
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&bytes[16..24]);
        let size_bytes = u64::from_le_bytes(size);
        if size_bytes == 0 || size_bytes % SECTOR_BYTES as u64 != 0 || size_bytes > VOLUME_BYTES_MAX
        {
            return Err(format!(
                "size {size_bytes} at offset 16 is not a valid volume size"
            ));
        }
        let mut serial = [0u8; SERIAL_BYTES];
        serial.copy_from_slice(&bytes[24..44]);
        let encrypted = flags & FLAG_ENCRYPTED != 0;
        let cipher = bytes[44];
        let key_check = match (encrypted, cipher) {
            (false, CIPHER_NONE) => None,
            (true, CIPHER_AES_256_XTS) => {
                let mut check = [0u8; 32];
                check.copy_from_slice(&bytes[48..80]);
                Some(check)
            }
            _ => {
                return Err(format!(
                    "cipher {cipher} at offset 44 does not match the encryption flag"
                ))
            }
        };
        Ok(Self {
            size_bytes,
            serial,
            key_check,
        })
    }

    /// The serial as text (NULs dropped).
    pub fn serial_text(&self) -> String {
        String::from_utf8_lossy(&self.serial)
            .trim_end_matches('\0')
            .to_owned()
    }
}

/// A volume by path (the data file's path).
#[derive(Debug, Clone)]
pub struct Volume {
    pub data_path: PathBuf,
    pub metadata_path: PathBuf,
    pub metadata: Metadata,
}

/// The metadata path of a volume's data path.
pub fn metadata_path(data_path: &Path) -> PathBuf {
    let mut name = data_path.as_os_str().to_owned();
    name.push(METADATA_SUFFIX);
    PathBuf::from(name)
}

impl Volume {
    /// Creates a sparse volume of `size_bytes`, encrypted when `key` is given.
    pub fn create(
        data_path: &Path,
        size_bytes: u64,
        key: Option<&VolumeKey>,
    ) -> Result<Self, VolumeError> {
        let metadata_path = metadata_path(data_path);
        if data_path.exists() || metadata_path.exists() {
            return Err(VolumeError::Exists(data_path.to_owned()));
        }
        let metadata = Metadata {
            size_bytes,
            serial: new_serial(data_path),
            key_check: key.map(VolumeKey::check_value),
        };
        let data = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(data_path)
            .map_err(io_error(data_path))?;
        let result = data
            .set_len(size_bytes)
            .map_err(io_error(data_path))
            .and_then(|()| write_metadata(&metadata_path, &metadata));
        if let Err(error) = result {
            // Leave nothing half-made behind; the original error is what the user needs.
            let _ = std::fs::remove_file(data_path);
            let _ = std::fs::remove_file(&metadata_path);
            return Err(error);
        }
        Ok(Self {
            data_path: data_path.to_owned(),
            metadata_path,
            metadata,
        })
    }

    /// Opens an existing volume's metadata (the data file must exist too).
    pub fn open(data_path: &Path) -> Result<Self, VolumeError> {
        let metadata_path = metadata_path(data_path);
        if !metadata_path.exists() {
            return Err(VolumeError::Missing(data_path.to_owned(), metadata_path));
        }
        if !data_path.exists() {
            return Err(VolumeError::Missing(
                data_path.to_owned(),
                data_path.to_owned(),
            ));
        }
        let bytes = std::fs::read(&metadata_path).map_err(io_error(&metadata_path))?;
        let metadata = Metadata::decode(&bytes).map_err(|reason| VolumeError::Corrupt {
            path: metadata_path.clone(),
            reason,
        })?;
        Ok(Self {
            data_path: data_path.to_owned(),
            metadata_path,
            metadata,
        })
    }

    /// True when the volume is encrypted.
    pub fn encrypted(&self) -> bool {
        self.metadata.key_check.is_some()
    }

    /// Checks `key` against the volume and returns the cipher to use (None: unencrypted).
    pub fn cipher(&self, key: Option<&VolumeKey>) -> Result<Option<SectorCipher>, VolumeError> {
        match (&self.metadata.key_check, key) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(VolumeError::KeyUnexpected(self.data_path.clone())),
            (Some(_), None) => Err(VolumeError::KeyRequired(self.data_path.clone())),
            (Some(check), Some(key)) => {
                if key.check_value() == *check {
                    Ok(Some(SectorCipher::new(key)))
                } else {
                    Err(VolumeError::WrongKey(self.data_path.clone()))
                }
            }
        }
    }

    /// Opens the data file and takes the exclusive lock; fails with `InUse` when another
    /// process holds it. The lock lasts as long as the returned file is open.
    pub fn open_locked(&self, writable: bool) -> Result<File, VolumeError> {
        self.open_locked_with(writable, false)
    }

    /// As [`Volume::open_locked`], optionally with O_DIRECT (no host page cache).
    pub fn open_locked_with(&self, writable: bool, direct: bool) -> Result<File, VolumeError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(if direct { libc::O_DIRECT } else { 0 })
            .open(&self.data_path)
            .map_err(io_error(&self.data_path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(VolumeError::InUse(self.data_path.clone()))
            }
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(io_error(&self.data_path)(error))
            }
        }
        let length = file.metadata().map_err(io_error(&self.data_path))?.len();
        if length < self.metadata.size_bytes {
            // A data file cut short (by hand) would give short reads: restore its length.
            if writable {
                file.set_len(self.metadata.size_bytes)
                    .map_err(io_error(&self.data_path))?;
            } else {
                return Err(VolumeError::Corrupt {
                    path: self.data_path.clone(),
                    reason: format!(
                        "data file is {length} bytes, metadata says {}",
                        self.metadata.size_bytes
                    ),
                });
            }
        }
        Ok(file)
    }

    /// Grows the volume (never shrinks); refused while it is served.
    pub fn resize(&mut self, size_bytes: u64) -> Result<(), VolumeError> {
        if size_bytes < self.metadata.size_bytes {
            return Err(VolumeError::Shrink {
                path: self.data_path.clone(),
                current: self.metadata.size_bytes,
                requested: size_bytes,
            });
        }
        let file = self.open_locked(true)?;
        file.set_len(size_bytes)
            .map_err(io_error(&self.data_path))?;
        let mut metadata = self.metadata.clone();
        metadata.size_bytes = size_bytes;
        write_metadata(&self.metadata_path, &metadata)?;
        self.metadata = metadata;
        Ok(())
    }

    /// Removes the data and metadata files; refused while the volume is served.
    pub fn remove(self) -> Result<(), VolumeError> {
        let _locked = self.open_locked(false)?;
        std::fs::remove_file(&self.metadata_path).map_err(io_error(&self.metadata_path))?;
        std::fs::remove_file(&self.data_path).map_err(io_error(&self.data_path))?;
        Ok(())
    }

    /// Bytes the data file really occupies on disk (it is sparse).
    pub fn allocated_bytes(&self) -> Result<u64, VolumeError> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(&self.data_path).map_err(io_error(&self.data_path))?;
        Ok(metadata.blocks() * 512)
    }

    /// True when another process holds the volume's lock (it is being served).
    pub fn in_use(&self) -> Result<bool, VolumeError> {
        match self.open_locked(false) {
            Ok(_) => Ok(false),
            Err(VolumeError::InUse(_)) => Ok(true),
            Err(error) => Err(error),
        }
    }
}

/// The volumes in `dir` (those with a metadata file), sorted by path. Unreadable metadata
/// is reported as an error entry, not skipped.
pub fn list(dir: &Path) -> Result<Vec<Result<Volume, VolumeError>>, VolumeError> {
    let mut volumes = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(volume_name) = name.strip_suffix(METADATA_SUFFIX) {
            volumes.push(Volume::open(&dir.join(volume_name)));
        }
    }
    volumes.sort_by_key(sort_key);
    Ok(volumes)
}

fn sort_key(entry: &Result<Volume, VolumeError>) -> String {
    match entry {
        Ok(volume) => volume.data_path.display().to_string(),
        Err(error) => error.to_string(),
    }
}

fn write_metadata(path: &Path, metadata: &Metadata) -> Result<(), VolumeError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(&metadata.encode())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error(path))?;
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        // Make the rename durable; a directory that cannot be opened for sync is not fatal.
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

fn new_serial(data_path: &Path) -> [u8; SERIAL_BYTES] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(data_path.as_os_str().as_encoded_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    hasher.update(&now.to_le_bytes());
    let digest = hasher.finalize().to_hex();
    let mut serial = [0u8; SERIAL_BYTES];
    serial[..4].copy_from_slice(b"zos-");
    serial[4..].copy_from_slice(&digest.as_bytes()[..SERIAL_BYTES - 4]);
    serial
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_binary() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("0").is_err());
        assert!(parse_size("100").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("65T").is_err());
    }

    #[test]
    fn metadata_round_trips_and_rejects_damage() {
        let metadata = Metadata {
            size_bytes: 1 << 30,
            serial: *b"zos-0123456789abcdef",
            key_check: Some([9; 32]),
        };
        let bytes = metadata.encode();
        assert_eq!(Metadata::decode(&bytes).unwrap(), metadata);
        for index in [0, 9, 17, 50, 127] {
            let mut damaged = bytes;
            damaged[index] ^= 1;
            assert!(Metadata::decode(&damaged).is_err(), "byte {index}");
        }
        assert!(Metadata::decode(&bytes[..100]).is_err());
    }

    #[test]
    fn create_resize_lock_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let mut volume = Volume::create(&path, 1 << 20, None).unwrap();
        assert!(matches!(
            Volume::create(&path, 1 << 20, None),
            Err(VolumeError::Exists(_))
        ));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        let held = volume.open_locked(true).unwrap();
        assert!(volume.in_use().unwrap());
        assert!(matches!(volume.resize(2 << 20), Err(VolumeError::InUse(_))));
        drop(held);
        volume.resize(2 << 20).unwrap();
        assert!(matches!(
            volume.resize(1 << 20),
            Err(VolumeError::Shrink { .. })
        ));
        assert_eq!(Volume::open(&path).unwrap().metadata.size_bytes, 2 << 20);
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed.len(), 1);
        volume.remove().unwrap();
        assert!(!path.exists());
        assert!(matches!(Volume::open(&path), Err(VolumeError::Missing(..))));
    }

    #[test]
    fn keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let key = VolumeKey::from_bytes([3; 64]);
        let volume = Volume::create(&path, 1 << 20, Some(&key)).unwrap();
        assert!(volume.cipher(Some(&key)).unwrap().is_some());
        assert!(matches!(
            volume.cipher(Some(&VolumeKey::from_bytes([4; 64]))),
            Err(VolumeError::WrongKey(_))
        ));
        assert!(matches!(
            volume.cipher(None),
            Err(VolumeError::KeyRequired(_))
        ));
    }
}
