"""How fast can the output's pages be made ready? (issue 12, output allocation)

For a dump of SIZE bytes, times the ways of getting the output ready and filling it from a live
target's memory with process_vm_readv (the fill is what the pause waits for):

  fallocate   blocks reserved, the file mapped; pages fault in during the fill (in the pause)
  populate    the same, then MADV_POPULATE_WRITE before the fill (before the pause)
  zeros+populate  the page cache filled by write() of zeros first, then mapped and populated
  anon-thp    an anonymous buffer with transparent huge pages, populated before the fill;
              written to the file with write() after it (after the pause), as createdump writes
  memfd-direct  a memfd (shared memory: no dirty page accounting, no writeback), populated
              before the fill; written to the fallocated file with O_DIRECT after it

    .venv/bin/python bench/output_alloc.py [--size-mib 1024] [--rounds 3] [--dir /tmp]

It starts its own target (PauseTarget --native-mb SIZE) and prints medians; nothing is left behind.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import tempfile
import time

from common import MIB, log
from targets import TARGETS, Target, TargetSpec

MADV_POPULATE_WRITE = 23


def _regions(pid: int, size: int) -> list[tuple[int, int]]:
    found, total = [], 0
    for line in open(f"/proc/{pid}/maps"):
        fields = line.split()
        if fields[1].startswith("rw") and len(fields) == 5 and total < size:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            end = min(end, start + size - total)
            found.append((start, end))
            total += end - start
    return found


def _fill(pid: int, regions: list[tuple[int, int]], destination: mmap.mmap) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from minidumper.engines.linux.memory import ProcessMemory, address_of
    memory = ProcessMemory(pid)
    try:
        offset = 0
        with address_of(destination) as base:
            for start, end in regions:
                for _ in memory.fill(start, end, base + offset):
                    pass
                offset += end - start
    finally:
        memory.close()


def one(way: str, pid: int, regions: list[tuple[int, int]], size: int, directory: str) -> dict:
    times = {}
    fd, path = tempfile.mkstemp(prefix="minidumper-alloc-", dir=directory)
    try:
        began = time.perf_counter()
        if way == "anon-thp":
            buffer = mmap.mmap(-1, size)
            buffer.madvise(mmap.MADV_HUGEPAGE)
            buffer.madvise(MADV_POPULATE_WRITE)
        elif way == "memfd-direct":
            os.posix_fallocate(fd, 0, size)
            staging = os.memfd_create("minidumper-alloc")
            os.ftruncate(staging, size)
            buffer = mmap.mmap(staging, size)
            os.close(staging)
            buffer.madvise(MADV_POPULATE_WRITE)
        else:
            os.posix_fallocate(fd, 0, size)
            buffer = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            if way == "zeros+populate":   # the page cache filled by write(), then mapped in
                zeros = bytes(64 << 20)
                for offset in range(0, size, len(zeros)):
                    os.pwrite(fd, zeros[:size - offset], offset)
            if way in ("populate", "zeros+populate"):
                buffer.madvise(MADV_POPULATE_WRITE)
        times["prepare"] = time.perf_counter() - began
        began = time.perf_counter()
        _fill(pid, regions, buffer)
        times["fill (pause)"] = time.perf_counter() - began
        began = time.perf_counter()
        if way == "anon-thp":
            with memoryview(buffer) as view:
                written = 0
                while written < size:
                    written += os.write(fd, view[written:written + (64 << 20)])
        if way == "memfd-direct":
            direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
            try:
                with memoryview(buffer) as view:
                    written = 0
                    while written < size:
                        written += os.pwrite(direct, view[written:written + (64 << 20)], written)
            finally:
                os.close(direct)
        buffer.close()
        times["after"] = time.perf_counter() - began
        times["total"] = sum(times.values())
    finally:
        os.close(fd)
        os.unlink(path)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/tmp")
    arguments = parser.parse_args()
    size = arguments.size_mib * MIB
    spec = TargetSpec("alloc", "PauseTarget", ("--threads", "2", "--native-mb", str(arguments.size_mib + 64)),
                      "native memory to copy")
    target = Target(spec)
    ways = ("fallocate", "populate", "zeros+populate", "anon-thp", "memfd-direct")
    results: dict[str, list[dict]] = {way: [] for way in ways}
    try:
        pid = target.start()
        regions = _regions(pid, size)
        size = sum(end - start for start, end in regions)
        for round_number in range(arguments.rounds):
            for way in ways[round_number % len(ways):] + ways[:round_number % len(ways)]:
                results[way].append(one(way, pid, regions, size, arguments.dir))
                os.sync()
    finally:
        target.close()
    print(f"{size / MIB:.0f} MiB, medians of {arguments.rounds}: seconds")
    print(f"{'way':<14} {'prepare':>8} {'fill (pause)':>13} {'after':>8} {'total':>8}")
    for way, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{way:<14} {med['prepare']:8.3f} {med['fill (pause)']:13.3f} {med['after']:8.3f} "
              f"{med['total']:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
