"""The Linux engine's reading and writing paths on their own: holes in memory, and the write path
taken where the output cannot be mapped."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import subprocess
import sys

from elftools.elf.elffile import ELFFile

from conftest import clrmd_read, process_state

from minidumper.engines.linux.memory import ProcessMemory, address_of
from minidumper.model import PAGE_SIZE, DumpMode
from minidumper.output import OutputFile
import minidumper


@contextlib.contextmanager
def three_pages_two_faulting(tmp_path):
    """The address of a one-page file mapped over three pages: the two past its end fault
    (SIGBUS); the first holds b"A"s."""
    backing = tmp_path / "one-page"
    backing.write_bytes(b"A" * 3 * PAGE_SIZE)
    with open(backing, "r+b") as f:
        mapped = mmap.mmap(f.fileno(), 3 * PAGE_SIZE, prot=mmap.PROT_READ)
        f.truncate(PAGE_SIZE)
    try:
        yield _address_of(mapped)
    finally:
        mapped.close()


def test_fill_skips_pages_that_cannot_be_read(tmp_path):
    with three_pages_two_faulting(tmp_path) as address:
        memory = ProcessMemory(os.getpid())
        destination = bytearray(b"\xee" * 3 * PAGE_SIZE)
        with address_of(destination) as pointer:
            runs = list(memory.fill(address, address + 3 * PAGE_SIZE, pointer))
        assert runs == [(address, PAGE_SIZE)]
        assert destination[:PAGE_SIZE] == b"A" * PAGE_SIZE
        assert destination[PAGE_SIZE:] == b"\xee" * 2 * PAGE_SIZE   # left as it was
        pieces = list(memory.read_pieces(address, address + 3 * PAGE_SIZE))
        assert [(a, bytes(d)) for a, d in pieces] == [(address, b"A" * PAGE_SIZE)]
        assert memory.read(address, 3 * PAGE_SIZE) == b"A" * PAGE_SIZE


def test_fill_many_reads_batches_and_keeps_what_is_readable_around_a_hole(tmp_path):
    # Many small pieces in one call, with one that runs into the faulting pages in the middle:
    # every piece before and after it is read whole, and it keeps its readable page.
    own = bytes(range(256)) * (1200 * 16)    # 1200 pages of our own memory
    with three_pages_two_faulting(tmp_path) as hole:
        base = _buffer_address(own)
        wanted = [(base + i * PAGE_SIZE, base + i * PAGE_SIZE + 100) for i in range(1100)]
        wanted.insert(700, (hole, hole + 3 * PAGE_SIZE))
        runs, destination = _fill_many_into_one_buffer(wanted)
        assert [index for index, _, _ in runs] == list(range(len(wanted)))
        assert runs[700] == (700, hole, PAGE_SIZE)
        assert all(length == 100 for index, _, length in runs if index != 700)
        assert destination[:100] == own[:100]
        assert destination[-100:] == own[1099 * PAGE_SIZE:1099 * PAGE_SIZE + 100]
        assert destination[700 * 100:700 * 100 + PAGE_SIZE] == b"A" * PAGE_SIZE


def test_a_large_copy_shared_between_threads_reads_as_one_thread_reads_it(tmp_path):
    # In the pause a large copy is shared by threads (copy_workers()): the same runs, in the
    # same order, the same bytes, a hole kept as a hole; and no thread outlives the reading.
    import threading

    own = os.urandom(96 << 20)
    base = _buffer_address(own)
    with three_pages_two_faulting(tmp_path) as hole:
        wanted = [(base, base + (40 << 20) + 123), (hole, hole + 3 * PAGE_SIZE),
                  (base + (40 << 20) + 123, base + (96 << 20))]
        wanted += [(base + i * PAGE_SIZE, base + i * PAGE_SIZE + 64) for i in range(0, 3000, 7)]
        one_runs, one_bytes = _fill_many_into_one_buffer(wanted)
        shared_runs, shared_bytes = _fill_many_into_one_buffer(wanted, workers=3)
        assert _coalesced(shared_runs) == _coalesced(one_runs)
        assert [i for i, _, _ in shared_runs] == sorted(i for i, _, _ in shared_runs)
        assert (1, hole, PAGE_SIZE) in shared_runs and (1, hole, PAGE_SIZE) in one_runs
        assert shared_bytes == one_bytes
        assert shared_bytes[:1 << 20] == own[:1 << 20]
        assert shared_bytes[-64:] == own[2996 * PAGE_SIZE:2996 * PAGE_SIZE + 64]

        # A reading given up after its first run stops and joins its helpers.
        before = threading.active_count()
        destination = bytearray(96 << 20)
        with address_of(destination) as pointer:
            reading = ProcessMemory(os.getpid()).fill_many([(base, base + (96 << 20), pointer)], 3)
            next(reading)
            reading.close()
        assert threading.active_count() == before


def _fill_many_into_one_buffer(wanted, workers=1):
    """fill_many() of our own (start, end) ranges, laid one after the other in a new buffer:
    its runs, and the buffer."""
    destination = bytearray(sum(end - start for start, end in wanted))
    with address_of(destination) as pointer:
        pieces, offset = [], 0
        for start, end in wanted:
            pieces.append((start, end, pointer + offset))
            offset += end - start
        runs = list(ProcessMemory(os.getpid()).fill_many(pieces, workers))
    return runs, destination


def _coalesced(runs):
    """Runs as (index, start, end), adjacent ones of a piece joined: a piece may come back in
    chunks."""
    joined = []
    for index, address, length in runs:
        if joined and joined[-1][0] == index and joined[-1][2] == address:
            joined[-1][2] = address + length
        else:
            joined.append([index, address, address + length])
    return joined


def _buffer_address(data: bytes) -> int:
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value


def test_unmappable_output_is_written_while_paused(heap_app, tmp_path, monkeypatch):
    monkeypatch.setattr(OutputFile, "map", lambda self, size, only=None: None)
    path = tmp_path / "streamed.core"
    result = minidumper.write_dump(heap_app.pid, str(path), DumpMode.FULL)
    heap_app.assert_running()
    assert result.bytes_written == path.stat().st_size
    dumped = clrmd_read("--dump", str(path))
    live = clrmd_read("--pid", str(heap_app.pid))
    assert dumped["histogram"] == live["histogram"]
    assert dumped["threads"] == live["threads"]


def _address_of(mapped: mmap.mmap) -> int:
    """Where the mapping of the file named one-page starts, as /proc/self/maps says."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "one-page" in line:
                return int(line.split("-")[0], 16)
    raise AssertionError("mapping not found")


