//! Through real FUSE mounts made by the real `zos` binary: chunks fetched from a real zdb
//! server (killed mid-read and restarted), from zstor over real zdb servers, and from a
//! real static web server (`python3 -m http.server`) over a dir store; and two mount
//! processes sharing one small chunk cache (bound, LRU across processes, torn files never
//! served, reuse across restarts).
//!
//! Needs root, /dev/fuse and python3 (CI has them); fails, never skips, without them.
//! Needs the `zdb` binary: `ZDB_BIN`, or built with cargo into this test's target directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ZOS: &str = env!("CARGO_BIN_EXE_zos");

fn zdb_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ZDB_BIN") {
        return PathBuf::from(path);
    }
    let zos = PathBuf::from(ZOS);
    let profile_dir = zos.parent().unwrap().to_path_buf();
    let zdb = profile_dir.join("zdb");
    if !zdb.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .args(["build", "-p", "dataplane", "--bin", "zdb"])
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
        if profile_dir.file_name().unwrap() == "release" {
            command.arg("--release");
        }
        assert!(
            command.status().expect("running cargo").success(),
            "building zdb failed"
        );
    }
    zdb
}

fn needs_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "this test needs /dev/fuse (CI runs as root with it)"
    );
}

/// Deterministic bytes that do not compress (so stored chunks have a known size).
fn noise(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped.
struct Server(Child);

impl Server {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_zdb(folder: &Path, port: u16) -> Server {
    let child = Command::new(zdb_binary())
        .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
        // Servers here are SIGKILLed: `--sync` is the mode where that loses no stored chunk.
        .arg("--sync")
        .arg("--data")
        .arg(folder.join("data"))
        .arg("--index")
        .arg(folder.join("index"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting zdb");
    wait_for_port(port, "zdb");
    Server(child)
}

fn start_http(directory: &Path, port: u16) -> Server {
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .arg("--directory")
        .arg(directory)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("this test needs python3 (its http.server is the static web server)");
    wait_for_port(port, "python3 -m http.server");
    Server(child)
}

fn zos(arguments: &[&str]) -> String {
    let output = Command::new(ZOS).args(arguments).output().unwrap();
    assert!(
        output.status.success(),
        "zos {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn is_mounted(mountpoint: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = mountpoint.to_str().unwrap();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted))
}

/// A `zos flist mount` process, unmounted and stopped when dropped.
struct Mount {
    child: Child,
    mountpoint: PathBuf,
}

impl Mount {
    fn start(flist: &Path, mountpoint: &Path, extra: &[&str]) -> Self {
        std::fs::create_dir_all(mountpoint).unwrap();
        let child = Command::new(ZOS)
            .args(["flist", "mount", text(flist), text(mountpoint)])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut mount = Mount {
            child,
            mountpoint: mountpoint.to_path_buf(),
        };
        let started = Instant::now();
        while !is_mounted(mountpoint) {
            if let Some(status) = mount.child.try_wait().unwrap() {
                panic!("zos flist mount exited with {status} before mounting");
            }
            assert!(started.elapsed() < Duration::from_secs(10), "not mounted");
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let _ = Command::new(ZOS)
                .args(["flist", "umount", text(&self.mountpoint)])
                .status();
        }
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

/// Writes `count` files `fN` of `bytes` each under `source`; returns their contents.
fn write_files(source: &Path, count: usize, bytes: usize) -> Vec<Vec<u8>> {
    std::fs::create_dir_all(source).unwrap();
    (0..count)
        .map(|index| {
            let content = noise(index as u64 + 1, bytes);
            std::fs::write(source.join(format!("f{index}")), &content).unwrap();
            content
        })
        .collect()
}

fn errno_of(result: std::io::Result<Vec<u8>>) -> Option<i32> {
    result.err().and_then(|error| error.raw_os_error())
}

#[test]
fn a_zdb_killed_mid_read_gives_eio_after_the_timeout_then_recovers() {
    needs_fuse();
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    let port = free_port();
    let mut zdb = start_zdb(&root.join("zdb"), port);
    let store = format!("zdb://127.0.0.1:{port}/default");
    // 16 MiB in 64 KiB chunks: far more than the kernel's and the mount's read-ahead.
    let content = write_files(&root.join("src"), 1, 16 << 20).remove(0);
    let flist = root.join("big.fl");
    zos(&[
        "flist",
        "pack",
        text(&root.join("src")),
        "-o",
        text(&flist),
        "--store",
        &store,
        "--chunk-size",
        "65536",
    ]);
    let mount = Mount::start(
        &flist,
        &root.join("mnt"),
        &["--cache", text(&root.join("cache")), "--timeout-ms", "1000"],
    );
    let mut file = std::fs::File::open(mount.path("f0")).unwrap();
    let mut head = vec![0u8; 65536];
    file.read_exact(&mut head).unwrap();
    assert_eq!(head, content[..65536]);

    zdb.stop();
    let started = Instant::now();
    let mut tail = vec![0u8; 65536];
    let failed = file.read_exact_at(&mut tail, 12 << 20);
    assert_eq!(
        failed.unwrap_err().raw_os_error(),
        Some(libc::EIO),
        "a read while the store is down is EIO"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "bounded by --timeout-ms, took {:?}",
        started.elapsed()
    );

    let _zdb = start_zdb(&root.join("zdb"), port);
    file.read_exact_at(&mut tail, 12 << 20).unwrap();
    assert_eq!(tail, content[12 << 20..(12 << 20) + 65536]);
    let mut whole = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut whole).unwrap();
    assert!(whole == content, "the whole file reads back after recovery");
}

#[test]
fn chunks_come_from_zstor_and_from_a_static_web_server() {
    needs_fuse();
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    let contents = write_files(&root.join("src"), 3, 700_000);

    // zstor: 2 data + 1 parity shards over three real zdb servers.
    let mut servers = Vec::new();
    let mut init = vec!["stor", "init", "--data-shards", "2", "--parity-shards", "1"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    for index in 0..3 {
        let port = free_port();
        servers.push(start_zdb(&root.join(format!("zdb{index}")), port));
        init.push("--backend".into());
        init.push(format!("zdb://127.0.0.1:{port}/default"));
    }
    let config = root.join("stor.toml");
    init.push("--config".into());
    init.push(text(&config).into());
    zos(&init.iter().map(String::as_str).collect::<Vec<_>>());
    let zstor_flist = root.join("zstor.fl");
    zos(&[
        "flist",
        "pack",
        text(&root.join("src")),
        "-o",
        text(&zstor_flist),
        "--store",
        &format!("zstor://{}", config.display()),
    ]);
    {
        let mount = Mount::start(
            &zstor_flist,
            &root.join("mnt-zstor"),
            &["--cache", text(&root.join("cache-zstor"))],
        );
        assert_eq!(std::fs::read(mount.path("f0")).unwrap(), contents[0]);
        // One backend lost: the parity shard makes up for it.
        servers[1].stop();
        assert_eq!(std::fs::read(mount.path("f1")).unwrap(), contents[1]);
    }

    // http: a dir store served as static files, read-only, same layout.
    let store_dir = root.join("dirstore");
    let http_flist = root.join("http.fl");
    zos(&[
        "flist",
        "pack",
        text(&root.join("src")),
        "-o",
        text(&http_flist),
        "--store",
        &format!("dir://{}", store_dir.display()),
    ]);
    let port = free_port();
    let mut web = start_http(&store_dir, port);
    let url = format!("http://127.0.0.1:{port}/");
    let mount = Mount::start(
        &http_flist,
        &root.join("mnt-http"),
        &[
            "--store",
            &url,
            "--cache",
            text(&root.join("cache-http")),
            "--timeout-ms",
            "1000",
        ],
    );
    assert_eq!(std::fs::read(mount.path("f0")).unwrap(), contents[0]);
    web.stop();
    assert_eq!(
        errno_of(std::fs::read(mount.path("f1"))),
        Some(libc::EIO),
        "the web server is gone"
    );
    let _web = start_http(&store_dir, port);
    assert_eq!(std::fs::read(mount.path("f1")).unwrap(), contents[1]);
    assert_eq!(std::fs::read(mount.path("f2")).unwrap(), contents[2]);
}

/// The chunk files in a cache folder, with their total size.
fn cache_files(cache: &Path) -> (Vec<String>, u64) {
    let mut names = Vec::new();
    let mut total = 0;
    for shard in std::fs::read_dir(cache).unwrap().flatten() {
        if shard.file_name().len() != 2 {
            continue;
        }
        for entry in std::fs::read_dir(shard.path()).unwrap().flatten() {
            total += entry.metadata().unwrap().len();
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    (names, total)
}

/// The hex chunk ids of file `name` in `flist`.
fn chunk_ids(flist: &Path, name: &str) -> Vec<String> {
    let flist = flistfs::Flist::open(flist).unwrap();
    let file = flist.resolve(name.as_bytes()).unwrap().unwrap();
    (0..flist.chunk_len(&file).unwrap())
        .map(|index| hex(&flist.chunk(&file, index).unwrap().id))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn two_mounts_share_one_bounded_cache() {
    needs_fuse();
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    // f0..f3 of two 128 KiB chunks and f4 of one; the cache holds 1 MiB, seven chunks.
    let mut contents = write_files(&root.join("src"), 4, 256 * 1024);
    contents.push(noise(99, 128 * 1024));
    std::fs::write(root.join("src/f4"), &contents[4]).unwrap();
    let store_dir = root.join("store");
    let flist = root.join("six.fl");
    zos(&[
        "flist",
        "pack",
        text(&root.join("src")),
        "-o",
        text(&flist),
        "--store",
        &format!("dir://{}", store_dir.display()),
        "--chunk-size",
        "131072",
    ]);
    let cache = root.join("cache");
    let options = ["--cache", text(&cache), "--cache-mib", "1"];
    let bound = 1024 * 1024;
    let ids: Vec<Vec<String>> = (0..5)
        .map(|index| chunk_ids(&flist, &format!("f{index}")))
        .collect();
    {
        let first = Mount::start(&flist, &root.join("a"), &options);
        let second = Mount::start(&flist, &root.join("b"), &options);
        assert_eq!(std::fs::read(first.path("f0")).unwrap(), contents[0]);
        assert_eq!(std::fs::read(first.path("f1")).unwrap(), contents[1]);
        std::thread::sleep(Duration::from_millis(20));
        // The second mount finds f1 in the shared cache (and so makes it the most recent).
        assert_eq!(std::fs::read(second.path("f1")).unwrap(), contents[1]);
        for (index, content) in contents.iter().enumerate().skip(2) {
            assert_eq!(
                &std::fs::read(second.path(&format!("f{index}"))).unwrap(),
                content
            );
        }
        let (names, total) = cache_files(&cache);
        assert!(total <= bound, "{total} bytes cached, bound {bound}");
        let usage = u64::from_le_bytes(
            std::fs::read(cache.join("usage")).unwrap()[..8]
                .try_into()
                .unwrap(),
        );
        assert_eq!(usage, total, "the shared usage count matches the folder");
        for id in &ids[0] {
            assert!(!names.contains(id), "f0, least recently used, was evicted");
        }
        for id in &ids[1] {
            assert!(names.contains(id), "f1, used by the other mount, was kept");
        }
        for id in &ids[4] {
            assert!(names.contains(id), "f4, just read, is cached");
        }
    }
    // A torn chunk file (a crash between rename and the data reaching the disk) is never
    // served: the mount fetches the chunk again.
    let torn = cache.join(&ids[4][0][..2]).join(&ids[4][0]);
    let bytes = std::fs::read(&torn).unwrap();
    std::fs::write(&torn, &bytes[..bytes.len() / 2]).unwrap();
    {
        let mount = Mount::start(&flist, &root.join("a"), &options);
        assert_eq!(std::fs::read(mount.path("f4")).unwrap(), contents[4]);
        assert_eq!(std::fs::read(&torn).unwrap(), bytes, "fetched again, whole");
    }
    // Reused across restarts: with the store gone, what is cached still reads; what was
    // evicted cannot.
    std::fs::rename(&store_dir, root.join("store-away")).unwrap();
    let mount = Mount::start(
        &flist,
        &root.join("a"),
        &[
            "--cache",
            text(&cache),
            "--cache-mib",
            "1",
            "--timeout-ms",
            "1000",
        ],
    );
    assert_eq!(std::fs::read(mount.path("f4")).unwrap(), contents[4]);
    assert_eq!(std::fs::read(mount.path("f1")).unwrap(), contents[1]);
    assert_eq!(errno_of(std::fs::read(mount.path("f0"))), Some(libc::EIO));
}
