//! The test harness shared by erasure's integration tests: a zstor config over six backends
//! (4+2), and the two clusters the tests run it on.
//!
//! - [`FolderCluster`]: six `dir://` folder backends, each behind a seeded [`FaultyStore`], so
//!   a test downs, delays or corrupts any backend deterministically.
//! - [`ZdbCluster`]: six real `zdb` processes on loopback ([`ZdbProcess`]), which a test
//!   SIGKILLs, starts again, corrupts on disk or replaces by a fresh server.
//!
//! Each test file compiles this module on its own (`mod common;`) and uses only part of it.
// Every test binary uses a different part of this module; without this, dead_code fires in
// each binary for the helpers only the others use.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use erasure::config::{backend_address, BackendConfig, Config};
use erasure::store::{ChunkStore, DirStore, FaultPlan, FaultyStore};
use erasure::zstor::{Backend, Zstor};
use fixtures::zdb::{zdb_binary, ZdbProcess};
use rand::{Rng, SeedableRng};

/// How many backends a cluster has: 4 data shards and 2 parity shards, one shard each.
pub const BACKEND_COUNT: usize = 6;
const DATA_SHARDS: usize = 4;
const PARITY_SHARDS: usize = 2;

/// The chunk size of a [`FolderCluster`]: small, so a few KiB make many chunks.
pub const CHUNK_BYTES: usize = 4096;

/// A 4+2 config over the backends at `urls`, chunks of `chunk_bytes`, its state (the repair
/// queue) in `<folder>/state`.
pub fn config(folder: &Path, urls: Vec<String>, chunk_bytes: usize) -> Config {
    let backends = urls
        .into_iter()
        .map(|url| BackendConfig { url, group: None })
        .collect();
    let mut config = Config::generate(DATA_SHARDS, PARITY_SHARDS, backends).unwrap();
    config.chunk_size = chunk_bytes;
    config.state_dir = Some(folder.join("state"));
    config
}

/// A 4+2 config over six folder backends `<folder>/backend<index>`, chunks of `chunk_bytes`.
pub fn folder_config(folder: &Path, chunk_bytes: usize) -> Config {
    let urls = (0..BACKEND_COUNT)
        .map(|index| format!("dir://{}", folder.join(format!("backend{index}")).display()))
        .collect();
    config(folder, urls, chunk_bytes)
}

/// Six folder backends in a temporary folder, each wrapped in a [`FaultyStore`] seeded from
/// the cluster's seed and its index; a test plans faults per backend.
pub struct FolderCluster {
    pub folder: tempfile::TempDir,
    pub config: Config,
    pub faults: Vec<FaultyStore>,
}

impl FolderCluster {
    /// Healthy backends, chunks of [`CHUNK_BYTES`].
    pub fn new(seed: u64) -> Self {
        let folder = tempfile::tempdir().unwrap();
        let config = folder_config(folder.path(), CHUNK_BYTES);
        let faults = config
            .backends
            .iter()
            .enumerate()
            .map(|(index, backend)| {
                let path = backend.url.trim_start_matches("dir://");
                FaultyStore::new(Arc::new(DirStore::new(path)), seed ^ index as u64)
            })
            .collect();
        FolderCluster {
            folder,
            config,
            faults,
        }
    }

    /// A zstor over the faulty backends, as the config says now.
    pub fn zstor(&self) -> Zstor {
        self.zstor_over(|fault| Arc::new(fault.clone()))
    }

    /// A zstor whose backend `index` is `wrap(faults[index])`: a test puts its own store
    /// (one that records or delays reads) between zstor and the faults.
    pub fn zstor_over(&self, wrap: impl Fn(&FaultyStore) -> Arc<dyn ChunkStore>) -> Zstor {
        let backends = self
            .config
            .backends
            .iter()
            .zip(&self.faults)
            .map(|(backend, fault)| Backend {
                address: backend_address(&backend.url),
                group: backend.group.clone(),
                store: wrap(fault),
            })
            .collect();
        Zstor::with_backends(self.config.clone(), backends).unwrap()
    }

    /// Backend `index` fails as `plan` says from now on.
    pub fn plan(&self, index: usize, plan: FaultPlan) {
        self.faults[index].set_plan(plan);
    }

    /// Every backend healthy again.
    pub fn heal(&self) {
        for fault in &self.faults {
            fault.set_plan(FaultPlan::default());
        }
    }

    /// The files backend `index` keeps on disk (a dir store keeps each key in a file under
    /// a fan-out folder), with their names.
    pub fn backend_files(&self, index: usize) -> Vec<(PathBuf, String)> {
        let root = self.folder.path().join(format!("backend{index}"));
        let mut files = Vec::new();
        for folder in std::fs::read_dir(&root).unwrap() {
            for file in std::fs::read_dir(folder.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                files.push((path, name));
            }
        }
        files
    }
}

/// A backend that does not answer.
pub fn down() -> FaultPlan {
    FaultPlan {
        down: true,
        ..FaultPlan::default()
    }
}

/// A backend that answers reads with damaged bytes.
pub fn corrupt() -> FaultPlan {
    FaultPlan {
        corrupt_reads: true,
        ..FaultPlan::default()
    }
}

