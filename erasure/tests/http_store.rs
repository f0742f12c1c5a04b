//! The http store against a real web server (Python's `http.server`) serving a `dir` store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use erasure::store::{ChunkStore, DirStore, StoreError};
use fixtures::process::{free_port, wait_for_port, KillOnDrop};

#[tokio::test]
async fn reads_a_dir_layout_over_http() {
    let folder = tempfile::tempdir().unwrap();
    let dir = DirStore::new(folder.path());
    dir.put(&[0x12, 0x34], b"served over http").await.unwrap();

    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(folder.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 is needed for this test (Debian package python3)");
    let _server = KillOnDrop(child);
    assert!(
        wait_for_port(port, Duration::from_secs(10)),
        "python3 http.server did not start"
    );

    let store = erasure::open_store(&format!("http://127.0.0.1:{port}")).unwrap();
    assert!(store.is_read_only());
    assert_eq!(
        store.get(&[0x12, 0x34]).await.unwrap().as_deref(),
        Some(&b"served over http"[..])
    );
    assert!(store.exists(&[0x12, 0x34]).await.unwrap());
    assert_eq!(store.get(&[0x99]).await.unwrap(), None);
    assert!(!store.exists(&[0x99]).await.unwrap());
    assert!(matches!(
        store.put(&[1], b"x").await,
        Err(StoreError::ReadOnly(_))
    ));
    assert!(matches!(
        store.delete(&[1]).await,
        Err(StoreError::ReadOnly(_))
    ));

    let dead = erasure::open_store(&format!("http://127.0.0.1:{}", free_port())).unwrap();
    assert!(matches!(
        dead.get(&[1]).await,
        Err(StoreError::Backend { .. })
    ));
}
