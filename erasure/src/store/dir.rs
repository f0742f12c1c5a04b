//! `dir:///path`: chunks as files in a local folder.
//!
//! Layout: `<root>/<first two hex digits of id>/<hex of id>`. A write goes to a temporary
//! file in the same folder, is synced, renamed over the final name, and the folder is
//! synced: a crash leaves the old value, the new value or nothing, never a torn file.
//! Temporary files start with `.tmp-` and are never read.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{check_id, ChunkStore, StoreError, StoreUsage, VALUE_BYTES_MAX};

/// A chunk store in a local folder.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

impl DirStore {
    /// A store rooted at `root`; the folder is created on the first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirStore { root: root.into() }
    }

    /// The folder this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file a chunk id is stored in.
    pub fn chunk_path(&self, id: &[u8]) -> PathBuf {
        let hex = hex::encode(id);
        self.root.join(&hex[..2]).join(hex)
    }

    async fn blocking<T: Send + 'static>(
        work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| StoreError::Io {
                context: "dir store worker".into(),
                source: std::io::Error::other(e.to_string()),
            })?
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let folder = path.parent().ok_or_else(|| {
        io_error(path.display().to_string())(std::io::ErrorKind::InvalidInput.into())
    })?;
    std::fs::create_dir_all(folder).map_err(io_error(format!("creating {}", folder.display())))?;
    let temporary = folder.join(format!(".tmp-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)
            .map_err(io_error(format!("creating {}", temporary.display())))?;
        file.write_all(data)
            .map_err(io_error(format!("writing {}", temporary.display())))?;
        file.sync_all()
            .map_err(io_error(format!("syncing {}", temporary.display())))?;
        std::fs::rename(&temporary, path)
            .map_err(io_error(format!("renaming to {}", path.display())))?;
        let folder_handle = std::fs::File::open(folder)
            .map_err(io_error(format!("opening {}", folder.display())))?;
        folder_handle
            .sync_all()
            .map_err(io_error(format!("syncing {}", folder.display())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[async_trait::async_trait]
impl ChunkStore for DirStore {
    async fn get(&self, id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        check_id(id)?;
        let path = self.chunk_path(id);
        Self::blocking(move || {
            let metadata = match std::fs::metadata(&path) {
                Ok(metadata) => metadata,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_error(format!("reading {}", path.display()))(e)),
            };
            if metadata.len() > VALUE_BYTES_MAX as u64 {
                return Err(StoreError::Corrupt {
                    store: path.display().to_string(),
                    reason: format!(
                        "file of {} bytes, more than {VALUE_BYTES_MAX}",
                        metadata.len()
                    ),
                });
            }
            match std::fs::read(&path) {
                Ok(data) => Ok(Some(data)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_error(format!("reading {}", path.display()))(e)),
            }
        })
        .await
    }

    async fn put(&self, id: &[u8], data: &[u8]) -> Result<(), StoreError> {
        check_id(id)?;
        if data.len() > VALUE_BYTES_MAX {
            return Err(StoreError::ValueTooLarge {
                len: data.len(),
                max: VALUE_BYTES_MAX,
                store: self.url(),
            });
        }
        let path = self.chunk_path(id);
        let data = data.to_vec();
        Self::blocking(move || write_atomically(&path, &data)).await
    }

    async fn exists(&self, id: &[u8]) -> Result<bool, StoreError> {
        check_id(id)?;
        let path = self.chunk_path(id);
        Self::blocking(move || match std::fs::metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(format!("checking {}", path.display()))(e)),
        })
        .await
    }

    async fn delete(&self, id: &[u8]) -> Result<bool, StoreError> {
        check_id(id)?;
        let path = self.chunk_path(id);
        Self::blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(format!("removing {}", path.display()))(e)),
        })
        .await
    }

    async fn list(&self, prefix: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let root = self.root.clone();
        let prefix_hex = hex::encode(prefix);
        Self::blocking(move || {
            let mut ids = Vec::new();
            let folders = match std::fs::read_dir(&root) {
                Ok(folders) => folders,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
                Err(e) => return Err(io_error(format!("listing {}", root.display()))(e)),
            };
            for folder in folders {
                let folder = folder.map_err(io_error(format!("listing {}", root.display())))?;
                let name = folder.file_name().to_string_lossy().into_owned();
                if name.len() != 2
                    || !(prefix_hex.starts_with(&name) || name.starts_with(&prefix_hex))
                {
                    continue;
                }
                let path = folder.path();
                let entries = std::fs::read_dir(&path)
                    .map_err(io_error(format!("listing {}", path.display())))?;
                for entry in entries {
                    let entry = entry.map_err(io_error(format!("listing {}", path.display())))?;
                    let file_name = entry.file_name().to_string_lossy().into_owned();
                    if !file_name.starts_with(&prefix_hex) {
                        continue;
                    }
                    if let Ok(id) = hex::decode(&file_name) {
                        ids.push(id);
                        if ids.len() >= limit {
                            return Ok(ids);
                        }
                    }
                }
            }
            Ok(ids)
        })
        .await
    }

    async fn usage(&self) -> Result<StoreUsage, StoreError> {
        let root = self.root.clone();
        Self::blocking(move || {
            let mut entries = 0u64;
            let mut used_bytes = 0u64;
            if let Ok(folders) = std::fs::read_dir(&root) {
                for folder in folders.flatten() {
                    if let Ok(files) = std::fs::read_dir(folder.path()) {
                        for file in files.flatten() {
                            if let Ok(metadata) = file.metadata() {
                                entries += 1;
                                used_bytes += metadata.len();
                            }
                        }
                    }
                }
            }
            Ok(StoreUsage {
                entries: Some(entries),
                used_bytes: Some(used_bytes),
                free_bytes: None,
            })
        })
        .await
    }

    fn url(&self) -> String {
        format!("dir://{}", self.root.display())
    }

    fn is_read_only(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_and_lays_out_by_hex() {
        let folder = tempfile::tempdir().unwrap();
        let store = DirStore::new(folder.path());
        let id = [0xab, 0xcd, 0x01];
        assert_eq!(store.get(&id).await.unwrap(), None);
        assert!(!store.exists(&id).await.unwrap());
        store.put(&id, b"hello").await.unwrap();
        assert!(folder.path().join("ab").join("abcd01").is_file());
        assert_eq!(
            store.get(&id).await.unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert!(store.exists(&id).await.unwrap());
        store.put(&id, b"replaced").await.unwrap();
        assert_eq!(
            store.get(&id).await.unwrap().as_deref(),
            Some(&b"replaced"[..])
        );
        store.put(&[0xab, 0x00], b"x").await.unwrap();
        store.put(&[0x10], b"y").await.unwrap();
        let mut listed = store.list(&[0xab], 100).await.unwrap();
        listed.sort();
        assert_eq!(listed, vec![vec![0xab, 0x00], vec![0xab, 0xcd, 0x01]]);
        assert_eq!(store.usage().await.unwrap().entries, Some(3));
        assert!(store.delete(&id).await.unwrap());
        assert!(!store.delete(&id).await.unwrap());
        assert_eq!(store.get(&id).await.unwrap(), None);
        let leftovers: Vec<_> = std::fs::read_dir(folder.path().join("ab"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[tokio::test]
    async fn rejects_bad_ids() {
        let folder = tempfile::tempdir().unwrap();
        let store = DirStore::new(folder.path());
        assert!(matches!(
            store.get(&[]).await,
            Err(StoreError::InvalidId { len: 0 })
        ));
        assert!(matches!(
            store.put(&[1; 256], b"x").await,
            Err(StoreError::InvalidId { len: 256 })
        ));
    }
}
