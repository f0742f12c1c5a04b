//! The persistent repair queue: names of objects left with missing or corrupt shards.
//!
//! One hex-encoded object name per line in `<state_dir>/repair-queue`. Appends are single
//! `O_APPEND` writes of whole lines; a rewrite goes through a temporary file and a rename,
//! so a crash never loses the queue. A torn last line is ignored on load.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Most names kept in the queue; past that the oldest are dropped (a full `repair` of all
/// objects finds them anyway).
pub const QUEUE_NAMES_MAX: usize = 100_000;

/// The repair queue of one state directory.
#[derive(Debug, Clone)]
pub struct RepairQueue {
    path: PathBuf,
}

impl RepairQueue {
    /// The queue in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        RepairQueue {
            path: state_dir.join("repair-queue"),
        }
    }

    /// The queue file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds `name` to the queue.
    pub fn push(&self, name: &[u8]) -> std::io::Result<()> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(format!("{}\n", hex::encode(name)).as_bytes())?;
        file.sync_data()
    }

    /// The names queued, each once.
    pub fn load(&self) -> std::io::Result<Vec<Vec<u8>>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = BTreeSet::new();
        for line in text.lines().rev() {
            if let Ok(name) = hex::decode(line.trim()) {
                if !name.is_empty() {
                    names.insert(name);
                }
            }
            if names.len() >= QUEUE_NAMES_MAX {
                break;
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Replaces the queue with `names`.
    pub fn replace(&self, names: &[Vec<u8>]) -> std::io::Result<()> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let temporary = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary)?;
        for name in names {
            file.write_all(format!("{}\n", hex::encode(name)).as_bytes())?;
        }
        file.sync_all()?;
        std::fs::rename(&temporary, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_loads_and_replaces() {
        let folder = tempfile::tempdir().unwrap();
        let queue = RepairQueue::new(&folder.path().join("state"));
        assert!(queue.load().unwrap().is_empty());
        queue.push(b"b").unwrap();
        queue.push(b"a").unwrap();
        queue.push(b"b").unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(queue.path())
            .unwrap()
            .write_all(b"6")
            .unwrap();
        assert_eq!(queue.load().unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
        queue.replace(&[b"c".to_vec()]).unwrap();
        assert_eq!(queue.load().unwrap(), vec![b"c".to_vec()]);
    }
}
