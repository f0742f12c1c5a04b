//! Replays the fuzz corpora of erasure (`erasure/fuzz/corpus/<target>/`) on stable, then a
//! seeded batch of mutations of them, through the very checks the libFuzzer targets run:
//! `erasure/fuzz/src/lib.rs` is compiled here as the module `checks`. The checks assert the
//! decoders' promises (shards: accepted frames are canonical; the chunk decoder returns the
//! encoded chunk or an error, whatever is dropped, damaged, swapped or forged; metadata:
//! accepted bodies are canonical and records survive a round trip) and must never panic.
//! The replay harness is `fixtures::fuzz`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

use fixtures::fuzz::{mutate_bytes, replay, Corpus, Mutations};

/// Every target's corpus, in the order of `checks::TARGETS`.
fn corpora() -> Vec<Corpus> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    Corpus::load_targets(&dir, &checks::TARGETS, 5)
}

#[test]
fn corpus_replays_without_failures() {
    replay(&corpora(), checks::check);
}

/// Bytes a mutation likes to write: the bytes that change a frame or record header's
/// meaning (versions, kinds, codec ids, counts) and shard fates.
const INTERESTING_BYTES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 0x40, 0x7f, 0x80, 0xff];

#[test]
fn seeded_mutations_never_fail() {
    let mut mutations = Mutations::from_env(0x5eed_e5a5);
    for corpus in corpora() {
        mutations.run(
            &corpus,
            3_000,
            |rng, input, corpus| {
                let other = &rng.pick(corpus).bytes;
                mutate_bytes(rng, input, other, &INTERESTING_BYTES);
            },
            checks::check,
        );
    }
}
