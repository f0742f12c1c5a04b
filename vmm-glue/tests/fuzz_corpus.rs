//! Replays the fuzz corpus of the request parser (vmm-glue/fuzz/corpus/request) on stable,
//! then a seeded batch of mutations of it, through the same entry point as the fuzz target.
//! `fuzz_parse` asserts the parser's promises (status byte and data inside guest memory,
//! ranges inside the disk, no write accepted on a read-only volume) and must never panic.
//! The replay harness is `fixtures::fuzz`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use fixtures::fuzz::{mutate_fields, replay, Corpus, Mutations};
use vmm_glue::blk::request::fuzz_parse;

fn corpus() -> Corpus {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/request");
    Corpus::load("request", &dir, 8)
}

#[test]
fn corpus_replays_without_panics() {
    replay(&[corpus()], |_, input| fuzz_parse(input));
}

/// Values a segment field or header word likes to hold: sector and length edges.
const INTERESTING_VALUES: [u64; 8] = [0, 1, 15, 16, 511, 512, 0x10000, u64::MAX];

#[test]
fn seeded_mutations_never_panic() {
    let mut mutations = Mutations::from_env(0x5eed_b10c);
    mutations.run(
        &corpus(),
        20_000,
        |rng, input, _| {
            // The parser's own step: another first byte (the request's type).
            mutate_fields(rng, input, &INTERESTING_VALUES, 1, |_, rng, input| {
                input[0] = rng.next_u64() as u8
            })
        },
        |_, input| fuzz_parse(input),
    );
}
