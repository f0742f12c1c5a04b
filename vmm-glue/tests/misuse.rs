//! Misuse of `zos vm disk` gives clear errors (no guest needed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{zos_err, zos_ok, Server};

#[test]
fn misuse_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (volume, other, socket) = (path("a"), path("b"), path("a.sock"));

    let error = zos_err(&["vm", "disk", "serve", &volume, "--socket", &socket]);
    assert!(error.contains("does not exist"), "{error}");
    let error = zos_err(&["vm", "disk", "create", &volume, "--size", "12X"]);
    assert!(error.contains("unknown unit"), "{error}");
    let error = zos_err(&[
        "vm",
        "disk",
        "create",
        &volume,
        "--size",
        "1M",
        "--key-file",
        &path("nokey"),
    ]);
    assert!(error.contains("cannot read key file"), "{error}");
    zos_ok(&["vm", "disk", "create", &volume, "--size", "16M"]);
    zos_ok(&["vm", "disk", "create", &other, "--size", "16M"]);
    let error = zos_err(&["vm", "disk", "create", &volume, "--size", "16M"]);
    assert!(error.contains("already exists"), "{error}");
    let error = zos_err(&["vm", "disk", "resize", &volume, "--size", "8M"]);
    assert!(error.contains("only grows"), "{error}");
    let key = path("key");
    std::fs::write(&key, [7u8; 64]).unwrap();
    let error = zos_err(&[
        "vm",
        "disk",
        "serve",
        &volume,
        "--socket",
        &socket,
        "--key-file",
        &key,
    ]);
    assert!(error.contains("not encrypted"), "{error}");

    let server = Server::start(
        std::path::Path::new(&volume),
        std::path::Path::new(&socket),
        &[],
    );
    // The socket is taken by a live server.
    let error = zos_err(&["vm", "disk", "serve", &other, "--socket", &socket]);
    assert!(error.contains("already served"), "{error}");
    // The volume is in use by that server.
    let error = zos_err(&["vm", "disk", "serve", &volume, "--socket", &path("c.sock")]);
    assert!(error.contains("in use"), "{error}");
    assert!(!dir.path().join("c.sock").exists());
    let listing = zos_ok(&["vm", "disk", "list", dir.path().to_str().unwrap()]);
    assert!(
        listing
            .lines()
            .any(|l| l.contains("/a ") && l.contains("yes")),
        "{listing}"
    );
    server.terminate();

    // A path that is not a socket is never replaced.
    let not_socket = path("file.sock");
    std::fs::write(&not_socket, b"precious").unwrap();
    let error = zos_err(&["vm", "disk", "serve", &volume, "--socket", &not_socket]);
    assert!(error.contains("not a socket"), "{error}");
    assert_eq!(std::fs::read(&not_socket).unwrap(), b"precious");

    // A stale socket file (its server died) is replaced.
    let stale = path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let server = Server::start(
        std::path::Path::new(&volume),
        std::path::Path::new(&stale),
        &[],
    );
    server.terminate();
}
