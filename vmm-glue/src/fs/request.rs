//! FUSE requests decoded from the untrusted bytes a guest put in the device-readable part
//! of a descriptor chain.
//!
//! A request is `fuse_in_header` (40 bytes) then an opcode-specific body. [`decode`] takes
//! the readable bytes (gathered by the backend, at most [`IN_BYTES_MAX`] of them) and the
//! total readable length, and either returns a [`Request`] whose every field was read from
//! inside the message, or a [`DecodeError`]: the header itself is unreadable (no reply is
//! possible, the chain is returned with nothing written), or the header is fine but the
//! body is not (the guest gets the error's errno). Names must be NUL-terminated inside the
//! message and at most [`NAME_BYTES_MAX`] long; lengths are checked before any slice.

use super::abi::{opcode, IN_HEADER_BYTES};

/// Most readable bytes the backend gathers from one chain. Requests we answer are small
/// (a header, a fixed body and at most one name); a WRITE's payload is never read.
pub const IN_BYTES_MAX: usize = 8192;
/// Longest name in a lookup (the kernel's `NAME_MAX`) or an xattr name (`XATTR_NAME_MAX`).
pub const NAME_BYTES_MAX: usize = 255;

/// `fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// What the guest asked for (bodies decoded; names borrowed from the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation<'a> {
    Init {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u32,
    },
    Destroy,
    Lookup {
        name: &'a [u8],
    },
    /// No reply.
    Forget {
        nlookup: u64,
    },
    /// No reply. Only the count is decoded: inodes live as long as the flist, so there is
    /// no lookup count to lower.
    BatchForget {
        count: u32,
    },
    Getattr,
    Readlink,
    Open {
        flags: u32,
    },
    Opendir {
        flags: u32,
    },
    Read {
        offset: u64,
        size: u32,
    },
    Readdir {
        offset: u64,
        size: u32,
        plus: bool,
    },
    Release,
    Releasedir,
    Flush,
    /// fsync, fsyncdir and syncfs: nothing is ever dirty.
    Sync,
    Statfs,
    Getxattr {
        size: u32,
        name: &'a [u8],
    },
    Listxattr {
        size: u32,
    },
    Access {
        mask: u32,
    },
    Lseek {
        offset: u64,
        whence: u32,
    },
    /// No reply (virtio-fs never needs one; we finish every request anyway).
    Interrupt,
    /// An operation that would change the flist: `EROFS`.
    Write,
    /// `ioctl`: `ENOTTY`.
    Ioctl,
    /// Anything else: `ENOSYS`.
    Unsupported,
}

impl Operation<'_> {
    /// True when the kernel expects no reply.
    pub fn is_one_way(&self) -> bool {
        matches!(
            self,
            Operation::Forget { .. } | Operation::BatchForget { .. } | Operation::Interrupt
        )
    }
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub header: InHeader,
    pub operation: Operation<'a>,
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer than 40 bytes: there is no `unique` to answer.
    #[error("message of {0} bytes is shorter than the FUSE header")]
    NoHeader(usize),
    /// The header's length disagrees with the chain (answered with EINVAL).
    #[error("header length {declared} but the chain holds {available} readable bytes")]
    BadLength {
        header: InHeader,
        declared: u32,
        available: u64,
    },
    /// The body is too short or malformed for the opcode (answered with EINVAL).
    #[error("opcode {} body is malformed: {reason}", header.opcode)]
    BadBody {
        header: InHeader,
        reason: &'static str,
    },
    /// A name is longer than NAME_MAX (answered with ENAMETOOLONG).
    #[error("a name longer than {NAME_BYTES_MAX} bytes")]
    NameTooLong { header: InHeader },
}

impl DecodeError {
    /// The header to answer, when there is one.
    pub fn header(&self) -> Option<&InHeader> {
        match self {
            DecodeError::NoHeader(_) => None,
            DecodeError::BadLength { header, .. }
            | DecodeError::BadBody { header, .. }
            | DecodeError::NameTooLong { header } => Some(header),
        }
    }

    /// The errno the guest gets.
    pub fn errno(&self) -> i32 {
        match self {
            DecodeError::NameTooLong { .. } => libc::ENAMETOOLONG,
            _ => libc::EINVAL,
        }
    }
}

/// Little-endian reads that fail instead of panicking.
struct Body<'a> {
    bytes: &'a [u8],
    header: InHeader,
}

