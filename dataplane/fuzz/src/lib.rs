//! The checks behind the fuzz targets of `dataplane`, in one place: the libFuzzer targets in
//! `fuzz_targets/` call them, and `dataplane/tests/fuzz_corpus.rs` compiles this same file as
//! a module (`#[path]`) to replay the committed corpus on stable in the ordinary test run.
//! Each check feeds arbitrary bytes to one decoder and panics when a promise is broken, so it
//! may use only `dataplane`, `crc32fast` and std (what both places have).
//!
//! Targets (their corpus folders are `corpus/<target>/`):
//! - `resp`: `resp::frame::parse_command` over a pipelined buffer.
//! - `record`: `log::record::{decode_header, verify, chain_link}` on the raw bytes, then a
//!   record built from the bytes through `encode`, its round trip, flips and truncations.
//! - `index_file`: `log::index_file::read` of the bytes as a snapshot file, and of the bytes
//!   with a valid crc32 trailer appended so that the entry decoder is reached.

use std::path::Path;

use dataplane::log::index_file::{self, SnapshotError};
use dataplane::log::record::{self, NewRecord, RecordError, HEADER_BYTES, LINK_BYTES};
use dataplane::resp::frame::{self, ProtocolError};

/// The fuzz targets, which are also the names of the corpus folders.
pub const TARGETS: [&str; 3] = ["resp", "record", "index_file"];

/// Runs the check of `target` on `data`; `scratch` is a directory the check may write into.
pub fn check(target: &str, data: &[u8], scratch: &Path) {
    match target {
        "resp" => check_resp(data),
        "record" => check_record(data),
        "index_file" => check_index_file(data, scratch),
        other => panic!("no check for fuzz target {other:?} (known: {TARGETS:?})"),
    }
}

/// Up to this many bytes, every position of a frame or record is cut or flipped; beyond it a
/// spread sample is, so that one check stays linear-ish in the input size.
const EXHAUSTIVE_BYTES_MAX: usize = 1024;
/// Positions sampled in a frame or record longer than `EXHAUSTIVE_BYTES_MAX`.
const SAMPLED_POSITIONS: usize = 256;

/// Positions `0..length` to cut at or flip: all of them for short inputs, else a spread
/// sample with both ends, the header bytes and `chosen`.
fn positions(length: usize, chosen: usize) -> Vec<usize> {
    if length <= EXHAUSTIVE_BYTES_MAX {
        return (0..length).collect();
    }
    let step = length / SAMPLED_POSITIONS;
    let mut all: Vec<usize> = (0..HEADER_BYTES.min(length))
        .chain((0..length).step_by(step))
        .chain([length - 1, chosen % length])
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

type Parsed = Result<Option<(usize, Vec<Vec<u8>>)>, ProtocolError>;

/// `parse_command` with the arguments copied out, for comparisons.
fn parse_owned(buf: &[u8]) -> Parsed {
    let mut ranges = Vec::new();
    let mut inline = Vec::new();
    let parsed = frame::parse_command(buf, &mut ranges, &mut inline)?;
    Ok(parsed.map(|(consumed, is_inline)| {
        let source = if is_inline { &inline[..] } else { buf };
        let arguments = ranges.iter().map(|range| source[range.clone()].to_vec());
        (consumed, arguments.collect())
    }))
}

fn encode_array(arguments: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::reply::array(&mut out, arguments.len());
    for argument in arguments {
        frame::reply::bulk(&mut out, argument);
    }
    out
}

/// Parses `data` as a connection's read buffer does: command after command until one is
/// incomplete or invalid. Every parsed command is checked (see `check_one_command`).
pub fn check_resp(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        match check_one_command(&data[at..]) {
            Some(consumed) => at += consumed,
            None => break,
        }
    }
}

