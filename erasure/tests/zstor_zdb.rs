//! zstor over six real `zdb` processes on loopback, 4+2: put and get; any two backends
//! killed; one killed during a write (succeeds, repair queued) and two (fails cleanly);
//! shard bytes corrupted in zdb's files; three down (fails naming them); repair after the
//! backends return and after one is replaced by a fresh zdb.
//!
//! Needs the `zdb` binary: taken from `ZDB_BIN`, or from this test's target directory,
//! built there with cargo when missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use erasure::config::{BackendConfig, Config};
use erasure::zstor::{Zstor, ZstorError};
use fixtures::zdb::{zdb_binary, ZdbProcess};
use rand::{Rng, SeedableRng};

/// The test SIGKILLs backends right after writes: only `--sync` promises a killed zdb keeps
/// every acknowledged shard (by default it may lose its last moment).
const ZDB_FLAGS: [&str; 1] = ["--sync"];

struct Cluster {
    binary: PathBuf,
    folder: tempfile::TempDir,
    servers: Vec<ZdbProcess>,
    config: Config,
}

impl Cluster {
    async fn start() -> Self {
        let binary = zdb_binary();
        let folder = tempfile::tempdir().unwrap();
        let servers: Vec<ZdbProcess> = (0..6)
            .map(|index| {
                ZdbProcess::start(
                    &binary,
                    &folder.path().join(format!("zdb{index}")),
                    &ZDB_FLAGS,
                )
            })
            .collect();
        for server in &servers {
            let address =
                dataplane::client::Address::parse(&format!("127.0.0.1:{}", server.port())).unwrap();
            let admin =
                dataplane::client::Client::connect(dataplane::client::ClientConfig::new(address))
                    .await
                    .unwrap();
            admin.namespace_create("zstor").await.unwrap();
        }
        let backends = servers
            .iter()
            .map(|server| BackendConfig {
                url: format!("zdb://127.0.0.1:{}/zstor", server.port()),
                group: None,
            })
            .collect();
        let mut config = Config::generate(4, 2, backends).unwrap();
        config.chunk_size = 256 * 1024;
        config.state_dir = Some(folder.path().join("state"));
        Cluster {
            binary,
            folder,
            servers,
            config,
        }
    }

    fn zstor(&self) -> Zstor {
        Zstor::open(self.config.clone()).unwrap()
    }

    fn restart(&mut self, index: usize) {
        self.servers[index].kill();
        self.servers[index].start_again();
    }
}

fn random_bytes(seed: u64, length: usize) -> Vec<u8> {
    let mut random = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; length];
    random.fill(&mut bytes[..]);
    bytes
}

/// Flips every 4096th byte of every file under `folder`: shard bytes on disk go bad.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_dead_and_corrupt_zdb_backends_and_repairs() {
    let mut cluster = Cluster::start().await;
    let data = random_bytes(42, 3 * 1024 * 1024 + 12345);
    let zstor = cluster.zstor();
    zstor.put_bytes(b"big", &data).await.unwrap();
    zstor.put_bytes(b"empty", b"").await.unwrap();
    assert_eq!(zstor.get_bytes(b"big").await.unwrap(), data);
    assert_eq!(zstor.get_bytes(b"empty").await.unwrap(), b"");
    let names: Vec<String> = zstor
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, ["big", "empty"]);
    let status = zstor.status().await;
    assert!(status.iter().all(|backend| backend.reachable), "{status:?}");

    // Any two backends dead: a few pairs, each read fresh.
    for (first, second) in [(0, 1), (2, 5), (3, 4)] {
        cluster.servers[first].kill();
        cluster.servers[second].kill();
        assert_eq!(
            cluster.zstor().get_bytes(b"big").await.unwrap(),
            data,
            "zdb {first} and {second} dead"
        );
        cluster.restart(first);
        cluster.restart(second);
    }

    // One dead and another's files corrupted on disk, as in the acceptance script.
    cluster.servers[0].kill();
    cluster.servers[3].kill();
    corrupt_files(&cluster.servers[3].folder().join("data"));
    cluster.servers[3].start_again();
    assert_eq!(cluster.zstor().get_bytes(b"big").await.unwrap(), data);

    // A third down: a clear error naming the unusable backends, never wrong bytes.
    cluster.servers[5].kill();
    let error = cluster.zstor().get_bytes(b"big").await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(
            error,
            ZstorError::ReadFailed { .. } | ZstorError::MetadataUnavailable { .. }
        ),
        "{message}"
    );
    assert!(
        message.contains(&cluster.servers[5].port().to_string()),
        "{message}"
    );
    // A write is refused, never reported as stored.
    let refused = cluster.zstor().put_bytes(b"refused", b"x").await;
    assert!(refused.is_err());
    cluster.restart(0);
    cluster.restart(5);
    assert!(matches!(
        cluster.zstor().get_bytes(b"refused").await,
        Err(ZstorError::NotFound(_))
    ));

    // One dead during a write: stored, queued for repair; two dead: fails cleanly.
    cluster.servers[2].kill();
    let written = random_bytes(7, 700_000);
    let report = cluster
        .zstor()
        .put_bytes(b"during", &written)
        .await
        .unwrap();
    assert!(report.degraded_chunks > 0);
    cluster.servers[1].kill();
    let error = cluster
        .zstor()
        .put_bytes(b"during", b"replacement")
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&cluster.servers[1].port().to_string()),
        "{error}"
    );
    cluster.restart(1);
    cluster.restart(2);
    assert_eq!(cluster.zstor().get_bytes(b"during").await.unwrap(), written);

    // Repair brings everything back to 4+2.
    let zstor = cluster.zstor();
    assert!(!zstor.repair_queue().load().unwrap().is_empty());
    let repairs = zstor.repair(None, &|_| {}).await.unwrap();
    assert!(
        repairs.iter().all(|repair| repair.failures.is_empty()),
        "{repairs:?}"
    );
    let checks = zstor.check(None, &|_| {}).await.unwrap();
    assert!(checks.iter().all(|check| check.healthy()), "{checks:?}");

    // A backend replaced by a fresh zdb: repair refills it; then any two others may die.
    cluster.servers[4].kill();
    let fresh = ZdbProcess::start(
        &cluster.binary,
        &cluster.folder.path().join("fresh"),
        &ZDB_FLAGS,
    );
    {
        let address =
            dataplane::client::Address::parse(&format!("127.0.0.1:{}", fresh.port())).unwrap();
        let admin =
            dataplane::client::Client::connect(dataplane::client::ClientConfig::new(address))
                .await
                .unwrap();
        admin.namespace_create("zstor").await.unwrap();
    }
    cluster.config.backends[4].url = format!("zdb://127.0.0.1:{}/zstor", fresh.port());
    cluster.servers[4] = fresh;
    let zstor = cluster.zstor();
    let repairs = zstor.repair(None, &|_| {}).await.unwrap();
    assert!(
        repairs.iter().all(|repair| repair.failures.is_empty()),
        "{repairs:?}"
    );
    assert!(zstor
        .check(None, &|_| {})
        .await
        .unwrap()
        .iter()
        .all(|check| check.healthy()));
    cluster.servers[0].kill();
    cluster.servers[1].kill();
    let zstor = cluster.zstor();
    assert_eq!(zstor.get_bytes(b"big").await.unwrap(), data);
    assert_eq!(zstor.get_bytes(b"during").await.unwrap(), written);
}
