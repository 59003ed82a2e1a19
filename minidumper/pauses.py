"""The target's pause (Linux), and where the CLR walk goes with respect to it.

Short pause: the memory that the CLR walk before the pause found is copied into the output, the
target resumed, and the CLR walked on that copy, never on the running target. The copy is the dump
when the walk found everything it needed in it. Where it did not (the target changed since the
walk before: new GC regions, new types), the copy is made again with what the walk found, once.
Threads started since the CLR was last walked have CLR objects no walk has seen: their stacks are
walked in the pause, and copied with the rest. After that, or where the bridge failed on the copy
(crashed, or looped past a bound), the CLR is walked while the target is held, as long as that
takes: the plan is then exact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from minidumper import targets
from minidumper.clr_walk import ClrWalk
from minidumper.errors import ClrReadFailedError, TargetExitedError
from minidumper.model import PAGE_SIZE, DumpMode, DumpPlan, MemoryRange, ProcessSnapshot
from minidumper.output import OutputFile
from minidumper.plan import modes, select
from minidumper.untouched_memory import (
    LookAhead, look_ahead, untouched, untouched_since, written_since)

log = logging.getLogger(__name__)

OUTPUT_HEADER_ALLOWANCE = 16 << 20   # notes and program headers of a large process fit in this
COPY_ATTEMPTS = 2                    # short pauses before the CLR is walked in the pause
# "1": the CLR is always walked while the target is held (for measuring, and a way out).
WALK_IN_PAUSE_VARIABLE = "MINIDUMPER_WALK_IN_PAUSE"

CLR_RANGE = tuple[int, int, str]


class DumpProgress(Protocol):
    def start(self, total_bytes: int) -> None: ...
    def advance(self, count: int) -> None: ...


@dataclass
class Written:
    snapshot: ProcessSnapshot
    plan: DumpPlan
    size: int                  # of the file
    paused_seconds: float      # over every pause


@dataclass
class _Attempt:
    """A short pause and the walk on its copy."""

    written: Written
    retry_with: Knowledge | None = None   # the copy lacked memory: try again, knowing this
    walk_failed: bool = False             # the bridge failed on the copy: walk in the pause


@dataclass
class Knowledge:
    """What the last walk of the CLR found, and which threads the target had when it began."""

    clr_ranges: list[CLR_RANGE]
    thread_ids: set[int]


def write_core(pid: int, output: OutputFile, mode: DumpMode, progress: DumpProgress | None,
               clr: ClrWalk | None, known: Knowledge | None, expected: int | None,
               pause_timeout: float) -> Written:
    """Pauses the target (more than once where the copy proves short) and writes the core into
    output, uncommitted. known: the walk before the pause (None: there was none)."""
    _import_engine()
    if clr is None:
        return _write_planned_ahead(pid, output, mode, progress, expected, pause_timeout)
    paused_seconds = 0.0
    if reserve(output, expected) is not None and known and known.clr_ranges \
            and os.environ.get(WALK_IN_PAUSE_VARIABLE) != "1":
        copy_path = output.path_for_children()
        if copy_path is None:
            log.debug("the bridge cannot open the output: the CLR is walked in the pause")
        else:
            known = _warmed_up_again(pid, clr, mode, known)
        for _ in range(COPY_ATTEMPTS if copy_path else 0):
            attempt = _copy_then_walk(pid, output, mode, progress, clr, known, copy_path,
                                      pause_timeout)
            attempt.written.paused_seconds += paused_seconds
            if attempt.retry_with is None and not attempt.walk_failed:
                return attempt.written
            paused_seconds = attempt.written.paused_seconds
            output.reset()
            reserve(output, expected)
            if attempt.walk_failed:
                break
            known = attempt.retry_with
    written = walk_in_pause(pid, output, mode, progress, clr, pause_timeout)
    written.paused_seconds += paused_seconds
    return written


def _warmed_up_again(pid: int, clr: ClrWalk, mode: DumpMode, known: Knowledge) -> Knowledge:
    """For a thread started since the walk before the pause began, the pause would walk the
    CLR held (an ASP.NET Core app's thread pool, now and then: 0.25 s, not 0.03). Walked again
    once, on a DAC warm by now, that window shrinks to the second walk's length."""
    now = set(targets.thread_ids(pid))
    started = now - known.thread_ids
    if not started:
        return known
    log.debug("%d threads started during the walk before the pause: walked again", len(started))
    ranges = clr.warm_up(modes.clr_depth(mode))
    return Knowledge(ranges, now) if ranges else known


def _import_engine() -> None:
    """The engine's modules, imported here (on Linux only) so that no pause waits for an import:
    8 ms in the pause of a full dump."""
    from minidumper.engines.linux import core_writer, memory, pagemap, session  # noqa: F401


def reserve(output: OutputFile, expected: int | None, only: list[tuple[int, int]] | None = None):
    """Allocates the file's pages before the pause, so that the pause is only the copy;
    populated only where they will stay in memory until then, and only the (offset, length)
    regions in only, where given (output.reserve). The mapping, or None where there is no
    estimate or the output cannot be mapped."""
    if not expected:
        return None
    return output.reserve(expected + expected // 100 + OUTPUT_HEADER_ALLOWANCE, only)


def _write_planned_ahead(pid: int, output: OutputFile, mode: DumpMode,
                         progress: DumpProgress | None, expected: int | None,
                         pause_timeout: float) -> Written:
    """A mode without the CLR (full): its plan is the mappings', and with it the file's layout,
    known before the pause. Only the file's pages of memory that was ever written are populated
    ahead: a thousand threads' stacks are gigabytes never touched, which would otherwise be
    allocated, and written back to the disk, as zeros."""
    from minidumper.engines.linux import core_writer

    prepared = _prepare(pid, mode, [])
    plan = select.select_ahead(mode, prepared)
    holes = only = None
    if plan is not None:
        holes = untouched(pid, plan.ranges, prepared.anonymous, prepared.mappings)
        only = core_writer.file_regions(plan, core_writer.data_start(plan, prepared.mappings), holes, inside=False)
    reserve(output, expected, only)
    with _paused(pid, pause_timeout) as (paused, snapshot, clock):
        if plan is not None and prepared.fits(snapshot):
            size, _ = _copy(paused, snapshot, plan, clock, output, progress, prepared, holes)
        else:
            if only is not None:   # the mappings changed: the file's holes are not where planned
                output.allocate_mapped()
            plan, (size, _) = _walk_held(paused, snapshot, clock, output, mode, progress, None)
    return Written(snapshot, plan, size, paused.paused_seconds)


def _copy_then_walk(pid: int, output: OutputFile, mode: DumpMode, progress: DumpProgress | None,
                    clr: ClrWalk, known: Knowledge, copy_path: str, pause_timeout: float) -> _Attempt:
    """One short pause, then the walk on its copy. Threads started since the CLR was last
    walked have their stacks walked in the pause first."""
    from clrmd_bridge import MemoryCopy, threads_depth

    # What can be known before the pause is not worked out in it.
    prepared = _prepare(pid, mode, known.clr_ranges)
    looked_ahead = look_ahead(pid, prepared)
    with _paused(pid, pause_timeout) as (paused, snapshot, clock):
        # New threads' CLR objects are in memory that no walk has seen. The walk on the copy
        # would read them from the running target, where a short-lived thread's are gone by
        # then: the DAC then loops or crashes (measured: half the dumps of a busy target). So
        # their stacks are walked here, and copied with what the walk before found.
        started = [t.target_tid for t in snapshot.threads if t.tid not in known.thread_ids]
        if started:
            log.debug("%d threads started since the CLR was last walked: their stacks walked "
                      "in the pause", len(started))
            plan, (size, pieces) = _walk_held(paused, snapshot, clock, output, mode, progress, clr,
                                              threads_depth(started), known.clr_ranges,
                                              prepared, looked_ahead)
        else:
            plan = select.select(snapshot, mode, paused.memory.read, prepared=prepared)
            size, pieces = _copy(paused, snapshot, plan, clock, output, progress, prepared,
                                 looked_ahead=looked_ahead)
    written = Written(snapshot, plan, size, paused.paused_seconds)
    walk_started = time.monotonic()
    registers = {t.target_tid: t.prstatus_regs for t in snapshot.threads}
    clr_ranges = clr.walk_copy(registers, modes.clr_depth(mode), MemoryCopy(copy_path, pieces))
    if clr_ranges is None:
        return _Attempt(written, walk_failed=True)
    lacking = select.lacking(plan, snapshot, mode, clr_ranges)
    log.debug("the CLR walked on the copy in %.3f s; it lacked %d pages",
              time.monotonic() - walk_started, sum(r.size for r in lacking) // PAGE_SIZE)
    if not lacking:
        return _Attempt(written)
    log.debug("the copy lacked %s: paused again", _describe(lacking))
    return _Attempt(written, Knowledge(known.clr_ranges + clr_ranges, {t.tid for t in snapshot.threads}))


def _prepare(pid: int, mode: DumpMode, clr_ranges: list[CLR_RANGE]) -> select.Prepared:
    from minidumper.engines.linux import procfs
    from minidumper.engines.linux.memory import ProcessMemory

    memory = ProcessMemory(pid)
    try:
        return select.prepare(mode, targets.mappings(pid), procfs.read_bytes(pid, "auxv"),
                              memory.read, clr_ranges)
    except (FileNotFoundError, ProcessLookupError) as error:
        raise TargetExitedError(f"process {pid} exited") from error
    finally:
        memory.close()


def _describe(ranges: list[MemoryRange], most: int = 8) -> str:
    shown = ", ".join(f"{r.start:#x}-{r.end:#x} ({r.kind.value})" for r in ranges[:most])
    return shown + (f" and {len(ranges) - most} more" if len(ranges) > most else "")


def walk_in_pause(pid: int, output: OutputFile, mode: DumpMode, progress: DumpProgress | None,
                  clr: ClrWalk | None, pause_timeout: float) -> Written:
    """One pause, with the CLR walked while the target is held."""
    with _paused(pid, pause_timeout) as (paused, snapshot, clock):
        plan, (size, _) = _walk_held(paused, snapshot, clock, output, mode, progress, clr)
    return Written(snapshot, plan, size, paused.paused_seconds)


@contextlib.contextmanager
def _paused(pid: int, pause_timeout: float) -> Iterator[tuple]:
    """The target held: (PausedProcess, its snapshot, the pause's clock)."""
    from minidumper.engines.linux.session import PausedProcess

    with PausedProcess(pid, pause_timeout) as paused:
        clock = PauseClock()
        snapshot = paused.snapshot()
        clock.mark("snapshot")
        yield paused, snapshot, clock


def _walk_held(paused, snapshot: ProcessSnapshot, clock: PauseClock, output: OutputFile,
               mode: DumpMode, progress: DumpProgress | None, clr: ClrWalk | None,
               depth: str | None = None, known_ranges: list[CLR_RANGE] | None = None,
               prepared: select.Prepared | None = None, looked_ahead: LookAhead | None = None,
               ) -> tuple[DumpPlan, tuple[int, list[tuple[int, int, int]]]]:
    """In the pause: the CLR walked on the held target (at the mode's depth, or at depth with
    known_ranges, what an earlier walk found, added), the plan made, the memory copied. The
    target is resumed as soon as its memory is in the output."""
    if clr:
        # Keyed by the ids the CLR knows its threads by: those of the target's pid namespace.
        clr.start_walk({t.target_tid: t.prstatus_regs for t in snapshot.threads},
                       depth or modes.clr_depth(mode))
    # While the bridge's process walks the CLR, this one plans the rest.
    native_ranges = select.native_part(snapshot, mode, paused.memory.read)
    clock.mark("native plan")
    if clr is None:
        clr_ranges = []
    elif known_ranges is None:
        clr_ranges = clr.finish_walk()
    else:
        clr_ranges = list(known_ranges)
        try:
            clr_ranges += clr.finish_walk()
        except ClrReadFailedError as error:
            # Only the new threads' part is lost: the walk on the copy finds it lacking.
            log.debug("the walk of the new threads failed: %s", error.__cause__ or error)
    clock.mark("CLR walk")
    plan = select.select(snapshot, mode, paused.memory.read, clr_ranges, native_ranges)
    return plan, _copy(paused, snapshot, plan, clock, output, progress, prepared,
                       looked_ahead=looked_ahead)


def _copy(paused, snapshot: ProcessSnapshot, plan: DumpPlan, clock: PauseClock,
          output: OutputFile, progress: DumpProgress | None,
          prepared: select.Prepared | None = None,
          holes: list[tuple[int, int]] | None = None,
          looked_ahead: LookAhead | None = None) -> tuple[int, list[tuple[int, int, int]]]:
    """The planned memory into the output, the target resumed, the headers written. Returns the
    file's size, and where the memory lies in it (CoreWriter.copied_pieces). holes: the memory
    whose place in the file was left a hole (never written when looked at before the pause).
    looked_ahead: pagemap's look at the prepared plan before the pause (look_ahead)."""
    from minidumper.engines.linux.core_writer import CoreWriter, file_regions
    from minidumper.engines.linux.memory import address_of, copy_workers

    if log.isEnabledFor(logging.DEBUG):   # the sums take a millisecond of the pause
        log.debug("plan: %d ranges, %d bytes: %s", len(plan.ranges), plan.total_bytes,
                  plan.bytes_by_kind())
    writer = CoreWriter(output, snapshot, plan)
    clock.mark("plan")
    mapping = output.copy_destination(writer.planned_size)
    if progress:
        # A staged copy is written once more after the resume: the bar counts both.
        progress.start(plan.total_bytes * (2 if output.staged else 1))
    advance: Callable[[int], None] | None = progress.advance if progress else None
    if mapping is None:
        log.debug("the output cannot be mapped: writing while the target is paused")
        return writer.write(paused.stream(plan.ranges), advance), writer.copied_pieces()
    if holes is not None:
        # Memory written before the pause stays written (or reads as zeros): only what was
        # never written then is looked at again.
        from minidumper.engines.linux import pagemap
        zeros = pagemap.untouched(paused.memory.pid, holes)
    else:
        anonymous = prepared.anonymous if prepared and prepared.fits(snapshot) else None
        if anonymous is not None and looked_ahead is not None:
            zeros = untouched_since(paused.memory.pid, plan.ranges, anonymous, looked_ahead)
        else:
            zeros = untouched(paused.memory.pid, plan.ranges, anonymous, snapshot.mappings)
    clock.mark("untouched pages")
    log.debug("%d MiB never touched: written as zeros, not read",
              sum(end - start for start, end in zeros) >> 20)
    if holes:
        # Written since it was looked at: its place in the file gets its blocks first.
        written = written_since(holes, zeros)
        output.allocate(file_regions(plan, writer.data_start, written, inside=True))
    # The target's memory goes straight into the file's pages: one copy, then resume.
    with address_of(mapping) as destination:
        writer.fill(paused.memory, destination, advance, zeros, copy_workers())
    clock.mark("copy")
    paused.resume()
    clock.mark("resume")
    log.debug("pause: %s", clock)
    if output.staged:
        regions = file_regions(plan, writer.data_start, zeros, inside=False)
        output.write_staged(regions, advance)
        if advance:    # the never-touched memory is not written again
            advance(max(0, plan.total_bytes - sum(length for _, length in regions)))
    return writer.finish(), writer.copied_pieces()


class PauseClock:
    """Where the pause went, step by step, for the debug log (-v)."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._steps: list[tuple[str, float]] = []

    def mark(self, step: str) -> None:
        now = time.monotonic()
        self._steps.append((step, now - self._last))
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{step} {seconds * 1000:.1f} ms" for step, seconds in self._steps)
