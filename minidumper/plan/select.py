"""snapshot + mode + the CLR's ranges -> DumpPlan: sorted, page-aligned, non-overlapping, tagged."""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from minidumper.model import (
    PAGE_SIZE, DumpMode, DumpPlan, Mapping, MappingIndex, MemoryRange, ProcessSnapshot, RangeKind,
    SyntheticRange)
from minidumper.plan import file_copies, native
from minidumper.plan.modes import MODE_PARTS, Part, clr_range_kind

# Where createdump puts the page that tells readers where the runtime is (64-bit Linux).
DIAG_INFO_ADDRESS = 0x00007FFFFFF10000
DIAG_INFO_SIGNATURE = b"DIAGINFOHEADER"
DIAG_INFO_VERSION = 2


def dumpable(mapping: Mapping) -> bool:
    """Readable mappings whose reading is safe and useful: no [vvar], no device memory."""
    if not mapping.readable or mapping.path.startswith("[vvar") or mapping.path == "[vsyscall]":
        return False
    if mapping.path.startswith("/dev/") and not mapping.path.startswith(("/dev/shm/", "/dev/zero")):
        return False
    return True


def select(snapshot: ProcessSnapshot, mode: DumpMode, read: native.ReadMemory,
           clr_ranges: Sequence[tuple[int, int, str]] = (),
           native_ranges: list[MemoryRange] | None = None,
           prepared: Prepared | None = None) -> DumpPlan:
    """The plan for a mode. clr_ranges are the bridge's (start, end, ClrMD kind); native_ranges
    are native_part()'s, where it ran already (while the bridge walked); prepared is what
    prepare() made of the mappings and the CLR's ranges before the pause (clr_ranges unused)."""
    if prepared is not None and prepared.fits(snapshot):
        # The pause's part is all of kinds that outrank the DAC's: merged alone, then laid over
        # the prepared plan (merge_by_priority of the whole, in two passes over it, not five).
        dynamic = clip_to(merge(dynamic_native_part(snapshot, mode, read, prepared.index)),
                          prepared.allowed)
        ranges = merge(dynamic + subtract(prepared.planned, dynamic)) if dynamic else prepared.planned
        base = prepared.runtime_base
    else:
        wanted = list(native_part(snapshot, mode, read) if native_ranges is None else native_ranges)
        wanted += prepared.clr_part if prepared else clr_part_of(mode, clr_ranges, snapshot.mappings)
        ranges = clip_to(merge_by_priority(wanted), dumpable_extents(snapshot.mappings))
        base = native.runtime_base(snapshot.mappings, snapshot.auxv, read)
    return _plan(mode, ranges, base)


def select_ahead(mode: DumpMode, prepared: Prepared) -> DumpPlan | None:
    """The whole plan, before the pause, for a mode that takes nothing the threads tell (full):
    select()'s where the pause finds the same mappings. None for the other modes."""
    if MODE_PARTS[mode] & _THREADS_PARTS:
        return None
    return _plan(mode, prepared.planned, prepared.runtime_base)


def _plan(mode: DumpMode, ranges: list[MemoryRange], runtime_base: int | None) -> DumpPlan:
    synthetic = []
    if (Part.DIAG_INFO in MODE_PARTS[mode] and runtime_base is not None
            and not _overlaps(ranges, DIAG_INFO_ADDRESS)):
        synthetic.append(SyntheticRange(DIAG_INFO_ADDRESS, diag_info_page(runtime_base), RangeKind.DIAG_INFO))
    return DumpPlan(mode=mode, ranges=ranges, synthetic=synthetic)


# The parts that dynamic_native_part() takes (THREAD_LIBRARY: the threads' descriptors).
_THREADS_PARTS = Part.STACKS | Part.CODE_AROUND_IP | Part.LINK_MAP | Part.THREAD_LIBRARY


@dataclass(frozen=True)
class Prepared:
    """What a plan can know before the pause, from the mappings as they were then; select() uses
    it where the pause finds the same mappings (thousands of them, with a thousand threads)."""

    mappings: list[Mapping]
    clr_part: list[MemoryRange]          # clr_part_of() the CLR's ranges
    planned: list[MemoryRange]           # that, and the part of native_part() the mappings
                                         # tell, merged by priority and clipped to allowed
    allowed: list[MemoryRange]           # the dumpable mappings, merged
    runtime_base: int | None
    index: MappingIndex
    anonymous: list[MemoryRange]         # the private anonymous mappings, merged

    def fits(self, snapshot: ProcessSnapshot) -> bool:
        """Whether the pause found the mappings this was made from (the same objects, cached by
        line, where nothing changed: a quick compare)."""
        return snapshot.mappings == self.mappings


