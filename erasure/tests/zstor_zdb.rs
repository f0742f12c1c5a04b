//! zstor over six real `zdb` processes on loopback, 4+2: put and get; any two backends
//! killed; one killed during a write (succeeds, repair queued) and two (fails cleanly);
//! shard bytes corrupted in zdb's files; three down (fails naming them); repair after the
//! backends return and after one is replaced by a fresh zdb.
//!
//! Needs the `zdb` binary: taken from `ZDB_BIN`, or from this test's target directory,
//! built there with cargo when missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{object_names, random_bytes, repair_all_to_health, ZdbCluster};
use erasure::zstor::ZstorError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_dead_and_corrupt_zdb_backends_and_repairs() {
    let mut cluster = ZdbCluster::start().await;
    let data = random_bytes(42, 3 * 1024 * 1024 + 12345);
    let zstor = cluster.zstor();
    zstor.put_bytes(b"big", &data).await.unwrap();
    zstor.put_bytes(b"empty", b"").await.unwrap();
    assert_eq!(zstor.get_bytes(b"big").await.unwrap(), data);
    assert_eq!(zstor.get_bytes(b"empty").await.unwrap(), b"");
    assert_eq!(object_names(&zstor).await, ["big", "empty"]);
    let status = zstor.status().await;
    assert!(status.iter().all(|backend| backend.reachable), "{status:?}");

    // Any two backends dead: a few pairs, each read fresh.
    for (first, second) in [(0, 1), (2, 5), (3, 4)] {
        cluster.kill(first);
        cluster.kill(second);
        assert_eq!(
            cluster.zstor().get_bytes(b"big").await.unwrap(),
            data,
            "zdb {first} and {second} dead"
        );
        cluster.restart(first);
        cluster.restart(second);
    }

    // One dead and another's files corrupted on disk, as in the acceptance script.
    cluster.kill(0);
    cluster.kill(3);
    cluster.corrupt_data_files(3);
    cluster.restart(3);
    assert_eq!(cluster.zstor().get_bytes(b"big").await.unwrap(), data);

    // A third down: a clear error naming the unusable backends, never wrong bytes.
    cluster.kill(5);
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
    cluster.kill(2);
    let written = random_bytes(7, 700_000);
    let report = cluster
        .zstor()
        .put_bytes(b"during", &written)
        .await
        .unwrap();
    assert!(report.degraded_chunks > 0);
    cluster.kill(1);
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
    repair_all_to_health(&zstor).await;

    // A backend replaced by a fresh zdb: repair refills it; then any two others may die.
    cluster.replace(4).await;
    let zstor = cluster.zstor();
    repair_all_to_health(&zstor).await;
    cluster.kill(0);
    cluster.kill(1);
    let zstor = cluster.zstor();
    assert_eq!(zstor.get_bytes(b"big").await.unwrap(), data);
    assert_eq!(zstor.get_bytes(b"during").await.unwrap(), written);
}
