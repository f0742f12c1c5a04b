//! End to end: the real `zos` binary serves volumes to real QEMU guests (the fixtures
//! guest, TCG unless ZOS_GUEST_ACCEL says otherwise) over vhost-user-blk.
//!
//! Needs: `zos` built (`cargo build -p control --bin zos`), qemu-system-x86, cpio, fio,
//! and the guest image (built on first use by fixtures/guest/build.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{file_range_hash, md5_hex, zos_err, zos_ok, Server};
use fixtures::guest::{Accel, GuestImage, GuestRun};
use vmm_glue::crypto::{SectorCipher, VolumeKey};

const MIB: u64 = 1 << 20;

fn guest(script: &str) -> GuestRun {
    GuestRun::new(script)
        .accel(Accel::from_env().unwrap())
        .timeout(Duration::from_secs(180))
}

/// `zos vm disk create VOLUME --size SIZE EXTRA...`.
fn disk_create(volume: &Path, size: &str, extra: &[&str]) {
    let mut arguments = vec![
        "vm",
        "disk",
        "create",
        volume.to_str().unwrap(),
        "--size",
        size,
    ];
    arguments.extend_from_slice(extra);
    zos_ok(&arguments);
}

fn image() -> GuestImage {
    GuestImage::ensure().expect("guest image (apt-get install cpio fio qemu-system-x86)")
}

/// A guest writes 8 MiB of random bytes at 3 MiB, a fio verify job over 16 MiB at 16 MiB,
/// discards 4 MiB at 40 MiB; the host then finds the same bytes in the raw file; a second
/// guest on the same running backend reads the bytes back; SIGTERM stops the server cleanly.
#[test]
fn guest_writes_host_reads_and_a_second_guest_reconnects() {
    let image = image();
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("vol");
    let socket = dir.path().join("blk.sock");
    disk_create(&volume, "64M", &[]);
    // Pre-fill the region the guest will discard, so the discard is visible on the host.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&volume)
            .unwrap();
        file.seek(SeekFrom::Start(40 * MIB)).unwrap();
        file.write_all(&vec![0xa5u8; 4 * MIB as usize]).unwrap();
    }
    let server = Server::start(&volume, &socket, &[]);

    let first = guest(
        r#"
echo SIZE=$(cat /sys/block/vda/size)
echo SERIAL=$(cat /sys/block/vda/serial)
dd if=/dev/urandom of=/tmp/pattern bs=1M count=8 2>/dev/null
dd if=/tmp/pattern of=/dev/vda bs=1M count=8 seek=3 conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
echo PATTERN=$(md5sum < /tmp/pattern | cut -d' ' -f1)
echo READBACK=$(dd if=/dev/vda bs=1M count=8 skip=3 2>/dev/null | md5sum | cut -d' ' -f1)
fio --name=verify --filename=/dev/vda --offset=16M --size=16M --rw=randwrite --bs=4k \
    --iodepth=16 --ioengine=libaio --direct=1 --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --randseed=7 >/tmp/fio.log 2>&1 && echo FIO=ok || { echo FIO=failed; tail -5 /tmp/fio.log; }
fio --name=seq --filename=/dev/vda --offset=32M --size=8M --rw=write --bs=1M \
    --iodepth=4 --ioengine=libaio --direct=1 --verify=md5 --do_verify=1 \
    --verify_fatal=1 >/tmp/fio2.log 2>&1 && echo FIOSEQ=ok || { echo FIOSEQ=failed; tail -5 /tmp/fio2.log; }
blkdiscard -o 41943040 -l 4194304 /dev/vda && echo DISCARD=ok
echo 3 > /proc/sys/vm/drop_caches
echo DISCARDED=$(dd if=/dev/vda bs=1M count=4 skip=40 2>/dev/null | md5sum | cut -d' ' -f1)
sync
"#,
    )
    .with_fio(true)
    .vhost_user_blk(&socket)
    .run(&image)
    .unwrap();
    server.assert_completed(&first, "first guest");
    assert_eq!(first.value("SIZE"), Some("131072"), "{}", first.tail(30));
    assert!(
        first.value("SERIAL").unwrap().starts_with("zos-"),
        "{}",
        first.tail(30)
    );
    let pattern = first.value("PATTERN").unwrap().to_owned();
    assert_eq!(first.value("READBACK"), Some(pattern.as_str()));
    assert_eq!(first.value("FIO"), Some("ok"), "{}", first.tail(30));
    assert_eq!(first.value("FIOSEQ"), Some("ok"), "{}", first.tail(30));
    assert_eq!(first.value("DISCARD"), Some("ok"), "{}", first.tail(30));
    let zeros = md5_hex(&vec![0u8; 4 * MIB as usize]);
    assert_eq!(first.value("DISCARDED"), Some(zeros.as_str()));

    // The raw volume file holds exactly what the guest wrote, at the same offset.
    assert_eq!(file_range_hash(&volume, 3 * MIB, 8 * MIB as usize), pattern);
    assert_eq!(file_range_hash(&volume, 40 * MIB, 4 * MIB as usize), zeros);

    // A volume in use cannot be removed or resized.
    let error = zos_err(&["vm", "disk", "rm", volume.to_str().unwrap()]);
    assert!(error.contains("in use"), "{error}");
    let error = zos_err(&[
        "vm",
        "disk",
        "resize",
        volume.to_str().unwrap(),
        "--size",
        "128M",
    ]);
    assert!(error.contains("in use"), "{error}");

    // Second guest, same running backend, same socket.
    let second = guest("echo SIZE=$(cat /sys/block/vda/size)\necho READBACK=$(dd if=/dev/vda bs=1M count=8 skip=3 2>/dev/null | md5sum | cut -d' ' -f1)\n")
        .vhost_user_blk(&socket)
        .run(&image)
        .unwrap();
    server.assert_completed(&second, "second guest");
    assert_eq!(second.value("SIZE"), Some("131072"));
    assert_eq!(second.value("READBACK"), Some(pattern.as_str()));

    server.terminate();
    // Not served any more: grow it, list it, remove it.
    zos_ok(&[
        "vm",
        "disk",
        "resize",
        volume.to_str().unwrap(),
        "--size",
        "128M",
    ]);
    let listing = zos_ok(&["vm", "disk", "list", dir.path().to_str().unwrap()]);
    assert!(listing.contains("134217728"), "{listing}");
    zos_ok(&["vm", "disk", "rm", volume.to_str().unwrap()]);
    assert!(!volume.exists());
}