def prepare(mode: DumpMode, mappings: list[Mapping], auxv: bytes, read: native.ReadMemory,
            clr_ranges: Sequence[tuple[int, int, str]]) -> Prepared:
    clr_part = clr_part_of(mode, clr_ranges, mappings)
    allowed = dumpable_extents(mappings)
    planned = clip_to(merge_by_priority(static_native_part(mappings, auxv, mode, read) + clr_part), allowed)
    return Prepared(mappings, clr_part, planned, allowed, native.runtime_base(mappings, auxv, read),
                    MappingIndex(mappings), anonymous_extents(mappings))


def clr_part_of(mode: DumpMode, clr_ranges: Sequence[tuple[int, int, str]],
                mappings: list[Mapping]) -> list[MemoryRange]:
    """What a mode takes of the CLR's ranges, and the same bytes of module files mapped
    elsewhere, merged (thousands of ranges: made before the pause where they are known then)."""
    pieces = _clr_pieces(mode, clr_ranges)
    pieces += file_copies.elsewhere([r for r in pieces if r.kind in _FILE_BYTES_KINDS], mappings)
    return merge_by_priority(pieces)


def native_part(snapshot: ProcessSnapshot, mode: DumpMode, read: native.ReadMemory) -> list[MemoryRange]:
    """What a mode takes that the snapshot and the target's memory tell, without the CLR."""
    return (static_native_part(snapshot.mappings, snapshot.auxv, mode, read)
            + dynamic_native_part(snapshot, mode, read))


def static_native_part(mappings: list[Mapping], auxv: bytes, mode: DumpMode,
                       read: native.ReadMemory) -> list[MemoryRange]:
    """The part of native_part() that the mappings alone tell (file images are read only once)."""
    parts = MODE_PARTS[mode]
    wanted: list[MemoryRange] = []
    if Part.ALL_MAPPINGS in parts:
        wanted += [MemoryRange(m.start, m.end, RangeKind.MAPPING) for m in mappings]
    if Part.MODULE_HEADERS in parts:
        wanted += native.elf_module_pieces(mappings, read)
    if Part.THREAD_LIBRARY in parts:
        wanted += native.thread_library_data(mappings)
    if Part.VDSO in parts:
        wanted += native.vdso(mappings)
    if Part.RUNTIME_DATA in parts:
        wanted += native.runtime_data(mappings, auxv, read)
    if Part.PE_HEADERS in parts:
        wanted += native.pe_headers(mappings, read)
    return wanted


def dynamic_native_part(snapshot: ProcessSnapshot, mode: DumpMode, read: native.ReadMemory,
                        index: MappingIndex | None = None) -> list[MemoryRange]:
    """The part of native_part() that the threads and the loader's data tell. None of it is of
    the DAC's kinds (_SECONDARY_KINDS)."""
    parts = MODE_PARTS[mode]
    index = index or MappingIndex(snapshot.mappings)
    wanted: list[MemoryRange] = []
    if Part.STACKS in parts:
        wanted += native.thread_stacks(snapshot, index)
    if Part.CODE_AROUND_IP in parts:
        wanted += native.code_around_instruction_pointers(snapshot, index)
    if Part.LINK_MAP in parts:
        wanted += native.link_map(snapshot, read)
    if Part.THREAD_LIBRARY in parts:
        wanted += native.thread_descriptors(snapshot, index)
    return wanted


def lacking(plan: DumpPlan, snapshot: ProcessSnapshot, mode: DumpMode,
            clr_ranges: Sequence[tuple[int, int, str]]) -> list[MemoryRange]:
    """What a plan made from clr_ranges would hold beyond plan: for a walk of plan's own copy,
    the memory it found or needed that the copy lacked (pages it missed count as pages read)."""
    wanted = clip_to(clr_part_of(mode, clr_ranges, snapshot.mappings),
                     dumpable_extents(snapshot.mappings))
    return subtract(wanted, plan.ranges)


def expected_bytes(mode: DumpMode, mappings: list[Mapping],
                   clr_layout: Sequence[tuple[int, int, str]] = ()) -> int | None:
    """About how much memory a mode will take, from what is known before the target is paused
    (its mappings, the CLR's heaps), or None where it is small or unknown."""
    readable = [m for m in mappings if dumpable(m)]
    if Part.ALL_MAPPINGS in MODE_PARTS[mode]:
        return sum(m.size for m in readable)
    if Part.CLR_HEAPS in MODE_PARTS[mode] and clr_layout:
        return sum(r.size for r in clip_to(merge(_clr_pieces(mode, clr_layout)), extents(readable)))
    return None


