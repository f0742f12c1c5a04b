//! A small flist held in memory, with its chunks in memory: the fixture of the session's
//! unit tests and of the FUSE fuzz target ([`fuzz_handle`]), so both exercise the real fs
//! core without a store or a disk.
//!
//! Tree (inode ids as the core gives them: flist number + 1, breadth-first):
//!
//! ```text
//! /            dir  0755
//! /d           dir  0750  uid 1000
//! /d/f         file 0644  300 000 bytes: chunk 0..100 000, hole, chunk 200 000..300 000
//! /d/small     file 0600  5 bytes "hello", xattr user.k = "v"
//! /l           symlink -> d/f
//! ```

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use flistfs::chunk::{ChunkCodec, ChunkRef};
use flistfs::format::mode;
use flistfs::fs::{ChunkSource, FsCore};
use flistfs::{Flist, FlistBuilder, FormatError, InodeMeta};

use super::abi::OUT_HEADER_BYTES;
use super::session::{Outcome, Session, SessionConfig, VecSink};

/// Chunk plaintext by id.
#[derive(Debug, Default)]
pub struct MemoryChunks {
    chunks: HashMap<[u8; 32], Arc<Vec<u8>>>,
}

impl ChunkSource for MemoryChunks {
    fn fetch(&self, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>, String> {
        self.chunks
            .get(&chunk.id)
            .cloned()
            .ok_or_else(|| "chunk not in memory".to_owned())
    }
}

/// The content of `/d/f` at `offset` (zeros in the hole).
pub fn sample_byte(offset: u64) -> u8 {
    if (100_000..200_000).contains(&offset) {
        0
    } else {
        (offset % 251) as u8 + 1
    }
}

fn chunk(file_offset: u64, plain_bytes: u32, tag: u8, chunks: &mut MemoryChunks) -> ChunkRef {
    let id = [tag; 32];
    let plain: Vec<u8> = (file_offset..file_offset + u64::from(plain_bytes))
        .map(sample_byte)
        .collect();
    chunks.chunks.insert(id, Arc::new(plain));
    ChunkRef {
        file_offset,
        plain_bytes,
        stored_bytes: 0,
        codec: ChunkCodec::ZosV1,
        id,
        key: [0; 32],
    }
}

/// Builds the sample flist and a session over it.
pub fn sample_session(config: SessionConfig) -> Result<Session, FormatError> {
    let meta = |mode_bits: u32, uid: u32, size: u64| InodeMeta {
        mode: mode_bits,
        uid,
        gid: uid,
        size,
        mtime: (1_700_000_000, 5),
        ..InodeMeta::default()
    };
    let mut chunks = MemoryChunks::default();
    let mut builder = FlistBuilder::new(meta(mode::DIRECTORY | 0o755, 0, 0), 100_000);
    let directory = builder.add(0, b"d", meta(mode::DIRECTORY | 0o750, 1000, 0), vec![], b"")?;
    let file_chunks = vec![
        chunk(0, 100_000, 1, &mut chunks),
        chunk(200_000, 100_000, 2, &mut chunks),
    ];
    builder.add(
        directory,
        b"f",
        meta(mode::REGULAR | 0o644, 0, 300_000),
        file_chunks,
        b"",
    )?;
    let small_chunk = {
        let id = [3u8; 32];
        chunks.chunks.insert(id, Arc::new(b"hello".to_vec()));
        ChunkRef {
            file_offset: 0,
            plain_bytes: 5,
            stored_bytes: 0,
            codec: ChunkCodec::ZosV1,
            id,
            key: [0; 32],
        }
    };
    let small = builder.add(
        directory,
        b"small",
        meta(mode::REGULAR | 0o600, 1000, 5),
        vec![small_chunk],
        b"",
    )?;
    builder.set_xattr(small, b"user.k", b"v")?;
    builder.add(0, b"l", meta(mode::SYMLINK | 0o777, 0, 3), vec![], b"d/f")?;
    let flist = Flist::from_bytes(builder.finish()?)?;
    let core = FsCore::new(Arc::new(flist), Arc::new(chunks));
    Ok(Session::new(core, config))
}

/// The fuzz target's entry point for the whole request path: decode, answer from the
/// sample flist, encode. Input: reply capacity (u32 LE, at most 2 MiB is used), the
/// chain's readable length (u64 LE), then the message. Checks what the guest relies on:
/// never a panic, a reply never larger than the room given, its header's length equal to
/// the bytes written, the request's `unique` echoed, errors as small negative errnos.
pub fn fuzz_handle(input: &[u8]) {
    static SESSION: OnceLock<Option<Session>> = OnceLock::new();
    let Some(session) = SESSION
        .get_or_init(|| sample_session(SessionConfig::default()).ok())
        .as_ref()
    else {
        return;
    };
    let Some((capacity, rest)) = input.split_first_chunk::<4>() else {
        return;
    };
    let Some((readable, message)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let capacity = (u32::from_le_bytes(*capacity) as usize).min(2 << 20);
    let readable_bytes = u64::from_le_bytes(*readable);
    let message = &message[..message.len().min(super::request::IN_BYTES_MAX)];
    let mut sink = VecSink {
        capacity,
        bytes: Vec::new(),
    };
    match session.handle(message, readable_bytes, &mut sink) {
        Outcome::Replied(bytes) => {
            let bytes = bytes as usize;
            assert!(bytes >= OUT_HEADER_BYTES && bytes <= capacity);
            assert!(sink.bytes.len() >= bytes);
            let declared =
                u32::from_le_bytes([sink.bytes[0], sink.bytes[1], sink.bytes[2], sink.bytes[3]])
                    as usize;
            assert_eq!(declared, bytes);
            let error =
                i32::from_le_bytes([sink.bytes[4], sink.bytes[5], sink.bytes[6], sink.bytes[7]]);
            assert!((-4095..=0).contains(&error));
            if error != 0 {
                assert_eq!(bytes, OUT_HEADER_BYTES);
            }
            assert_eq!(sink.bytes[8..16], message[8..16]);
        }
        Outcome::NoReply => assert!(message.len() >= 40),
        Outcome::Dropped => {}
    }
}
