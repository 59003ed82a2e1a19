"""The native pieces of a small dump: what gdb and the DAC need beyond the CLR's own memory.

Everything here reads the paused target through a `read(address, size) -> bytes` callable, which
returns fewer bytes where memory cannot be read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from minidumper.model import PAGE_SIZE, Mapping, MappingIndex, MemoryRange, ProcessSnapshot, RangeKind
from minidumper.plan import elf_exports

ReadMemory = Callable[[int, int], bytes]

PT_LOAD, PT_DYNAMIC, PT_NOTE, PT_PHDR, PT_GNU_EH_FRAME = 1, 2, 4, 6, 0x6474E550
DT_NULL, DT_DEBUG = 0, 21
AT_PHDR, AT_PHNUM = 3, 5
RED_ZONE = 128
REG_FS_BASE = 21                 # in struct user_regs_struct
THREAD_DESCRIPTOR_BYTES = 4096
MAX_LINK_MAP_ENTRIES = 4096
MAX_EH_FRAME_BYTES = 64 << 20
RUNTIME_INFO_EXPORT = "DotNetRuntimeInfo"


def page_floor(address: int) -> int:
    return address & ~(PAGE_SIZE - 1)


def page_ceil(address: int) -> int:
    return (address + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def pages(start: int, end: int, kind: RangeKind) -> MemoryRange:
    return MemoryRange(page_floor(start), page_ceil(max(end, start + 1)), kind)


def thread_stacks(snapshot: ProcessSnapshot,
                  index: MappingIndex | None = None) -> Iterator[MemoryRange]:
    """Each thread's stack from its stack pointer (less the red zone) to the end of its mapping."""
    index = index or MappingIndex(snapshot.mappings)
    for thread in snapshot.threads:
        mapping = index.at(thread.stack_pointer)
        if mapping:
            start = max(mapping.start, thread.stack_pointer - RED_ZONE)
            yield pages(start, mapping.end, RangeKind.STACK)


def thread_descriptors(snapshot: ProcessSnapshot,
                       index: MappingIndex | None = None) -> Iterator[MemoryRange]:
    """The thread control block at each thread's fs_base (glibc's struct pthread, some 2 KiB):
    a debugger's thread library walks the threads through it."""
    index = index or MappingIndex(snapshot.mappings)
    for thread in snapshot.threads:
        fs_base = struct.unpack_from("<Q", thread.prstatus_regs, REG_FS_BASE * 8)[0]
        if fs_base and index.at(fs_base):
            yield pages(fs_base, fs_base + THREAD_DESCRIPTOR_BYTES, RangeKind.THREAD_LIBRARY)


def code_around_instruction_pointers(snapshot: ProcessSnapshot,
                                     index: MappingIndex | None = None) -> Iterator[MemoryRange]:
    index = index or MappingIndex(snapshot.mappings)
    # Threads waiting alike stop at the same few instructions: each page once.
    for page in sorted({page_floor(t.instruction_pointer) for t in snapshot.threads
                        if t.instruction_pointer and index.at(t.instruction_pointer)}):
        yield MemoryRange(page - PAGE_SIZE, page + 2 * PAGE_SIZE, RangeKind.CODE_AROUND_IP)


def vdso(mappings: list[Mapping]) -> Iterator[MemoryRange]:
    for mapping in mappings:
        if mapping.path == "[vdso]":
            yield MemoryRange(mapping.start, mapping.end, RangeKind.VDSO)


def _file_image_starts(mappings: list[Mapping]) -> Iterator[Mapping]:
    """The first mapping of each mapped file image (offset 0)."""
    for mapping in mappings:
        if mapping.is_file and mapping.offset == 0 and mapping.readable:
            yield mapping


