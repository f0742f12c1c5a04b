//! Replays the fuzz corpora of erasure (`erasure/fuzz/corpus/<target>/`) on stable, then a
//! seeded batch of mutations of them, through the very checks the libFuzzer targets run:
//! `erasure/fuzz/src/lib.rs` is compiled here as the module `checks`. The checks assert the
//! decoders' promises (shards: accepted frames are canonical; the chunk decoder returns the
//! encoded chunk or an error, whatever is dropped, damaged, swapped or forged; metadata:
//! accepted bodies are canonical and records survive a round trip) and must never panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

type Corpus = Vec<(String, Vec<u8>)>;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

/// Every target's corpus, in a stable order. Fails when a folder is missing or empty, or when
/// a folder has no check (a target renamed without its corpus).
fn corpora() -> Vec<(&'static str, Corpus)> {
    let dir = corpus_dir();
    let folders = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("corpus folder {}: {error}", dir.display()));
    for folder in folders {
        let name = folder.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            checks::TARGETS.contains(&name.as_str()),
            "{}/{name} is not a fuzz target (known: {:?})",
            dir.display(),
            checks::TARGETS
        );
    }
    checks::TARGETS
        .iter()
        .map(|&target| {
            let folder = dir.join(target);
            let mut entries: Corpus = std::fs::read_dir(&folder)
                .unwrap_or_else(|error| panic!("corpus {}: {error}", folder.display()))
                .map(|entry| {
                    let entry = entry.unwrap();
                    (
                        entry.file_name().to_string_lossy().into_owned(),
                        std::fs::read(entry.path()).unwrap(),
                    )
                })
                .collect();
            entries.sort();
            assert!(
                entries.len() >= 5,
                "corpus {} has only {} entries",
                folder.display(),
                entries.len()
            );
            (target, entries)
        })
        .collect()
}

/// Runs one check, turning a panic into a message that names the input and replays it.
fn run(target: &str, name: &str, input: &[u8]) -> Result<(), String> {
    std::panic::catch_unwind(|| checks::check(target, input)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
            .unwrap_or_default();
        format!(
            "{target}/{name}: {message}\n  input ({} bytes): {}",
            input.len(),
            hex::encode(input)
        )
    })
}

#[test]
fn corpus_replays_without_failures() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, corpus) in corpora() {
        for (name, input) in &corpus {
            replayed += 1;
            if let Err(failure) = run(target, name, input) {
                failures.push(failure);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} corpus entries fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// xorshift64*: deterministic, seeded, printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

/// Bytes a mutation likes to write: the bytes that change a frame or record header's
/// meaning (versions, kinds, codec ids, counts) and shard fates.
const INTERESTING_BYTES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 0x40, 0x7f, 0x80, 0xff];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        let length = input.len();
        match rng.below(7) {
            0 if length > 0 => input[rng.below(length)] ^= 1 << rng.below(8),
            1 if length > 0 => input[rng.below(length)] = rng.next() as u8,
            2 if length > 0 => {
                input[rng.below(length)] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())]
            }
            3 => input.truncate(rng.below(length + 1)),
            4 => input.insert(
                rng.below(length + 1),
                INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())],
            ),
            5 if length > 0 => {
                // Repeat a slice: pipelines, longer lengths, more entries.
                let start = rng.below(length);
                let end = start + rng.below(length - start) + 1;
                let slice = input[start..end].to_vec();
                let at = rng.below(length + 1);
                input.splice(at..at, slice);
            }
            _ => {
                // Splice in part of another corpus entry of the same target.
                let start = rng.below(other.len());
                let at = rng.below(length + 1);
                input.splice(at..at, other[start..].iter().copied());
            }
        }
    }
}

#[test]
fn seeded_mutations_never_fail() {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0x5eed_e5a5_u64);
    let mut rng = Rng(seed);
    for (target, corpus) in corpora() {
        let iterations = 3_000;
        for iteration in 0..iterations {
            let (name, base) = &corpus[rng.below(corpus.len())];
            let (_, other) = &corpus[rng.below(corpus.len())];
            let mut input = base.clone();
            mutate(&mut rng, &mut input, other);
            let name = format!("mutation {iteration} of {name} (FUZZ_SEED={seed})");
            if let Err(failure) = run(target, &name, &input) {
                panic!("{failure}");
            }
        }
    }
}
