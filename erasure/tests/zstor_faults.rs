//! zstor over six local folder backends with seeded fault injection: every failure the issue
//! lists, checked against the bytes that went in. (The same scenarios over real zdb
//! processes are in `zstor_zdb.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{
    corrupt, down, object_names, random_bytes, repair_all_to_health, runtime, FolderCluster,
    CHUNK_BYTES,
};
use erasure::store::{ChunkStore, DirStore, FaultyStore};
use erasure::zstor::{Zstor, ZstorError};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]
    /// Any object round-trips, for sizes around chunk boundaries and random ones.
    #[test]
    fn objects_round_trip(
        size in prop_oneof![
            Just(0usize), Just(1), Just(CHUNK_BYTES - 1), Just(CHUNK_BYTES), Just(CHUNK_BYTES + 1),
            Just(CHUNK_BYTES * 9 + 17), 0usize..CHUNK_BYTES * 5,
        ],
        seed in any::<u64>(),
        power_of_two_chunks in any::<bool>(),
    ) {
        let mut cluster = FolderCluster::new(seed);
        // Power-of-two chunks record tree hashes; others hash the object a second time.
        if !power_of_two_chunks {
            cluster.config.chunk_size = CHUNK_BYTES - 1000;
        }
        let zstor = cluster.zstor();
        let data = random_bytes(seed, size);
        runtime().block_on(async {
            let report = zstor.put_bytes(b"object", &data).await.unwrap();
            assert_eq!(report.size, size as u64);
            assert_eq!(report.blake3, blake3::hash(&data).to_hex().as_str());
            let head = zstor.read_head(b"object").await.unwrap();
            assert_eq!(head.tree_hashes, power_of_two_chunks);
            assert_eq!(report.degraded_chunks, 0);
            assert_eq!(zstor.get_bytes(b"object").await.unwrap(), data, "seed {seed}");
        });
    }
}

#[test]
fn reads_survive_any_two_backends_down_or_corrupt() {
    let cluster = FolderCluster::new(1);
    let zstor = cluster.zstor();
    let data = random_bytes(1, CHUNK_BYTES * 12 + 5);
    runtime().block_on(async {
        zstor.put_bytes(b"doc", &data).await.unwrap();
        for first in 0..6 {
            for second in first + 1..6 {
                cluster.heal();
                cluster.plan(first, down());
                cluster.plan(second, if second % 2 == 0 { corrupt() } else { down() });
                let back = zstor.get_bytes(b"doc").await;
                assert_eq!(back.unwrap(), data, "backends {first} and {second} failing");
            }
        }
        cluster.heal();
        assert!(
            !zstor.repair_queue().load().unwrap().is_empty(),
            "corrupt shards were not queued for repair"
        );
    });
}

#[test]
fn three_backends_down_fails_naming_them_and_writes_are_refused() {
    let cluster = FolderCluster::new(2);
    let zstor = cluster.zstor();
    let data = random_bytes(2, CHUNK_BYTES * 3);
    runtime().block_on(async {
        zstor.put_bytes(b"doc", &data).await.unwrap();
        for index in [0, 2, 4] {
            cluster.plan(index, down());
        }
        let error = zstor.get_bytes(b"doc").await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, ZstorError::ReadFailed { .. }), "{message}");
        assert!(
            message.contains("backend0") && message.contains("backend2"),
            "{message}"
        );
        let error = zstor.put_bytes(b"new", &data).await.unwrap_err();
        assert!(
            matches!(
                error,
                ZstorError::WriteFailed { .. } | ZstorError::MetadataUnavailable { .. }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("backend4"), "{error}");
        cluster.heal();
        assert!(matches!(
            zstor.get_bytes(b"new").await,
            Err(ZstorError::NotFound(_))
        ));
        assert_eq!(zstor.get_bytes(b"doc").await.unwrap(), data);
    });
}

#[test]
fn one_down_during_write_is_queued_and_repaired() {
    let cluster = FolderCluster::new(3);
    let zstor = cluster.zstor();
    let data = random_bytes(3, CHUNK_BYTES * 7 + 100);
    runtime().block_on(async {
        cluster.plan(5, down());
        let report = zstor.put_bytes(b"doc", &data).await.unwrap();
        // Six shards on six backends: every chunk lost its shard on backend5.
        assert_eq!(report.degraded_chunks, 8, "{report:?}");
        assert!(report
            .failed_backends
            .iter()
            .any(|failure| failure.contains("backend5")));
        assert_eq!(zstor.repair_queue().load().unwrap(), vec![b"doc".to_vec()]);
        cluster.heal();
        let checks = zstor.check(Some(b"doc"), &|_| {}).await.unwrap();
        assert!(!checks[0].healthy());
        assert!(checks[0]
            .metadata_missing_on
            .iter()
            .any(|backend| backend.contains("backend5")));
        let repairs = zstor.repair(None, &|_| {}).await.unwrap();
        assert_eq!(repairs.len(), 1);
        assert!(repairs[0].failures.is_empty(), "{repairs:?}");
        assert!(repairs[0].shards_rebuilt > 0);
        assert!(zstor.repair_queue().load().unwrap().is_empty());
        let checks = zstor.check(None, &|_| {}).await.unwrap();
        assert!(checks[0].healthy(), "{checks:?}");
        // Full redundancy again: any two others may now fail.
        cluster.plan(0, down());
        cluster.plan(1, down());
        assert_eq!(zstor.get_bytes(b"doc").await.unwrap(), data);
    });
}

