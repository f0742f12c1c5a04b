//! Replays the fuzz corpora of dataplane (`dataplane/fuzz/corpus/<target>/`) on stable, then
//! a seeded batch of mutations of them, through the very checks the libFuzzer targets run:
//! `dataplane/fuzz/src/lib.rs` is compiled here as the module `checks`. The checks assert the
//! decoders' promises (RESP: progress, argument ranges inside their buffer, prefixes are
//! incomplete, not invalid; records: encode/verify round trip, every changed byte and every
//! truncation caught; index snapshots: what reads back writes and reads back the same) and
//! must never panic. The replay harness is `fixtures::fuzz`.
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
    let scratch = tempfile::tempdir().unwrap();
    replay(&corpora(), |target, input| {
        checks::check(target, input, scratch.path())
    });
}

/// Bytes a mutation likes to write: RESP markers and line ends, length digits, and the
/// bytes that change a record or snapshot header's meaning.
const INTERESTING_BYTES: [u8; 14] = [
    b'*', b'$', b'\r', b'\n', b'"', b'\\', b'x', b' ', b'-', b'0', b'9', 0, 0xff, 0x80,
];

#[test]
fn seeded_mutations_never_fail() {
    let scratch = tempfile::tempdir().unwrap();
    let mut mutations = Mutations::from_env(0x5eed_0d8b);
    for corpus in corpora() {
        // Snapshot checks write files (and fsync on a round trip): fewer of them.
        let count = if corpus.target == "index_file" {
            500
        } else {
            5_000
        };
        mutations.run(
            &corpus,
            count,
            |rng, input, corpus| {
                let other = &rng.pick(corpus).bytes;
                mutate_bytes(rng, input, other, &INTERESTING_BYTES);
            },
            |target, input| checks::check(target, input, scratch.path()),
        );
    }
}
