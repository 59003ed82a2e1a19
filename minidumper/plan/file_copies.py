"""The same file bytes wherever else a file is mapped.

The runtime maps a managed assembly twice: its sections, where code runs and the DAC finds the
metadata, and the whole file flat, which the DAC and ClrMD also read metadata through (ClrMD
takes a module's first mapping for its base). On the dump's machine a reader falls back to the
file on disk for what a dump lacks; on another machine it cannot. So a range of file bytes the
plan takes (metadata, ReadyToRun tables) is taken from every mapping of that file that holds it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

from minidumper.model import Mapping, MappingIndex, MemoryRange


def elsewhere(ranges: Iterable[MemoryRange], mappings: list[Mapping]) -> Iterator[MemoryRange]:
    """For each range inside a file mapping, the same bytes of the file in its other mappings."""
    index = MappingIndex(mappings)
    by_file: dict[tuple[str, int], list[Mapping]] = defaultdict(list)
    for mapping in mappings:
        if mapping.is_file and mapping.readable:
            by_file[(mapping.path, mapping.inode)].append(mapping)
    for r in ranges:
        home = index.at(r.start)
        if home is None or not home.is_file:
            continue
        first = r.start - home.start + home.offset                 # file offsets of the range
        last = min(r.end, home.end) - home.start + home.offset
        for other in by_file[(home.path, home.inode)]:
            if other is home:
                continue
            start = max(first, other.offset)
            end = min(last, other.offset + other.size)
            if start < end:
                yield MemoryRange(other.start + start - other.offset, other.start + end - other.offset, r.kind)
