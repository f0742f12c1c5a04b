//! End to end: a tree with every file type and edge case is packed by the real `zos`
//! binary into a dir store, mounted with the kernel's FUSE, compared with the source
//! (content and metadata), unmounted with `zos flist umount`, unpacked and compared again;
//! then a corrupted chunk gives EIO for its file while the rest of the mount still reads.
//!
//! Needs root and /dev/fuse (CI has both); fails, never skips, without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ZOS: &str = env!("CARGO_BIN_EXE_zos");

fn pattern(seed: u64, length: usize) -> Vec<u8> {
    fixtures::bytes::xorshift_bytes(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, length)
}

fn c_path(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn make_tree(root: &Path) {
    let mebibyte = 1 << 20;
    for size in [
        0,
        1,
        4095,
        4096,
        4097,
        mebibyte - 1,
        mebibyte,
        mebibyte + 1,
        3 * mebibyte + 5,
    ] {
        std::fs::write(
            root.join(format!("size_{size}")),
            pattern(size as u64, size),
        )
        .unwrap();
    }
    let deep = root.join("a/b/c/d/e/f/g/h");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("deep.txt"), "deep\n").unwrap();
    std::fs::write(root.join("a/twice_1"), vec![b'x'; 2_000_000]).unwrap();
    std::fs::write(root.join("a/twice_2"), vec![b'x'; 2_000_000]).unwrap();
    let sparse = std::fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(20 * mebibyte as u64).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, b"end", 20 * mebibyte as u64).unwrap();
    std::fs::write(
        root.join(OsString::from_vec(b"bytes_\xff\xfe_name".to_vec())),
        "not utf-8\n",
    )
    .unwrap();
    std::fs::write(root.join("n".repeat(255)), "long name\n").unwrap();
    std::fs::write(root.join("名前 with space"), "unicode\n").unwrap();
    std::fs::create_dir(root.join("empty_dir")).unwrap();
    std::os::unix::fs::symlink("a/b/c/d/e/f/g/h/deep.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    std::fs::hard_link(root.join("size_4096"), root.join("hardlink_to_4096")).unwrap();
    // SAFETY: valid NUL-terminated paths that outlive the calls.
    unsafe {
        assert_eq!(libc::mkfifo(c_path(&root.join("fifo")).as_ptr(), 0o640), 0);
        assert_eq!(
            libc::mknod(
                c_path(&root.join("null_dev")).as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(1, 3)
            ),
            0
        );
        assert_eq!(
            libc::mknod(
                c_path(&root.join("block_dev")).as_ptr(),
                libc::S_IFBLK | 0o600,
                libc::makedev(7, 0)
            ),
            0
        );
    }
    std::fs::write(root.join("setuid.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        root.join("setuid.sh"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::create_dir(root.join("sticky")).unwrap();
    std::fs::set_permissions(root.join("sticky"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(root.join("owned"), "owned\n").unwrap();
    std::os::unix::fs::chown(root.join("owned"), Some(1234), Some(5678)).unwrap();
    xattr::set(root.join("owned"), "user.note", b"hello xattr").unwrap();
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
    ];
    // SAFETY: valid path and a two-element timespec array, as utimensat wants.
    unsafe {
        assert_eq!(
            libc::utimensat(
                libc::AT_FDCWD,
                c_path(&root.join("owned")).as_ptr(),
                times.as_ptr(),
                0
            ),
            0
        );
    }
}

/// Everything compared for one entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    mtime: (i64, i64),
    rdev: u64,
    nlink: Option<u64>,
    target: Option<Vec<u8>>,
    content: Option<Vec<u8>>,
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

fn snapshot(root: &Path) -> (BTreeMap<Vec<u8>, Entry>, BTreeMap<Vec<u8>, u64>) {
    let mut entries = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        for child in std::fs::read_dir(root.join(&relative)).unwrap() {
            let child = child.unwrap();
            let relative = relative.join(child.file_name());
            let path = root.join(&relative);
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let kind = metadata.file_type();
            let xattrs = if kind.is_symlink() {
                BTreeMap::new()
            } else {
                xattr::list(&path)
                    .unwrap()
                    .map(|name| {
                        let value = xattr::get(&path, &name).unwrap().unwrap_or_default();
                        (name, value)
                    })
                    .collect()
            };
            let content = kind.is_file().then(|| std::fs::read(&path).unwrap());
            entries.insert(
                relative.as_os_str().as_bytes().to_vec(),
                Entry {
                    mode: metadata.mode(),
                    uid: metadata.uid(),
                    gid: metadata.gid(),
                    size: (!kind.is_dir()).then_some(metadata.size()),
                    mtime: (
                        metadata.mtime(),
                        if kind.is_symlink() {
                            0
                        } else {
                            metadata.mtime_nsec()
                        },
                    ),
                    rdev: metadata.rdev(),
                    nlink: (!kind.is_dir()).then_some(metadata.nlink()),
                    target: kind.is_symlink().then(|| {
                        std::fs::read_link(&path)
                            .unwrap()
                            .into_os_string()
                            .into_vec()
                    }),
                    content,
                    xattrs,
                },
            );
            inodes.insert(relative.as_os_str().as_bytes().to_vec(), metadata.ino());
            if kind.is_dir() {
                stack.push(relative);
            }
        }
    }
    (entries, inodes)
}

fn assert_same_tree(source: &Path, copy: &Path, what: &str) {
    let (expected, expected_inodes) = snapshot(source);
    let (actual, actual_inodes) = snapshot(copy);
    let expected_names: Vec<_> = expected
        .keys()
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect();
    let actual_names: Vec<_> = actual
        .keys()
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect();
    assert_eq!(expected_names, actual_names, "{what}: the names differ");
    for (name, entry) in &expected {
        assert_eq!(
            Some(entry),
            actual.get(name),
            "{what}: {} differs",
            String::from_utf8_lossy(name)
        );
    }
    // Hard links: the same inode in the copy.
    let inode_of = |inodes: &BTreeMap<Vec<u8>, u64>, name: &str| inodes[name.as_bytes()];
    assert_eq!(
        inode_of(&expected_inodes, "size_4096"),
        inode_of(&expected_inodes, "hardlink_to_4096")
    );
    assert_eq!(
        inode_of(&actual_inodes, "size_4096"),
        inode_of(&actual_inodes, "hardlink_to_4096"),
        "{what}: the hard link is not the same inode"
    );
}

fn is_mounted(mountpoint: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = mountpoint.to_str().unwrap();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted))
}