/// Checks one `parse_command` on the front of `buf`; returns the bytes it consumed.
fn check_one_command(buf: &[u8]) -> Option<usize> {
    let mut ranges = Vec::new();
    let mut inline = Vec::new();
    let (consumed, is_inline) = match frame::parse_command(buf, &mut ranges, &mut inline) {
        Ok(Some(parsed)) => parsed,
        Ok(None) | Err(_) => return None,
    };
    // The connection loop advances by `consumed` and parses again: zero would spin forever.
    assert!(
        (1..=buf.len()).contains(&consumed),
        "consumed {consumed} of a {}-byte buffer",
        buf.len()
    );
    assert!(
        ranges.len() <= frame::ARGUMENTS_MAX,
        "{} arguments",
        ranges.len()
    );
    // An array frame's arguments lie in the bytes it consumed; an inline one's in `inline`.
    let source = if is_inline {
        &inline[..]
    } else {
        &buf[..consumed]
    };
    for range in &ranges {
        assert!(
            range.start <= range.end && range.end <= source.len(),
            "argument {range:?} outside its {}-byte source (inline: {is_inline})",
            source.len()
        );
        if !is_inline {
            assert!(
                range.len() <= frame::BULK_BYTES_MAX,
                "bulk of {}",
                range.len()
            );
        }
    }
    let arguments: Vec<Vec<u8>> = ranges.iter().map(|r| source[r.clone()].to_vec()).collect();

    // What follows a command (the rest of a pipelined batch) does not change it.
    assert_eq!(
        parse_owned(&buf[..consumed]),
        Ok(Some((consumed, arguments.clone()))),
        "the command alone parses differently"
    );
    // Every prefix of a complete command is "incomplete, read more", never an error: a
    // command split across TCP segments must not close the connection.
    for cut in positions(consumed, consumed / 2) {
        assert_eq!(
            parse_owned(&buf[..cut]),
            Ok(None),
            "prefix of {cut} of a {consumed}-byte command"
        );
    }
    // The arguments, sent again as an array of bulk strings, come back unchanged.
    let encoded = encode_array(&arguments);
    assert_eq!(
        parse_owned(&encoded),
        Ok(Some((encoded.len(), arguments))),
        "the arguments re-encoded as an array parse differently"
    );
    Some(consumed)
}

/// Reads fixed-width fields from the front of the fuzz input, zero once it is used up.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, count: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(count.min(self.0.len()));
        self.0 = rest;
        taken
    }

    fn word<const N: usize>(&mut self) -> [u8; N] {
        let mut word = [0u8; N];
        let taken = self.take(N);
        word[..taken.len()].copy_from_slice(taken);
        word
    }

    fn u8(&mut self) -> u8 {
        self.word::<1>()[0]
    }
}

/// Decodes `data` as a record, then encodes a record made from `data` and checks it.
pub fn check_record(data: &[u8]) {
    check_record_decoding(data);
    check_record_encoding(data);
}

/// Arbitrary bytes: no panic, and what `verify` accepts is consistent with the bytes.
fn check_record_decoding(data: &[u8]) {
    let header = record::decode_header(data);
    let verified = record::verify(data);
    match (&header, &verified) {
        (Err(error), verified) => assert_eq!(
            verified.as_ref().err(),
            Some(error),
            "verify passed a header decode_header rejects"
        ),
        (Ok(_), Err(RecordError::Truncated { needed, available })) => assert!(
            *available == data.len() && needed > available,
            "truncation of {available} (needed {needed}) reported for {} bytes",
            data.len()
        ),
        (Ok(_), Err(_)) => {}
        (Ok(decoded), Ok(verified)) => {
            assert_eq!(decoded, verified, "decode_header and verify disagree");
            assert!(
                verified.record_bytes() <= data.len(),
                "record past the buffer"
            );
            assert_eq!(verified.key_len, data[6], "key length");
            assert!(verified.value_len as usize <= record::VALUE_BYTES_MAX);
            // Recomputing the link reads only the verified bytes, and the link depends on
            // the previous one (that is what makes the log a chain).
            let from_zero = record::chain_link(&[0u8; LINK_BYTES], data, verified);
            let from_one = record::chain_link(&[1u8; LINK_BYTES], data, verified);
            assert_ne!(from_zero, from_one, "link independent of the previous link");
        }
    }
}

