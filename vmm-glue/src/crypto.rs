//! AES-256-XTS for volumes encrypted at rest, with the 512-byte sector number as tweak.
//!
//! The key is 64 bytes (two AES-256 keys), read from a key file as 64 raw bytes or as 128
//! hexadecimal characters. A volume stores a key check, a BLAKE3 key derivation of the key,
//! so a wrong key is refused when the volume is opened instead of yielding garbage.
//!
//! Convention: an all-zero stored sector reads as an all-zero plaintext sector. A fresh
//! sparse volume, a discarded range and a zeroed range therefore read as zeros, as a disk
//! should; the chance that a real ciphertext sector is all zeros is 2^-4096.

use std::path::Path;

use aes::cipher::KeyInit;
use aes::Aes256;
use xts_mode::{get_tweak_default, Xts128};

/// Bytes of an AES-256-XTS key.
pub const KEY_BYTES: usize = 64;
/// Bytes of a sector, the unit the tweak counts.
pub const SECTOR_BYTES: usize = 512;
/// The BLAKE3 derivation context of the key check.
const KEY_CHECK_CONTEXT: &str = "zos vm volume 2026 aes-256-xts key check v1";

/// Errors from key handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} holds {found} bytes: expected {KEY_BYTES} raw bytes or {} hexadecimal characters", KEY_BYTES * 2)]
    Length { path: String, found: usize },
}

/// A volume key.
#[derive(Clone)]
pub struct VolumeKey([u8; KEY_BYTES]);

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("VolumeKey(..)")
    }
}

impl VolumeKey {
    /// Reads a key file: 64 raw bytes, or 128 hex characters (surrounding whitespace allowed).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_file_bytes(&bytes).ok_or(KeyError::Length {
            path: path.display().to_string(),
            found: bytes.len(),
        })
    }

    /// Parses key file contents (see [`VolumeKey::from_file`]).
    pub fn from_file_bytes(bytes: &[u8]) -> Option<Self> {
        if let Ok(text) = std::str::from_utf8(bytes) {
            let text = text.trim();
            if text.len() == KEY_BYTES * 2 {
                let mut key = [0u8; KEY_BYTES];
                if hex::decode_to_slice(text, &mut key).is_ok() {
                    return Some(Self(key));
                }
            }
        }
        <[u8; KEY_BYTES]>::try_from(bytes).ok().map(Self)
    }

    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// The key check stored in the volume metadata.
    pub fn check_value(&self) -> [u8; 32] {
        blake3::derive_key(KEY_CHECK_CONTEXT, &self.0)
    }
}

/// AES-256-XTS over sectors.
pub struct SectorCipher {
    xts: Xts128<Aes256>,
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SectorCipher(aes-256-xts)")
    }
}

impl SectorCipher {
    /// The cipher for `key`.
    pub fn new(key: &VolumeKey) -> Self {
        let (first, second) = key.0.split_at(KEY_BYTES / 2);
        // Both halves are exactly 32 bytes, the AES-256 key size, so these cannot fail.
        let first = Aes256::new_from_slice(first).unwrap_or_else(|_| unreachable!());
        let second = Aes256::new_from_slice(second).unwrap_or_else(|_| unreachable!());
        Self {
            xts: Xts128::new(first, second),
        }
    }

    /// Encrypts whole sectors in place; `buffer` starts at sector `first_sector`.
    /// `buffer.len()` must be a multiple of [`SECTOR_BYTES`].
    pub fn encrypt(&self, buffer: &mut [u8], first_sector: u64) {
        debug_assert_eq!(buffer.len() % SECTOR_BYTES, 0);
        for (index, sector) in buffer.chunks_exact_mut(SECTOR_BYTES).enumerate() {
            let tweak = get_tweak_default(u128::from(first_sector) + index as u128);
            self.xts.encrypt_sector(sector, tweak);
        }
    }

    /// Decrypts whole sectors in place; all-zero sectors stay zero (see the module doc).
    pub fn decrypt(&self, buffer: &mut [u8], first_sector: u64) {
        debug_assert_eq!(buffer.len() % SECTOR_BYTES, 0);
        for (index, sector) in buffer.chunks_exact_mut(SECTOR_BYTES).enumerate() {
            if sector.iter().all(|byte| *byte == 0) {
                continue;
            }
            let tweak = get_tweak_default(u128::from(first_sector) + index as u128);
            self.xts.decrypt_sector(sector, tweak);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_depends_on_sector_and_key() {
        let key = VolumeKey::from_bytes([7; KEY_BYTES]);
        let cipher = SectorCipher::new(&key);
        let plain: Vec<u8> = (0..2048u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut buffer = plain.clone();
        cipher.encrypt(&mut buffer, 10);
        assert_ne!(buffer, plain);
        // Same plaintext at another sector encrypts differently (the tweak).
        let mut other = plain.clone();
        cipher.encrypt(&mut other, 11);
        assert_ne!(other[..512], buffer[..512]);
        let mut decrypted = buffer.clone();
        cipher.decrypt(&mut decrypted, 10);
        assert_eq!(decrypted, plain);
        let wrong = SectorCipher::new(&VolumeKey::from_bytes([8; KEY_BYTES]));
        let mut garbage = buffer.clone();
        wrong.decrypt(&mut garbage, 10);
        assert_ne!(garbage, plain);
    }

    #[test]
    fn zero_sectors_read_as_zero() {
        let cipher = SectorCipher::new(&VolumeKey::from_bytes([1; KEY_BYTES]));
        let mut buffer = vec![0u8; 1024];
        cipher.decrypt(&mut buffer, 3);
        assert!(buffer.iter().all(|byte| *byte == 0));
    }

    #[test]
    fn key_files_raw_and_hex() {
        let raw = [0xabu8; KEY_BYTES];
        assert!(VolumeKey::from_file_bytes(&raw).is_some());
        let text = format!("{}\n", hex::encode(raw));
        let parsed = VolumeKey::from_file_bytes(text.as_bytes()).unwrap();
        assert_eq!(
            parsed.check_value(),
            VolumeKey::from_bytes(raw).check_value()
        );
        assert!(VolumeKey::from_file_bytes(b"short").is_none());
        assert_ne!(
            VolumeKey::from_bytes([1; KEY_BYTES]).check_value(),
            VolumeKey::from_bytes([2; KEY_BYTES]).check_value()
        );
    }
}
