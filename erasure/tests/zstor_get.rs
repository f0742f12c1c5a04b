//! zstor's read pipeline over six local folder backends: chunks fetched in parallel still
//! reach the output in order, a get keeps at most `GET_CHUNKS_IN_FLIGHT` chunks in memory
//! however slow its output, and a hung or garbage backend holds a get up for about
//! `READ_HEDGE_AFTER_MS`, not for the backend timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{corrupt, random_bytes, runtime, FolderCluster, CHUNK_BYTES};
use erasure::store::{ChunkStore, FaultPlan, FaultyStore, StoreError, StoreUsage};
use erasure::zstor::{Zstor, BACKEND_OP_TIMEOUT_MS, GET_CHUNKS_IN_FLIGHT, READ_HEDGE_AFTER_MS};
use tokio::io::AsyncReadExt;

/// What the probe stores of one cluster share: the chunks whose shards were asked for, in
/// the order asked, and a delay per chunk index.
#[derive(Debug, Default)]
struct Probe {
    object_id: Mutex<Option<[u8; 16]>>,
    requested: Mutex<Vec<u64>>,
    completed: Mutex<Vec<u64>>,
    delays_ms: Mutex<Vec<(u64, u64)>>,
}

impl Probe {
    /// The chunk index of a shard key of the watched object.
    fn chunk_of(&self, id: &[u8]) -> Option<u64> {
        let object_id = (*self.object_id.lock().unwrap())?;
        // A shard key is prefix, object id, chunk index (8 bytes), shard index (1 byte).
        let head = erasure::meta::shard_key(&object_id, 0, 0);
        let chunk_at = head.len() - 9;
        if id.len() != head.len() || id[..chunk_at] != head[..chunk_at] {
            return None;
        }
        let mut chunk = [0u8; 8];
        chunk.copy_from_slice(&id[chunk_at..chunk_at + 8]);
        Some(u64::from_le_bytes(chunk))
    }
}

/// A folder store that records and delays shard reads as its [`Probe`] says.
#[derive(Debug)]
struct ProbeStore {
    inner: FaultyStore,
    probe: Arc<Probe>,
}

#[async_trait::async_trait]
impl ChunkStore for ProbeStore {
    async fn get(&self, id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let chunk = self.probe.chunk_of(id);
        if let Some(chunk) = chunk {
            self.probe.requested.lock().unwrap().push(chunk);
            let delay_ms = self
                .probe
                .delays_ms
                .lock()
                .unwrap()
                .iter()
                .find(|(delayed, _)| *delayed == chunk)
                .map_or(0, |(_, delay_ms)| *delay_ms);
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        let value = self.inner.get(id).await;
        if let Some(chunk) = chunk {
            self.probe.completed.lock().unwrap().push(chunk);
        }
        value
    }

    async fn put(&self, id: &[u8], data: &[u8]) -> Result<(), StoreError> {
        self.inner.put(id, data).await
    }

    async fn exists(&self, id: &[u8]) -> Result<bool, StoreError> {
        self.inner.exists(id).await
    }

    async fn delete(&self, id: &[u8]) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }

    async fn list(&self, prefix: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.list(prefix, limit).await
    }

    async fn usage(&self) -> Result<StoreUsage, StoreError> {
        self.inner.usage().await
    }

    fn url(&self) -> String {
        self.inner.url()
    }

    fn is_read_only(&self) -> bool {
        false
    }
}

/// A [`FolderCluster`] read through [`ProbeStore`]s that share one [`Probe`].
struct Cluster {
    folder: FolderCluster,
    zstor: Zstor,
    probe: Arc<Probe>,
}

impl Cluster {
    fn new(seed: u64) -> Self {
        let folder = FolderCluster::new(seed);
        let probe = Arc::new(Probe::default());
        let zstor = folder.zstor_over(|fault| {
            Arc::new(ProbeStore {
                inner: fault.clone(),
                probe: probe.clone(),
            })
        });
        Cluster {
            folder,
            zstor,
            probe,
        }
    }