/// The namespace zstor's shards live in on every zdb of a [`ZdbCluster`].
const ZDB_NAMESPACE: &str = "zstor";

/// The chunk size of a [`ZdbCluster`]: a few MiB make a dozen chunks.
const ZDB_CHUNK_BYTES: usize = 256 * 1024;

/// The tests SIGKILL backends right after writes: only `--sync` promises a killed zdb keeps
/// every acknowledged shard (by default it may lose its last moment).
const ZDB_FLAGS: [&str; 1] = ["--sync"];

/// Six real zdb servers on loopback, each in its own folder of a temporary one, with the
/// namespace zstor uses, and a config over them.
///
/// Needs the `zdb` binary: taken from `ZDB_BIN`, or from the test's target directory, built
/// there with cargo when missing ([`zdb_binary`]).
pub struct ZdbCluster {
    binary: PathBuf,
    folder: tempfile::TempDir,
    pub servers: Vec<ZdbProcess>,
    pub config: Config,
}

impl ZdbCluster {
    pub async fn start() -> Self {
        let binary = zdb_binary();
        let folder = tempfile::tempdir().unwrap();
        let servers: Vec<ZdbProcess> = (0..BACKEND_COUNT)
            .map(|index| {
                ZdbProcess::start(
                    &binary,
                    &folder.path().join(format!("zdb{index}")),
                    &ZDB_FLAGS,
                )
            })
            .collect();
        for server in &servers {
            create_namespace(server).await;
        }
        let urls = servers.iter().map(zdb_url).collect();
        let config = config(folder.path(), urls, ZDB_CHUNK_BYTES);
        ZdbCluster {
            binary,
            folder,
            servers,
            config,
        }
    }

    /// A zstor over the servers, as the config says now.
    pub fn zstor(&self) -> Zstor {
        Zstor::open(self.config.clone()).unwrap()
    }

    /// SIGKILLs server `index`; nothing happens when it is down already.
    pub fn kill(&mut self, index: usize) {
        self.servers[index].kill();
    }

    /// SIGKILLs server `index` (when it runs) and starts it again on its port and folder.
    pub fn restart(&mut self, index: usize) {
        self.servers[index].kill();
        self.servers[index].start_again();
    }

    /// Flips every 4096th byte of every file in server `index`'s data folder: its shard
    /// bytes on disk go bad. Kill the server first, so it does not write over them.
    pub fn corrupt_data_files(&self, index: usize) {
        corrupt_files(&self.servers[index].folder().join("data"));
    }

    /// Kills server `index` for good and points its backend at a fresh, empty zdb (with the
    /// namespace), as an operator replacing a dead disk would.
    pub async fn replace(&mut self, index: usize) {
        self.servers[index].kill();
        let fresh = ZdbProcess::start(
            &self.binary,
            &self.folder.path().join(format!("fresh{index}")),
            &ZDB_FLAGS,
        );
        create_namespace(&fresh).await;
        self.config.backends[index].url = zdb_url(&fresh);
        self.servers[index] = fresh;
    }
}

/// The backend URL of `server`'s zstor namespace.
fn zdb_url(server: &ZdbProcess) -> String {
    format!("zdb://{}/{ZDB_NAMESPACE}", server.address())
}

/// Creates zstor's namespace on `server`.
async fn create_namespace(server: &ZdbProcess) {
    let address = dataplane::client::Address::parse(&server.address()).unwrap();
    let admin = dataplane::client::Client::connect(dataplane::client::ClientConfig::new(address))
        .await
        .unwrap();
    admin.namespace_create(ZDB_NAMESPACE).await.unwrap();
}

/// Flips every 4096th byte (from byte 100 on) of every file under `folder`, recursively.
fn corrupt_files(folder: &Path) {
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            corrupt_files(&path);
        } else {
            let mut bytes = std::fs::read(&path).unwrap();
            for index in (100..bytes.len()).step_by(4096) {
                bytes[index] ^= 0xff;
            }
            std::fs::write(&path, bytes).unwrap();
        }
    }
}

/// The names of the objects `zstor` lists, in its order.
pub async fn object_names(zstor: &Zstor) -> Vec<String> {
    zstor
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|object| object.name)
        .collect()
}

/// Repairs every object, and asserts that no repair failed and every object then checks
/// healthy (full redundancy again).
pub async fn repair_all_to_health(zstor: &Zstor) {
    let repairs = zstor.repair(None, &|_| {}).await.unwrap();
    assert!(
        repairs.iter().all(|repair| repair.failures.is_empty()),
        "{repairs:?}"
    );
    let checks = zstor.check(None, &|_| {}).await.unwrap();
    assert!(checks.iter().all(|check| check.healthy()), "{checks:?}");
}

/// `length` bytes from a generator seeded with `seed`: the same bytes on every run.
pub fn random_bytes(seed: u64, length: usize) -> Vec<u8> {
    let mut random = rand::rngs::StdRng::seed_from_u64(seed);
    (0..length).map(|_| random.gen()).collect()
}

/// A runtime for the synchronous tests (proptest cases block on it): two workers, as the
/// machines running the tests have few cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
