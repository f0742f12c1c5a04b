//! `zos stor` as a user drives it, over six real zdb servers: init (and its refusal to
//! overwrite), put from a file and from stdin, get to a file and to stdout, ls/status/check
//! with --json, a dead backend during a put (stored, queued), repair, rm, and clear failures;
//! put/get/ls/rm/status/check/repair also through a running daemon, over its unix socket
//! (given, or the config's) and over TCP.
//!
//! Needs the `zdb` binary: `ZDB_BIN`, or built with cargo into this test's target directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use fixtures::process::{free_port, wait_until, KillOnDrop};
use fixtures::zdb::{zdb_binary, ZdbProcess};

fn wait_for_socket(socket: &Path) {
    assert!(
        wait_until(Duration::from_secs(20), || socket.exists()),
        "the daemon did not create its socket {}",
        socket.display()
    );
}

fn zos(args: &[&str], config: &Path, state: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("XDG_STATE_HOME", state)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn zos_stor_end_to_end() {
    let zdb = zdb_binary();
    let folder = tempfile::tempdir().unwrap();
    let state = folder.path().join("state");
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    let mut args: Vec<String> = vec![
        "stor".into(),
        "init".into(),
        "--data-shards".into(),
        "4".into(),
        "--parity-shards".into(),
        "2".into(),
        "--chunk-size".into(),
        "262144".into(),
    ];
    for index in 0..6 {
        let server = ZdbProcess::start(&zdb, &folder.path().join(format!("z{index}")), &[]);
        ports.push(server.port());
        servers.push(server);
        args.push("--backend".into());
        args.push(format!("zdb://127.0.0.1:{}/default", ports[index]));
    }
    let config = folder.path().join("stor.toml");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let init = zos(&args, &config, &state);
    assert!(init.status.success(), "{}", text(&init));
    assert!(String::from_utf8_lossy(&init.stdout).contains("Back up"));
    let again = zos(&args, &config, &state);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("refusing to overwrite"),
        "{}",
        text(&again)
    );
    let too_few = zos(&args[..10], &folder.path().join("other.toml"), &state);
    assert!(!too_few.status.success());
    assert!(text(&too_few).contains("at least 6"), "{}", text(&too_few));

    let data: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let input = folder.path().join("input.bin");
    std::fs::write(&input, &data).unwrap();
    let put = zos(&["stor", "put", input.to_str().unwrap()], &config, &state);
    assert!(put.status.success(), "{}", text(&put));
    assert!(
        String::from_utf8_lossy(&put.stdout).contains("\"input.bin\""),
        "{}",
        text(&put)
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["stor", "put", "-", "--key", "from-stdin", "--config"])
        .arg(&config)
        .env("XDG_STATE_HOME", &state)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello from stdin")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let stdout = zos(&["stor", "get", "from-stdin"], &config, &state);
    assert_eq!(stdout.stdout, b"hello from stdin");

    let output = folder.path().join("output.bin");
    let get = zos(
        &["stor", "get", "input.bin", "-o", output.to_str().unwrap()],
        &config,
        &state,
    );
    assert!(get.status.success(), "{}", text(&get));
    assert_eq!(std::fs::read(&output).unwrap(), data);

    let ls = zos(&["stor", "ls", "--json"], &config, &state);
    let listed: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[1]["name"], "input.bin");
    assert_eq!(listed[1]["size"], 1_500_000);

    // The same through a running daemon.
    let socket = folder.path().join("zstor.sock");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["stor", "daemon", "--socket"])
        .arg(&socket)
        .arg("--config")
        .arg(&config)
        .env("XDG_STATE_HOME", &state)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(&socket);
    let via = socket.to_str().unwrap();
    let put = zos(
        &[
            "stor",
            "put",
            input.to_str().unwrap(),
            "--key",
            "via-daemon",
            "--daemon",
            via,
        ],
        &config,
        &state,
    );
    assert!(put.status.success(), "{}", text(&put));
    let through = folder.path().join("through.bin");
    let get = zos(
        &[
            "stor",
            "get",
            "via-daemon",
            "-o",
            through.to_str().unwrap(),
            "--daemon",
            via,
        ],
        &config,
        &state,
    );
    assert!(get.status.success(), "{}", text(&get));
    assert_eq!(std::fs::read(&through).unwrap(), data);
    let ls = zos(&["stor", "ls", "--daemon", via], &config, &state);
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("via-daemon"),
        "{}",
        text(&ls)
    );
    let rm = zos(
        &["stor", "rm", "via-daemon", "--daemon", via],
        &config,
        &state,
    );
    assert!(rm.status.success(), "{}", text(&rm));
    let gone = zos(
        &["stor", "get", "via-daemon", "--daemon", via],
        &config,
        &state,
    );
    assert!(!gone.status.success());
    assert!(text(&gone).contains("404"), "{}", text(&gone));
    let _ = daemon.kill();
    let _ = daemon.wait();

    // A second daemon, on the config's socket (under the state directory) and on TCP, for
    // status, check and repair through it while backends die and come back.
    let tcp_port = free_port();
    let tcp = format!("http://127.0.0.1:{tcp_port}");
    let default_socket = state.join("zos/stor/zstor.sock");
    let daemon = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_zos"))
            .args([
                "stor",
                "daemon",
                "--listen",
                &format!("127.0.0.1:{tcp_port}"),
            ])
            .arg("--config")
            .arg(&config)
            .env("XDG_STATE_HOME", &state)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_socket(&default_socket);
    let status = zos(
        &["stor", "status", "--json", "--daemon", &tcp],
        &config,
        &state,
    );
    assert!(status.status.success(), "{}", text(&status));
    let check = zos(&["stor", "check", "--daemon"], &config, &state);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("ok"),
        "{}",
        text(&check)
    );

    // A backend dies: a put still succeeds with a warning; check fails; status names it.
    servers[3].kill();
    let put = zos(
        &["stor", "put", input.to_str().unwrap(), "--key", "degraded"],
        &config,
        &state,
    );
    assert!(put.status.success(), "{}", text(&put));
    assert!(
        String::from_utf8_lossy(&put.stderr).contains("queued"),
        "{}",
        text(&put)
    );
    let status = zos(&["stor", "status", "--json"], &config, &state);
    assert!(!status.status.success());
    let statuses: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        statuses
            .as_array()
            .unwrap()
            .iter()
            .filter(|backend| backend["reachable"] == false)
            .count(),
        1
    );
    let check = zos(&["stor", "check", "--json"], &config, &state);
    assert!(!check.status.success(), "{}", text(&check));
    // The daemon sees the same: one backend down, the degraded object's missing shards.
    let status = zos(
        &["stor", "status", "--json", "--daemon", &tcp],
        &config,
        &state,
    );
    assert!(!status.status.success(), "{}", text(&status));
    assert!(
        text(&status).contains("1 of 6 backends are unreachable"),
        "{}",
        text(&status)
    );
    let statuses: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let down: Vec<&serde_json::Value> = statuses
        .as_array()
        .unwrap()
        .iter()
        .filter(|backend| backend["reachable"] == false)
        .collect();
    assert_eq!(down.len(), 1, "{}", text(&status));
    assert!(
        down[0]["backend"]
            .as_str()
            .unwrap()
            .contains(&ports[3].to_string()),
        "{}",
        text(&status)
    );
    let check = zos(
        &["stor", "check", "degraded", "--json", "--daemon", &tcp],
        &config,
        &state,
    );
    assert!(!check.status.success(), "{}", text(&check));
    let checks: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let problems = checks[0]["problems"].as_array().unwrap();
    assert!(!problems.is_empty(), "{}", text(&check));
    assert!(
        problems.iter().all(|problem| problem["backend"]
            .as_str()
            .unwrap()
            .contains(&ports[3].to_string())),
        "{}",
        text(&check)
    );

    // Too many down: a put fails, names the backends, and a get fails without leaving a file.
    servers[4].kill();
    let refused = zos(
        &["stor", "put", input.to_str().unwrap(), "--key", "refused"],
        &config,
        &state,
    );
    assert!(!refused.status.success());
    servers[5].kill();
    let failed_output = folder.path().join("failed.bin");
    let failed = zos(
        &[
            "stor",
            "get",
            "input.bin",
            "-o",
            failed_output.to_str().unwrap(),
        ],
        &config,
        &state,
    );
    assert!(!failed.status.success());
    assert!(text(&failed).contains("127.0.0.1"), "{}", text(&failed));
    assert!(!failed_output.exists());
    assert!(std::fs::read_dir(folder.path()).unwrap().all(|entry| !entry
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("partial")));

    // They come back: repair restores full redundancy, then rm and a missing object.
    for server in &mut servers[3..6] {
        server.start_again();
    }
    let socket = default_socket.to_str().unwrap();
    let repair = zos(
        &["stor", "repair", "--json", "--daemon", socket],
        &config,
        &state,
    );
    assert!(repair.status.success(), "{}", text(&repair));
    let repairs: serde_json::Value = serde_json::from_slice(&repair.stdout).unwrap();
    let degraded = repairs
        .as_array()
        .unwrap()
        .iter()
        .find(|repair| repair["name"] == "degraded")
        .unwrap_or_else(|| panic!("degraded not repaired: {}", text(&repair)));
    assert!(
        degraded["shards_rebuilt"].as_u64().unwrap() > 0,
        "{}",
        text(&repair)
    );
    let check = zos(&["stor", "check", "--daemon", &tcp], &config, &state);
    assert!(check.status.success(), "{}", text(&check));
    let repair = zos(&["stor", "repair"], &config, &state);
    assert!(repair.status.success(), "{}", text(&repair));
    assert!(
        String::from_utf8_lossy(&repair.stdout).contains("degraded: 0 shards rebuilt"),
        "{}",
        text(&repair)
    );
    let check = zos(&["stor", "check"], &config, &state);
    assert!(check.status.success(), "{}", text(&check));
    let bad_address = zos(
        &["stor", "status", "--daemon", "https://127.0.0.1:1"],
        &config,
        &state,
    );
    assert!(!bad_address.status.success());
    assert!(
        text(&bad_address).contains("bad zstor daemon address"),
        "{}",
        text(&bad_address)
    );
    drop(daemon);
    let rm = zos(&["stor", "rm", "degraded"], &config, &state);
    assert!(rm.status.success(), "{}", text(&rm));
    let ls = zos(&["stor", "ls"], &config, &state);
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains("degraded"),
        "{}",
        text(&ls)
    );
    let missing = zos(&["stor", "get", "no-such-object"], &config, &state);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("no object named"),
        "{}",
        text(&missing)
    );
}
