"""Finds an exported symbol of a loaded ELF module by reading its dynamic section in memory.

How a self-contained single-file app is recognised: the runtime is linked into its executable,
which exports `DotNetRuntimeInfo`. Works on the running target and on the paused one alike.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

ReadMemory = Callable[[int, int], bytes]

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_STRSZ, DT_GNU_HASH = 0, 4, 5, 6, 10, 0x6FFFFEF5
SYMBOL_SIZE = 24                  # Elf64_Sym
MAX_DYNAMIC_ENTRIES = 512
MAX_CHAIN = 1 << 16


def gnu_hash(name: bytes) -> int:
    value = 5381
    for byte in name:
        value = (value * 33 + byte) & 0xFFFFFFFF
    return value


def export_address(read: ReadMemory, base: int, name: str) -> int | None:
    """The address of the defined dynamic symbol `name` of the module loaded at `base`, or None
    where there is none or the module's tables cannot be read."""
    tables = _dynamic_tables(read, base)
    if tables is None:
        return None
    bias, entries = tables
    wanted = name.encode()
    symtab, strtab = entries.get(DT_SYMTAB), entries.get(DT_STRTAB)
    if not symtab or not strtab:
        return None
    symtab, strtab = (_absolute(bias, a) for a in (symtab, strtab))
    strsz = entries.get(DT_STRSZ, 1 << 20)

    def symbol(index: int) -> int | None:
        record = read(symtab + index * SYMBOL_SIZE, SYMBOL_SIZE)
        if len(record) < SYMBOL_SIZE:
            return None
        st_name, _, _, st_shndx, st_value, _ = struct.unpack("<IBBHQQ", record)
        if st_shndx == 0 or st_name >= strsz:
            return None
        if read(strtab + st_name, len(wanted) + 1) == wanted + b"\0":
            return bias + st_value
        return None

    if DT_GNU_HASH in entries:
        return _gnu_lookup(read, _absolute(bias, entries[DT_GNU_HASH]), wanted, symbol)
    if DT_HASH in entries:
        head = read(_absolute(bias, entries[DT_HASH]), 8)
        count = struct.unpack("<II", head)[1] if len(head) == 8 else 0
        return next((a for a in map(symbol, range(min(count, MAX_CHAIN))) if a is not None), None)
    return None


def _gnu_lookup(read: ReadMemory, table: int, wanted: bytes,
                symbol: Callable[[int], int | None]) -> int | None:
    head = read(table, 16)
    if len(head) < 16:
        return None
    nbuckets, symoffset, bloom_size, _ = struct.unpack("<IIII", head)
    if not nbuckets:
        return None
    hashed = gnu_hash(wanted)
    buckets = table + 16 + bloom_size * 8
    chains = buckets + nbuckets * 4
    raw = read(buckets + (hashed % nbuckets) * 4, 4)
    index = struct.unpack("<I", raw)[0] if len(raw) == 4 else 0
    if index < symoffset:
        return None
    for _ in range(MAX_CHAIN):
        raw = read(chains + (index - symoffset) * 4, 4)
        if len(raw) < 4:
            return None
        chain_hash, = struct.unpack("<I", raw)
        if (chain_hash | 1) == (hashed | 1):
            address = symbol(index)
            if address is not None:
                return address
        if chain_hash & 1:
            return None
        index += 1
    return None


def _absolute(bias: int, address: int) -> int:
    """glibc's loader rewrites the dynamic section's pointers to absolute addresses in place;
    a read-only dynamic section (or a non-PIE module) keeps them as link-time addresses."""
    return address if address >= bias else bias + address


def _dynamic_tables(read: ReadMemory, base: int) -> tuple[int, dict[int, int]] | None:
    """(load bias, {d_tag: d_val}) of the module at base."""
    header = read(base, 64)
    if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:
        return None
    phoff, = struct.unpack_from("<Q", header, 32)
    phentsize, phnum = struct.unpack_from("<HH", header, 54)
    if phentsize < 56 or not phnum:
        return None
    table = read(base + phoff, phnum * phentsize)
    headers = [struct.unpack_from("<IIQQQQQQ", table, i * phentsize)
               for i in range(len(table) // phentsize)]
    loads = [h for h in headers if h[0] == PT_LOAD]
    dynamic = next((h for h in headers if h[0] == PT_DYNAMIC), None)
    if not loads or dynamic is None:
        return None
    bias = base - (min(h[3] for h in loads) & ~0xFFF)
    raw = read(bias + dynamic[3], min(dynamic[5], MAX_DYNAMIC_ENTRIES * 16))
    entries: dict[int, int] = {}
    for tag, value in struct.iter_unpack("<qQ", raw[:len(raw) // 16 * 16]):
        if tag == DT_NULL:
            break
        entries.setdefault(tag, value)
    return bias, entries
