"""Writes an ELF core: header, program headers and notes up front, then the memory.

Which pages of a range can really be read is known only while reading, so the header area is
reserved up front with room for the segments that holes may add; it is filled in at the end.

Two ways to put the memory in: fill(), which reads the target straight into the output file
mapped in memory (one copy, laid out as planned; it takes the mapping's address, so that no slice
of the mapping outlives an interruption), and write(), which writes pieces as they come.
"""

from __future__ import annotations

import bisect
import ctypes
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from minidumper.engines.linux import elf
from minidumper.model import PAGE_SIZE, DumpPlan, Mapping, MappingIndex, ProcessSnapshot

PIECE = tuple[int, memoryview]


class MemorySource(Protocol):
    def fill_many(self, pieces: list[tuple[int, int, int]],
                  workers: int = 1) -> Iterable[tuple[int, int, int]]: ...


class OutputSink(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...
    def write_at(self, data: bytes, offset: int) -> None: ...
    def seek(self, offset: int) -> None: ...


@dataclass
class LoadSegment:
    vaddr: int
    offset: int
    size: int
    flags: int


def _align_up(value: int, alignment: int = PAGE_SIZE) -> int:
    return (value + alignment - 1) // alignment * alignment


def mapping_flags(mapping: Mapping) -> int:
    return ((elf.PF_R if mapping.readable else 0) | (elf.PF_W if mapping.writable else 0)
            | (elf.PF_X if mapping.executable else 0))


class _FlagsByAddress:
    """The ELF flags of the mapping that holds an address, and where that mapping ends."""

    def __init__(self, mappings: list[Mapping]) -> None:
        self._index = MappingIndex(mappings)

    def at(self, address: int) -> tuple[int, int]:
        mapping = self._index.at(address)
        if mapping is None:
            return elf.PF_R, address + PAGE_SIZE
        return mapping_flags(mapping), mapping.end


def build_notes(snapshot: ProcessSnapshot) -> bytes:
    """The notes, with the ids the target knows (those of its own pid namespace): the CLR
    names its threads by them, so readers match its threads to NT_PRSTATUS by them."""
    return _process_notes(snapshot) + _thread_notes(snapshot)


def _process_notes(snapshot: ProcessSnapshot) -> bytes:
    ids = snapshot.target_ids
    return b"".join([
        elf.note(b"CORE", elf.NT_PRPSINFO, elf.prpsinfo(
            state=snapshot.state, pid=ids.pid, ppid=ids.ppid, pgrp=ids.pgrp,
            sid=ids.sid, uid=snapshot.uid, gid=snapshot.gid, nice=snapshot.nice, flags=0,
            fname=snapshot.name, psargs=" ".join(snapshot.cmdline))),
        elf.note(b"CORE", elf.NT_AUXV, snapshot.auxv),
        elf.note(b"CORE", elf.NT_FILE, elf.file_note(
            [(m.start, m.end, m.offset, m.path.removesuffix(" (deleted)"))
             for m in snapshot.mappings if m.is_file], PAGE_SIZE)),
    ])


def _thread_notes(snapshot: ProcessSnapshot) -> bytes:
    ids = snapshot.target_ids
    notes = []
    # The main thread first: readers take the process id from the first NT_PRSTATUS.
    threads = sorted(snapshot.threads, key=lambda t: (t.tid != snapshot.pid, t.tid))
    for thread in threads:
        notes.append(elf.note(b"CORE", elf.NT_PRSTATUS, elf.prstatus(
            tid=thread.target_tid, ppid=ids.ppid, pgrp=ids.pgrp, sid=ids.sid,
            regs=thread.prstatus_regs, cursig=thread.pending_signal)))
        notes.append(elf.note(b"CORE", elf.NT_FPREGSET, thread.fpregs))
        if thread.xstate:
            notes.append(elf.note(b"LINUX", elf.NT_X86_XSTATE, thread.xstate))
    return b"".join(notes)


def count_expected_segments(plan: DumpPlan, mappings: list[Mapping]) -> int:
    """Segments the plan makes if every page reads: one per piece of a range in a mapping (the
    plan's ranges lie in mappings), so one more for each mapping that ends inside a range."""
    ends = sorted(m.end for m in mappings)
    count = 0
    for memory_range in plan.ranges:
        count += 1 + bisect.bisect_left(ends, memory_range.end) - bisect.bisect_right(ends, memory_range.start)
    return count + len(plan.synthetic)


def max_loads(plan: DumpPlan, mappings: list[Mapping]) -> int:
    """The program headers reserved for a plan's segments: room for the segments that unreadable
    holes add; past it, holes are written as zeros."""
    expected = count_expected_segments(plan, mappings)
    return expected + 256 + expected // 4


def data_start(plan: DumpPlan, mappings: list[Mapping]) -> int:
    """Where the memory starts in the file: after the headers. The notes come after the memory,
    so this depends on the plan alone, and the file's layout is known before the pause."""
    return _align_up(elf.EHDR_SIZE + elf.PHDR_SIZE * (1 + max_loads(plan, mappings)) + elf.SHDR_SIZE)


def _pieces_in_file(plan: DumpPlan, data_start: int,
                    runs: Sequence[tuple[int, int]]) -> Iterator[tuple[int, int, int, bool]]:
    """How the plan's memory lands in the file, range after range from data_start: pieces
    (start, end, file offset, in_runs), split where the sorted address runs begin and end."""
    offset = data_start
    index = 0
    for memory_range in plan.ranges:
        base = offset - memory_range.start
        at = memory_range.start
        while index < len(runs) and runs[index][1] <= at:
            index += 1
        probe = index
        while probe < len(runs) and runs[probe][0] < memory_range.end:
            run_start, run_end = max(runs[probe][0], at), min(runs[probe][1], memory_range.end)
            if run_start > at:
                yield at, run_start, base + at, False
            yield run_start, run_end, base + run_start, True
            at = run_end
            probe += 1
        if at < memory_range.end:
            yield at, memory_range.end, base + at, False
        offset += memory_range.size


def file_regions(plan: DumpPlan, data_start: int, runs: list[tuple[int, int]],
                 inside: bool) -> list[tuple[int, int]]:
    """(offset, length) of the file where the plan's memory lands (as CoreWriter.fill lays it
    out from data_start): of the memory in the sorted address runs, or (inside False) of all
    the rest and the synthetic pages; joined where they touch."""
    regions: list[list[int]] = []
    for start, end, offset, in_runs in _pieces_in_file(plan, data_start, runs):
        if in_runs != inside:
            continue
        if regions and regions[-1][0] + regions[-1][1] == offset:
            regions[-1][1] += end - start
        else:
            regions.append([offset, end - start])
    synthetic = sum(len(s.contents) for s in plan.synthetic)
    if synthetic and not inside:
        regions.append([data_start + plan.total_bytes, synthetic])
    return [(offset, length) for offset, length in regions]


class CoreWriter:
    def __init__(self, sink: OutputSink, snapshot: ProcessSnapshot, plan: DumpPlan) -> None:
        """The headers, then the memory, then the notes: the notes are built after the pause,
        where the memory is filled in through a mapping."""
        self._sink = sink
        self._snapshot = snapshot
        self._plan = plan
        self._flags = _FlagsByAddress(snapshot.mappings)
        self._max_loads = max_loads(plan, snapshot.mappings)
        self._data_start = data_start(plan, snapshot.mappings)
        self._offset = self._data_start
        self._segments: list[LoadSegment] = []
        self._placed: list[tuple[int, int, int, int | None]] = []   # fill()'s, for finish()

    @property
    def data_start(self) -> int:
        return self._data_start

    @property
    def planned_size(self) -> int:
        """The file's size if every planned page reads: what fill() needs mapped."""
        return (self._data_start + self._plan.total_bytes
                + sum(len(s.contents) for s in self._plan.synthetic))

    def fill(self, memory: MemorySource, destination: int,
             progress: Callable[[int], None] | None = None,
             zeros: list[tuple[int, int]] = (), workers: int = 1) -> None:
        """Reads every planned range into its place in the mapped file, which starts at address
        destination. Unreadable pages stay zero there and out of the segments, unless there are
        too many holes to list. zeros: sorted runs of memory known to read as zeros (never
        touched): put in the segments without reading, the file's zero pages standing for them
        (the file must be new, or cut to nothing since). workers: threads that share the
        reading."""
        reads: list[tuple[int, int, int]] = []       # (start, end, file offset)
        skipped: list[tuple[int, int, int]] = []
        for start, end, offset, zero in _pieces_in_file(self._plan, self._offset, zeros):
            (skipped if zero else reads).append((start, end, offset))
        self._offset += self._plan.total_bytes
        pieces = [(start, end, destination + offset) for start, end, offset in reads]
        # What went where, in address order; made into segments by finish(), once the target
        # runs again (thousands of lookups with a thousand threads).
        placed = self._placed
        next_skipped = 0
        reading = memory.fill_many(pieces, workers)
        try:
            for index, address, length in reading:
                while next_skipped < len(skipped) and skipped[next_skipped][0] < address:
                    next_skipped = self._place_skipped(skipped, next_skipped, progress)
                placed.append((address, length, reads[index][2] + address - reads[index][0], None))
                if progress:
                    progress(length)
        finally:
            # At once on every path: a reading's helper threads stop before the caller
            # closes the mapping they write into.
            close = getattr(reading, "close", None)
            if close is not None:
                close()
        while next_skipped < len(skipped):
            next_skipped = self._place_skipped(skipped, next_skipped, progress)
        for synthetic in self._plan.synthetic:
            ctypes.memmove(destination + self._offset, synthetic.contents, len(synthetic.contents))
            placed.append((synthetic.address, len(synthetic.contents), self._offset, elf.PF_R))
            self._offset += len(synthetic.contents)

    def _place_skipped(self, skipped: list[tuple[int, int, int]], index: int,
                       progress: Callable[[int], None] | None) -> int:
        start, end, offset = skipped[index]
        self._placed.append((start, end - start, offset, None))
        if progress:
            progress(end - start)
        return index + 1

    def copied_pieces(self) -> list[tuple[int, int, int]]:
        """After fill(): where the target's memory lies in the file, (address, offset, size),
        by address."""
        return sorted((s.vaddr, s.offset, s.size) for s in self._segments)

    def finish(self) -> int:
        """After fill(): the segments and the headers. Returns the file's size."""
        for address, length, offset, flags in self._placed:
            self._place(address, length, offset, flags)
        self._placed.clear()
        self._write_headers()
        return self._offset

    def write(self, pieces: Iterable[PIECE], progress: Callable[[int], None] | None = None) -> int:
        """Writes the pieces (ascending addresses), then the synthetic ranges, then the headers."""
        self._sink.seek(self._data_start)
        for address, data in pieces:
            self._add_piece(address, data)
            if progress:
                progress(len(data))
        for synthetic in self._plan.synthetic:
            self._add_piece(synthetic.address, memoryview(synthetic.contents), elf.PF_R)
        self._write_headers()
        return self._offset

    def _add_piece(self, address: int, data: memoryview, forced_flags: int | None = None) -> None:
        """Adds memory to the segments, written at the end of the file."""
        while data:
            if forced_flags is None:
                flags, mapping_end = self._flags.at(address)
            else:
                flags, mapping_end = forced_flags, address + len(data)
            part = data[:mapping_end - address]
            self._append(address, part, flags)
            address += len(part)
            data = data[len(part):]

    def _place(self, address: int, length: int, placed_at: int,
               forced_flags: int | None = None) -> None:
        """Adds memory to the segments that is already in the file at placed_at."""
        while length:
            if forced_flags is None:
                flags, mapping_end = self._flags.at(address)
            else:
                flags, mapping_end = forced_flags, address + length
            part = min(length, mapping_end - address)
            self._record(address, placed_at, part, flags)
            placed_at += part
            address += part
            length -= part

    def _append(self, address: int, data: memoryview, flags: int) -> None:
        last = self._segments[-1] if self._segments else None
        if last and last.flags == flags and last.vaddr + last.size <= address:
            gap = address - (last.vaddr + last.size)
            if gap and len(self._segments) >= self._max_loads and gap <= 64 * PAGE_SIZE:
                self._sink.write(bytes(gap))
                self._offset += gap
        self._record(address, self._offset, len(data), flags)
        self._sink.write(data)
        self._offset += len(data)

    def _record(self, address: int, offset: int, size: int, flags: int) -> None:
        """Extends the last segment where the memory and the file both go on; else starts one.
        Past the reserved count, a hole in memory is bridged if the file holds it (as zeros)."""
        last = self._segments[-1] if self._segments else None
        if last and last.flags == flags:
            memory_gap = address - (last.vaddr + last.size)
            file_gap = offset - (last.offset + last.size)
            if memory_gap == file_gap == 0 or (
                    memory_gap == file_gap > 0 and len(self._segments) >= self._max_loads):
                last.size += memory_gap + size
                return
        self._segments.append(LoadSegment(address, offset, size, flags))

    def _write_headers(self) -> None:
        """The notes after the memory, then the headers before it; self._offset ends at the
        file's end."""
        notes = build_notes(self._snapshot)
        notes_offset = self._offset
        self._sink.write_at(notes, notes_offset)
        self._offset += len(notes)
        loads = sorted(self._segments, key=lambda s: s.vaddr)
        phnum = 1 + len(loads)
        if phnum > 1 + self._max_loads:
            raise RuntimeError(f"core has {phnum} segments, more than the {self._max_loads} reserved")
        phoff = elf.EHDR_SIZE
        shoff = phoff + elf.PHDR_SIZE * (1 + self._max_loads)
        overflow = phnum >= elf.PN_XNUM
        header = elf.elf_header(phoff=phoff, phnum=elf.PN_XNUM if overflow else phnum,
                                shoff=shoff if overflow else 0, shnum=1 if overflow else 0)
        program_headers = [elf.program_header(elf.PT_NOTE, 0, notes_offset, 0,
                                              len(notes), 0, 4)]
        program_headers += [elf.program_header(elf.PT_LOAD, s.flags, s.offset, s.vaddr, s.size,
                                               s.size, PAGE_SIZE) for s in loads]
        area = bytearray(self._data_start)
        area[0:elf.EHDR_SIZE] = header
        table = b"".join(program_headers)
        area[phoff:phoff + len(table)] = table
        if overflow:
            area[shoff:shoff + elf.SHDR_SIZE] = elf.phnum_overflow_section(phnum)
        self._sink.write_at(bytes(area), 0)