def select_clr_only(mode: DumpMode, clr_ranges: Sequence[tuple[int, int, str]]) -> DumpPlan:
    """The CLR's part of a plan alone: where the engine (dbghelp) gathers the native part itself."""
    return DumpPlan(mode=mode, ranges=merge(_clr_pieces(mode, clr_ranges)))


def _clr_pieces(mode: DumpMode, clr_ranges: Sequence[tuple[int, int, str]]) -> list[MemoryRange]:
    pieces = []
    for start, end, clr_kind in clr_ranges:
        kind = clr_range_kind(clr_kind, mode)
        if kind is not None and end > start:
            pieces.append(native.pages(start, end, kind))
    return pieces


def diag_info_page(runtime_base: int) -> bytes:
    header = struct.pack("<16si4xQQ", DIAG_INFO_SIGNATURE, DIAG_INFO_VERSION, 0, runtime_base)
    return header + bytes(PAGE_SIZE - len(header))


# What the CLR reads of a module's file through its flat mapping too (the DAC's and ClrMD's
# metadata readers): kept wherever else the file is mapped.
_FILE_BYTES_KINDS = frozenset({RangeKind.MODULE_METADATA})

# Reasons that count only where no other reason covers a range, the last one least.
_SECONDARY_KINDS = (RangeKind.DAC_ENUM, RangeKind.DAC_READ)


def merge_by_priority(ranges: Iterable[MemoryRange]) -> list[MemoryRange]:
    """merge(), but what the DAC reported or read counts as such only where no other reason
    covers it, so that ranges_by_kind says what each of them adds."""
    ranges = list(ranges)
    kept = merge(r for r in ranges if r.kind not in _SECONDARY_KINDS)
    for kind in _SECONDARY_KINDS:
        kept = merge(kept + subtract(merge(r for r in ranges if r.kind is kind), kept))
    return kept


def subtract(ranges: list[MemoryRange], covered: list[MemoryRange]) -> list[MemoryRange]:
    """The parts of sorted, non-overlapping ranges outside the sorted, non-overlapping covered."""
    left = []
    index = 0
    for r in ranges:
        start = r.start
        while index < len(covered) and covered[index].end <= start:
            index += 1
        if index == len(covered) or covered[index].start >= r.end:
            left.append(r)   # untouched: kept as it is (thousands of them in the pause)
            continue
        probe = index
        while probe < len(covered) and covered[probe].start < r.end:
            if covered[probe].start > start:
                left.append(MemoryRange(start, covered[probe].start, r.kind))
            start = max(start, covered[probe].end)
            probe += 1
        if start < r.end:
            left.append(MemoryRange(start, r.end, r.kind))
    return left


def merge(ranges: Iterable[MemoryRange]) -> list[MemoryRange]:
    """Sorted and non-overlapping; where two overlap, the one that starts first keeps its kind."""
    # Worked on as lists, a MemoryRange made once per result: this runs in the pause, over
    # thousands of ranges with a thousand threads.
    merged: list[list] = []
    for r in sorted(ranges, key=lambda r: (r.start, -r.end)):
        start = r.start
        if merged:
            last = merged[-1]
            if start < last[1]:
                if r.end <= last[1]:
                    continue
                start = last[1]
            if start == last[1] and r.kind == last[2]:
                last[1] = r.end
                continue
        merged.append([start, r.end, r.kind])
    return [MemoryRange(start, end, kind) for start, end, kind in merged]


def extents(mappings: list[Mapping]) -> list[MemoryRange]:
    """The address ranges the mappings cover, merged: what clip_to() takes."""
    return merge(MemoryRange(m.start, m.end) for m in mappings)


def dumpable_extents(mappings: list[Mapping]) -> list[MemoryRange]:
    return extents([m for m in mappings if dumpable(m)])


def anonymous_extents(mappings: list[Mapping]) -> list[MemoryRange]:
    return extents([m for m in mappings if m.private_anonymous])


def clip_to(ranges: list[MemoryRange], allowed: list[MemoryRange]) -> list[MemoryRange]:
    """The parts of sorted, non-overlapping ranges that lie inside the sorted, non-overlapping
    allowed ones (extents() of mappings)."""
    starts = [a.start for a in allowed]
    clipped = []
    for r in ranges:
        index = max(bisect.bisect_right(starts, r.start) - 1, 0)
        while index < len(allowed) and allowed[index].start < r.end:
            start, end = max(r.start, allowed[index].start), min(r.end, allowed[index].end)
            if start < end:
                clipped.append(MemoryRange(start, end, r.kind))
            index += 1
    return clipped


def _overlaps(ranges: list[MemoryRange], address: int) -> bool:
    return any(r.start <= address < r.end for r in ranges)