/// An encrypted volume: the guest reads back what it wrote, the raw file holds ciphertext
/// that decrypts (AES-256-XTS, sector tweak) to the guest's bytes, and a wrong key is
/// refused before anything is served.
#[test]
fn encrypted_volume_round_trips_and_wrong_key_is_refused() {
    let image = image();
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("secret");
    let socket = dir.path().join("secret.sock");
    let key_file = dir.path().join("key");
    let wrong_key_file = dir.path().join("wrong");
    let key_bytes: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    std::fs::write(&key_file, &key_bytes).unwrap();
    std::fs::write(&wrong_key_file, hex::encode([0x42u8; 64])).unwrap();
    disk_create(&volume, "32M", &["--key-file", key_file.to_str().unwrap()]);
    let error = zos_err(&[
        "vm",
        "disk",
        "serve",
        volume.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
        "--key-file",
        wrong_key_file.to_str().unwrap(),
    ]);
    assert!(error.contains("key check failed"), "{error}");
    let error = zos_err(&[
        "vm",
        "disk",
        "serve",
        volume.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert!(error.contains("encrypted"), "{error}");
    assert!(!socket.exists(), "a refused serve must not leave a socket");

    let server = Server::start(
        &volume,
        &socket,
        &["--key-file", key_file.to_str().unwrap()],
    );
    let run = guest(
        r#"
echo FRESH=$(dd if=/dev/vda bs=1M count=1 skip=20 2>/dev/null | md5sum | cut -d' ' -f1)
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null
dd if=/tmp/pattern of=/dev/vda bs=1M count=4 seek=5 conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
echo PATTERN=$(md5sum < /tmp/pattern | cut -d' ' -f1)
echo READBACK=$(dd if=/dev/vda bs=1M count=4 skip=5 2>/dev/null | md5sum | cut -d' ' -f1)
"#,
    )
    .vhost_user_blk(&socket)
    .run(&image)
    .unwrap();
    server.assert_completed(&run, "guest");
    let pattern = run.value("PATTERN").unwrap().to_owned();
    assert_eq!(run.value("READBACK"), Some(pattern.as_str()));
    // A never-written region of an encrypted volume reads as zeros.
    assert_eq!(
        run.value("FRESH"),
        Some(md5_hex(&vec![0u8; MIB as usize]).as_str())
    );
    server.terminate();

    let raw = std::fs::read(&volume).unwrap();
    let offset = 5 * MIB as usize;
    let mut region = raw[offset..offset + 4 * MIB as usize].to_vec();
    assert_ne!(md5_hex(&region), pattern, "the volume file holds plaintext");
    let key = VolumeKey::from_file_bytes(&key_bytes).unwrap();
    SectorCipher::new(&key).decrypt(&mut region, (offset / 512) as u64);
    assert_eq!(
        md5_hex(&region),
        pattern,
        "decrypting the file does not give the guest's bytes"
    );
}

/// `--readonly`: the guest sees a read-only disk whose bytes it can read, and a write the
/// guest forces through is refused.
#[test]
fn read_only_disk_is_read_only_in_the_guest() {
    let image = image();
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("ro");
    let socket = dir.path().join("ro.sock");
    disk_create(&volume, "16M", &[]);
    let content: Vec<u8> = (0..MIB as usize).map(|i| (i % 251) as u8).collect();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&volume)
            .unwrap();
        file.write_all_at(&content, MIB).unwrap();
    }
    let server = Server::start(&volume, &socket, &["--readonly"]);
    let run = guest(
        r#"
echo RO=$(cat /sys/block/vda/ro)
echo CONTENT=$(dd if=/dev/vda bs=1M count=1 skip=1 2>/dev/null | md5sum | cut -d' ' -f1)
blockdev --setrw /dev/vda 2>/dev/null
dd if=/dev/zero of=/dev/vda bs=4k count=1 seek=256 oflag=direct 2>/dev/null && echo WRITE=accepted || echo WRITE=refused
"#,
    )
    .vhost_user_blk(&socket)
    .run(&image)
    .unwrap();
    server.assert_completed(&run, "guest");
    assert_eq!(run.value("RO"), Some("1"), "{}", run.tail(30));
    assert_eq!(run.value("CONTENT"), Some(md5_hex(&content).as_str()));
    assert_eq!(run.value("WRITE"), Some("refused"), "{}", run.tail(30));
    server.terminate();
    assert_eq!(
        file_range_hash(&volume, MIB, MIB as usize),
        md5_hex(&content)
    );
}