    /// Stores `data` as `name` and watches its shard reads from now on.
    async fn put_and_watch(&self, name: &[u8], data: &[u8]) {
        self.zstor.put_bytes(name, data).await.unwrap();
        let head = self.zstor.read_head(name).await.unwrap();
        *self.probe.object_id.lock().unwrap() = Some(head.object_id);
    }
}

#[test]
fn chunks_completing_out_of_order_are_written_in_order() {
    let seed = 11;
    let cluster = Cluster::new(seed);
    let data = random_bytes(seed, CHUNK_BYTES * 20 + 123);
    runtime().block_on(async {
        cluster.put_and_watch(b"object", &data).await;
        // The first chunks answer last; the hedge bound is not reached.
        let slowest_ms = READ_HEDGE_AFTER_MS / 3;
        *cluster.probe.delays_ms.lock().unwrap() = vec![(0, slowest_ms), (1, slowest_ms / 2)];
        assert_eq!(cluster.zstor.get_bytes(b"object").await.unwrap(), data);
    });
    let completed = cluster.probe.completed.lock().unwrap().clone();
    let first_zero = completed.iter().position(|&chunk| chunk == 0).unwrap();
    assert!(
        completed[..first_zero].iter().any(|&chunk| chunk >= 2),
        "later chunks were fetched while chunk 0 was slow: {completed:?}"
    );
}

#[test]
fn a_get_holds_at_most_the_chunks_in_flight_however_slow_its_output() {
    let seed = 12;
    let cluster = Cluster::new(seed);
    let chunks = GET_CHUNKS_IN_FLIGHT * 3;
    let data = random_bytes(seed, CHUNK_BYTES * chunks);
    runtime().block_on(async {
        cluster.put_and_watch(b"object", &data).await;
        // The output takes 1 KiB and then waits for the test to read.
        let (writer, mut reader) = tokio::io::duplex(1024);
        let zstor = &cluster.zstor;
        let get = async move { zstor.get(b"object", writer, &|_| {}).await.unwrap() };
        let check_then_read = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let requested: BTreeSet<u64> = cluster
                .probe
                .requested
                .lock()
                .unwrap()
                .iter()
                .copied()
                .collect();
            assert!(
                requested.len() > 1 && requested.len() <= GET_CHUNKS_IN_FLIGHT,
                "chunks fetched while the output was stuck on chunk 0: {requested:?}"
            );
            let mut back = Vec::new();
            reader.read_to_end(&mut back).await.unwrap();
            back
        };
        let (report, back) = tokio::join!(get, check_then_read);
        assert_eq!(report.size, data.len() as u64);
        assert_eq!(back, data);
    });
}

#[test]
fn a_hung_backend_and_a_garbage_one_hold_a_get_up_only_to_the_hedge_bound() {
    let seed = 13;
    let cluster = Cluster::new(seed);
    let data = random_bytes(seed, CHUNK_BYTES * 12 + 5);
    runtime().block_on(async {
        cluster.put_and_watch(b"object", &data).await;
        // Backend 0 holds a data shard of most chunks and never answers in time; backend 1
        // answers garbage.
        cluster.folder.plan(
            0,
            FaultPlan {
                read_delay_ms: 10 * BACKEND_OP_TIMEOUT_MS,
                ..FaultPlan::default()
            },
        );
        cluster.folder.plan(1, corrupt());
        let started = std::time::Instant::now();
        // Well under the backend timeout: the hung backend is read around, and once it has
        // been slow, later chunks read it last.
        let bound = Duration::from_millis(BACKEND_OP_TIMEOUT_MS / 3);
        let (got, report) = tokio::time::timeout(bound, async {
            let mut got = Vec::new();
            let report = cluster
                .zstor
                .get(b"object", &mut got, &|_| {})
                .await
                .unwrap();
            (got, report)
        })
        .await
        .unwrap_or_else(|_| panic!("get still running after {bound:?}"));
        assert_eq!(got, data);
        assert!(report.bad_shards > 0, "the corrupt shards are reported");
        assert!(started.elapsed() < bound);
    });
}
