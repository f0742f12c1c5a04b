//! Answers decoded FUSE requests from the flist's fs core and writes the replies into a
//! [`ReplySink`] (the chain's device-writable buffers, or a plain buffer in tests).
//!
//! Stateless: inodes are the flist's and live as long as it, so lookups are not counted and
//! forgets change nothing; file handles are all 0. Everything the core knows is immutable,
//! so entries, attributes, symlinks, directory listings and pages are given long cache
//! lifetimes ([`CACHE_TTL_SECONDS`], `FOPEN_KEEP_CACHE`).
//!
//! Reads use [`FsCore::read_data`], which lends the chunks' plaintext from the chunk
//! source's memory cache: each slice is copied straight into the guest's buffers, so a read
//! costs one copy on the host.

use flistfs::format::mode;
use flistfs::fs::{Attr, FsCore, FsError, READ_BYTES_MAX};

use super::abi::{self, init_flags, open_flags, FuseAttr, Put, OUT_HEADER_BYTES};
use super::request::{decode, Operation, Request};

/// How long the guest may cache entries and attributes (the flist never changes).
pub const CACHE_TTL_SECONDS: u64 = 3600;
/// Largest directory listing in one reply.
pub const READDIR_BYTES_MAX: u32 = 128 * 1024;
/// Largest xattr value or name list in one reply.
pub const XATTR_BYTES_MAX: u32 = 64 * 1024;
/// Pages per request we offer the kernel (`max_pages`; the kernel may grant fewer, bounded
/// by its own limit and the virtqueue size).
pub const MAX_PAGES: u16 = 256;
/// Background requests (read-ahead) the kernel may keep in flight.
pub const MAX_BACKGROUND: u16 = 128;

/// Where a reply goes: `capacity` device-writable bytes, written by offset.
pub trait ReplySink {
    /// Bytes the guest made writable for the reply.
    fn capacity(&self) -> u64;
    /// Writes `bytes` at reply offset `offset`; false when it does not fit or the guest
    /// memory refused it.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> bool;
}

/// A reply buffer in memory (tests, the fuzzer).
#[derive(Debug, Default)]
pub struct VecSink {
    pub capacity: usize,
    pub bytes: Vec<u8>,
}

impl ReplySink for VecSink {
    fn capacity(&self) -> u64 {
        self.capacity as u64
    }
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> bool {
        let Some(end) = usize::try_from(offset)
            .ok()
            .and_then(|start| start.checked_add(bytes.len()))
        else {
            return false;
        };
        if end > self.capacity {
            return false;
        }
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[end - bytes.len()..end].copy_from_slice(bytes);
        true
    }
}

/// Settings of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Files of at least this many bytes are opened with `FOPEN_DIRECT_IO` (every read
    /// reaches us, in requests as large as the reader's, none kept in the guest's page
    /// cache); smaller ones with `FOPEN_KEEP_CACHE`. 0: every file direct.
    pub direct_io_file_bytes_min: u64,
}

/// Default of [`SessionConfig::direct_io_file_bytes_min`]. Below it, files are read
/// through the guest's page cache and kept there across opens (program files, libraries,
/// configuration: read again and again). From it on, reads go straight to us: the guest's
/// cached path reads ahead only 128 KiB per request and a large file crowds everything else
/// out of a small guest's memory, while a direct read is one request of the reader's size
/// answered from the chunk cache (measured in perf/fs-vs-virtiofsd.sh).
pub const DIRECT_IO_FILE_BYTES_MIN_DEFAULT: u64 = 64 << 20;

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            direct_io_file_bytes_min: DIRECT_IO_FILE_BYTES_MIN_DEFAULT,
        }
    }
}

/// Answers FUSE requests over one flist.
pub struct Session {
    core: FsCore,
    config: SessionConfig,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Session")
            .field("core", &self.core)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What [`Session::handle`] did with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A reply of this many bytes was written.
    Replied(u32),
    /// The request wants no reply (forget, interrupt).
    NoReply,
    /// No reply could be written (no header, or no room for one).
    Dropped,
}

impl Outcome {
    /// The used length for the virtqueue.
    pub fn used_bytes(self) -> u32 {
        match self {
            Outcome::Replied(bytes) => bytes,
            Outcome::NoReply | Outcome::Dropped => 0,
        }
    }
}