/// A record encoded from fields taken from `data` verifies, round-trips, chains, and any
/// one changed byte or any truncation of it is caught.
///
/// Layout of `data`: flags (1), key length (1), timestamp (8), sequence (8), previous
/// segment (4), previous offset (4), previous-link fill byte (1), prefix length (1), flip
/// position (2), flip mask (1), then the key (up to the key length), then the value (the rest).
fn check_record_encoding(data: &[u8]) {
    let mut fields = Fields(data);
    let flags = fields.u8();
    let key_len = fields.u8() as usize;
    let timestamp_us = u64::from_le_bytes(fields.word());
    let sequence = u64::from_le_bytes(fields.word());
    let prev_segment = u32::from_le_bytes(fields.word());
    let prev_offset = u32::from_le_bytes(fields.word());
    let prev_link = [fields.u8(); LINK_BYTES];
    // Records are appended after others in a segment buffer: encode must not assume offset 0.
    let prefix_bytes = (fields.u8() % 16) as usize;
    let chosen_position = u16::from_le_bytes(fields.word()) as usize;
    let flip_mask = match fields.u8() {
        0 => 0x80,
        mask => mask,
    };
    let key = fields.take(key_len);
    let value = fields.take(record::VALUE_BYTES_MAX);

    let mut out = vec![0xa5u8; prefix_bytes];
    let new = NewRecord {
        flags,
        key,
        value,
        value_crc: crc32fast::hash(value),
        timestamp_us,
        sequence,
        prev_segment,
        prev_offset,
    };
    let (link, record_crc) = record::encode(&new, &prev_link, &mut out);
    assert!(
        out[..prefix_bytes].iter().all(|&b| b == 0xa5),
        "prefix overwritten"
    );
    let bytes = &out[prefix_bytes..];
    assert_eq!(
        bytes.len(),
        HEADER_BYTES + key.len() + value.len(),
        "record size"
    );

    let header = match record::verify(bytes) {
        Ok(header) => header,
        Err(error) => panic!("a freshly encoded record does not verify: {error}"),
    };
    assert_eq!(record::decode_header(bytes), Ok(header), "decode_header");
    assert_eq!(header.record_bytes(), bytes.len(), "record_bytes");
    assert_eq!(header.flags, flags, "flags");
    assert_eq!(header.key_len as usize, key.len(), "key length");
    assert_eq!(header.value_len as usize, value.len(), "value length");
    assert_eq!(header.timestamp_us, timestamp_us, "timestamp");
    assert_eq!(header.sequence, sequence, "sequence");
    assert_eq!(header.prev_segment, prev_segment, "previous segment");
    assert_eq!(header.prev_offset, prev_offset, "previous offset");
    assert_eq!(header.link, link, "stored link");
    assert_eq!(header.record_crc, record_crc, "record crc");
    assert_eq!(header.is_tombstone(), flags & record::FLAG_TOMBSTONE != 0);
    let (stored_key, stored_value) = bytes[HEADER_BYTES..].split_at(key.len());
    assert_eq!(stored_key, key, "key round trip");
    assert_eq!(stored_value, value, "value round trip");
    assert_eq!(record::chain_link(&prev_link, bytes, &header), link, "link");

    // A segment holds the next record right after this one: verify reads only its own bytes.
    let mut followed = bytes.to_vec();
    followed.extend_from_slice(data);
    assert_eq!(
        record::verify(&followed),
        Ok(header),
        "record followed by more"
    );

    // Any one changed byte is caught.
    let mut damaged = bytes.to_vec();
    for position in positions(bytes.len(), chosen_position) {
        let mask = flip_mask.rotate_left(position as u32 % 8);
        damaged[position] ^= mask;
        assert!(
            record::verify(&damaged).is_err(),
            "byte {position} of {} xor {mask:#04x} not detected",
            bytes.len()
        );
        damaged[position] ^= mask;
    }
    // Any truncation is reported as one, so recovery can tell a torn tail from damage.
    for cut in positions(bytes.len(), chosen_position) {
        let result = record::verify(&bytes[..cut]);
        assert!(
            matches!(result, Err(RecordError::Truncated { .. })),
            "record cut to {cut} of {} bytes: {result:?}",
            bytes.len()
        );
    }
}

/// Reads `data` as an index snapshot file, as it is and with its crc32 trailer appended
/// (a fuzzer cannot guess checksums, and without it every input stops at the checksum).
pub fn check_index_file(data: &[u8], scratch: &Path) {
    check_snapshot_bytes(data, scratch);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    check_snapshot_bytes(&sealed, scratch);
}

fn check_snapshot_bytes(file: &[u8], scratch: &Path) {
    let path = scratch.join("fuzz.zdx");
    if let Err(error) = std::fs::write(&path, file) {
        panic!("cannot write {}: {error}", path.display());
    }
    let (meta, index) = match index_file::read(&path) {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => panic!("the snapshot just written is not found"),
        Err(SnapshotError::Damaged(_)) => return,
        Err(error) => panic!("reading {}: {error}", path.display()),
    };
    // Accepted: the header fields are the file's, and there is no more than it announced.
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&file[at..at + 8]);
        u64::from_le_bytes(word)
    };
    assert!(
        file.len() >= 100,
        "a {}-byte snapshot was accepted",
        file.len()
    );
    assert!(
        index.len() as u64 <= u64_at(8),
        "more entries than announced"
    );
    assert_eq!(
        meta.covered_segment.to_le_bytes(),
        file[16..20],
        "covered segment"
    );
    assert_eq!(meta.covered_offset, u64_at(24), "covered offset");
    assert_eq!(meta.next_sequence, u64_at(32), "next sequence");
    assert_eq!(meta.record_count, u64_at(80), "record count");
    assert_eq!(meta.chain_head[..], file[48..80], "chain head");
    // What was read, written again, reads back the same.
    let again = scratch.join("again.zdx");
    if let Err(error) = index_file::write(&again, &meta, &index) {
        panic!("writing {}: {error}", again.display());
    }
    match index_file::read(&again) {
        Ok(Some((meta_again, index_again))) => {
            assert_eq!(meta_again, meta, "snapshot header round trip");
            assert_eq!(index_again, index, "snapshot entries round trip");
        }
        other => panic!("a snapshot written from a read one does not read back: {other:?}"),
    }
}
