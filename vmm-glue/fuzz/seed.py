#!/usr/bin/env python3
"""Writes the seed corpus for the `request` target (format: see `fuzz_parse`)."""
import os, struct
BASE = 0x10000
def header(kind, sector): return struct.pack("<IIQ", kind, 0, sector)
def seg(addr, length, writable): return struct.pack("<QIB", addr, length, 1 if writable else 0)
def case(segments, memory):
    return bytes([len(segments)]) + b"".join(segments) + memory
mem = bytearray(0x3000)
def with_header(kind, sector, payload=b""):
    m = bytearray(mem); m[0:16] = header(kind, sector); m[0x100:0x100 + len(payload)] = payload
    return bytes(m)
status = seg(BASE + 0x2000, 1, True)
cases = {
    "read": case([seg(BASE, 16, False), seg(BASE + 0x1000, 4096, True), status], with_header(0, 8)),
    "write": case([seg(BASE, 16, False), seg(BASE + 0x1000, 1024, False), status], with_header(1, 100)),
    "flush": case([seg(BASE, 16, False), status], with_header(4, 0)),
    "get-id": case([seg(BASE, 16, False), seg(BASE + 0x1000, 20, True), status], with_header(8, 0)),
    "discard": case([seg(BASE, 16, False), seg(BASE + 0x100, 16, False), status], with_header(11, 0, struct.pack("<QII", 10, 20, 0))),
    "write-zeroes": case([seg(BASE, 16, False), seg(BASE + 0x100, 16, False), status], with_header(13, 0, struct.pack("<QII", 0, 64, 1))),
    "split-header": case([seg(BASE, 7, False), seg(BASE + 7, 9 + 512, False), status], with_header(1, 3)),
    "second-region": case([seg(BASE, 16, False), seg(0x30000, 4096, True), seg(0x30fff, 1, True)], with_header(0, 0)),
    "beyond-capacity": case([seg(BASE, 16, False), seg(BASE + 0x1000, 4096, True), status], with_header(0, 2047)),
    "across-regions": case([seg(BASE, 16, False), seg(0x1f000, 0x2000, True), status], with_header(0, 0)),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "request")
os.makedirs(out, exist_ok=True)
for name, data in cases.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