fn fuse_attr(attr: &Attr) -> FuseAttr {
    FuseAttr {
        ino: attr.id,
        size: attr.size,
        blocks: attr.blocks,
        atime: attr.atime.0 as u64,
        mtime: attr.mtime.0 as u64,
        ctime: attr.ctime.0 as u64,
        atime_nsec: attr.atime.1,
        mtime_nsec: attr.mtime.1,
        ctime_nsec: attr.ctime.1,
        mode: attr.mode,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev as u32,
        block_bytes: flistfs::fs::BLOCK_BYTES,
    }
}

/// A reply body or an errno.
type Answer = Result<Vec<u8>, i32>;

fn errno(error: &FsError) -> i32 {
    error.errno()
}

impl Session {
    /// A session over `core`.
    pub fn new(core: FsCore, config: SessionConfig) -> Self {
        Self { core, config }
    }

    /// The core served.
    pub fn core(&self) -> &FsCore {
        &self.core
    }

    /// Decodes `message` (the chain's first readable bytes; `readable_bytes` in all),
    /// answers it and writes the reply to `sink`.
    pub fn handle(&self, message: &[u8], readable_bytes: u64, sink: &mut dyn ReplySink) -> Outcome {
        let request = match decode(message, readable_bytes) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, "refused a FUSE message");
                return match error.header() {
                    Some(header) => reply_error(sink, header.unique, error.errno()),
                    None => Outcome::Dropped,
                };
            }
        };
        if request.operation.is_one_way() {
            return Outcome::NoReply;
        }
        let unique = request.header.unique;
        if let Operation::Read { offset, size } = request.operation {
            return self.read(request.header.nodeid, offset, size, unique, sink);
        }
        match self.answer(&request, sink.capacity()) {
            Ok(body) => reply(sink, unique, &body),
            Err(errno) => reply_error(sink, unique, errno),
        }
    }

    fn answer(&self, request: &Request<'_>, capacity: u64) -> Answer {
        let id = request.header.nodeid;
        let room = capacity.saturating_sub(OUT_HEADER_BYTES as u64);
        let mut body = Vec::new();
        match request.operation {
            Operation::Init {
                major,
                minor,
                max_readahead,
                flags,
            } => return Ok(init_reply(major, minor, max_readahead, flags)),
            Operation::Destroy
            | Operation::Release
            | Operation::Releasedir
            | Operation::Flush
            | Operation::Sync => {}
            Operation::Lookup { name } => {
                let attr = self.core.lookup(id, name).map_err(|e| errno(&e))?;
                abi::encode_entry(&fuse_attr(&attr), CACHE_TTL_SECONDS, &mut body);
            }
            Operation::Getattr => {
                let attr = self.core.getattr(id).map_err(|e| errno(&e))?;
                abi::encode_attr_out(&fuse_attr(&attr), CACHE_TTL_SECONDS, &mut body);
            }
            Operation::Readlink => {
                body = self.core.readlink(id).map_err(|e| errno(&e))?;
            }
            Operation::Open { flags } => {
                let access = flags as i32 & libc::O_ACCMODE;
                let write = access != libc::O_RDONLY || flags as i32 & libc::O_TRUNC != 0;
                self.core.open(id, write).map_err(|e| errno(&e))?;
                let size = self.core.getattr(id).map_err(|e| errno(&e))?.size;
                let open = if size >= self.config.direct_io_file_bytes_min {
                    open_flags::DIRECT_IO
                } else {
                    open_flags::KEEP_CACHE
                };
                encode_open(open | open_flags::NOFLUSH, &mut body);
            }
            Operation::Opendir { .. } => {
                let attr = self.core.getattr(id).map_err(|e| errno(&e))?;
                if attr.mode & mode::TYPE_MASK != mode::DIRECTORY {
                    return Err(libc::ENOTDIR);
                }
                encode_open(open_flags::KEEP_CACHE | open_flags::CACHE_DIR, &mut body);
            }
            Operation::Readdir { offset, size, plus } => {
                let limit = u64::from(size.min(READDIR_BYTES_MAX)).min(room) as usize;
                self.readdir(id, offset, limit, plus, &mut body)?;
            }
            Operation::Statfs => {
                let stat = self.core.statfs();
                body.put_u64(stat.blocks);
                body.put_u64(0); // bfree
                body.put_u64(0); // bavail
                body.put_u64(stat.files);
                body.put_u64(0); // ffree
                body.put_u32(stat.block_bytes);
                body.put_u32(stat.name_bytes_max);
                body.put_u32(stat.block_bytes); // frsize
                body.resize(abi::STATFS_OUT_BYTES, 0);
            }
            Operation::Getxattr { size, name } => {
                let value = self.core.getxattr(id, name).map_err(|e| errno(&e))?;
                body = sized_reply(value, size)?;
            }
            Operation::Listxattr { size } => {
                let names = self.core.listxattr(id).map_err(|e| errno(&e))?;
                body = sized_reply(names, size)?;
            }
            Operation::Access { mask } => {
                self.core
                    .access(id, mask as i32, request.header.uid, request.header.gid)
                    .map_err(|e| errno(&e))?;
            }
            Operation::Lseek { offset, whence } => {
                let hole = match whence as i32 {
                    libc::SEEK_DATA => false,
                    libc::SEEK_HOLE => true,
                    // The kernel answers SEEK_SET, SEEK_CUR and SEEK_END itself.
                    _ => return Err(libc::EINVAL),
                };
                let found = self
                    .core
                    .seek_data_or_hole(id, offset, hole)
                    .map_err(|e| errno(&e))?;
                body.put_u64(found);
            }
            Operation::Write => return Err(libc::EROFS),
            Operation::Ioctl => return Err(libc::ENOTTY),
            Operation::Unsupported => return Err(libc::ENOSYS),
            // Handled before: reads stream into the sink, one-way messages get no reply.
            Operation::Read { .. }
            | Operation::Forget { .. }
            | Operation::BatchForget { .. }
            | Operation::Interrupt => return Err(libc::EINVAL),
        }
        if body.len() as u64 > room {
            return Err(libc::ERANGE);
        }
        Ok(body)
    }

    fn readdir(
        &self,
        id: u64,
        offset: u64,
        limit: usize,
        plus: bool,
        body: &mut Vec<u8>,
    ) -> Result<(), i32> {
        let mut failure = None;
        self.core
            .readdir(id, offset, |item| {
                let needed = abi::dirent_bytes(item.name.len())
                    + if plus { abi::ENTRY_OUT_BYTES } else { 0 };
                if body.len() + needed > limit {
                    return false;
                }
                if plus {
                    match self.core.getattr(item.id) {
                        Ok(attr) => abi::encode_entry(&fuse_attr(&attr), CACHE_TTL_SECONDS, body),
                        Err(error) => {
                            failure = Some(error);
                            return false;
                        }
                    }
                }
                abi::encode_dirent(
                    item.id,
                    item.next_offset,
                    (item.kind & mode::TYPE_MASK) >> 12,
                    &item.name,
                    body,
                );
                true
            })
            .map_err(|e| errno(&e))?;
        match failure {
            Some(error) => Err(errno(&error)),
            None => Ok(()),
        }
    }

    /// Streams `size` bytes of file `id` at `offset` into the sink after the header.
    fn read(
        &self,
        id: u64,
        offset: u64,
        size: u32,
        unique: u64,
        sink: &mut dyn ReplySink,
    ) -> Outcome {
        let room = sink.capacity().saturating_sub(OUT_HEADER_BYTES as u64);
        let wanted = u64::from(size.min(READ_BYTES_MAX)).min(room);
        match self.read_into(id, offset, wanted, sink) {
            Ok(bytes) => {
                let total = OUT_HEADER_BYTES as u64 + bytes;
                let mut header = Vec::with_capacity(OUT_HEADER_BYTES);
                abi::encode_out_header(total as u32, 0, unique, &mut header);
                if sink.write_at(0, &header) {
                    Outcome::Replied(total as u32)
                } else {
                    Outcome::Dropped
                }
            }
            Err(errno) => reply_error(sink, unique, errno),
        }
    }

    /// The read itself: the core lends the chunks' plaintext ([`FsCore::read_data`]) and
    /// each slice is copied once, into the guest. Returns the bytes written after the header.
    fn read_into(
        &self,
        id: u64,
        offset: u64,
        wanted: u64,
        sink: &mut dyn ReplySink,
    ) -> Result<u64, i32> {
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
        let data = self
            .core
            .read_data(id, offset, wanted)
            .map_err(|e| errno(&e))?;
        let mut position = OUT_HEADER_BYTES as u64;
        for slice in data.slices() {
            if !sink.write_at(position, slice) {
                return Err(libc::EFAULT);
            }
            position += slice.len() as u64;
        }
        Ok(position - OUT_HEADER_BYTES as u64)
    }
}

