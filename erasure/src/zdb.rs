//! Stores that talk to zdb: one namespace (`zdb://`), or zstor over many (`zstor://`).

use std::path::Path;
use std::sync::Arc;

use crate::store::{ChunkStore, StoreError, ZdbUrl};

/// Opens a `zdb://` store.
pub fn open_zdb_store(url: ZdbUrl) -> Result<Arc<dyn ChunkStore>, StoreError> {
    Err(StoreError::Unsupported {
        store: url.to_string(),
        operation: "zdb backend (waiting for dataplane::client)",
    })
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
