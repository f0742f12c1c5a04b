//! virtio-blk requests decoded from untrusted descriptor chains.
//!
//! A request is a byte stream split over descriptors: the device-readable part starts with
//! the 16-byte header (`type: u32, reserved: u32, sector: u64`, little-endian) and carries
//! the data of writes, discards and write-zeroes; the device-writable part carries the data
//! of reads and get-id, and ends with the one status byte. Any framing over descriptors is
//! accepted (VIRTIO_F_ANY_LAYOUT), but readable descriptors must precede writable ones.
//!
//! Everything is checked before any I/O: descriptor count, each descriptor inside guest
//! memory (and inside one memory region, so it maps to one host buffer), lengths against
//! the request kind, sector ranges against the capacity, and the total data size against
//! [`Limits::request_bytes_max`]. A chain whose status byte cannot be located is answered
//! with a used length of 0 and no status.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::crypto::SECTOR_BYTES;

/// Request types (virtio 1.2, 5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
/// Status values.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Bytes of the request header.
pub const HEADER_BYTES: usize = 16;
/// Bytes of one discard / write-zeroes segment.
pub const DISCARD_SEGMENT_BYTES: usize = 16;
/// Bytes of the get-id answer.
pub const ID_BYTES: usize = 20;
/// The write-zeroes flag that allows deallocation.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// One descriptor as the parser sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub address: u64,
    pub length: u32,
    pub device_writable: bool,
}

/// Bounds a request must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Volume size in sectors.
    pub capacity_sectors: u64,
    /// Largest read or write, in bytes.
    pub request_bytes_max: u64,
    /// Most descriptors in one chain.
    pub descriptors_max: usize,
    /// Largest discard / write-zeroes range, in sectors.
    pub discard_sectors_max: u32,
    /// True when the volume is served read-only.
    pub read_only: bool,
}

/// What the guest asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// Read `data` bytes at `sector` into the device-writable data segments.
    Read {
        sector: u64,
    },
    /// Write the device-readable data segments at `sector`.
    Write {
        sector: u64,
    },
    Flush,
    GetId,
    /// Deallocate `sectors` sectors at `sector`.
    Discard {
        sector: u64,
        sectors: u32,
    },
    /// Zero `sectors` sectors at `sector` (deallocating allowed when `unmap`).
    WriteZeroes {
        sector: u64,
        sectors: u32,
        unmap: bool,
    },
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    /// The data buffers (after the header, before the status byte), in order.
    pub data: Vec<Segment>,
    /// Sum of the data buffers' lengths.
    pub data_bytes: u64,
    /// Guest address of the status byte.
    pub status_address: u64,
}

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("no device-writable byte for the status")]
    NoStatus,
    #[error("the status byte at {0:#x} is outside guest memory")]
    StatusOutOfRange(u64),
    #[error("a chain of more than {0} descriptors")]
    TooManyDescriptors(usize),
    #[error("a device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("the header is shorter than 16 bytes")]
    ShortHeader,
    #[error("descriptor {address:#x}+{length} is outside guest memory or spans regions")]
    OutOfRange { address: u64, length: u32 },
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("data of {0} bytes is not a whole number of sectors")]
    Unaligned(u64),
    #[error("data of {0} bytes is larger than the request limit")]
    TooLarge(u64),
    #[error("sectors {sector}..+{sectors} are outside the disk")]
    BeyondCapacity { sector: u64, sectors: u64 },
    #[error("data in the wrong direction for this request type")]
    WrongDirection,
    #[error("the volume is read-only")]
    ReadOnly,
    #[error("malformed discard / write-zeroes payload")]
    BadDiscard,
    #[error("the descriptor chain is broken: {0}")]
    Chain(String),
}

impl RequestError {
    /// The status byte the guest gets (None when there is nowhere to put it).
    pub fn status(&self) -> Option<u8> {
        match self {
            Self::NoStatus | Self::StatusOutOfRange(_) => None,
            Self::Unsupported(_) => Some(VIRTIO_BLK_S_UNSUPP),
            _ => Some(VIRTIO_BLK_S_IOERR),
        }
    }
}