fn encode_open(flags: u32, body: &mut Vec<u8>) {
    body.put_u64(0); // fh
    body.put_u32(flags);
    body.put_u32(0);
}

/// getxattr / listxattr: the size alone when asked with 0, the bytes when they fit.
fn sized_reply(value: Vec<u8>, size: u32) -> Answer {
    if value.len() > XATTR_BYTES_MAX as usize {
        return Err(libc::E2BIG);
    }
    if size == 0 {
        let mut body = Vec::with_capacity(8);
        body.put_u32(value.len() as u32);
        body.put_u32(0);
        Ok(body)
    } else if value.len() > size as usize {
        Err(libc::ERANGE)
    } else {
        Ok(value)
    }
}

fn init_reply(major: u32, minor: u32, kernel_readahead: u32, kernel_flags: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(abi::INIT_OUT_BYTES);
    body.put_u32(abi::MAJOR);
    if major > abi::MAJOR {
        // The kernel retries with our major: answer only that.
        body.put_u32(abi::MINOR);
        body.resize(abi::INIT_OUT_COMPAT_BYTES, 0);
        return body;
    }
    let wanted = init_flags::ASYNC_READ
        | init_flags::DO_READDIRPLUS
        | init_flags::READDIRPLUS_AUTO
        | init_flags::PARALLEL_DIROPS
        | init_flags::MAX_PAGES
        | init_flags::CACHE_SYMLINKS
        | init_flags::ASYNC_DIO
        | init_flags::EXPORT_SUPPORT;
    body.put_u32(minor.min(abi::MINOR));
    body.put_u32(kernel_readahead);
    body.put_u32(kernel_flags & wanted);
    body.put_u16(MAX_BACKGROUND);
    body.put_u16(MAX_BACKGROUND / 4 * 3); // congestion_threshold
    body.put_u32(128 * 1024); // max_write: nothing is ever written
    body.put_u32(1); // time_gran: nanoseconds
    body.put_u16(MAX_PAGES);
    body.put_u16(0); // map_alignment
    if minor < 23 {
        body.truncate(abi::INIT_OUT_COMPAT_BYTES);
    } else {
        body.resize(abi::INIT_OUT_BYTES, 0);
    }
    body
}

