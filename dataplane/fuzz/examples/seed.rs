//! Writes the seed corpus, `corpus/<target>/<name>`, with dataplane's own encoders (records
//! carry real chain links and checksums). Run from `dataplane/fuzz`:
//!
//! ```text
//! cargo run --example seed
//! ```
//!
//! It overwrites the seeds it knows and leaves other files (kept fuzzer findings) alone.

use std::path::{Path, PathBuf};

use dataplane::log::index_file::{self, Entry, Index, Key, SnapshotMeta};
use dataplane::log::record::{self, NewRecord, FLAG_TOMBSTONE, LINK_BYTES};

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut seeds: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    for (name, bytes) in resp_seeds() {
        seeds.push(("resp", name, bytes));
    }
    for (name, bytes) in record_seeds() {
        seeds.push(("record", name, bytes));
    }
    for (name, bytes) in index_seeds()? {
        seeds.push(("index_file", name, bytes));
    }
    for (target, name, bytes) in seeds {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
    }
    println!("seeds written under {}", corpus.display());
    Ok(())
}

fn array(arguments: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", arguments.len()).into_bytes();
    for argument in arguments {
        out.extend_from_slice(format!("${}\r\n", argument.len()).as_bytes());
        out.extend_from_slice(argument);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn resp_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let set = array(&[b"SET", b"k\0\r\n", b"\x01\x02\r\n\xff"]);
    let mut pipeline = Vec::new();
    for _ in 0..3 {
        pipeline.extend_from_slice(&array(&[b"SET", b"key", b"value"]));
        pipeline.extend_from_slice(&array(&[b"GET", b"key"]));
    }
    let mut truncated = array(&[b"SET", b"key", b"a value that is cut"]);
    truncated.truncate(truncated.len() - 7);
    vec![
        ("get", array(&[b"GET", b"key"])),
        ("set-binary", set),
        (
            "select-secure",
            array(&[b"SELECT", b"namespace", b"SECURE", b"0123456789abcdef"]),
        ),
        ("pipeline", pipeline),
        ("inline-ping", b"PING\r\n".to_vec()),
        (
            "inline-quotes",
            b"SET \"a key\" \"\\x01\\x00\\tz\\\"\" bare\n".to_vec(),
        ),
        (
            "inline-mixed",
            [
                &b"PING\r\nGET k\r\n\r\n"[..],
                &array(&[b"DEL", b"k"]),
                b"INFO\n",
            ]
            .concat(),
        ),
        ("empty-arrays", b"*0\r\n*-1\r\n*1\r\n$0\r\n\r\n".to_vec()),
        ("truncated-array", truncated),
        ("truncated-inline", b"GET ke".to_vec()),
        ("error-not-bulk", b"*1\r\n:5\r\n".to_vec()),
        ("error-missing-crlf", b"*1\r\n$3\r\nabcd\r\n".to_vec()),
        ("error-quotes", b"GET \"unterminated\r\n".to_vec()),
        ("bulk-length-max", b"*1\r\n$8454144\r\n".to_vec()),
    ]
}

/// One encoded record; `prev_link` is the previous record's link.
fn encode(
    key: &[u8],
    value: &[u8],
    flags: u8,
    sequence: u64,
    prev_link: &[u8; LINK_BYTES],
    out: &mut Vec<u8>,
) -> [u8; LINK_BYTES] {
    let new = NewRecord {
        flags,
        key,
        value,
        value_crc: crc32fast::hash(value),
        timestamp_us: 1_764_115_200_000_000 + sequence,
        sequence,
        prev_segment: if sequence > 0 { 1 } else { 0 },
        prev_offset: (sequence * 128) as u32,
    };
    record::encode(&new, prev_link, out).0
}

fn record_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let genesis = [0u8; LINK_BYTES];
    let one = |key: &[u8], value: &[u8], flags: u8| {
        let mut out = Vec::new();
        encode(key, value, flags, 7, &genesis, &mut out);
        out
    };
    let small = one(b"key", b"value", 0);
    let mut chained = Vec::new();
    let link = encode(b"a", b"first", 0, 0, &genesis, &mut chained);
    let link = encode(b"b", b"second", 0, 1, &link, &mut chained);
    encode(b"a", b"", FLAG_TOMBSTONE, 2, &link, &mut chained);
    let mut flipped = small.clone();
    flipped[85] ^= 0x10;
    let value: Vec<u8> = (0..2048u32).map(|i| (i * 31 % 251) as u8).collect();
    vec![
        ("small", small.clone()),
        ("tombstone", one(b"gone", b"", FLAG_TOMBSTONE)),
        ("empty", one(b"", b"", 0)),
        ("key-255", one(&[b'k'; 255], b"v", 0)),
        ("value-2k", one(b"blob", &value, 0)),
        ("chained-three", chained),
        ("flipped-value-byte", flipped),
        ("truncated", small[..small.len() - 3].to_vec()),
        ("header-only", small[..record::HEADER_BYTES].to_vec()),
    ]
}

/// Snapshot seeds are files without their 4-byte crc32 trailer: the target appends it.
fn index_seeds() -> std::io::Result<Vec<(&'static str, Vec<u8>)>> {
    let dir = std::env::temp_dir().join(format!("dataplane-fuzz-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let meta = SnapshotMeta {
        covered_segment: 3,
        covered_offset: 65_536,
        next_sequence: 1_000,
        next_id: 12,
        chain_head: [0x5a; LINK_BYTES],
        record_count: 999,
    };
    let entry = |i: u32| {
        let mut entry = Entry::new(1 + i % 3, i * 100, i, i.wrapping_mul(0x9e37_79b9));
        if i % 2 == 1 {
            entry.mark_damaged();
        }
        entry
    };
    let snapshot = |index: &Index| -> std::io::Result<Vec<u8>> {
        let path: PathBuf = dir.join("seed.zdx");
        index_file::write(&path, &meta, index).map_err(std::io::Error::other)?;
        let mut bytes = std::fs::read(&path)?;
        bytes.truncate(bytes.len() - 4);
        Ok(bytes)
    };
    let empty = snapshot(&Index::default())?;
    let mut three = Index::default();
    for i in 0..3 {
        three.insert(Key::new(format!("key{i}").as_bytes()), entry(i));
    }
    let three = snapshot(&three)?;
    let mut long_keys = Index::default();
    long_keys.insert(Key::new(&[0xffu8; 255]), entry(7));
    long_keys.insert(Key::new(b""), entry(8));
    let long_keys = snapshot(&long_keys)?;
    let mut count_lie = three.clone();
    count_lie[8] = 4;
    let mut trailing = three.clone();
    trailing.push(0);
    let mut bad_magic = empty.clone();
    bad_magic[7] = b'9';
    std::fs::remove_dir_all(&dir)?;
    Ok(vec![
        ("empty", empty),
        ("three-entries", three),
        ("long-and-empty-keys", long_keys),
        ("count-larger-than-entries", count_lie),
        ("trailing-byte", trailing),
        ("bad-magic", bad_magic),
    ])
}
