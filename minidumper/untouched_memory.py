"""Which planned memory was never touched (Linux: /proc/PID/pagemap): it reads as zeros, so it
is not copied, and in a file planned ahead its place stays a hole."""

from __future__ import annotations

from dataclasses import dataclass

from minidumper.model import PAGE_SIZE, Mapping, MemoryRange
from minidumper.plan import select


def written_since(holes: list[tuple[int, int]],
                  zeros: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of the sorted runs never written before the pause (holes) that the pause found
    written (not in the sorted zeros)."""
    written = []
    index = 0
    for start, end in holes:
        at = start
        while index < len(zeros) and zeros[index][1] <= at:
            index += 1
        probe = index
        while probe < len(zeros) and zeros[probe][0] < end:
            if zeros[probe][0] > at:
                written.append((at, zeros[probe][0]))
            at = max(at, zeros[probe][1])
            probe += 1
        if at < end:
            written.append((at, end))
    return written


def untouched(pid: int, ranges: list[MemoryRange], anonymous: list[MemoryRange] | None,
               mappings: list[Mapping] | None) -> list[tuple[int, int]]:
    """The private anonymous memory of the ranges that was never touched: zeros, not read (most
    of a thousand threads' stack reservations in a full dump). anonymous: anonymous_extents() of
    the mappings, where known already."""
    from minidumper.engines.linux import pagemap

    return pagemap.untouched(pid, _worth_a_look(ranges, anonymous, mappings))


def _worth_a_look(ranges: list[MemoryRange], anonymous: list[MemoryRange] | None,
                  mappings: list[Mapping] | None = None) -> list[tuple[int, int]]:
    """The runs of the ranges that pagemap may find untouched: private anonymous (anonymous, or
    worked out from the mappings), long enough."""
    from minidumper.engines.linux import pagemap

    long_enough = [r for r in ranges if r.size >= pagemap.MIN_RUN_PAGES * PAGE_SIZE]
    if not long_enough:
        return []
    if anonymous is None:
        anonymous = select.anonymous_extents(mappings)
    return [(r.start, r.end) for r in select.clip_to(long_enough, anonymous)]


@dataclass
class LookAhead:
    """pagemap read before the pause for the runs looked at (sorted), and what it found never
    touched then. Memory touched then stays touched (or reads as zeros): in the pause only the
    runs untouched then, and the plan's memory outside looked, are looked at again."""

    looked: list[tuple[int, int]]
    untouched: list[tuple[int, int]]


def look_ahead(pid: int, prepared: select.Prepared) -> LookAhead:
    """pagemap's look at the memory planned before the pause (a 4 GiB heap: 60 ms of a pause)."""
    from minidumper.engines.linux import pagemap

    looked = _worth_a_look(prepared.planned, prepared.anonymous)
    return LookAhead(looked, pagemap.untouched(pid, looked))


def untouched_since(pid: int, ranges: list[MemoryRange], anonymous: list[MemoryRange],
                     ahead: LookAhead) -> list[tuple[int, int]]:
    """untouched(), in the pause, of a plan whose memory was looked at ahead."""
    from minidumper.engines.linux import pagemap

    again = pagemap.untouched(pid, ahead.untouched)
    outside = select.subtract(ranges, [MemoryRange(start, end) for start, end in ahead.looked])
    return sorted(again + untouched(pid, outside, anonymous, None))
