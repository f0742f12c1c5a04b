//! End to end: the real `zos` binary packs a tree into an flist and serves it over
//! vhost-user-fs to real QEMU guests (the fixtures guest, TCG unless ZOS_GUEST_ACCEL says
//! otherwise). The guest mounts it with the kernel's virtiofs driver, checksums every file
//! and lists every entry's metadata; the list must equal the source tree's, both sorted in
//! byte order. A second guest then connects to the same running backend.
//!
//! Needs: `zos` built (`cargo build -p control --bin zos`), qemu-system-x86, cpio, fio, and
//! the guest image (built on first use by fixtures/guest/build.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{md5_hex, zos_ok, Server};
use fixtures::guest::{Accel, GuestImage, GuestRun};

const MIB: usize = 1 << 20;

/// xorshift64*: deterministic file contents.
fn pseudo_random(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(length + 8);
    while out.len() < length {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(length);
    out
}

/// A tree with every kind of entry the flist keeps that a guest can check: files of awkward
/// sizes (empty, one byte, exactly one chunk, several chunks, sparse), modes, owners, a
/// hard link, symlinks (relative, absolute, dangling), a large directory (several readdir
/// replies) and names whose byte order differs from a locale's.
fn make_tree(root: &Path) {
    let write = |relative: &str, bytes: &[u8]| {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    write("a/big", &pseudo_random(1, 5_000_000));
    write("a/exact1m", &pseudo_random(2, MIB));
    write("a/b/small", b"hi\n");
    write("a/b/one", b"x");
    write("empty", b"");
    write("B-upper", b"sorted before a in byte order\n");
    write("\u{e9}t\u{e9}", b"utf-8 name\n");
    for index in 0..150 {
        write(
            &format!("many/file-{index:03}"),
            format!("{index}\n").as_bytes(),
        );
    }
    // Sparse: data, a 3 MiB hole, data.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::File::create(root.join("sparse")).unwrap();
        file.write_all(&pseudo_random(3, 4096)).unwrap();
        file.seek(SeekFrom::Start(3 * MIB as u64 + 4096)).unwrap();
        file.write_all(&pseudo_random(4, 777)).unwrap();
    }
    std::fs::hard_link(root.join("a/exact1m"), root.join("a/hard")).unwrap();
    std::os::unix::fs::symlink("../big", root.join("a/b/link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("absolute-link")).unwrap();
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
    std::fs::create_dir_all(root.join("private")).unwrap();
    write("private/secret", b"owned by someone else\n");
    let chmod = |relative: &str, mode: u32| {
        std::fs::set_permissions(root.join(relative), std::fs::Permissions::from_mode(mode))
            .unwrap()
    };
    chmod("a/b/small", 0o751);
    chmod("a/b/one", 0o4755);
    chmod("private/secret", 0o600);
    chmod("private", 0o700);
    let status = Command::new("chown")
        .args(["-R", "1234:5678"])
        .arg(root.join("private"))
        .status()
        .unwrap();
    assert!(status.success(), "chown (the tests run as root)");
}

/// `path kind-and-mode(hex) uid gid [nlink size md5 | target]` for every entry, as the
/// guest script prints them; directories give no size or link count (those are the
/// filesystem's own).
fn host_listing(root: &Path) -> BTreeMap<Vec<u8>, String> {
    fn walk(root: &Path, directory: &Path, out: &mut BTreeMap<Vec<u8>, String>) {
        for entry in std::fs::read_dir(directory).unwrap() {
            let path = entry.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let relative = Path::new(".").join(path.strip_prefix(root).unwrap());
            let head = format!(
                "{:x} {} {}",
                metadata.mode(),
                metadata.uid(),
                metadata.gid()
            );
            let line = if metadata.is_dir() {
                walk(root, &path, out);
                head
            } else if metadata.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                format!("{head} -> {}", target.display())
            } else {
                let bytes = std::fs::read(&path).unwrap();
                format!(
                    "{head} {} {} {}",
                    metadata.nlink(),
                    metadata.len(),
                    md5_hex(&bytes)
                )
            };
            use std::os::unix::ffi::OsStrExt;
            out.insert(relative.as_os_str().as_bytes().to_vec(), line);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The same listing from the guest's console lines `ENTRY <path>|<fields>`.
fn guest_listing(console: &str) -> BTreeMap<Vec<u8>, String> {
    console
        .lines()
        .filter_map(|line| line.trim_end().strip_prefix("ENTRY "))
        .map(|rest| {
            let (path, fields) = rest.split_once('|').unwrap();
            (path.as_bytes().to_vec(), fields.to_owned())
        })
        .collect()
}

/// Prints one ENTRY line per entry under /mnt/fl (busybox: stat's %f is the raw mode in
/// hex), in byte order.
const LIST_SCRIPT: &str = r#"
cd /mnt/fl && find . -mindepth 1 | LC_ALL=C sort | while IFS= read -r p; do
  head=$(stat -c '%f %u %g' "$p")
  if [ -L "$p" ]; then echo "ENTRY $p|$head -> $(readlink "$p")"
  elif [ -d "$p" ]; then echo "ENTRY $p|$head"
  else echo "ENTRY $p|$head $(stat -c '%h %s' "$p") $(md5sum < "$p" | cut -d' ' -f1)"
  fi
done
cd /
"#;

/// One boot checks the whole tree and that writes are refused; a second guest then mounts
/// the same running backend and reads a large file and the large directory again.
#[test]
fn guests_read_a_packed_tree_identically_and_reconnect() {
    let image =
        GuestImage::ensure().expect("guest image (apt-get install cpio fio qemu-system-x86)");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    let store = dir.path().join("store");
    let flist = dir.path().join("tree.fl");
    zos_ok(&[
        "flist",
        "pack",
        tree.to_str().unwrap(),
        "-o",
        flist.to_str().unwrap(),
        "--store",
        &format!("dir://{}", store.display()),
    ]);
    let socket = dir.path().join("fs.sock");
    let cache = dir.path().join("cache");
    let server = Server::serve(
        &[
            "vm".as_ref(),
            "fs".as_ref(),
            "serve".as_ref(),
            flist.as_os_str(),
            "--socket".as_ref(),
            socket.as_os_str(),
            "--cache".as_ref(),
            cache.as_os_str(),
            // Files from 4 MiB on (a/big) are read with FOPEN_DIRECT_IO, the rest through
            // the guest's page cache: both read paths are checked.
            "--direct-io-min-mib".as_ref(),
            "4".as_ref(),
        ],
        &socket,
        "serving vhost-user-fs",
    );
    let accel = Accel::from_env().unwrap();
    let device = [
        "-chardev".to_owned(),
        format!("socket,id=fs0,path={}", socket.display()),
        "-device".to_owned(),
        "vhost-user-fs-pci,chardev=fs0,tag=flist".to_owned(),
    ];

    let first = GuestRun::new(format!(
        r#"
mkdir -p /mnt/fl && mount -t virtiofs flist /mnt/fl && echo MOUNTED=yes
{LIST_SCRIPT}
touch /mnt/fl/new 2>/dev/null && echo CREATE=allowed || echo CREATE=refused
(echo x >> /mnt/fl/empty) 2>/dev/null && echo APPEND=allowed || echo APPEND=refused
mkdir /mnt/fl/newdir 2>/dev/null && echo MKDIR=allowed || echo MKDIR=refused
echo DD=$(dd if=/mnt/fl/a/big bs=4096 skip=1000 count=3 2>/dev/null | md5sum | cut -d' ' -f1)
echo STATFS=$(stat -f -c %l /mnt/fl)
"#
    ))
    .accel(accel)
    .timeout(Duration::from_secs(240))
    .qemu_args(device.clone())
    .run(&image)
    .unwrap();
    server.assert_completed(&first, "first guest");
    assert_eq!(first.value("MOUNTED"), Some("yes"), "{}", first.tail(30));

    let expected = host_listing(&tree);
    let seen = guest_listing(&first.console);
    assert!(expected.len() > 160, "tree too small: {}", expected.len());
    for (path, line) in &expected {
        assert_eq!(
            seen.get(path),
            Some(line),
            "entry {} differs in the guest",
            String::from_utf8_lossy(path)
        );
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the guest lists other entries"
    );
    assert_eq!(first.value("CREATE"), Some("refused"));
    assert_eq!(first.value("APPEND"), Some("refused"));
    assert_eq!(first.value("MKDIR"), Some("refused"));
    let big = std::fs::read(tree.join("a/big")).unwrap();
    assert_eq!(
        first.value("DD"),
        Some(md5_hex(&big[4096 * 1000..4096 * 1003]).as_str())
    );
    assert_eq!(first.value("STATFS"), Some("255"));

    // The backend outlived the first VMM: its socket is still there, a second guest mounts.
    assert!(socket.exists(), "socket gone: {}", server.log_text());
    let second = GuestRun::new(
        r#"
mkdir -p /mnt/fl && mount -t virtiofs flist /mnt/fl && echo MOUNTED=yes
echo BIG=$(md5sum < /mnt/fl/a/big | cut -d' ' -f1)
echo MANY=$(ls /mnt/fl/many | wc -l)
echo LINK=$(readlink /mnt/fl/a/b/link)
"#,
    )
    .accel(accel)
    .timeout(Duration::from_secs(240))
    .qemu_args(device)
    .run(&image)
    .unwrap();
    server.assert_completed(&second, "second guest");
    assert_eq!(second.value("MOUNTED"), Some("yes"));
    assert_eq!(second.value("BIG"), Some(md5_hex(&big).as_str()));
    assert_eq!(second.value("MANY"), Some("150"));
    assert_eq!(second.value("LINK"), Some("../big"));
}
