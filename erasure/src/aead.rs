//! AES-256-GCM, from ring: its assembly uses AES-NI and carry-less multiply and ran about six
//! times faster here than the pure-Rust aes-gcm crate (see `perf/results/erasure.md`).
//! The ciphertext is standard AES-GCM, so either implementation reads the other's output.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::codec::{KEY_BYTES, NONCE_BYTES, TAG_BYTES};

/// An AES-256-GCM key ready for use.
pub struct Aead {
    key: LessSafeKey,
}

impl std::fmt::Debug for Aead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Aead(AES-256-GCM)")
    }
}

impl Aead {
    /// A cipher with `key`.
    pub fn new(key: &[u8; KEY_BYTES]) -> Self {
        // ring refuses only keys of the wrong length, and the type fixes the length.
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .unwrap_or_else(|_| unreachable!("AES-256 key of 32 bytes"));
        Aead {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Appends `nonce`, the encryption of `plain` and its tag to `output`.
    pub fn seal_into(
        &self,
        nonce: [u8; NONCE_BYTES],
        aad: &[u8],
        plain: &[u8],
        output: &mut Vec<u8>,
    ) {
        output.reserve(NONCE_BYTES + plain.len() + TAG_BYTES);
        output.extend_from_slice(&nonce);
        let start = output.len();
        output.extend_from_slice(plain);
        // Sealing fails only for inputs over about 64 GiB; chunks and records are far smaller.
        match self.key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut output[start..],
        ) {
            Ok(tag) => output.extend_from_slice(tag.as_ref()),
            Err(_) => unreachable!("AES-GCM input under its 64 GiB limit"),
        }
    }

    /// Encrypts `data` where it lies; returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: [u8; NONCE_BYTES],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; TAG_BYTES] {
        // Sealing fails only for inputs over about 64 GiB; chunks and records are far smaller.
        match self.key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            data,
        ) {
            Ok(tag) => {
                let mut bytes = [0u8; TAG_BYTES];
                bytes.copy_from_slice(tag.as_ref());
                bytes
            }
            Err(_) => unreachable!("AES-GCM input under its 64 GiB limit"),
        }
    }

    /// Opens `nonce ‖ ciphertext ‖ tag` where it lies; returns the plaintext's length (it
    /// starts right after the nonce), `None` when it does not authenticate. Nothing is
    /// copied: a chunk being read is decrypted in the buffer its shards were gathered into.
    pub fn open_in_place(&self, aad: &[u8], sealed: &mut [u8]) -> Option<usize> {
        if sealed.len() < NONCE_BYTES + TAG_BYTES {
            return None;
        }
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&sealed[..NONCE_BYTES]);
        self.key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut sealed[NONCE_BYTES..],
            )
            .ok()
            .map(|plain| plain.len())
    }

    /// Opens `nonce ‖ ciphertext ‖ tag`; `None` when it does not authenticate.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_BYTES + TAG_BYTES {
            return None;
        }
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&sealed[..NONCE_BYTES]);
        let mut buffer = sealed[NONCE_BYTES..].to_vec();
        let plain_bytes = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buffer,
            )
            .ok()?
            .len();
        buffer.truncate(plain_bytes);
        Some(buffer)
    }
}