HOLE_MAKER = """
import mmap, sys, time
with open(sys.argv[1], "r+b") as f:
    mapped = mmap.mmap(f.fileno(), 3 * 4096, prot=mmap.PROT_READ)
    f.truncate(4096)
for line in open("/proc/self/maps"):
    if sys.argv[1] in line:
        print(int(line.split("-")[0], 16), flush=True)
        break
time.sleep(300)
"""


def test_core_leaves_unreadable_pages_out_of_its_segments(tmp_path):
    backing = tmp_path / "hole-backing"
    backing.write_bytes(b"B" * 3 * PAGE_SIZE)
    child = subprocess.Popen([sys.executable, "-c", HOLE_MAKER, str(backing)],
                             stdout=subprocess.PIPE, text=True)
    try:
        address = int(child.stdout.readline())
        core = tmp_path / "holes.core"
        result = minidumper.write_dump(child.pid, str(core), DumpMode.FULL)
        assert result.bytes_written == core.stat().st_size
        with open(core, "rb") as f:
            loads = [s for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD"]
            holding = [s for s in loads if s["p_vaddr"] <= address < s["p_vaddr"] + s["p_memsz"]]
            assert len(holding) == 1
            segment = holding[0]
            offset = address - segment["p_vaddr"]
            assert segment.data()[offset:offset + PAGE_SIZE] == b"B" * PAGE_SIZE
            for s in loads:   # the two pages past the file's end are in no segment
                assert not (s["p_vaddr"] < address + 3 * PAGE_SIZE
                            and address + PAGE_SIZE < s["p_vaddr"] + s["p_memsz"])
        assert process_state(child.pid) not in "Tt"
    finally:
        child.kill()
        child.wait()



def test_full_dump_reads_straight_into_the_mapped_output(heap_app, tmp_path, monkeypatch):
    """The one-copy path is the one taken on an ordinary filesystem."""
    reserved, mapped = [], []
    original_reserve, original_map = OutputFile.reserve, OutputFile.map

    def recording_reserve(self, size, only=None):
        reserved.append((size, only))
        return original_reserve(self, size, only)

    def recording_map(self, size, only=None):
        mapping = original_map(self, size, only)
        mapped.append((size, mapping is not None))
        return mapping

    monkeypatch.setattr(OutputFile, "reserve", recording_reserve)
    monkeypatch.setattr(OutputFile, "map", recording_map)
    path = tmp_path / "mapped.core"
    result = minidumper.write_dump(heap_app.pid, str(path), DumpMode.FULL)
    # Allocated before the pause, and populated only where memory was ever written: not the
    # threads' untouched stacks.
    size, populated = reserved[0]
    assert populated and sum(length for _, length in populated) < size - (32 << 20)
    assert mapped[-1][1] and mapped[-1][0] <= size
    assert result.bytes_written == path.stat().st_size < size
    assert clrmd_read("--dump", str(path))["histogram"] == clrmd_read("--pid", str(heap_app.pid))["histogram"]


HUGE_PAGE = 2 << 20
SPARSE_MAKER = """
import ctypes, mmap, sys, time
size = 64 << 20
mapped = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
mapped[0:4096] = b"A" * 4096
mapped[size // 2:size // 2 + 4096] = b"B" * 4096
mapped[size - 4096:] = b"\\0" * 4096          # touched, and zeros
sum(mapped[i] for i in range(size // 4, size // 4 + (1 << 20), 4096))   # read only: the zero page
print(ctypes.addressof(ctypes.c_char.from_buffer(mapped)), flush=True)
time.sleep(300)
"""


def _assert_holds_the_sparse_region(core, address: int, size: int) -> None:
    """SPARSE_MAKER's region, read from the core: one segment, its two written pages, zeros."""
    with open(core, "rb") as f:
        loads = [s for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD"]
        holding = [s for s in loads if s["p_vaddr"] <= address < s["p_vaddr"] + s["p_memsz"]]
        assert len(holding) == 1 and holding[0]["p_vaddr"] + holding[0]["p_memsz"] >= address + size
        data = holding[0].data()[address - holding[0]["p_vaddr"]:][:size]
    assert data[:PAGE_SIZE] == b"A" * PAGE_SIZE
    assert data[size // 2:size // 2 + PAGE_SIZE] == b"B" * PAGE_SIZE
    assert data.count(0) == size - 2 * PAGE_SIZE


def test_memory_never_touched_is_zeros_in_the_core_without_being_read(tmp_path, monkeypatch):
    """Private anonymous pages never written (most of a thousand threads' stack reservations) go
    in as zeros, from pagemap, and the pages between them are read."""
    from minidumper.engines.linux import pagemap
    from minidumper.engines.linux.memory import ProcessMemory

    size = 64 << 20
    child = subprocess.Popen([sys.executable, "-c", SPARSE_MAKER], stdout=subprocess.PIPE, text=True)
    try:
        address = int(child.stdout.readline())
        untouched = pagemap.untouched(child.pid, [(address, address + size)])
        touched = (address, address + size // 2, address + size - PAGE_SIZE)
        assert not any(s <= page < e for s, e in untouched for page in touched), untouched
        # Transparent huge pages may make a touch fault in 2 MiB: the rest is never touched.
        assert sum(e - s for s, e in untouched) >= size - 3 * HUGE_PAGE
        if pagemap._zero_page_frame():   # pages only read map the zero page: still zeros
            assert any(s <= address + size // 4 < e for s, e in untouched), untouched
        asked: list[tuple[int, int]] = []
        read_many = ProcessMemory.fill_many
        monkeypatch.setattr(ProcessMemory, "fill_many",
                            lambda self, pieces, workers=1: (
                                asked.extend((s, e) for s, e, _ in pieces),
                                read_many(self, pieces, workers))[1])
        core = tmp_path / "sparse.core"
        minidumper.write_dump(child.pid, str(core), DumpMode.FULL)
        read_of_it = sum(max(0, min(e, address + size) - max(s, address)) for s, e in asked)
        assert read_of_it <= 3 * HUGE_PAGE
        _assert_holds_the_sparse_region(core, address, size)
    finally:
        child.kill()
        child.wait()


def test_floating_point_registers_taken_from_xstate_are_the_kernels(heap_app):
    """The pause reads NT_X86_XSTATE and derives NT_PRFPREG from it: the same bytes the kernel
    gives for NT_PRFPREG, thread by thread, on a .NET process whose threads use SSE."""
    from minidumper.engines.linux.ptrace import NT_PRFPREG, USER_FPREGS_SIZE
    from minidumper.engines.linux.session import PausedProcess

    with PausedProcess(heap_app.pid) as paused:
        threads = paused.snapshot().threads
        tids = [t.tid for t in threads]
        kernels = paused._tracer.get_regsets(tids, [(NT_PRFPREG, USER_FPREGS_SIZE)])
    assert len(threads) > 3
    assert all(t.xstate for t in threads), "this machine's kernel gives NT_X86_XSTATE"
    for thread in threads:
        assert thread.fpregs == kernels[thread.tid][0], thread.tid
    # MXCSR (at byte 24) is never zero once a thread has run: the registers are real.
    assert all(int.from_bytes(t.fpregs[24:28], "little") for t in threads)
    heap_app.assert_running()


def test_memory_written_after_the_look_before_the_pause_is_in_the_core(tmp_path, monkeypatch):
    """Full mode leaves the file's place of memory never written a hole, from a look before the
    pause. Memory written between that look and the pause gets its blocks in the pause and is
    read: here the look is made to say the whole region was never written."""
    from minidumper import pauses
    from minidumper.engines.linux import pagemap

    size = 64 << 20
    child = subprocess.Popen([sys.executable, "-c", SPARSE_MAKER], stdout=subprocess.PIPE, text=True)
    try:
        address = int(child.stdout.readline())
        looks = []
        real_untouched = pagemap.untouched

        def first_look_sees_nothing_written(pid, ranges):
            looks.append(ranges)
            found = real_untouched(pid, ranges)
            if len(looks) == 1:   # before the pause: the region as if nothing were written yet
                found = sorted([(s, e) for s, e in found if e <= address or s >= address + size]
                               + [(address, address + size)])
            return found

        monkeypatch.setattr(pagemap, "untouched", first_look_sees_nothing_written)
        allocated = []
        real_written_since = pauses.written_since

        def recording_written_since(holes, zeros):
            found = real_written_since(holes, zeros)
            allocated.extend(found)
            return found

        monkeypatch.setattr(pauses, "written_since", recording_written_since)
        core = tmp_path / "late.core"
        minidumper.write_dump(child.pid, str(core), DumpMode.FULL)
        assert len(looks) == 2
        assert any(s <= address < e for s, e in allocated), allocated
        _assert_holds_the_sparse_region(core, address, size)
    finally:
        child.kill()
        child.wait()


def test_full_dump_of_a_target_whose_mappings_changed_before_the_pause(heap_app, tmp_path, monkeypatch):
    """The plan and the file's holes are made before the pause; where the pause finds other
    mappings, the plan is made again in the pause and the whole file gets its blocks first."""
    from minidumper.plan import select

    allocated = []
    original_allocate = OutputFile.allocate

    def recording_allocate(self, regions):
        allocated.append(list(regions))
        original_allocate(self, regions)

    monkeypatch.setattr(select.Prepared, "fits", lambda self, snapshot: False)
    monkeypatch.setattr(OutputFile, "allocate", recording_allocate)
    path = tmp_path / "changed.core"
    result = minidumper.write_dump(heap_app.pid, str(path), DumpMode.FULL)
    assert allocated[-1][0][0] == 0 and allocated[-1][0][1] >= result.bytes_written - (16 << 20)
    assert clrmd_read("--dump", str(path))["histogram"] == clrmd_read("--pid", str(heap_app.pid))["histogram"]


def test_heap_dumps_read_pagemap_before_the_pause(heap_app, tmp_path, monkeypatch):
    """The planned memory's pagemap is read before the pause (60 ms of a 4 GiB heap's pause
    before); in the pause only the runs untouched then are read again. A look before the pause
    that is out of date (here: made to say everything was untouched) costs a longer look in the
    pause, never a wrong dump."""
    from minidumper.engines.linux import pagemap

    real_untouched = pagemap.untouched
    looks: list[tuple[bool, list, list]] = []        # (in the pause, runs looked at, found)
    stale = []

    def recording_untouched(pid, ranges):
        in_pause = process_state(pid) in "tT"
        found = list(ranges) if stale and not in_pause else real_untouched(pid, ranges)
        looks.append((in_pause, list(ranges), found))
        return found

    def size(runs):
        return sum(end - start for start, end in runs)

    monkeypatch.setattr(pagemap, "untouched", recording_untouched)
    minidumper.write_dump(heap_app.pid, str(tmp_path / "heap.core"), DumpMode.HEAP)
    (_, looked, untouched), *in_pause = looks
    assert not looks[0][0] and size(looked) > 1 << 20 and size(untouched) < size(looked), looks
    assert all(paused for paused, _, _ in in_pause)
    # Again in the pause: what was untouched, and the plan's memory outside what was looked at.
    assert in_pause[0][1] == untouched
    assert size(r for _, runs, _ in in_pause[1:] for r in runs) < size(looked) / 4
    before = size(looked)

    looks.clear()
    stale.append(True)
    core = tmp_path / "stale.core"
    minidumper.write_dump(heap_app.pid, str(core), DumpMode.HEAP)
    assert [runs for paused, runs, _ in looks if paused][0] == looks[0][1], "all of it looked at again"
    assert size(looks[0][1]) > before / 2
    heap_app.assert_running()
    seen, live = clrmd_read("--dump", str(core)), clrmd_read("--pid", str(heap_app.pid))
    assert seen["object_count"] == live["object_count"] > 10_000
    assert seen["invalid_object_count"] == 0 and seen["histogram"] == live["histogram"]
