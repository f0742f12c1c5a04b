#!/usr/bin/env python3
"""Writes the seed corpus for the `fuse` target. An input is: the reply capacity (u32 LE),
the chain's readable length (u64 LE), then the FUSE message (fuse_in_header + body), as
`vmm_glue::fs::sample::fuzz_handle` reads it. Node ids are those of the sample flist
(1 /, 2 /d, 3 /l, 4 /d/f, 5 /d/small)."""
import os, struct

def msg(op, nodeid, body=b"", declared=None, unique=7):
    length = 40 + len(body) if declared is None else declared
    return struct.pack("<IIQQIIIHH", length, op, unique, nodeid, 0, 0, 1, 0, 0) + body

def case(message, capacity=1 << 20, readable=None):
    readable = len(message) if readable is None else readable
    return struct.pack("<IQ", capacity, readable) + message

def read_in(offset, size):
    return struct.pack("<QQIIQII", 0, offset, size, 0, 0, 0, 0)

cases = {
    "init": case(msg(26, 0, struct.pack("<IIII", 7, 38, 131072, 0x3fffffff) + bytes(48))),
    "init-old": case(msg(26, 0, struct.pack("<IIII", 7, 22, 65536, 0xffff))),
    "init-major8": case(msg(26, 0, struct.pack("<IIII", 8, 0, 0, 0))),
    "lookup": case(msg(1, 1, b"d\0")),
    "lookup-missing": case(msg(1, 2, b"nope\0")),
    "lookup-no-nul": case(msg(1, 1, b"d")),
    "getattr": case(msg(3, 4, bytes(16))),
    "readlink": case(msg(5, 3)),
    "open": case(msg(14, 4, struct.pack("<II", 0, 0))),
    "open-write": case(msg(14, 4, struct.pack("<II", 2, 0))),
    "opendir": case(msg(27, 2, struct.pack("<II", 0, 0))),
    "read": case(msg(15, 4, read_in(99990, 4096))),
    "read-hole": case(msg(15, 4, read_in(150000, 131072))),
    "read-small-room": case(msg(15, 4, read_in(0, 1 << 20)), capacity=100),
    "read-dir": case(msg(15, 1, read_in(0, 10))),
    "readdir": case(msg(28, 1, read_in(0, 4096))),
    "readdirplus": case(msg(44, 2, read_in(1, 300))),
    "statfs": case(msg(17, 1)),
    "getxattr": case(msg(22, 5, struct.pack("<II", 0, 0) + b"user.k\0")),
    "listxattr": case(msg(23, 5, struct.pack("<II", 64, 0))),
    "access": case(msg(34, 4, struct.pack("<II", 4, 0))),
    "lseek": case(msg(46, 4, struct.pack("<QQII", 0, 100001, 3, 0))),
    "forget": case(msg(2, 4, struct.pack("<Q", 1))),
    "batch-forget": case(msg(42, 0, struct.pack("<II", 2, 0) + struct.pack("<QQQQ", 4, 1, 5, 1))),
    "write": case(msg(16, 4, struct.pack("<QQIIQII", 0, 0, 5, 0, 0, 0, 0) + b"hello")),
    "release": case(msg(18, 4, bytes(24))),
    "destroy": case(msg(38, 0)),
    "unknown": case(msg(1000, 1)),
    "short-header": case(msg(3, 1)[:30]),
    "length-beyond-chain": case(msg(3, 1, bytes(16), declared=4096)),
    "no-room": case(msg(3, 4, bytes(16)), capacity=8),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "fuse")
os.makedirs(out, exist_ok=True)
for name, data in cases.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