/// Where a refused chain's status goes: the last writable byte, if one exists in memory.
pub fn status_address<M: GuestMemoryBackend + ?Sized>(
    segments: &[Segment],
    memory: &M,
) -> Option<u64> {
    let last = segments.last()?;
    if !last.device_writable || last.length == 0 {
        return None;
    }
    let address = last.address.checked_add(u64::from(last.length) - 1)?;
    memory
        .check_range(GuestAddress(address), 1)
        .then_some(address)
}

/// Validates a chain and decodes its request.
pub fn parse<M: GuestMemoryBackend + ?Sized>(
    segments: &[Segment],
    memory: &M,
    limits: &Limits,
) -> Result<Request, RequestError> {
    if segments.len() > limits.descriptors_max {
        return Err(RequestError::TooManyDescriptors(limits.descriptors_max));
    }
    // Empty descriptors carry nothing; dropping them keeps zero-length buffers at
    // arbitrary addresses out of the data list.
    let segments: Vec<Segment> = segments
        .iter()
        .filter(|segment| segment.length > 0)
        .copied()
        .collect();
    let first_writable = segments
        .iter()
        .position(|segment| segment.device_writable)
        .unwrap_or(segments.len());
    if segments[first_writable..]
        .iter()
        .any(|segment| !segment.device_writable)
    {
        return Err(RequestError::ReadableAfterWritable);
    }
    for segment in &segments {
        if memory
            .get_slice(GuestAddress(segment.address), segment.length as usize)
            .is_err()
        {
            return Err(RequestError::OutOfRange {
                address: segment.address,
                length: segment.length,
            });
        }
    }
    let (readable, writable) = segments.split_at(first_writable);
    // Status: the last writable byte.
    let mut writable = writable.to_vec();
    let status_address = loop {
        let Some(last) = writable.last_mut() else {
            return Err(RequestError::NoStatus);
        };
        if last.length == 0 {
            writable.pop();
            continue;
        }
        last.length -= 1;
        let address = last.address + u64::from(last.length);
        if last.length == 0 {
            writable.pop();
        }
        break address;
    };
    // Header: the first 16 readable bytes.
    let mut header = [0u8; HEADER_BYTES];
    let mut header_filled = 0;
    let mut readable_rest = Vec::new();
    for segment in readable {
        let mut segment = *segment;
        if header_filled < HEADER_BYTES && segment.length > 0 {
            let take = (HEADER_BYTES - header_filled).min(segment.length as usize);
            memory
                .read_slice(
                    &mut header[header_filled..header_filled + take],
                    GuestAddress(segment.address),
                )
                .map_err(|_| RequestError::OutOfRange {
                    address: segment.address,
                    length: segment.length,
                })?;
            header_filled += take;
            segment.address += take as u64;
            segment.length -= take as u32;
        }
        if segment.length > 0 {
            readable_rest.push(segment);
        }
    }
    if header_filled < HEADER_BYTES {
        return Err(RequestError::ShortHeader);
    }
    let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    let total = |list: &[Segment]| list.iter().map(|s| u64::from(s.length)).sum::<u64>();
    let readable_bytes = total(&readable_rest);
    let writable_bytes = total(&writable);

    let check_range = |sector: u64, sectors: u64| -> Result<(), RequestError> {
        match sector.checked_add(sectors) {
            Some(end) if end <= limits.capacity_sectors => Ok(()),
            _ => Err(RequestError::BeyondCapacity { sector, sectors }),
        }
    };
    let (kind, data, data_bytes) = match request_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let is_read = request_type == VIRTIO_BLK_T_IN;
            let (data, data_bytes, other_bytes) = if is_read {
                (writable, writable_bytes, readable_bytes)
            } else {
                (readable_rest, readable_bytes, writable_bytes)
            };
            if other_bytes != 0 {
                return Err(RequestError::WrongDirection);
            }
            if data_bytes > limits.request_bytes_max {
                return Err(RequestError::TooLarge(data_bytes));
            }
            if data_bytes % SECTOR_BYTES as u64 != 0 {
                return Err(RequestError::Unaligned(data_bytes));
            }
            check_range(sector, data_bytes / SECTOR_BYTES as u64)?;
            if !is_read && limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            let kind = if is_read {
                RequestKind::Read { sector }
            } else {
                RequestKind::Write { sector }
            };
            (kind, data, data_bytes)
        }
        VIRTIO_BLK_T_FLUSH => {
            if readable_bytes != 0 || writable_bytes != 0 {
                return Err(RequestError::WrongDirection);
            }
            (RequestKind::Flush, Vec::new(), 0)
        }
        VIRTIO_BLK_T_GET_ID => {
            if readable_bytes != 0 {
                return Err(RequestError::WrongDirection);
            }
            (RequestKind::GetId, writable, writable_bytes)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if writable_bytes != 0 || readable_bytes != DISCARD_SEGMENT_BYTES as u64 {
                return Err(RequestError::BadDiscard);
            }
            if limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            let mut payload = [0u8; DISCARD_SEGMENT_BYTES];
            let mut filled = 0;
            for segment in &readable_rest {
                let take = segment.length as usize;
                memory
                    .read_slice(
                        &mut payload[filled..filled + take],
                        GuestAddress(segment.address),
                    )
                    .map_err(|_| RequestError::OutOfRange {
                        address: segment.address,
                        length: segment.length,
                    })?;
                filled += take;
            }
            let mut range_sector = [0u8; 8];
            range_sector.copy_from_slice(&payload[0..8]);
            let range_sector = u64::from_le_bytes(range_sector);
            let sectors = u32::from_le_bytes([payload[8], payload[9], payload[10], payload[11]]);
            let flags = u32::from_le_bytes([payload[12], payload[13], payload[14], payload[15]]);
            if sectors == 0 || sectors > limits.discard_sectors_max {
                return Err(RequestError::BadDiscard);
            }
            check_range(range_sector, u64::from(sectors))?;
            let kind = if request_type == VIRTIO_BLK_T_DISCARD {
                if flags != 0 {
                    return Err(RequestError::Unsupported(request_type));
                }
                RequestKind::Discard {
                    sector: range_sector,
                    sectors,
                }
            } else {
                if flags & !WRITE_ZEROES_FLAG_UNMAP != 0 {
                    return Err(RequestError::Unsupported(request_type));
                }
                RequestKind::WriteZeroes {
                    sector: range_sector,
                    sectors,
                    unmap: flags & WRITE_ZEROES_FLAG_UNMAP != 0,
                }
            };
            (kind, Vec::new(), 0)
        }
        other => return Err(RequestError::Unsupported(other)),
    };
    Ok(Request {
        kind,
        data,
        data_bytes,
        status_address,
    })
}

