//! Stores that talk to zdb: one namespace (`zdb://`), or zstor over many (`zstor://`).
//!
//! [`ZdbStore`] keeps a small pool of connections to its namespace, made on first use (so
//! opening a config with a dead backend does not fail) and retried on the next operation
//! after a failure. A record that zdb itself finds damaged is reported as corrupt.

use std::path::Path;
use std::sync::Arc;

use dataplane::client::{Address, ClientConfig, ClientError, Pool};

use crate::store::{check_id, ChunkStore, StoreError, StoreUsage, ZdbUrl};

/// Connections per zdb backend: enough to keep shard writes of a few chunks in flight.
pub const ZDB_CONNECTIONS: usize = 4;
/// zdb's own limit on a value.
pub const ZDB_VALUE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most keys `list` walks through with SCAN before giving up.
pub const ZDB_SCAN_KEYS_MAX: usize = 10_000_000;

/// One zdb namespace as a chunk store.
#[derive(Debug)]
pub struct ZdbStore {
    url: ZdbUrl,
    pool: tokio::sync::OnceCell<Arc<Pool>>,
}

impl ZdbStore {
    /// A store for the namespace `url` names; connects on first use.
    pub fn new(url: ZdbUrl) -> Self {
        ZdbStore {
            url,
            pool: tokio::sync::OnceCell::new(),
        }
    }

    fn error(&self, error: ClientError) -> StoreError {
        match error {
            ClientError::Server { message, .. } if is_damage(&message) => StoreError::Corrupt {
                store: self.url.to_string(),
                reason: message,
            },
            other => StoreError::Backend {
                store: self.url.to_string(),
                reason: other.to_string(),
            },
        }
    }

    async fn pool(&self) -> Result<Arc<Pool>, StoreError> {
        self.pool
            .get_or_try_init(|| async {
                let address =
                    Address::parse(&self.url.socket_address()).map_err(|e| self.error(e))?;
                let config = ClientConfig::new(address)
                    .namespace(self.url.namespace.clone(), self.url.password.clone());
                Pool::connect(config, ZDB_CONNECTIONS)
                    .await
                    .map(Arc::new)
                    .map_err(|e| self.error(e))
            })
            .await
            .cloned()
    }

    /// Runs one request in its own task. zstor drops the requests it no longer needs (the
    /// shards beyond the first k, a timed out backend); in a task the request still reads
    /// its reply, so the connection never hands that reply to the next request.
    async fn run<T, F, Fut>(&self, request: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Pool>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>> + Send + 'static,
    {
        let pool = self.pool().await?;
        let task = tokio::spawn(request(pool));
        match task.await {
            Ok(result) => result.map_err(|e| self.error(e)),
            Err(e) => Err(StoreError::Backend {
                store: self.url.to_string(),
                reason: format!("request task failed: {e}"),
            }),
        }
    }
}

fn is_damage(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["corrupt", "checksum", "crc", "damaged", "integrity"]
        .iter()
        .any(|word| message.contains(word))
}

#[async_trait::async_trait]
impl ChunkStore for ZdbStore {
    async fn get(&self, id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        check_id(id)?;
        let id = id.to_vec();
        self.run(|pool| async move { pool.get().get(&id).await })
            .await
    }

    async fn put(&self, id: &[u8], data: &[u8]) -> Result<(), StoreError> {
        check_id(id)?;
        if data.len() > ZDB_VALUE_BYTES_MAX {
            return Err(StoreError::ValueTooLarge {
                len: data.len(),
                max: ZDB_VALUE_BYTES_MAX,
                store: self.url.to_string(),
            });
        }
        // Not in a task of its own (see `run`): a write is never dropped for a faster one,
        // and this way the value is sent from the caller's memory, not from a copy. Should
        // the write be dropped all the same (a timeout), the client drops its connection.
        let pool = self.pool().await?;
        pool.get()
            .set(id, data)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    async fn exists(&self, id: &[u8]) -> Result<bool, StoreError> {
        check_id(id)?;
        let id = id.to_vec();
        self.run(|pool| async move { pool.get().exists(&id).await })
            .await
    }

    async fn delete(&self, id: &[u8]) -> Result<bool, StoreError> {
        check_id(id)?;
        let id = id.to_vec();
        self.run(|pool| async move { pool.get().del(&id).await })
            .await
    }

    async fn list(&self, prefix: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = prefix.to_vec();
        self.run(|pool| async move {
            let client = pool.get();
            let mut found = Vec::new();
            let mut walked = 0usize;
            let mut cursor: Option<Vec<u8>> = None;
            while let Some((next, keys)) = client.scan(cursor.as_deref()).await? {
                walked += keys.len();
                found.extend(
                    keys.into_iter()
                        .map(|(key, _, _)| key)
                        .filter(|key| key.starts_with(&prefix)),
                );
                if found.len() >= limit
                    || walked >= ZDB_SCAN_KEYS_MAX
                    || cursor.as_deref() == Some(&next[..])
                {
                    break;
                }
                cursor = Some(next);
            }
            found.truncate(limit);
            Ok(found)
        })
        .await
    }

    async fn usage(&self) -> Result<StoreUsage, StoreError> {
        let namespace = self.url.namespace.clone();
        let fields = self
            .run(|pool| async move { pool.get().namespace_info(&namespace).await })
            .await?;
        let field = |names: &[&str]| {
            fields
                .iter()
                .find(|(name, _)| names.contains(&name.as_str()))
                .and_then(|(_, value)| value.parse::<u64>().ok())
        };
        Ok(StoreUsage {
            entries: field(&["entries"]),
            used_bytes: field(&["data_size_bytes"]),
            free_bytes: field(&["data_disk_freespace_bytes"]),
        })
    }

    fn url(&self) -> String {
        self.url.to_string()
    }

    fn is_read_only(&self) -> bool {
        false
    }
}

/// Opens a `zdb://` store.
pub fn open_zdb_store(url: ZdbUrl) -> Result<Arc<dyn ChunkStore>, StoreError> {
    Ok(Arc::new(ZdbStore::new(url)))
}

/// Opens a `zstor://` store from a config file.
pub fn open_zstor_store(target: &Path) -> Result<Arc<dyn ChunkStore>, StoreError> {
    let invalid = |reason: String| StoreError::InvalidUrl {
        url: format!("zstor://{}", target.display()),
        reason,
    };
    let config = crate::config::Config::load(target).map_err(|e| invalid(e.to_string()))?;
    let zstor = crate::zstor::Zstor::open(config).map_err(|e| invalid(e.to_string()))?;
    Ok(Arc::new(zstor))
}