def _program_headers(read: ReadMemory, phdr_address: int, count: int) -> list[tuple[int, ...]]:
    table = read(phdr_address, count * 56)
    return [struct.unpack_from("<IIQQQQQQ", table, i * 56) for i in range(len(table) // 56)]


def elf_module_pieces(mappings: list[Mapping], read: ReadMemory) -> Iterator[MemoryRange]:
    """Each ELF module's header page, and the pages of its PT_DYNAMIC, PT_NOTE and eh_frame."""
    for mapping in _file_image_starts(mappings):
        yield from _file_image_pieces("elf", mapping, read, _elf_pieces)


def _elf_pieces(mapping: Mapping, read: ReadMemory) -> Iterator[MemoryRange]:
    header = read(mapping.start, 64)
    if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:
        return
    phoff, = struct.unpack_from("<Q", header, 32)
    phnum, = struct.unpack_from("<H", header, 56)
    yield MemoryRange(mapping.start, mapping.start + PAGE_SIZE, RangeKind.MODULE_HEADER)
    program_headers = _program_headers(read, mapping.start + phoff, min(phnum, 256))
    loads = [ph for ph in program_headers if ph[0] == PT_LOAD]
    if not loads:
        return
    bias = mapping.start - page_floor(min(ph[3] for ph in loads))
    yield pages(mapping.start + phoff, mapping.start + phoff + phnum * 56, RangeKind.MODULE_HEADER)
    for p_type, _, _, p_vaddr, _, _, p_memsz, _ in program_headers:
        if p_type in (PT_DYNAMIC, PT_NOTE, PT_GNU_EH_FRAME) and p_memsz:
            yield pages(bias + p_vaddr, bias + p_vaddr + p_memsz, RangeKind.MODULE_HEADER)
        if p_type == PT_GNU_EH_FRAME:
            yield from _eh_frame(read, bias + p_vaddr)


# What the headers of a file image mapped read-only say: its file's bytes, the same in the pause
# as before it, so what a look before the pause found is not read again in the pause.
_image_pieces: dict[tuple[str, Mapping], list[MemoryRange]] = {}
MAX_IMAGES_REMEMBERED = 1 << 14


def _file_image_pieces(what: str, mapping: Mapping, read: ReadMemory,
                       find: Callable[[Mapping, ReadMemory], Iterator[MemoryRange]]) -> list[MemoryRange]:
    if mapping.writable:
        return list(find(mapping, read))
    key = (what, mapping)
    found = _image_pieces.get(key)
    if found is None:
        if len(_image_pieces) > MAX_IMAGES_REMEMBERED:
            _image_pieces.clear()
        found = _image_pieces[key] = list(find(mapping, read))
    return found


def _read_encoded(data: bytes, offset: int, encoding: int, field_address: int,
                  data_base: int) -> tuple[int | None, int]:
    """A DWARF exception-header pointer: (value, next offset), value None if not understood."""
    formats = {0x03: "<I", 0x0B: "<i", 0x04: "<Q", 0x0C: "<q"}
    form = formats.get(encoding & 0x0F)
    if form is None or offset + struct.calcsize(form) > len(data):
        return None, offset
    value, = struct.unpack_from(form, data, offset)
    application = encoding & 0x70
    if application == 0x10:      # pc-relative
        value += field_address
    elif application == 0x30:    # relative to the start of .eh_frame_hdr
        value += data_base
    elif application != 0:
        return None, offset
    return value & 0xFFFFFFFFFFFFFFFF, offset + struct.calcsize(form)


def _eh_frame(read: ReadMemory, hdr_address: int) -> Iterator[MemoryRange]:
    """.eh_frame, from its start to the last FDE its binary-search table names."""
    head = read(hdr_address, 4 + 16)
    if len(head) < 12 or head[0] != 1:
        return
    frame_encoding, count_encoding, table_encoding = head[1], head[2], head[3]
    eh_frame, offset = _read_encoded(head, 4, frame_encoding, hdr_address + 4, hdr_address)
    if eh_frame is None:
        return
    count, offset = _read_encoded(head, offset, count_encoding, hdr_address + offset, hdr_address)
    if not count or table_encoding != 0x3B:   # datarel sdata4 pairs, the usual table
        yield pages(eh_frame, eh_frame + PAGE_SIZE, RangeKind.MODULE_HEADER)
        return
    table = read(hdr_address + offset, min(count, 1 << 20) * 8)
    # (initial location, FDE offset) pairs of int32; libcoreclr has tens of thousands, and this
    # runs in the pause: read the offsets at C speed.
    fde_offsets = memoryview(table[:len(table) // 8 * 8]).cast("i")[1::2]
    last_fde = hdr_address + max(fde_offsets, default=0)
    end = min(max(last_fde + PAGE_SIZE, eh_frame + PAGE_SIZE), eh_frame + MAX_EH_FRAME_BYTES)
    yield pages(eh_frame, end, RangeKind.MODULE_HEADER)


def link_map(snapshot: ProcessSnapshot, read: ReadMemory) -> Iterator[MemoryRange]:
    """r_debug and each link_map entry with its name: how gdb finds the shared libraries."""
    auxv = dict(struct.iter_unpack("<QQ", snapshot.auxv[:len(snapshot.auxv) // 16 * 16]))
    phdr_address, phnum = auxv.get(AT_PHDR), auxv.get(AT_PHNUM)
    if not phdr_address or not phnum:
        return
    program_headers = _program_headers(read, phdr_address, phnum)
    phdr_entry = next((ph for ph in program_headers if ph[0] == PT_PHDR), None)
    dynamic = next((ph for ph in program_headers if ph[0] == PT_DYNAMIC), None)
    if not dynamic:
        return
    bias = phdr_address - phdr_entry[3] if phdr_entry else 0
    dynamic_address = bias + dynamic[3]
    entries = read(dynamic_address, dynamic[5])
    r_debug = 0
    for tag, value in struct.iter_unpack("<qQ", entries[:len(entries) // 16 * 16]):
        if tag == DT_NULL:
            break
        if tag == DT_DEBUG:
            r_debug = value
    if not r_debug:
        return
    yield pages(r_debug, r_debug + 40, RangeKind.LINK_MAP)
    head = read(r_debug, 16)
    if len(head) < 16:
        return
    entry, = struct.unpack_from("<Q", head, 8)
    seen: set[int] = set()
    while entry and entry not in seen and len(seen) < MAX_LINK_MAP_ENTRIES:
        seen.add(entry)
        fields = read(entry, 40)           # l_addr, l_name, l_ld, l_next, l_prev
        if len(fields) < 40:
            return
        _, name, _, next_entry, _ = struct.unpack("<5Q", fields)
        yield pages(entry, entry + 40, RangeKind.LINK_MAP)
        if name:
            name_bytes = read(name, 4096)
            yield pages(name, name + name_bytes.find(b"\0") + 1 if b"\0" in name_bytes else name + 1,
                        RangeKind.LINK_MAP)
        entry = next_entry


def is_runtime_module(path: str) -> bool:
    return path.endswith("/libcoreclr.so")


def main_executable(mappings: list[Mapping], auxv: bytes) -> Mapping | None:
    """The first mapping of the program's own file: the one its program headers (AT_PHDR) are in."""
    entries = dict(struct.iter_unpack("<QQ", auxv[:len(auxv) // 16 * 16]))
    holder = MappingIndex(mappings).at(entries.get(AT_PHDR, 0))
    if holder is None or not holder.is_file:
        return None
    return min((m for m in mappings if m.path == holder.path and m.offset == 0),
               key=lambda m: m.start, default=None)


def runtime_module(mappings: list[Mapping], auxv: bytes, read: ReadMemory) -> Mapping | None:
    """The first mapping of the module the CLR runs from: libcoreclr.so, or, in a
    self-contained single-file app, the executable itself (it exports DotNetRuntimeInfo)."""
    starts = [m for m in mappings if is_runtime_module(m.path) and m.offset == 0]
    if starts:
        return min(starts, key=lambda m: m.start)
    executable = main_executable(mappings, auxv)
    if executable and elf_exports.export_address(read, executable.start, RUNTIME_INFO_EXPORT):
        return executable
    return None


def runtime_base(mappings: list[Mapping], auxv: bytes, read: ReadMemory) -> int | None:
    """Load address of the runtime's module, or None where the process has no CLR."""
    module = runtime_module(mappings, auxv, read)
    return module.start if module else None


def runtime_data(mappings: list[Mapping], auxv: bytes, read: ReadMemory) -> Iterator[MemoryRange]:
    """The runtime module's writable mappings and the anonymous bss right after them (where
    "@(#)Version" and the DAC's globals are): libcoreclr's, or a single-file app's own."""
    module = runtime_module(mappings, auxv, read)
    if module is None:
        return iter(())
    return module_data(mappings, lambda path: path == module.path, RangeKind.RUNTIME_DATA)


def is_thread_library(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.startswith(("ld-linux", "libc.so", "libpthread.so"))


def thread_library_data(mappings: list[Mapping]) -> Iterator[MemoryRange]:
    """The dynamic loader's and libc's writable data: where a debugger's thread library finds
    the list of threads."""
    return module_data(mappings, is_thread_library, RangeKind.THREAD_LIBRARY)


def module_data(mappings: list[Mapping], is_module: Callable[[str], bool],
                kind: RangeKind) -> Iterator[MemoryRange]:
    """The writable mappings of the modules is_module names, and the anonymous bss after them."""
    previous: Mapping | None = None
    for mapping in mappings:
        if is_module(mapping.path) and mapping.writable:
            yield MemoryRange(mapping.start, mapping.end, kind)
        elif (previous and is_module(previous.path) and previous.writable
              and not mapping.path and mapping.start == previous.end and mapping.writable):
            yield MemoryRange(mapping.start, mapping.end, kind)
        previous = mapping


def pe_headers(mappings: list[Mapping], read: ReadMemory) -> Iterator[MemoryRange]:
    """The first page of each mapped managed assembly (a PE image, "MZ")."""
    for mapping in _file_image_starts(mappings):
        yield from _file_image_pieces("pe", mapping, read, _pe_header)


def _pe_header(mapping: Mapping, read: ReadMemory) -> Iterator[MemoryRange]:
    if read(mapping.start, 2) == b"MZ":
        yield MemoryRange(mapping.start, mapping.start + PAGE_SIZE, RangeKind.PE_HEADER)