#[test]
fn two_down_during_write_fails_cleanly_and_keeps_the_old_version() {
    let cluster = FolderCluster::new(4);
    let zstor = cluster.zstor();
    let old = random_bytes(4, CHUNK_BYTES * 2);
    let new = random_bytes(5, CHUNK_BYTES * 3);
    runtime().block_on(async {
        zstor.put_bytes(b"doc", &old).await.unwrap();
        cluster.plan(1, down());
        cluster.plan(3, down());
        let error = zstor.put_bytes(b"doc", &new).await.unwrap_err().to_string();
        assert!(
            error.contains("backend1") && error.contains("backend3"),
            "{error}"
        );
        cluster.heal();
        assert_eq!(zstor.get_bytes(b"doc").await.unwrap(), old);
    });
}

#[test]
fn a_replaced_backend_is_refilled_by_repair() {
    let mut cluster = FolderCluster::new(6);
    let data = random_bytes(6, CHUNK_BYTES * 6 + 1);
    runtime().block_on(async {
        cluster.zstor().put_bytes(b"doc", &data).await.unwrap();
        cluster.zstor().put_bytes(b"small", b"tiny").await.unwrap();
        // backend2 dies for good; the operator points the config at a new, empty one.
        let replacement = cluster.folder.path().join("replacement");
        cluster.config.backends[2].url = format!("dir://{}", replacement.display());
        cluster.faults[2] = FaultyStore::new(Arc::new(DirStore::new(&replacement)), 99);
        let zstor = cluster.zstor();
        let checks = zstor.check(None, &|_| {}).await.unwrap();
        assert!(checks.iter().all(|check| check
            .problems
            .iter()
            .all(|problem| problem.problem == "removed")));
        assert!(checks.iter().any(|check| !check.problems.is_empty()));
        repair_all_to_health(&zstor).await;
        cluster.plan(0, down());
        cluster.plan(4, down());
        assert_eq!(zstor.get_bytes(b"doc").await.unwrap(), data);
        assert_eq!(zstor.get_bytes(b"small").await.unwrap(), b"tiny");
    });
}

#[test]
fn wrong_key_forged_shards_and_dangling_metadata_give_clear_errors() {
    let cluster = FolderCluster::new(7);
    let zstor = cluster.zstor();
    let data = random_bytes(7, CHUNK_BYTES * 2);
    runtime().block_on(async {
        zstor.put_bytes(b"doc", &data).await.unwrap();

        // A different key cannot read the metadata.
        let mut other = cluster.config.clone();
        other.encryption_key = hex::encode([0x55u8; 32]);
        let stranger = Zstor::open(other).unwrap();
        let error = stranger.get_bytes(b"doc").await.unwrap_err();
        assert!(
            matches!(error, ZstorError::MetadataUnavailable { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("decrypt"), "{error}");

        // Every shard file on two backends is overwritten with a forged frame.
        for index in [1, 4] {
            for (path, name) in cluster.backend_files(index) {
                if name.starts_with(&hex::encode(b"zs:s:")) {
                    let mut bytes = std::fs::read(&path).unwrap();
                    let last = bytes.len() - 1;
                    bytes[last] ^= 1;
                    bytes.truncate(bytes.len() - 7);
                    std::fs::write(&path, &bytes).unwrap();
                }
            }
        }
        assert_eq!(zstor.get_bytes(b"doc").await.unwrap(), data);
        let checks = zstor.check(Some(b"doc"), &|_| {}).await.unwrap();
        assert!(checks[0]
            .problems
            .iter()
            .all(|problem| problem.problem == "corrupt"));
        assert_eq!(checks[0].problems.len(), 4);
        zstor.repair(Some(b"doc"), &|_| {}).await.unwrap();
        assert!(zstor.check(Some(b"doc"), &|_| {}).await.unwrap()[0].healthy());

        // Metadata whose pages are gone everywhere: a clear error, no panic.
        for index in 0..6 {
            for (path, name) in cluster.backend_files(index) {
                if name.starts_with(&hex::encode(b"zs:p:")) {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
        let error = zstor.get_bytes(b"doc").await.unwrap_err();
        assert!(
            matches!(error, ZstorError::MetadataUnavailable { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("page 0 missing"), "{error}");
    });
}

#[test]
fn list_overwrite_and_delete() {
    let cluster = FolderCluster::new(8);
    let zstor = cluster.zstor();
    runtime().block_on(async {
        zstor.put_bytes(b"a", b"first").await.unwrap();
        zstor
            .put_bytes(b"b", &random_bytes(8, CHUNK_BYTES * 2))
            .await
            .unwrap();
        zstor.put_bytes(b"a", b"second").await.unwrap();
        assert_eq!(zstor.get_bytes(b"a").await.unwrap(), b"second");
        assert_eq!(object_names(&zstor).await, vec!["a", "b"]);
        // A backend down during the delete must not bring the object back later.
        cluster.plan(0, down());
        zstor.delete(b"b").await.unwrap();
        cluster.heal();
        assert!(matches!(
            zstor.get_bytes(b"b").await,
            Err(ZstorError::NotFound(_))
        ));
        assert_eq!(object_names(&zstor).await, vec!["a"]);
        assert!(matches!(
            zstor.delete(b"b").await,
            Err(ZstorError::NotFound(_))
        ));
        // The overwritten version's shards are gone.
        let usage: u64 = futures_usage(&cluster).await;
        assert!(usage < 6 * 12, "old shards left behind: {usage} entries");
    });
}

async fn futures_usage(cluster: &FolderCluster) -> u64 {
    let mut total = 0;
    for fault in &cluster.faults {
        total += fault.usage().await.unwrap().entries.unwrap();
    }
    total
}
