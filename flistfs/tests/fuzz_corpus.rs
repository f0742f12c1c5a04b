//! Replays the flist reader's fuzz corpus (flistfs/fuzz/corpus/flist_reader) on stable, and
//! runs seeded mutations of it, so the reader's robustness is checked on every test run.
//! With `ZOS_WRITE_FLIST_CORPUS=1` it (re)writes the corpus from the sample flist.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use flistfs::chunk::{ChunkCodec, ChunkRef};
use flistfs::format::{fuzz_read, mode};
use flistfs::{FlistBuilder, InodeMeta};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/flist_reader")
}

fn sample() -> Vec<u8> {
    let directory = InodeMeta {
        mode: mode::DIRECTORY | 0o755,
        ..InodeMeta::default()
    };
    let mut builder = FlistBuilder::new(directory, 1 << 20);
    let sub = builder.add(0, b"sub", directory, vec![], b"").unwrap();
    let chunk = ChunkRef {
        file_offset: 0,
        plain_bytes: 10,
        stored_bytes: 30,
        codec: ChunkCodec::ZosV1,
        id: [3; 32],
        key: [4; 32],
    };
    let file = builder
        .add(
            sub,
            b"file",
            InodeMeta {
                mode: mode::REGULAR | 0o644,
                size: 10,
                ..InodeMeta::default()
            },
            vec![chunk],
            b"",
        )
        .unwrap();
    builder.link(0, b"hard", file).unwrap();
    builder
        .add(
            0,
            b"link",
            InodeMeta {
                mode: mode::SYMLINK | 0o777,
                ..InodeMeta::default()
            },
            vec![],
            b"sub/file",
        )
        .unwrap();
    builder.set_xattr(file, b"user.a", b"b").unwrap();
    builder.add_tag(b"route", b"00-ff=dir:///x").unwrap();
    builder.finish().unwrap()
}

/// Section-split form (see `fuzz_read`): six u16 lengths, then the bodies.
fn split_form(file: &[u8]) -> Vec<u8> {
    let sections: Vec<(usize, usize)> = (0..6)
        .map(|index| {
            let entry = &file[48 + index * 56..];
            let offset = u64::from_le_bytes(entry[8..16].try_into().unwrap()) as usize;
            let length = u64::from_le_bytes(entry[16..24].try_into().unwrap()) as usize;
            (offset, length)
        })
        .collect();
    let mut out = Vec::new();
    for (_, length) in &sections {
        out.extend_from_slice(&(*length as u16).to_le_bytes());
    }
    for (offset, length) in &sections {
        out.extend_from_slice(&file[*offset..offset + length]);
    }
    out
}

#[test]
fn corpus_replays_without_panics() {
    if std::env::var_os("ZOS_WRITE_FLIST_CORPUS").is_some() {
        let file = sample();
        std::fs::create_dir_all(corpus_dir()).unwrap();
        std::fs::write(corpus_dir().join("sample"), &file).unwrap();
        std::fs::write(corpus_dir().join("sample-sections"), split_form(&file)).unwrap();
        std::fs::write(corpus_dir().join("truncated"), &file[..file.len() / 2]).unwrap();
        std::fs::write(corpus_dir().join("header-only"), &file[..416]).unwrap();
    }
    let entries: Vec<_> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(entries.len() >= 4, "corpus too small: {}", entries.len());
    for path in entries {
        fuzz_read(&std::fs::read(&path).unwrap());
    }
}

#[test]
fn seeded_mutations_never_panic() {
    let seed: u64 = std::env::var("ZOS_FUZZ_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5eed);
    println!("seed {seed} (set ZOS_FUZZ_SEED to replay)");
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let base = split_form(&sample());
    for _ in 0..3000 {
        let mut input = base.clone();
        for _ in 0..1 + next() % 4 {
            let position = (next() as usize) % input.len();
            input[position] = next() as u8;
        }
        fuzz_read(&input);
    }
}
