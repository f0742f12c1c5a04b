//! The FUSE wire format (the kernel's `include/uapi/linux/fuse.h`), as far as a read-only
//! virtio-fs device needs it: opcodes, flags, and the fixed-size structures, little-endian
//! (virtio-fs is little-endian whatever the guest). Encoders append a structure to a reply
//! buffer; decoders live in [`super::request`].
//!
//! We speak protocol 7.[`MINOR`]: the kernel adapts to the lower of its and our minor.

/// Protocol major version.
pub const MAJOR: u32 = 7;
/// Protocol minor version we implement (`FUSE_MAX_PAGES` and `FUSE_CACHE_SYMLINKS` are
/// 7.28; `FOPEN_NOFLUSH` 7.31).
pub const MINOR: u32 = 31;

/// Bytes of `fuse_in_header`.
pub const IN_HEADER_BYTES: usize = 40;
/// Bytes of `fuse_out_header`.
pub const OUT_HEADER_BYTES: usize = 16;
/// Bytes of `fuse_attr`.
pub const ATTR_BYTES: usize = 88;
/// Bytes of `fuse_entry_out`.
pub const ENTRY_OUT_BYTES: usize = 40 + ATTR_BYTES;
/// Bytes of `fuse_attr_out`.
pub const ATTR_OUT_BYTES: usize = 16 + ATTR_BYTES;
/// Bytes of `fuse_dirent` before the name.
pub const DIRENT_BYTES: usize = 24;
/// Bytes of `fuse_init_out` for minor >= 23 (older kernels get the first 24).
pub const INIT_OUT_BYTES: usize = 64;
/// Bytes of `fuse_init_out` that kernels older than 7.23 read.
pub const INIT_OUT_COMPAT_BYTES: usize = 24;
/// Bytes of `fuse_kstatfs`.
pub const STATFS_OUT_BYTES: usize = 80;

/// Opcodes (`enum fuse_opcode`).
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const REMOVEMAPPING: u32 = 49;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
    pub const STATX: u32 = 52;
    pub const COPY_FILE_RANGE_64: u32 = 53;
}

/// `fuse_init_in.flags` / `fuse_init_out.flags` bits we use.
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const EXPORT_SUPPORT: u32 = 1 << 4;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const READDIRPLUS_AUTO: u32 = 1 << 14;
    pub const ASYNC_DIO: u32 = 1 << 15;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
    pub const CACHE_SYMLINKS: u32 = 1 << 23;
}

/// `fuse_open_out.open_flags` bits.
pub mod open_flags {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const CACHE_DIR: u32 = 1 << 3;
    pub const NOFLUSH: u32 = 1 << 5;
}

/// Appends little-endian integers to a reply.
pub trait Put {
    fn put_u16(&mut self, value: u16);
    fn put_u32(&mut self, value: u32);
    fn put_u64(&mut self, value: u64);
}

impl Put for Vec<u8> {
    fn put_u16(&mut self, value: u16) {
        self.extend_from_slice(&value.to_le_bytes());
    }
    fn put_u32(&mut self, value: u32) {
        self.extend_from_slice(&value.to_le_bytes());
    }
    fn put_u64(&mut self, value: u64) {
        self.extend_from_slice(&value.to_le_bytes());
    }
}

/// `fuse_attr`, the protocol-free view of an inode's attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FuseAttr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atime_nsec: u32,
    pub mtime_nsec: u32,
    pub ctime_nsec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub block_bytes: u32,
}

impl FuseAttr {
    /// Appends the 88-byte `fuse_attr`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u64(self.ino);
        out.put_u64(self.size);
        out.put_u64(self.blocks);
        out.put_u64(self.atime);
        out.put_u64(self.mtime);
        out.put_u64(self.ctime);
        out.put_u32(self.atime_nsec);
        out.put_u32(self.mtime_nsec);
        out.put_u32(self.ctime_nsec);
        out.put_u32(self.mode);
        out.put_u32(self.nlink);
        out.put_u32(self.uid);
        out.put_u32(self.gid);
        out.put_u32(self.rdev);
        out.put_u32(self.block_bytes);
        out.put_u32(0); // flags
    }
}

/// Appends `fuse_entry_out` (node id, generation 0, both timeouts `ttl_seconds`).
pub fn encode_entry(attr: &FuseAttr, ttl_seconds: u64, out: &mut Vec<u8>) {
    out.put_u64(attr.ino);
    out.put_u64(0); // generation: ids are never reused
    out.put_u64(ttl_seconds); // entry_valid
    out.put_u64(ttl_seconds); // attr_valid
    out.put_u32(0);
    out.put_u32(0);
    attr.encode(out);
}

/// Appends `fuse_attr_out`.
pub fn encode_attr_out(attr: &FuseAttr, ttl_seconds: u64, out: &mut Vec<u8>) {
    out.put_u64(ttl_seconds);
    out.put_u32(0);
    out.put_u32(0);
    attr.encode(out);
}

/// Bytes a `fuse_dirent` with a `name_bytes` name takes (padded to 8).
pub fn dirent_bytes(name_bytes: usize) -> usize {
    (DIRENT_BYTES + name_bytes).next_multiple_of(8)
}

/// Appends a `fuse_dirent` (padded to 8 bytes with zeros).
pub fn encode_dirent(ino: u64, next_offset: u64, kind: u32, name: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.put_u64(ino);
    out.put_u64(next_offset);
    out.put_u32(name.len() as u32);
    out.put_u32(kind);
    out.extend_from_slice(name);
    out.resize(start + dirent_bytes(name.len()), 0);
}

/// Appends `fuse_out_header`.
pub fn encode_out_header(total_bytes: u32, error: i32, unique: u64, out: &mut Vec<u8>) {
    out.put_u32(total_bytes);
    out.put_u32(error as u32);
    out.put_u64(unique);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_sizes_match_the_kernel() {
        let mut out = Vec::new();
        FuseAttr::default().encode(&mut out);
        assert_eq!(out.len(), ATTR_BYTES);
        out.clear();
        encode_entry(&FuseAttr::default(), 1, &mut out);
        assert_eq!(out.len(), ENTRY_OUT_BYTES);
        out.clear();
        encode_attr_out(&FuseAttr::default(), 1, &mut out);
        assert_eq!(out.len(), ATTR_OUT_BYTES);
        out.clear();
        encode_dirent(5, 6, 8, b"abc", &mut out);
        assert_eq!(out.len(), 32);
        assert_eq!(&out[24..27], b"abc");
        assert!(out[27..].iter().all(|byte| *byte == 0));
        out.clear();
        encode_dirent(5, 6, 8, b"12345678", &mut out);
        assert_eq!(out.len(), 32);
        out.clear();
        encode_out_header(16, -2, 7, &mut out);
        assert_eq!(
            out,
            [16, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 7, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
