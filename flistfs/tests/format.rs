//! The flist format: round trips, and refusal of truncated, forged and corrupt files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use flistfs::chunk::{ChunkCodec, ChunkRef};
use flistfs::format::{mode, FormatError};
use flistfs::{Flist, FlistBuilder, InodeMeta};
use proptest::prelude::*;

fn meta(type_bits: u32, permissions: u32, size: u64) -> InodeMeta {
    InodeMeta {
        mode: type_bits | permissions,
        uid: 1000,
        gid: 100,
        size,
        rdev: 0,
        atime: (1_700_000_000, 1),
        mtime: (1_700_000_001, 999_999_999),
        ctime: (1_700_000_002, 3),
    }
}

fn chunk(file_offset: u64, plain_bytes: u32, seed: u8) -> ChunkRef {
    ChunkRef {
        file_offset,
        plain_bytes,
        stored_bytes: plain_bytes + 17,
        codec: ChunkCodec::ZosV1,
        id: [seed; 32],
        key: [seed ^ 0xff; 32],
    }
}

fn sample() -> FlistBuilder {
    let mut builder = FlistBuilder::new(meta(mode::DIRECTORY, 0o755, 0), 1 << 20);
    let etc = builder
        .add(0, b"etc", meta(mode::DIRECTORY, 0o755, 0), vec![], b"")
        .unwrap();
    let big = builder
        .add(
            etc,
            b"big",
            meta(mode::REGULAR, 0o644, 3 << 20),
            vec![chunk(0, 1 << 20, 1), chunk(2 << 20, 1 << 20, 2)],
            b"",
        )
        .unwrap();
    builder.link(0, b"big-link", big).unwrap();
    builder
        .add(0, b"empty", meta(mode::REGULAR, 0o600, 0), vec![], b"")
        .unwrap();
    builder
        .add(
            0,
            b"link",
            meta(mode::SYMLINK, 0o777, 0),
            vec![],
            b"etc/big",
        )
        .unwrap();
    let mut device = meta(mode::CHAR_DEVICE, 0o666, 0);
    device.rdev = 0x0103;
    builder.add(etc, b"null", device, vec![], b"").unwrap();
    builder
        .add(etc, b"fifo", meta(mode::FIFO, 0o644, 0), vec![], b"")
        .unwrap();
    builder
        .add(
            0,
            b"\xff\xfe-not-utf8",
            meta(mode::REGULAR, 0o4755, 0),
            vec![],
            b"",
        )
        .unwrap();
    builder.set_xattr(big, b"user.note", b"hello").unwrap();
    builder
        .set_xattr(big, b"security.capability", &[1, 2, 3])
        .unwrap();
    builder.add_tag(b"entrypoint", b"/bin/sh").unwrap();
    builder
        .add_tag(b"route", b"00-ff=dir:///srv/store")
        .unwrap();
    builder
}

