//! perf: benchmark harness shared by the scripts in `perf/`. Every benchmark runs our
//! system and its peer in the same run and reports the ratio.
//!
//! Layers: [`sys`] reads CPU clocks (the one place with `unsafe`); [`null_zstor`] builds the
//! zstor that the whole-put benchmarks drive without a network, over stores that drop what
//! they are given.
//!
//! Dependencies: erasure (what is measured), async-trait (its `ChunkStore` trait), libc
//! (CPU-time clocks: on a shared machine CPU per byte is what other processes cannot inflate).

pub mod sys;

use std::sync::Arc;

use erasure::config::{backend_address, BackendConfig, Config};
use erasure::store::StoreError;
use erasure::zstor::{Backend, Zstor};
use erasure::ChunkStore;

/// A store that drops every shard it is given and holds nothing.
#[derive(Debug)]
struct NullStore(String);

#[async_trait::async_trait]
impl ChunkStore for NullStore {
    async fn get(&self, _id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    async fn put(&self, _id: &[u8], data: &[u8]) -> Result<(), StoreError> {
        std::hint::black_box(data.len());
        Ok(())
    }
    async fn exists(&self, _id: &[u8]) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn delete(&self, _id: &[u8]) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn url(&self) -> String {
        self.0.clone()
    }
    fn is_read_only(&self) -> bool {
        false
    }
}

/// A 4+2 zstor with `chunk_bytes` chunks over six stores that drop the shards: `Zstor::put`
/// with everything but the network.
pub fn null_zstor(chunk_bytes: usize) -> Result<Zstor, Box<dyn std::error::Error>> {
    let urls: Vec<String> = (0..6).map(|index| format!("dir:///null/{index}")).collect();
    let backend_configs = urls
        .iter()
        .map(|url| BackendConfig {
            url: url.clone(),
            group: None,
        })
        .collect();
    let mut config = Config::generate(4, 2, backend_configs)?;
    config.chunk_size = chunk_bytes;
    let backends = urls
        .iter()
        .map(|url| Backend {
            address: backend_address(url),
            group: None,
            store: Arc::new(NullStore(url.clone())) as Arc<dyn ChunkStore>,
        })
        .collect();
    Ok(Zstor::with_backends(config, backends)?)
}
