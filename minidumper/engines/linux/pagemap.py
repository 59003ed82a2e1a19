"""Which pages of the target's private anonymous memory were never written: /proc/PID/pagemap.

Such a page reads as zeros, so a dump needs not read it (a thousand threads' stack reservations
are gigabytes of them). A page counts as never written where it is neither in memory nor swapped
out, or where it is in memory as the kernel's shared zero page: a read of untouched memory (by
createdump, say) maps that page, and it still holds only zeros. The zero page is recognized
by its frame number, which pagemap shows only to CAP_SYS_ADMIN; elsewhere such pages are read.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
from functools import cache

from minidumper.model import PAGE_SIZE

ENTRY = 8                       # bytes per page; little-endian, flags in the last byte
CHUNK_PAGES = 1 << 20
PRESENT, SWAPPED = 0x80, 0x40   # bits 63 and 62: in the entry's last byte
FRAME_BYTES = 7                 # bits 0-54 the frame number; bit 55 (soft-dirty) set aside
SOFT_DIRTY = 0x80               # in the seventh byte
MIN_RUN_PAGES = 16              # shorter runs are read: a segment each is not worth it
_RUN = re.compile(b"\x00{%d,}" % MIN_RUN_PAGES)
_HELD = bytes(1 if byte & (PRESENT | SWAPPED) else 0 for byte in range(256))
_SWAPPED = bytes(1 if byte & SWAPPED else 0 for byte in range(256))


def untouched(pid: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The runs of at least MIN_RUN_PAGES pages of the given page-aligned ranges that hold only
    zeros for never having been written (see above). [] where pagemap cannot be read."""
    if not ranges:
        return []
    try:
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    zero_frame = _zero_page_frame()
    runs = []
    try:
        for start, end in ranges:
            if end - start < MIN_RUN_PAGES * PAGE_SIZE:
                continue
            for chunk in range(start, end, CHUNK_PAGES * PAGE_SIZE):
                pages = (min(end, chunk + CHUNK_PAGES * PAGE_SIZE) - chunk) // PAGE_SIZE
                entries = os.pread(fd, pages * ENTRY, chunk // PAGE_SIZE * ENTRY)
                if len(entries) != pages * ENTRY:
                    break
                runs += [(chunk + m.start() * PAGE_SIZE, chunk + m.end() * PAGE_SIZE)
                         for m in _RUN.finditer(_written(entries, zero_frame))]
    except OSError:
        return []
    finally:
        os.close(fd)
    return runs


def _written(entries: bytes, zero_frame: int) -> bytes:
    """A byte per page: 1 where the page may hold something, 0 where it holds only zeros. The
    work is done on whole byte strings (as big integers for the logic), at C speed."""
    flags = entries[ENTRY - 1::ENTRY]
    held = flags.translate(_HELD)
    if not zero_frame:
        return held
    # Other than the zero page where any of the frame's bytes differs; swapped entries hold a
    # swap location there, not a frame.
    other = int.from_bytes(flags.translate(_SWAPPED), "little")
    for index, table in enumerate(_frame_byte_tables(zero_frame)):
        other |= int.from_bytes(entries[index::ENTRY].translate(table), "little")
    written = int.from_bytes(held, "little") & other
    return written.to_bytes(len(held), "little")


@cache
def _frame_byte_tables(frame: int) -> tuple[bytes, ...]:
    """For each byte of a frame number, a table: 0 where an entry's byte matches the frame's."""
    tables = []
    for index, wanted in enumerate(frame.to_bytes(FRAME_BYTES, "little")):
        ignored = SOFT_DIRTY if index == FRAME_BYTES - 1 else 0
        tables.append(bytes(0 if byte & ~ignored & 0xFF == wanted else 1 for byte in range(256)))
    return tuple(tables)


@cache
def _zero_page_frame() -> int:
    """The frame number of the kernel's zero page, from a page of our own that was only read;
    0 where pagemap hides frame numbers (without CAP_SYS_ADMIN)."""
    page = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        _ = page[0]    # a read maps the zero page
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        try:
            with open("/proc/self/pagemap", "rb") as pagemap:
                pagemap.seek(address // PAGE_SIZE * ENTRY)
                entry = int.from_bytes(pagemap.read(ENTRY), "little")
        except OSError:
            return 0
        return entry & ((1 << 55) - 1) if entry >> 63 else 0
    finally:
        page.close()