#[test]
fn round_trip_keeps_everything() {
    let bytes = sample().finish().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("sample.fl");
    std::fs::write(&path, &bytes).unwrap();
    for flist in [
        Flist::from_bytes(bytes.clone()).unwrap(),
        Flist::open(&path).unwrap(),
    ] {
        flist.verify_all().unwrap();
        let root = flist.root().unwrap();
        let names: Vec<Vec<u8>> = (0..flist.dir_len(&root).unwrap())
            .map(|index| flist.dir_entry(&root, index).unwrap().name.to_vec())
            .collect();
        assert_eq!(
            names,
            vec![
                b"big-link".to_vec(),
                b"empty".to_vec(),
                b"etc".to_vec(),
                b"link".to_vec(),
                b"\xff\xfe-not-utf8".to_vec()
            ]
        );
        let big = flist.resolve(b"/etc/big").unwrap().unwrap();
        assert_eq!(
            flist.resolve(b"big-link").unwrap().unwrap().number,
            big.number,
            "hard link shares the inode"
        );
        assert_eq!(big.record.nlink, 2);
        assert_eq!(big.record.size, 3 << 20);
        assert_eq!(big.record.mtime_nsec, 999_999_999);
        assert_eq!(flist.chunk_len(&big).unwrap(), 2);
        assert_eq!(
            flist.chunk_at(&big, (1 << 20) - 1).unwrap().unwrap().1,
            chunk(0, 1 << 20, 1)
        );
        assert_eq!(
            flist.chunk_at(&big, 1 << 20).unwrap(),
            None,
            "the middle is a hole"
        );
        assert_eq!(flist.chunk_at(&big, (3 << 20) - 1).unwrap().unwrap().0, 1);
        assert_eq!(
            flist.xattrs(&big).unwrap(),
            vec![
                (&b"security.capability"[..], &[1u8, 2, 3][..]),
                (&b"user.note"[..], &b"hello"[..])
            ]
        );
        let link = flist.resolve(b"link").unwrap().unwrap();
        assert_eq!(flist.symlink_target(&link).unwrap(), b"etc/big");
        assert_eq!(link.record.size, 7);
        let null = flist.resolve(b"etc/null").unwrap().unwrap();
        assert_eq!((null.kind(), null.record.rdev), (mode::CHAR_DEVICE, 0x0103));
        let etc = flist.resolve(b"etc").unwrap().unwrap();
        assert_eq!(etc.record.nlink, 2);
        assert_eq!(flist.resolve(b"etc/..").unwrap().unwrap().number, 0);
        assert_eq!(root.record.nlink, 3);
        let setuid = flist.resolve(b"\xff\xfe-not-utf8").unwrap().unwrap();
        assert_eq!(setuid.record.mode, mode::REGULAR | 0o4755);
        assert_eq!(flist.resolve(b"missing").unwrap(), None);
        assert_eq!(
            flist.tags().unwrap(),
            vec![
                (&b"entrypoint"[..], &b"/bin/sh"[..]),
                (&b"route"[..], &b"00-ff=dir:///srv/store"[..])
            ]
        );
    }
}

#[test]
fn writer_refuses_names_that_could_escape() {
    let mut builder = FlistBuilder::new(meta(mode::DIRECTORY, 0o755, 0), 1 << 20);
    for name in [&b".."[..], b".", b"a/b", b"a\0b", b"", &[b'n'; 256]] {
        let error = builder
            .add(0, name, meta(mode::REGULAR, 0o644, 0), vec![], b"")
            .unwrap_err();
        assert!(error.to_string().contains("refusing entry name"), "{error}");
    }
    builder
        .add(0, &[b'n'; 255], meta(mode::REGULAR, 0o644, 0), vec![], b"")
        .unwrap();
}

#[test]
fn truncated_files_are_refused_at_open() {
    let bytes = sample().finish().unwrap();
    for length in [
        0,
        7,
        8,
        47,
        48,
        100,
        415,
        416,
        bytes.len() / 2,
        bytes.len() - 8,
        bytes.len() - 1,
    ] {
        let error = Flist::from_bytes(bytes[..length].to_vec()).unwrap_err();
        assert!(
            matches!(
                error,
                FormatError::Truncated(_) | FormatError::BadMagic(_) | FormatError::HeaderChecksum
            ),
            "length {length}: {error}"
        );
    }
}

#[test]
fn forged_headers_are_refused_at_open() {
    let bytes = sample().finish().unwrap();
    let mut other_version = bytes.clone();
    other_version[8] = 2;
    assert!(matches!(
        Flist::from_bytes(other_version).unwrap_err(),
        FormatError::UnsupportedVersion(2)
    ));
    let mut bad_magic = bytes.clone();
    bad_magic[0] = b'X';
    assert!(matches!(
        Flist::from_bytes(bad_magic).unwrap_err(),
        FormatError::BadMagic(_)
    ));
    // Any change to the header (here: a section offset) fails the header checksum.
    let mut moved = bytes.clone();
    moved[48 + 8] ^= 8;
    assert!(matches!(
        Flist::from_bytes(moved).unwrap_err(),
        FormatError::HeaderChecksum
    ));
    // Appending bytes is caught by the recorded file size.
    let mut longer = bytes;
    longer.extend_from_slice(&[0; 8]);
    assert!(matches!(
        Flist::from_bytes(longer).unwrap_err(),
        FormatError::Truncated(_)
    ));
}