impl<'a> Body<'a> {
    fn field(&self, offset: usize, width: usize) -> Result<&'a [u8], DecodeError> {
        offset
            .checked_add(width)
            .and_then(|end| self.bytes.get(offset..end))
            .ok_or(DecodeError::BadBody {
                header: self.header,
                reason: "body shorter than its structure",
            })
    }

    fn u32_at(&self, offset: usize) -> Result<u32, DecodeError> {
        let bytes = self.field(offset, 4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64_at(&self, offset: usize) -> Result<u64, DecodeError> {
        let bytes = self.field(offset, 8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(word))
    }

    /// A NUL-terminated name starting at `offset`.
    fn name_at(&self, offset: usize) -> Result<&'a [u8], DecodeError> {
        let rest = self.bytes.get(offset..).ok_or(DecodeError::BadBody {
            header: self.header,
            reason: "name missing",
        })?;
        let end = rest.iter().position(|byte| *byte == 0);
        match end {
            Some(end) if end > NAME_BYTES_MAX => Err(DecodeError::NameTooLong {
                header: self.header,
            }),
            Some(0) => Err(DecodeError::BadBody {
                header: self.header,
                reason: "empty name",
            }),
            Some(end) => Ok(&rest[..end]),
            None if rest.len() > NAME_BYTES_MAX => Err(DecodeError::NameTooLong {
                header: self.header,
            }),
            None => Err(DecodeError::BadBody {
                header: self.header,
                reason: "name without its NUL",
            }),
        }
    }
}

fn header_of(message: &[u8]) -> Result<InHeader, DecodeError> {
    let bytes = message
        .get(..IN_HEADER_BYTES)
        .ok_or(DecodeError::NoHeader(message.len()))?;
    let u32_at = |offset: usize| {
        u32::from_le_bytes([
            bytes[offset],
            bytes[offset + 1],
            bytes[offset + 2],
            bytes[offset + 3],
        ])
    };
    let u64_at = |offset: usize| u64::from(u32_at(offset)) | (u64::from(u32_at(offset + 4)) << 32);
    Ok(InHeader {
        len: u32_at(0),
        opcode: u32_at(4),
        unique: u64_at(8),
        nodeid: u64_at(16),
        uid: u32_at(24),
        gid: u32_at(28),
        pid: u32_at(32),
    })
}

/// Decodes one message: `message` is the first readable bytes of the chain (at most
/// [`IN_BYTES_MAX`]), `readable_bytes` the chain's whole readable length.
pub fn decode(message: &[u8], readable_bytes: u64) -> Result<Request<'_>, DecodeError> {
    let header = header_of(message)?;
    let declared = u64::from(header.len);
    if declared < IN_HEADER_BYTES as u64 || declared > readable_bytes {
        return Err(DecodeError::BadLength {
            header,
            declared: header.len,
            available: readable_bytes,
        });
    }
    let end = usize::try_from(declared)
        .unwrap_or(usize::MAX)
        .min(message.len());
    let body = Body {
        bytes: &message[IN_HEADER_BYTES..end],
        header,
    };
    let operation = match header.opcode {
        opcode::INIT => Operation::Init {
            major: body.u32_at(0)?,
            minor: body.u32_at(4)?,
            max_readahead: body.u32_at(8)?,
            flags: body.u32_at(12)?,
        },
        opcode::DESTROY => Operation::Destroy,
        opcode::LOOKUP => Operation::Lookup {
            name: body.name_at(0)?,
        },
        opcode::FORGET => Operation::Forget {
            nlookup: body.u64_at(0)?,
        },
        opcode::BATCH_FORGET => {
            let count = body.u32_at(0)?;
            // Each fuse_forget_one is 16 bytes after the 8-byte fuse_batch_forget_in.
            let needed = 8u64 + 16 * u64::from(count);
            if needed > declared - IN_HEADER_BYTES as u64 {
                return Err(DecodeError::BadBody {
                    header,
                    reason: "batch forget count beyond the message",
                });
            }
            Operation::BatchForget { count }
        }
        opcode::GETATTR => Operation::Getattr,
        opcode::READLINK => Operation::Readlink,
        opcode::OPEN => Operation::Open {
            flags: body.u32_at(0)?,
        },
        opcode::OPENDIR => Operation::Opendir {
            flags: body.u32_at(0)?,
        },
        opcode::READ => Operation::Read {
            offset: body.u64_at(8)?,
            size: body.u32_at(16)?,
        },
        opcode::READDIR | opcode::READDIRPLUS => Operation::Readdir {
            offset: body.u64_at(8)?,
            size: body.u32_at(16)?,
            plus: header.opcode == opcode::READDIRPLUS,
        },
        opcode::RELEASE => Operation::Release,
        opcode::RELEASEDIR => Operation::Releasedir,
        opcode::FLUSH => Operation::Flush,
        opcode::FSYNC | opcode::FSYNCDIR | opcode::SYNCFS => Operation::Sync,
        opcode::STATFS => Operation::Statfs,
        opcode::GETXATTR => Operation::Getxattr {
            size: body.u32_at(0)?,
            name: body.name_at(8)?,
        },
        opcode::LISTXATTR => Operation::Listxattr {
            size: body.u32_at(0)?,
        },
        opcode::ACCESS => Operation::Access {
            mask: body.u32_at(0)?,
        },
        opcode::LSEEK => Operation::Lseek {
            offset: body.u64_at(8)?,
            whence: body.u32_at(16)?,
        },
        opcode::INTERRUPT => Operation::Interrupt,
        opcode::SETATTR
        | opcode::SYMLINK
        | opcode::MKNOD
        | opcode::MKDIR
        | opcode::UNLINK
        | opcode::RMDIR
        | opcode::RENAME
        | opcode::LINK
        | opcode::WRITE
        | opcode::SETXATTR
        | opcode::REMOVEXATTR
        | opcode::CREATE
        | opcode::FALLOCATE
        | opcode::RENAME2
        | opcode::COPY_FILE_RANGE
        | opcode::COPY_FILE_RANGE_64
        | opcode::TMPFILE => Operation::Write,
        opcode::IOCTL => Operation::Ioctl,
        _ => Operation::Unsupported,
    };
    Ok(Request { header, operation })
}