struct Mount {
    child: Child,
    mountpoint: PathBuf,
}

impl Mount {
    fn start(flist: &Path, mountpoint: &Path, cache: &Path) -> Self {
        let child = Command::new(ZOS)
            .args(["flist", "mount"])
            .arg(flist)
            .arg(mountpoint)
            .arg("--cache")
            .arg(cache)
            .stdout(Stdio::null())
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
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "not mounted after 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }

    fn unmount_with_zos(mut self) {
        let status = Command::new(ZOS)
            .args(["flist", "umount"])
            .arg(&self.mountpoint)
            .status()
            .unwrap();
        assert!(status.success(), "zos flist umount failed");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the mount process ended with {status}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the mount process did not exit after umount"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!is_mounted(&self.mountpoint));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn zos(arguments: &[&std::ffi::OsStr]) -> String {
    let output = Command::new(ZOS).args(arguments).output().unwrap();
    assert!(
        output.status.success(),
        "zos {:?} failed: {}",
        arguments,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A scratch folder for a FUSE test with `src`, `store`, `mnt` and `cache` in it; fails
/// loudly without /dev/fuse.
fn fuse_scratch() -> tempfile::TempDir {
    assert!(
        Path::new("/dev/fuse").exists(),
        "this test needs /dev/fuse (CI runs as root with it)"
    );
    let scratch = tempfile::tempdir().unwrap();
    for name in ["src", "store", "mnt", "cache"] {
        std::fs::create_dir(scratch.path().join(name)).unwrap();
    }
    scratch
}

/// `zos flist pack SOURCE -o FLIST --store STORE`; returns what it printed.
fn pack(source: &Path, flist: &Path, store: &str) -> String {
    zos(&[
        "flist".as_ref(),
        "pack".as_ref(),
        source.as_os_str(),
        "-o".as_ref(),
        flist.as_os_str(),
        "--store".as_ref(),
        store.as_ref(),
    ])
}

#[test]
fn pack_mount_unpack_and_corrupt_round_trip() {
    // SAFETY: geteuid has no arguments and cannot fail.
    let effective_user = unsafe { libc::geteuid() };
    assert_eq!(
        effective_user, 0,
        "this test needs root (mknod, chown, mount)"
    );
    let scratch = fuse_scratch();
    let path = |name: &str| scratch.path().join(name);
    make_tree(&path("src"));
    let flist = path("tree.fl");
    let store = format!("dir://{}", path("store").display());
    let summary = pack(&path("src"), &flist, &store);
    assert!(summary.contains("packed"), "{summary}");
    let listing = zos(&["flist".as_ref(), "ls".as_ref(), flist.as_os_str()]);
    assert!(
        listing.contains("setuid.sh") && listing.contains("-rwsr-xr-x"),
        "{listing}"
    );

    let mount = Mount::start(&flist, &path("mnt"), &path("cache"));
    assert_same_tree(&path("src"), &path("mnt"), "through the mount");
    mount.unmount_with_zos();

    zos(&[
        "flist".as_ref(),
        "unpack".as_ref(),
        flist.as_os_str(),
        path("out").as_os_str(),
    ]);
    assert_same_tree(&path("src"), &path("out"), "after unpack");

    // Corrupt the stored chunks of one file only; with an empty cache, that file is EIO
    // and the others still read.
    let chunk_dirs: Vec<PathBuf> = std::fs::read_dir(path("store"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    let before: BTreeMap<PathBuf, Vec<u8>> = chunk_dirs
        .iter()
        .flat_map(|directory| std::fs::read_dir(directory).unwrap())
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    // Pack a one-file tree to learn which chunks size_1048577 uses (content addressing).
    std::fs::create_dir(path("probe")).unwrap();
    std::fs::copy(path("src/size_1048577"), path("probe/f")).unwrap();
    let probe_store = path("probe-store");
    let probe_url = format!("dir://{}", probe_store.display());
    pack(&path("probe"), &path("probe.fl"), &probe_url);
    let mut corrupted = 0;
    for shard in std::fs::read_dir(&probe_store).unwrap() {
        for chunk in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let name = chunk.unwrap().file_name();
            let victim = before
                .keys()
                .find(|candidate| candidate.file_name() == Some(&name))
                .expect("same chunk id");
            let mut bytes = before[victim].clone();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
            std::fs::write(victim, bytes).unwrap();
            corrupted += 1;
        }
    }
    assert_eq!(corrupted, 2, "a 1 MiB + 1 byte file has two chunks");
    std::fs::remove_dir_all(path("cache")).unwrap();
    std::fs::create_dir(path("cache")).unwrap();
    let mount = Mount::start(&flist, &path("mnt"), &path("cache"));
    let error = std::fs::read(path("mnt/size_1048577")).expect_err("corrupt chunks must not read");
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
    assert_eq!(
        std::fs::read(path("mnt/size_4097")).unwrap(),
        pattern(4097, 4097)
    );
    assert_eq!(
        std::fs::read_to_string(path("mnt/a/b/c/d/e/f/g/h/deep.txt")).unwrap(),
        "deep\n"
    );
    mount.unmount_with_zos();
}

#[test]
fn rw_mounts_write_to_the_upper_folder() {
    let scratch = fuse_scratch();
    let path = |name: &str| scratch.path().join(name);
    std::fs::write(path("src/base.txt"), "from the flist\n").unwrap();
    let flist = path("rw.fl");
    let store = format!("dir://{}", path("store").display());
    pack(&path("src"), &flist, &store);
    let child = Command::new(ZOS)
        .args(["flist", "mount"])
        .arg(&flist)
        .arg(path("mnt"))
        .arg("--cache")
        .arg(path("cache"))
        .arg("--rw")
        .arg(path("rw"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut mount = Mount {
        child,
        mountpoint: path("mnt"),
    };
    let started = Instant::now();
    while !is_mounted(&path("mnt")) {
        assert!(
            mount.child.try_wait().unwrap().is_none(),
            "the mount process exited"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the overlay did not mount in 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(path("mnt/new.txt"), "written\n").unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(path("mnt/base.txt"))
        .unwrap()
        .write_all(b"changed\n")
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(path("mnt/base.txt")).unwrap(),
        "from the flist\nchanged\n"
    );
    assert_eq!(
        std::fs::read_to_string(path("rw/upper/new.txt")).unwrap(),
        "written\n"
    );
    assert_eq!(
        std::fs::read_to_string(path("rw/lower/base.txt")).unwrap(),
        "from the flist\n",
        "the flist is untouched"
    );
    mount.unmount_with_zos();
    assert!(
        !is_mounted(&path("rw/lower")),
        "unmounting the overlay ends the flist mount too"
    );
}

/// Files of `pid` open under `folder` (from /proc/PID/fd).
fn open_files_under(pid: u32, folder: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(folder))
        .collect()
}

/// Waits until `folder` holds `count` files, for at most 20 s.
fn wait_for_files(folder: &Path, count: usize) -> Vec<PathBuf> {
    let started = Instant::now();
    loop {
        let found: Vec<PathBuf> = std::fs::read_dir(folder)
            .map(|entries| entries.map(|entry| entry.unwrap().path()).collect())
            .unwrap_or_default();
        if found.len() >= count {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{} files in {} after 20 s, expected {count}",
            found.len(),
            folder.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn files_read_whole_are_then_served_by_passthrough() {
    let scratch = fuse_scratch();
    let path = |name: &str| scratch.path().join(name);
    let mebibyte = 1 << 20;
    let big = pattern(77, 3 * mebibyte + 5);
    std::fs::write(path("src/big"), &big).unwrap();
    // Data, a hole of three chunks, data: the copy must read zeros in between.
    let sparse_file = std::fs::File::create(path("src/sparse")).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse_file, b"head", 0).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse_file, b"tail", 4 * mebibyte as u64).unwrap();
    drop(sparse_file);
    let sparse = std::fs::read(path("src/sparse")).unwrap();
    std::fs::write(path("src/small"), "small files are not copied\n").unwrap();
    let flist = path("p.fl");
    let store = format!("dir://{}", path("store").display());
    pack(&path("src"), &flist, &store);
    let mount = Mount::start(&flist, &path("mnt"), &path("cache"));
    let mount_pid = mount.child.id();

    // First reads: served by the mount; reading to the end has the copies made.
    assert_eq!(std::fs::read(path("mnt/big")).unwrap(), big);
    assert_eq!(std::fs::read(path("mnt/sparse")).unwrap(), sparse);
    std::fs::read(path("mnt/small")).unwrap();
    let copies = wait_for_files(&path("cache/files"), 2);
    assert_eq!(copies.len(), 2, "one copy per file of 1 MiB or more");

    // A new open is a passthrough one: the mount holds the copy as its backing file, and
    // reads no longer need the mount process at all (it is stopped while they run).
    let file = std::fs::File::open(path("mnt/big")).unwrap();
    let backing = open_files_under(mount_pid, &path("cache/files"));
    assert_eq!(
        backing.len(),
        1,
        "the copy is registered as the backing file"
    );
    // SAFETY: kill with a valid pid and signal number has no memory effects.
    assert_eq!(unsafe { libc::kill(mount_pid as i32, libc::SIGSTOP) }, 0);
    // The file is handed back, not closed, while the mount is stopped: only reads count.
    let reader = std::thread::spawn(move || {
        let mut content = vec![0u8; 3 * mebibyte + 5];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut content, 0).unwrap();
        (content, file)
    });
    let started = Instant::now();
    while !reader.is_finished() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(mount_pid as i32, libc::SIGCONT) }, 0);
    let finished_while_stopped = reader.is_finished();
    let (content, file) = reader.join().unwrap();
    drop(file);
    assert!(
        finished_while_stopped,
        "a passthrough read waited for the stopped mount process"
    );
    assert_eq!(content, big, "passthrough reads back identical bytes");

    // Closing releases the backing file; every later open reads the same bytes.
    let started = Instant::now();
    while !open_files_under(mount_pid, &path("cache/files")).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the backing file is still open after the file was closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read(path("mnt/big")).unwrap(), big);
    assert_eq!(std::fs::read(path("mnt/sparse")).unwrap(), sparse);
    mount.unmount_with_zos();
}
