//! Replays the fuzz corpus of the virtio-fs request path (vmm-glue/fuzz/corpus/fuse) on
//! stable, then a seeded batch of mutations of it, through the same entry points as the
//! `fuse` fuzz target: the FUSE decoder alone, then decode + answer from a small in-memory
//! flist + reply checks (`fuzz_handle` asserts the reply's promises and must never panic).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use vmm_glue::fs::request::fuzz_decode;
use vmm_glue::fs::sample::fuzz_handle;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/fuse");
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
    assert!(entries.len() >= 20, "corpus too small: {}", entries.len());
    entries
}

fn run(input: &[u8]) {
    fuzz_decode(input.get(4..).unwrap_or_default());
    fuzz_handle(input);
}

#[test]
fn corpus_replays_without_panics() {
    for (name, input) in corpus() {
        let result = std::panic::catch_unwind(|| run(&input));
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
        .unwrap_or(0x5eed_f5e0_u64);
    let corpus = corpus();
    let mut rng = Rng(seed);
    let interesting: [u64; 10] = [0, 1, 16, 40, 41, 255, 256, 4096, u32::MAX as u64, u64::MAX];
    for iteration in 0..20_000 {
        let (name, base) = &corpus[rng.below(corpus.len())];
        let mut input = base.clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(6) {
                0 => {
                    let index = rng.below(input.len());
                    input[index] ^= 1 << rng.below(8);
                }
                1 => {
                    let index = rng.below(input.len());
                    input[index] = rng.next() as u8;
                }
                2 if input.len() > 8 => {
                    // An interesting value over a length, opcode, node id or body field.
                    let index = rng.below(input.len().saturating_sub(8));
                    let value = interesting[rng.below(interesting.len())];
                    let width = [1usize, 4, 8][rng.below(3)];
                    input[index..index + width].copy_from_slice(&value.to_le_bytes()[..width]);
                }
                3 => input.truncate(rng.below(input.len() + 1)),
                4 if input.len() >= 20 => {
                    // Another opcode on the same body.
                    input[16] = rng.below(60) as u8;
                    input[17..20].fill(0);
                }
                _ => input.extend_from_slice(&rng.next().to_le_bytes()[..rng.below(8)]),
            }
            if input.is_empty() {
                break;
            }
        }
        let result = std::panic::catch_unwind(|| run(&input));
        assert!(
            result.is_ok(),
            "mutation {iteration} of {name} panicked (FUZZ_SEED={seed}): input {}",
            hex::encode(&input)
        );
    }
}
