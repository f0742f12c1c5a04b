//! `fault`: a [`StorageIo`] that "crashes" deterministically, for recovery tests.
//!
//! It forwards to the positional-I/O backend until the Nth write or sync, tears that write
//! (only a seeded-random prefix reaches the file) and fails every operation after it. Then
//! [`FaultIo::power_loss`] imitates what the page cache would lose: every file keeps what was
//! synced plus a seeded-random prefix of what was not, with the last kept bytes possibly
//! garbled. Everything is driven by one seed, so a failing run replays exactly.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::sys::{PosixIo, StorageIo, WriteRequest};

#[derive(Debug)]
struct FaultState {
    rng: StdRng,
    operations_left: u64,
    crashed: bool,
    /// Path of each file seen, and its length at its last sync.
    synced: HashMap<PathBuf, u64>,
}

/// Crashes at the `crash_at`-th write or sync (counting from 1).
#[derive(Debug)]
pub struct FaultIo {
    inner: PosixIo,
    state: Mutex<FaultState>,
}

fn path_of(file: &File) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash")
}

impl FaultIo {
    pub fn new(seed: u64, crash_at: u64) -> Self {
        Self {
            inner: PosixIo,
            state: Mutex::new(FaultState {
                rng: StdRng::seed_from_u64(seed),
                operations_left: crash_at.max(1),
                crashed: false,
                synced: HashMap::new(),
            }),
        }
    }

    /// Whether the crash has happened.
    pub fn has_crashed(&self) -> bool {
        self.state.lock().map(|s| s.crashed).unwrap_or(true)
    }

    /// Drops what was written but not synced, as a power loss would: each file keeps its
    /// synced length plus a random part of the rest, whose last bytes may be garbage.
    pub fn power_loss(&self) -> io::Result<()> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| io::Error::other("fault state poisoned"))?;
        let synced: Vec<(PathBuf, u64)> =
            state.synced.iter().map(|(p, l)| (p.clone(), *l)).collect();
        for (path, synced_len) in synced {
            let Ok(file) = File::options().write(true).open(&path) else {
                continue;
            };
            let length = file.metadata()?.len();
            if length <= synced_len {
                continue;
            }
            let keep = synced_len + state.rng.gen_range(0..=length - synced_len);
            file.set_len(keep)?;
            if keep > synced_len && state.rng.gen_bool(0.3) {
                let garbage_len = state.rng.gen_range(1..=(keep - synced_len).min(64));
                let garbage: Vec<u8> = (0..garbage_len).map(|_| state.rng.gen()).collect();
                file.write_all_at(&garbage, keep - garbage_len)?;
            }
        }
        Ok(())
    }

    /// Counts one operation; returns false when it is the one that crashes.
    fn tick(state: &mut FaultState) -> io::Result<bool> {
        if state.crashed {
            return Err(crashed());
        }
        state.operations_left -= 1;
        if state.operations_left == 0 {
            state.crashed = true;
            return Ok(false);
        }
        Ok(true)
    }
}

impl StorageIo for FaultIo {
    fn write_batch(&self, writes: &[WriteRequest<'_>], sync: &[&File]) -> io::Result<()> {
        let mut state = self.state.lock().map_err(|_| crashed())?;
        for write in writes {
            let path = path_of(write.file)?;
            if let std::collections::hash_map::Entry::Vacant(slot) = state.synced.entry(path) {
                // What a file held before this backend first wrote to it counts as durable.
                slot.insert(write.file.metadata()?.len());
            }
            if !Self::tick(&mut state)? {
                let torn = state.rng.gen_range(0..=write.data.len());
                write.file.write_all_at(&write.data[..torn], write.offset)?;
                return Err(crashed());
            }
            write.file.write_all_at(write.data, write.offset)?;
        }
        for file in sync {
            if !Self::tick(&mut state)? {
                return Err(crashed());
            }
            let length = file.metadata()?.len();
            state.synced.insert(path_of(file)?, length);
        }
        Ok(())
    }

    fn read_exact_at(&self, file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact_at(file, offset, buf)
    }

    fn name(&self) -> &'static str {
        "fault"
    }
}
