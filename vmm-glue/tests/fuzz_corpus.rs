//! Replays the fuzz corpus of the request parser (vmm-glue/fuzz/corpus/request) on stable,
//! then a seeded batch of mutations of it, through the same entry point as the fuzz target.
//! `fuzz_parse` asserts the parser's promises (status byte and data inside guest memory,
//! ranges inside the disk, no write accepted on a read-only volume) and must never panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use vmm_glue::blk::request::fuzz_parse;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/request");
    let mut entries: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("corpus {}: {error}", dir.display()))
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect();
    entries.sort();
    assert!(entries.len() >= 8, "corpus too small: {}", entries.len());
    entries
}

#[test]
fn corpus_replays_without_panics() {
    for (name, input) in corpus() {
        let result = std::panic::catch_unwind(|| fuzz_parse(&input));
        assert!(result.is_ok(), "corpus entry {name} panicked");
    }
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

#[test]
fn seeded_mutations_never_panic() {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0x5eed_b10c_u64);
    let corpus = corpus();
    let mut rng = Rng(seed);
    let interesting: [u64; 8] = [0, 1, 15, 16, 511, 512, 0x10000, u64::MAX];
    for iteration in 0..20_000 {
        let (name, base) = &corpus[rng.below(corpus.len())];
        let mut input = base.clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(5) {
                0 => {
                    let index = rng.below(input.len());
                    input[index] ^= 1 << rng.below(8);
                }
                1 => {
                    let index = rng.below(input.len());
                    input[index] = rng.next() as u8;
                }
                2 if input.len() > 8 => {
                    // Overwrite a segment field or header word with an interesting value.
                    let index = rng.below(input.len().saturating_sub(8));
                    let value = interesting[rng.below(interesting.len())];
                    let width = [1usize, 4, 8][rng.below(3)];
                    input[index..index + width].copy_from_slice(&value.to_le_bytes()[..width]);
                }
                3 => input.truncate(rng.below(input.len() + 1)),
                _ => input[0] = rng.next() as u8,
            }
            if input.is_empty() {
                break;
            }
        }
        let result = std::panic::catch_unwind(|| fuzz_parse(&input));
        assert!(
            result.is_ok(),
            "mutation {iteration} of {name} panicked (FUZZ_SEED={seed}): input {}",
            hex::encode(&input)
        );
    }
}