fn reply(sink: &mut dyn ReplySink, unique: u64, body: &[u8]) -> Outcome {
    let total = OUT_HEADER_BYTES + body.len();
    if total as u64 > sink.capacity() {
        return reply_error(sink, unique, libc::ERANGE);
    }
    let mut bytes = Vec::with_capacity(total);
    abi::encode_out_header(total as u32, 0, unique, &mut bytes);
    bytes.extend_from_slice(body);
    if sink.write_at(0, &bytes) {
        Outcome::Replied(total as u32)
    } else {
        Outcome::Dropped
    }
}

fn reply_error(sink: &mut dyn ReplySink, unique: u64, errno: i32) -> Outcome {
    let mut bytes = Vec::with_capacity(OUT_HEADER_BYTES);
    abi::encode_out_header(OUT_HEADER_BYTES as u32, -errno, unique, &mut bytes);
    if sink.write_at(0, &bytes) {
        Outcome::Replied(OUT_HEADER_BYTES as u32)
    } else {
        Outcome::Dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::abi::opcode;
    use crate::fs::sample::{sample_byte, sample_session};

    fn message(op: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.put_u32((abi::IN_HEADER_BYTES + body.len()) as u32);
        bytes.put_u32(op);
        bytes.put_u64(77); // unique
        bytes.put_u64(nodeid);
        bytes.extend_from_slice(&[0u8; 16]);
        bytes.extend_from_slice(body);
        bytes
    }

    fn read_body(offset: u64, size: u32) -> Vec<u8> {
        let mut body = Vec::new();
        body.put_u64(0);
        body.put_u64(offset);
        body.put_u32(size);
        body.resize(40, 0);
        body
    }

    /// (error, body)
    fn ask(
        session: &Session,
        op: u32,
        nodeid: u64,
        body: &[u8],
        capacity: usize,
    ) -> (i32, Vec<u8>) {
        let bytes = message(op, nodeid, body);
        let mut sink = VecSink {
            capacity,
            bytes: Vec::new(),
        };
        let outcome = session.handle(&bytes, bytes.len() as u64, &mut sink);
        let Outcome::Replied(length) = outcome else {
            panic!("no reply: {outcome:?}");
        };
        assert_eq!(sink.bytes[..4], length.to_le_bytes());
        assert_eq!(sink.bytes[8..16], 77u64.to_le_bytes());
        let error = i32::from_le_bytes(sink.bytes[4..8].try_into().unwrap());
        (error, sink.bytes[16..length as usize].to_vec())
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    #[test]
    fn init_negotiates_what_both_sides_know() {
        let session = sample_session(SessionConfig::default()).unwrap();
        let mut body = Vec::new();
        body.put_u32(7);
        body.put_u32(38);
        body.put_u32(128 * 1024);
        body.put_u32(init_flags::DO_READDIRPLUS | init_flags::MAX_PAGES | (1 << 31));
        body.resize(64, 0);
        let (error, reply) = ask(&session, opcode::INIT, 0, &body, 4096);
        assert_eq!(error, 0);
        assert_eq!(reply.len(), abi::INIT_OUT_BYTES);
        assert_eq!((u32_at(&reply, 0), u32_at(&reply, 4)), (7, abi::MINOR));
        assert_eq!(u32_at(&reply, 8), 128 * 1024);
        assert_eq!(
            u32_at(&reply, 12),
            init_flags::DO_READDIRPLUS | init_flags::MAX_PAGES
        );
    }

    #[test]
    fn lookup_getattr_and_errors() {
        let session = sample_session(SessionConfig::default()).unwrap();
        let (error, entry) = ask(&session, opcode::LOOKUP, 1, b"d\0", 4096);
        assert_eq!(error, 0);
        assert_eq!(entry.len(), abi::ENTRY_OUT_BYTES);
        let directory = u64_at(&entry, 0);
        // fuse_attr starts at 40: mode at 40 + 60, uid at 40 + 68.
        assert_eq!(u32_at(&entry, 100), mode::DIRECTORY | 0o750);
        assert_eq!(u32_at(&entry, 108), 1000);
        let (error, _) = ask(&session, opcode::LOOKUP, 1, b"nope\0", 4096);
        assert_eq!(error, -libc::ENOENT);
        let (error, attr) = ask(&session, opcode::GETATTR, directory, &[0u8; 16], 4096);
        assert_eq!(error, 0);
        assert_eq!(u64_at(&attr, 16), directory);
        let (error, _) = ask(&session, opcode::GETATTR, 999_999, &[0u8; 16], 4096);
        assert_eq!(error, -libc::ENOENT);
        let (_, link) = ask(&session, opcode::LOOKUP, 1, b"l\0", 4096);
        let (error, target) = ask(&session, opcode::READLINK, u64_at(&link, 0), &[], 4096);
        assert_eq!((error, target.as_slice()), (0, b"d/f".as_slice()));
        let (error, _) = ask(&session, opcode::WRITE, 3, &[0u8; 80], 4096);
        assert_eq!(error, -libc::EROFS);
        let (error, _) = ask(&session, 200, 1, &[], 4096);
        assert_eq!(error, -libc::ENOSYS);
        let mut open = Vec::new();
        open.put_u32(libc::O_WRONLY as u32);
        open.put_u32(0);
        let (error, _) = ask(&session, opcode::OPEN, 4, &open, 4096);
        assert_eq!(error, -libc::EROFS);
        // A reply that does not fit the room given: ERANGE in the header alone.
        let (error, _) = ask(&session, opcode::LOOKUP, 1, b"d\0", 64);
        assert_eq!(error, -libc::ERANGE);
        // One-way messages get no reply.
        let bytes = message(opcode::FORGET, 3, &1u64.to_le_bytes());
        let mut sink = VecSink {
            capacity: 4096,
            bytes: Vec::new(),
        };
        assert_eq!(
            session.handle(&bytes, bytes.len() as u64, &mut sink),
            Outcome::NoReply
        );
    }

    #[test]
    fn reads_cross_chunks_and_holes_and_respect_the_room() {
        let session = sample_session(SessionConfig::default()).unwrap();
        let (_, entry) = ask(&session, opcode::LOOKUP, 1, b"d\0", 4096);
        let (_, entry) = ask(&session, opcode::LOOKUP, u64_at(&entry, 0), b"f\0", 4096);
        let file = u64_at(&entry, 0);
        for (offset, size) in [
            (0u64, 4096u32),
            (99_990, 20),
            (199_995, 10),
            (50_000, 200_000),
            (299_990, 4096),
        ] {
            let (error, data) = ask(
                &session,
                opcode::READ,
                file,
                &read_body(offset, size),
                1 << 20,
            );
            assert_eq!(error, 0);
            let end = (offset + u64::from(size)).min(300_000);
            let expected: Vec<u8> = (offset..end).map(sample_byte).collect();
            assert_eq!(data, expected, "read {offset}+{size}");
        }
        // Past the end: empty. Less room than asked: as much as fits.
        let (error, data) = ask(&session, opcode::READ, file, &read_body(400_000, 10), 4096);
        assert_eq!((error, data.len()), (0, 0));
        let (error, data) = ask(&session, opcode::READ, file, &read_body(0, 8192), 16 + 1000);
        assert_eq!((error, data.len()), (0, 1000));
        let (error, _) = ask(&session, opcode::READ, 1, &read_body(0, 10), 4096);
        assert_eq!(error, -libc::EISDIR);
    }

    #[test]
    fn readdir_resumes_at_offsets_and_xattrs_report_sizes() {
        let session = sample_session(SessionConfig::default()).unwrap();
        for op in [opcode::READDIR, opcode::READDIRPLUS] {
            let mut names = Vec::new();
            let mut offset = 0;
            loop {
                // Room for about one entry per reply.
                let room = if op == opcode::READDIR { 40 } else { 170 };
                let (error, listing) = ask(&session, op, 1, &read_body(offset, room), 4096);
                assert_eq!(error, 0);
                if listing.is_empty() {
                    break;
                }
                let mut at = 0;
                while at < listing.len() {
                    let dirent = if op == opcode::READDIRPLUS {
                        at + abi::ENTRY_OUT_BYTES
                    } else {
                        at
                    };
                    let name_bytes = u32_at(&listing, dirent + 16) as usize;
                    offset = u64_at(&listing, dirent + 8);
                    names.push(listing[dirent + 24..dirent + 24 + name_bytes].to_vec());
                    at = dirent + abi::dirent_bytes(name_bytes);
                }
            }
            assert_eq!(names, [&b"."[..], b"..", b"d", b"l"]);
        }
        let (_, entry) = ask(&session, opcode::LOOKUP, 1, b"d\0", 4096);
        let (_, entry) = ask(
            &session,
            opcode::LOOKUP,
            u64_at(&entry, 0),
            b"small\0",
            4096,
        );
        let small = u64_at(&entry, 0);
        let xattr = |size: u32, name: &[u8]| {
            let mut body = Vec::new();
            body.put_u32(size);
            body.put_u32(0);
            body.extend_from_slice(name);
            body
        };
        let (error, reply) = ask(
            &session,
            opcode::GETXATTR,
            small,
            &xattr(0, b"user.k\0"),
            4096,
        );
        assert_eq!((error, u32_at(&reply, 0)), (0, 1));
        let (error, reply) = ask(
            &session,
            opcode::GETXATTR,
            small,
            &xattr(8, b"user.k\0"),
            4096,
        );
        assert_eq!((error, reply.as_slice()), (0, b"v".as_slice()));
        let (error, _) = ask(
            &session,
            opcode::GETXATTR,
            small,
            &xattr(8, b"user.x\0"),
            4096,
        );
        assert_eq!(error, -libc::ENODATA);
        let (error, reply) = ask(&session, opcode::LISTXATTR, small, &xattr(64, b""), 4096);
        assert_eq!((error, reply.as_slice()), (0, b"user.k\0".as_slice()));
        let (error, _) = ask(&session, opcode::LISTXATTR, small, &xattr(2, b""), 4096);
        assert_eq!(error, -libc::ERANGE);
        let (error, reply) = ask(&session, opcode::STATFS, 1, &[], 4096);
        assert_eq!((error, reply.len()), (0, abi::STATFS_OUT_BYTES));
        assert_eq!(u32_at(&reply, 44), 255);
    }
}