/// Fuzzing entry point (also replayed by the corpus test): decodes segments and guest
/// memory contents from arbitrary bytes and checks the parser's promises.
///
/// Input: one byte (bit 7: read-only volume; bits 0-6: segment count `n`), then `n`
/// 13-byte segments (address u64, length u32, flags u8: bit 0 device-writable), then the
/// guest memory contents (a 64 KiB region at 0x10000, followed by a hole and a 4 KiB region
/// at 0x30000).
#[doc(hidden)]
pub fn fuzz_parse(input: &[u8]) {
    use vm_memory::GuestMemoryMmap;
    const REGIONS: [(u64, usize); 2] = [(0x10000, 0x10000), (0x30000, 0x1000)];
    let Some((&first, rest)) = input.split_first() else {
        return;
    };
    let read_only = first & 0x80 != 0;
    let segment_bytes = 13 * usize::from(first & 0x7f);
    let (segment_data, memory_data) = rest.split_at(segment_bytes.min(rest.len()));
    let segments: Vec<Segment> = segment_data
        .chunks_exact(13)
        .map(|chunk| {
            let mut address = [0u8; 8];
            address.copy_from_slice(&chunk[..8]);
            Segment {
                address: u64::from_le_bytes(address),
                length: u32::from_le_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]),
                device_writable: chunk[12] & 1 != 0,
            }
        })
        .collect();
    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|(start, size)| (GuestAddress(*start), *size))
        .collect();
    let Ok(memory) = GuestMemoryMmap::<()>::from_ranges(&ranges) else {
        return;
    };
    let copy = memory_data.len().min(REGIONS[0].1);
    if memory
        .write_slice(&memory_data[..copy], GuestAddress(REGIONS[0].0))
        .is_err()
    {
        return;
    }
    let limits = Limits {
        capacity_sectors: 2048,
        request_bytes_max: 1 << 20,
        descriptors_max: 64,
        discard_sectors_max: 1024,
        read_only,
    };
    match parse(&segments, &memory, &limits) {
        Ok(request) => {
            // Promises of a successful parse.
            assert!(GuestMemoryBackend::check_range(
                &memory,
                GuestAddress(request.status_address),
                1
            ));
            let sum: u64 = request.data.iter().map(|s| u64::from(s.length)).sum();
            assert_eq!(sum, request.data_bytes);
            for segment in &request.data {
                assert!(memory
                    .get_slice(GuestAddress(segment.address), segment.length as usize)
                    .is_ok());
            }
            match request.kind {
                RequestKind::Read { sector } | RequestKind::Write { sector } => {
                    assert_eq!(request.data_bytes % SECTOR_BYTES as u64, 0);
                    assert!(request.data_bytes <= limits.request_bytes_max);
                    assert!(sector + request.data_bytes / 512 <= limits.capacity_sectors);
                    if matches!(request.kind, RequestKind::Write { .. }) {
                        assert!(!limits.read_only);
                    }
                }
                RequestKind::Discard { sector, sectors }
                | RequestKind::WriteZeroes {
                    sector, sectors, ..
                } => {
                    assert!(sector + u64::from(sectors) <= limits.capacity_sectors);
                    assert!(!limits.read_only);
                }
                RequestKind::Flush | RequestKind::GetId => {}
            }
        }
        Err(error) => {
            if let Some(address) = status_address(&segments, &memory) {
                assert!(GuestMemoryBackend::check_range(
                    &memory,
                    GuestAddress(address),
                    1
                ));
            }
            let _ = error.status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x10000)]).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            capacity_sectors: 100,
            request_bytes_max: 1 << 20,
            descriptors_max: 8,
            discard_sectors_max: 64,
            read_only: false,
        }
    }

    fn header(memory: &GuestMemoryMmap<()>, at: u64, request_type: u32, sector: u64) -> Segment {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&request_type.to_le_bytes());
        bytes[8..].copy_from_slice(&sector.to_le_bytes());
        memory.write_slice(&bytes, GuestAddress(at)).unwrap();
        Segment {
            address: at,
            length: 16,
            device_writable: false,
        }
    }

    fn seg(address: u64, length: u32, device_writable: bool) -> Segment {
        Segment {
            address,
            length,
            device_writable,
        }
    }

    #[test]
    fn read_request_with_linux_layout() {
        let memory = memory();
        let segments = [
            header(&memory, 0x1000, VIRTIO_BLK_T_IN, 8),
            seg(0x2000, 4096, true),
            seg(0x3000, 1, true),
        ];
        let request = parse(&segments, &memory, &limits()).unwrap();
        assert_eq!(request.kind, RequestKind::Read { sector: 8 });
        assert_eq!(request.data_bytes, 4096);
        assert_eq!(request.status_address, 0x3000);
    }

    #[test]
    fn any_layout_header_split_and_status_merged() {
        let memory = memory();
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        bytes[8..].copy_from_slice(&3u64.to_le_bytes());
        memory.write_slice(&bytes, GuestAddress(0x1000)).unwrap();
        // Header split over two descriptors and followed by data in the second one.
        let segments = [
            seg(0x1000, 10, false),
            seg(0x100a, 6 + 512, false),
            seg(0x5000, 1, true),
        ];
        let request = parse(&segments, &memory, &limits()).unwrap();
        assert_eq!(request.kind, RequestKind::Write { sector: 3 });
        assert_eq!(request.data, vec![seg(0x1010, 512, false)]);
    }

    #[test]
    fn hostile_chains_are_refused() {
        let memory = memory();
        let h = header(&memory, 0x1000, VIRTIO_BLK_T_IN, 0);
        let cases: Vec<(Vec<Segment>, RequestError)> = vec![
            (vec![h], RequestError::NoStatus),
            (
                vec![h, seg(0x2000, 100, true), seg(0x3000, 1, true)],
                RequestError::Unaligned(100),
            ),
            (
                vec![h, seg(0xffff_ffff_0000, 512, true), seg(0x3000, 1, true)],
                RequestError::OutOfRange {
                    address: 0xffff_ffff_0000,
                    length: 512,
                },
            ),
            (
                vec![h, seg(0x10800, 0x1000, true), seg(0x3000, 1, true)],
                RequestError::OutOfRange {
                    address: 0x10800,
                    length: 0x1000,
                },
            ),
            (
                vec![seg(0x3000, 1, true), h],
                RequestError::ReadableAfterWritable,
            ),
            (
                vec![seg(0x1000, 8, false), seg(0x3000, 1, true)],
                RequestError::ShortHeader,
            ),
            (vec![h; 9], RequestError::TooManyDescriptors(8)),
            (
                vec![
                    header(&memory, 0x4000, VIRTIO_BLK_T_IN, 99),
                    seg(0x2000, 1024, true),
                    seg(0x3000, 1, true),
                ],
                RequestError::BeyondCapacity {
                    sector: 99,
                    sectors: 2,
                },
            ),
            (
                vec![
                    header(&memory, 0x4100, VIRTIO_BLK_T_IN, u64::MAX),
                    seg(0x2000, 512, true),
                    seg(0x3000, 1, true),
                ],
                RequestError::BeyondCapacity {
                    sector: u64::MAX,
                    sectors: 1,
                },
            ),
            (
                vec![header(&memory, 0x4200, 77, 0), seg(0x3000, 1, true)],
                RequestError::Unsupported(77),
            ),
        ];
        for (segments, expected) in cases {
            assert_eq!(
                parse(&segments, &memory, &limits()),
                Err(expected.clone()),
                "{segments:?}"
            );
        }
    }

    #[test]
    fn writes_refused_on_read_only() {
        let memory = memory();
        let segments = [
            header(&memory, 0x1000, VIRTIO_BLK_T_OUT, 0),
            seg(0x2000, 512, false),
            seg(0x3000, 1, true),
        ];
        let read_only = Limits {
            read_only: true,
            ..limits()
        };
        assert_eq!(
            parse(&segments, &memory, &read_only),
            Err(RequestError::ReadOnly)
        );
        assert_eq!(RequestError::ReadOnly.status(), Some(VIRTIO_BLK_S_IOERR));
        assert_eq!(
            RequestError::Unsupported(3).status(),
            Some(VIRTIO_BLK_S_UNSUPP)
        );
    }

    #[test]
    fn discard_payload() {
        let memory = memory();
        let mut payload = [0u8; 16];
        payload[..8].copy_from_slice(&10u64.to_le_bytes());
        payload[8..12].copy_from_slice(&20u32.to_le_bytes());
        payload[12..].copy_from_slice(&1u32.to_le_bytes());
        memory.write_slice(&payload, GuestAddress(0x2000)).unwrap();
        let segments = [
            header(&memory, 0x1000, VIRTIO_BLK_T_WRITE_ZEROES, 0),
            seg(0x2000, 16, false),
            seg(0x3000, 1, true),
        ];
        let request = parse(&segments, &memory, &limits()).unwrap();
        assert_eq!(
            request.kind,
            RequestKind::WriteZeroes {
                sector: 10,
                sectors: 20,
                unmap: true
            }
        );
        let segments = [
            header(&memory, 0x1000, VIRTIO_BLK_T_DISCARD, 0),
            seg(0x2000, 16, false),
            seg(0x3000, 1, true),
        ];
        assert_eq!(
            parse(&segments, &memory, &limits()),
            Err(RequestError::Unsupported(VIRTIO_BLK_T_DISCARD))
        );
    }
}