#[test]
fn a_corrupt_section_fails_only_what_needs_it() {
    let bytes = sample().finish().unwrap();
    let flist = Flist::from_bytes(bytes.clone()).unwrap();
    let strings_end = bytes.len() - 1;
    drop(flist);
    // The strings section is last; its last byte is part of a tag value.
    let mut corrupt = bytes;
    let last_nonzero = (0..=strings_end)
        .rev()
        .find(|&index| corrupt[index] != 0)
        .unwrap();
    corrupt[last_nonzero] ^= 0x40;
    let flist = Flist::from_bytes(corrupt).expect("opening reads only the header");
    let root = flist.root().expect("the inodes section is intact");
    assert_eq!(root.record.mode & mode::TYPE_MASK, mode::DIRECTORY);
    assert!(matches!(
        flist.lookup(&root, b"etc").unwrap_err(),
        FormatError::SectionChecksum("strings")
    ));
    assert!(flist.verify_all().is_err());
}

/// A tree model: path components to (is_dir, size).
fn tree_strategy() -> impl Strategy<Value = BTreeMap<Vec<Vec<u8>>, u64>> {
    let name = prop::collection::vec(
        prop_oneof![Just(b'a'), Just(b'b'), Just(0xffu8), Just(b' '), Just(b'.')],
        1..6,
    );
    prop::collection::btree_map(prop::collection::vec(name, 1..4), 0u64..5_000_000, 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip(tree in tree_strategy()) {
        let mut builder = FlistBuilder::new(meta(mode::DIRECTORY, 0o755, 0), 1 << 20);
        let mut expected: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        'paths: for (path, size) in &tree {
            let mut parent = 0;
            for (depth, component) in path.iter().enumerate() {
                if component == b"." || component == b".." { continue 'paths; }
                let last = depth + 1 == path.len();
                match builder.child(parent, component) {
                    Some(existing) if !last => {
                        if builder.meta(existing).unwrap().mode & mode::TYPE_MASK != mode::DIRECTORY { continue 'paths; }
                        parent = existing;
                    }
                    Some(_) => continue 'paths,
                    None if !last => {
                        parent = builder.add(parent, component, meta(mode::DIRECTORY, 0o700, 0), vec![], b"").unwrap();
                    }
                    None => {
                        let chunks = (0..size.div_ceil(1 << 20)).map(|index| {
                            let offset = index << 20;
                            chunk(offset, (size - offset).min(1 << 20) as u32, index as u8)
                        }).collect();
                        builder.add(parent, component, meta(mode::REGULAR, 0o644, *size), chunks, b"").unwrap();
                        expected.insert(path.join(&b'/'), *size);
                    }
                }
            }
        }
        let flist = Flist::from_bytes(builder.finish().unwrap()).unwrap();
        flist.verify_all().unwrap();
        for (path, size) in &expected {
            let inode = flist.resolve(path).unwrap().expect("every file is found");
            prop_assert_eq!(inode.record.size, *size);
            if *size > 0 {
                let (_, last) = flist.chunk_at(&inode, size - 1).unwrap().unwrap();
                prop_assert_eq!(last.file_offset + u64::from(last.plain_bytes), *size);
            }
        }
    }

    #[test]
    fn any_flipped_byte_is_detected(position_fraction in 0.0f64..1.0, bit in 0u8..8) {
        let mut bytes = sample().finish().unwrap();
        let position = ((bytes.len() - 1) as f64 * position_fraction) as usize;
        bytes[position] ^= 1 << bit;
        let outcome = Flist::from_bytes(bytes).and_then(|flist| flist.verify_all());
        prop_assert!(outcome.is_err(), "flipping byte {} went unnoticed", position);
    }
}