/// The fuzz target's entry point: the first 8 bytes are the chain's declared readable
/// length (little-endian), the rest the gathered message. Checks the decoder's promises:
/// no panic, names NUL-free, bounded and inside the message.
pub fn fuzz_decode(input: &[u8]) {
    let Some((length, message)) = input.split_first_chunk::<8>() else {
        return;
    };
    let readable_bytes = u64::from_le_bytes(*length);
    let message = &message[..message.len().min(IN_BYTES_MAX)];
    match decode(message, readable_bytes) {
        Ok(request) => {
            assert!(u64::from(request.header.len) <= readable_bytes);
            assert!(request.header.len as usize >= IN_HEADER_BYTES);
            if let Operation::Lookup { name } | Operation::Getxattr { name, .. } = request.operation
            {
                assert!(!name.is_empty() && name.len() <= NAME_BYTES_MAX);
                assert!(!name.contains(&0));
                let start = name.as_ptr() as usize;
                let base = message.as_ptr() as usize;
                assert!(
                    start >= base + IN_HEADER_BYTES && start + name.len() < base + message.len()
                );
            }
        }
        Err(error) => {
            if message.len() >= IN_HEADER_BYTES {
                assert!(error.header().is_some());
            }
            assert!(error.errno() > 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(op: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let len = (IN_HEADER_BYTES + body.len()) as u32;
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&op.to_le_bytes());
        bytes.extend_from_slice(&42u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 16]);
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn decodes_a_lookup_and_refuses_bad_names() {
        let bytes = message(opcode::LOOKUP, b"hello\0");
        let request = decode(&bytes, bytes.len() as u64).unwrap();
        assert_eq!(request.header.unique, 42);
        assert_eq!(request.operation, Operation::Lookup { name: b"hello" });
        let bytes = message(opcode::LOOKUP, b"hello");
        assert!(matches!(
            decode(&bytes, bytes.len() as u64),
            Err(DecodeError::BadBody { .. })
        ));
        let long = [b'a'; 300];
        let bytes = message(opcode::LOOKUP, &long);
        let error = decode(&bytes, bytes.len() as u64).unwrap_err();
        assert_eq!(error.errno(), libc::ENAMETOOLONG);
    }

    #[test]
    fn lengths_are_checked() {
        assert_eq!(decode(&[0u8; 10], 10), Err(DecodeError::NoHeader(10)));
        let bytes = message(opcode::GETATTR, &[0u8; 16]);
        assert!(matches!(
            decode(&bytes, 20),
            Err(DecodeError::BadLength { .. })
        ));
        let bytes = message(opcode::READ, &[0u8; 8]);
        assert!(matches!(
            decode(&bytes, bytes.len() as u64),
            Err(DecodeError::BadBody { .. })
        ));
        let mut body = vec![0u8; 8];
        body[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let bytes = message(opcode::BATCH_FORGET, &body);
        assert!(decode(&bytes, bytes.len() as u64).is_err());
    }

    #[test]
    fn write_type_operations_are_read_only() {
        for op in [
            opcode::WRITE,
            opcode::MKDIR,
            opcode::SETATTR,
            opcode::CREATE,
        ] {
            let bytes = message(op, &[0u8; 64]);
            assert_eq!(
                decode(&bytes, bytes.len() as u64).unwrap().operation,
                Operation::Write
            );
        }
        let bytes = message(9999, &[]);
        assert_eq!(
            decode(&bytes, bytes.len() as u64).unwrap().operation,
            Operation::Unsupported
        );
    }
}
