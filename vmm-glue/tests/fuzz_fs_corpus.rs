//! Replays the fuzz corpus of the virtio-fs request path (vmm-glue/fuzz/corpus/fuse) on
//! stable, then a seeded batch of mutations of it, through the same entry points as the
//! `fuse` fuzz target: the FUSE decoder alone, then decode + answer from a small in-memory
//! flist + reply checks (`fuzz_handle` asserts the reply's promises and must never panic).
//! The replay harness is `fixtures::fuzz`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use fixtures::fuzz::{mutate_fields, replay, Corpus, Mutations};
use vmm_glue::fs::request::fuzz_decode;
use vmm_glue::fs::sample::fuzz_handle;

fn corpus() -> Corpus {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/fuse");
    Corpus::load("fuse", &dir, 20)
}

fn check(_target: &str, input: &[u8]) {
    fuzz_decode(input.get(4..).unwrap_or_default());
    fuzz_handle(input);
}

#[test]
fn corpus_replays_without_panics() {
    replay(&[corpus()], check);
}

/// Values a length, opcode, node id or body field likes to hold.
const INTERESTING_VALUES: [u64; 10] = [0, 1, 16, 40, 41, 255, 256, 4096, u32::MAX as u64, u64::MAX];

#[test]
fn seeded_mutations_never_panic() {
    let mut mutations = Mutations::from_env(0x5eed_f5e0);
    mutations.run(
        &corpus(),
        20_000,
        |rng, input, _| {
            mutate_fields(rng, input, &INTERESTING_VALUES, 2, |step, rng, input| {
                if step == 4 && input.len() >= 20 {
                    // Another opcode on the same body.
                    input[16] = rng.below(60) as u8;
                    input[17..20].fill(0);
                } else {
                    input.extend_from_slice(&rng.next_u64().to_le_bytes()[..rng.below(8)]);
                }
            })
        },
        check,
    );
}
