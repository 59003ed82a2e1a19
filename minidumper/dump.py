"""write_dump(): resolve -> pause -> snapshot -> ask the CLR -> plan -> write -> resume.

The target is resumed on every path, and the output appears under its name only when complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

from minidumper.clr_walk import ClrWalk
from minidumper.errors import (
    MinidumperError, NotDotnetError, RuntimeBridgeError, TargetExitedError, UsageError)
from minidumper.model import DEFAULT_PAUSE_TIMEOUT, PAGE_SIZE, DumpMode, DumpPlan, ProcessSnapshot
from minidumper.output import OutputFile, app_name, open_output
from minidumper.plan import modes, select

log = logging.getLogger(__name__)

OUTPUT_HEADER_ALLOWANCE = 16 << 20   # notes and program headers of a large process fit in this
# Where the plan has no estimate (mini): about what stacks, module headers and the DAC's reads
# take. Copying into file pages populated before the pause is 4x faster than into fresh ones.
SMALL_DUMP_ESTIMATE, SMALL_DUMP_PER_THREAD = 4 << 20, 128 << 10


class DumpProgress(Protocol):
    def start(self, total_bytes: int) -> None: ...
    def advance(self, count: int) -> None: ...


@dataclass
class DumpResult:
    """pid is the process id the dump carries: the target's own, inside its pid namespace (what
    debuggers show); host_pid is the one the dumper knows it by (given with --pid). They
    differ only where the target runs in another pid namespace, such as a container's."""

    path: str | None                  # None where the dump went to a stream
    pid: int
    mode: DumpMode
    bytes_written: int
    threads: int
    ranges_by_kind: dict[str, int] = field(default_factory=dict)
    paused_seconds: float = 0.0
    total_seconds: float = 0.0
    host_pid: int = 0
    dac_path: str | None = None       # the DAC the CLR was read with (heap and mini)
    runtime_version: str | None = None  # the target's .NET runtime, read by minidumper
    warnings: list[str] = field(default_factory=list)   # ClrMD's: what it could not list

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path, "pid": self.pid, "host_pid": self.host_pid or self.pid,
            "dac_path": self.dac_path, "mode": self.mode.value,
            "bytes_written": self.bytes_written, "threads": self.threads,
            "ranges_by_kind": self.ranges_by_kind,
            "paused_seconds": round(self.paused_seconds, 6),
            "total_seconds": round(self.total_seconds, 6),
            "runtime_version": self.runtime_version, "warnings": list(self.warnings),
        }


def write_dump(pid: int, path: object = None, mode: DumpMode | str = DumpMode.HEAP, *,
               progress: DumpProgress | None = None, dac_path: str | None = None,
               pause_timeout: float = DEFAULT_PAUSE_TIMEOUT) -> DumpResult:
    """Writes a dump of process `pid`. Returns what was written.

    path: a file that must not exist; a directory, where the file is named
    core_<name>_<pid>_<YYYYMMDD_HHMMSS>; None for that name in the current directory; "-" or a
    writable binary stream (such as sys.stdout.buffer) for the complete core written to it.
    mode: a DumpMode or its value ("mini", "heap", "full").
    dac_path: the runtime's DAC (libmscordaccore.so, or its directory) for heap and mini dumps,
    where the search of minidumper.dac would not find it.
    pause_timeout: seconds to wait for every thread to stop (Linux); a thread that will not (D
    state, a frozen cgroup) makes the dump fail with PauseFailedError, the target resumed.

    Safe to call from any thread, and many times in one process: the CLR is read in a process
    of its own, ptrace runs on a thread of its own that ends with the pause (so the kernel
    lets go of any thread that stops late), and no signal handler is installed.
    Raises a MinidumperError subclass, each with its exit_code, or TypeError for arguments of
    the wrong type."""
    mode = _dump_mode(mode)
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"pid must be an int, not {type(pid).__name__}")
    if sys.platform == "win32":
        return _write_windows_minidump(pid, path, mode)
    return _write_linux_core(pid, path, mode, progress, dac_path, pause_timeout)


def _dump_mode(mode: object) -> DumpMode:
    if isinstance(mode, DumpMode):
        return mode
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a DumpMode or one of 'mini', 'heap', 'full', "
                        f"not {type(mode).__name__}")
    try:
        return DumpMode(mode.lower())
    except ValueError:
        raise UsageError(f"unknown dump mode {mode!r}: mini, heap or full") from None


def _write_linux_core(pid: int, path: object, mode: DumpMode, progress: DumpProgress | None,
                      dac_path: str | None, pause_timeout: float) -> DumpResult:
    from minidumper import targets

    if platform.machine() != "x86_64":
        raise MinidumperError(f"the Linux engine writes x86-64 cores; this machine is {platform.machine()}")
    started = time.monotonic()
    pid = targets.process_of(pid)
    info = targets.describe(pid)
    output = open_output(path, pid, app_name(info.name, info.cmdline))   # its checks come before .NET's start
    if modes.clr_depth(mode):
        from minidumper.process_limits import ensure_descriptors_for_bridge
        ensure_descriptors_for_bridge()
    # The bridge's process loads .NET while this one reads /proc.
    with ClrWalk(pid) if modes.clr_depth(mode) else contextlib.nullcontext() as clr:
        return _dump_linux(pid, output, mode, progress, clr, started, dac_path, pause_timeout)


def _dump_linux(pid: int, output: OutputFile, mode: DumpMode, progress: DumpProgress | None,
                clr: ClrWalk | None, started: float, dac_path: str | None,
                pause_timeout: float) -> DumpResult:
    from minidumper import targets
    from minidumper.engines.linux.core_writer import CoreWriter, build_notes
    from minidumper.engines.linux.memory import address_of
    from minidumper.engines.linux.session import PausedProcess

    mappings = targets.mappings(pid)
    clr_layout: list[tuple[int, int, str]] = []
    runtime = _target_runtime(pid, mappings) if clr else _runtime_if_any(pid, mappings)
    if clr:
        clr.dac_path = _find_dac(pid, runtime, dac_path)
        # The pause's walk, once before it: a target with no CLR fails unpaused, the walk in the
        # pause finds ClrMD and the DAC warm, and the CLR's heaps size the output.
        clr_layout = clr.warm_up(modes.clr_depth(mode))

    expected = select.expected_bytes(mode, mappings, clr_layout)
    if expected is None and clr:
        expected = SMALL_DUMP_ESTIMATE + SMALL_DUMP_PER_THREAD * targets.thread_count(pid)
    with output:
        done, paused_before = None, 0.0
        if _reserve(output, expected) is not None and clr and clr_layout and _may_walk_after_pause():
            done, paused_before = _copy_then_walk(pid, output, mode, progress, clr, clr_layout,
                                                  pause_timeout)
            if done is None:
                output.reset()
                _reserve(output, expected)
        if done is None:
            done = _walk_in_pause(pid, output, mode, progress, clr, pause_timeout)
        snapshot, plan, size, paused_seconds = done
        output.commit(size)
    paused_seconds += paused_before
    result = _result(output.path if output.name else None, snapshot, plan, size,
                     paused_seconds, started, clr.dac_path if clr else None)
    result.runtime_version = (clr.runtime_version if clr else "") or (runtime.version if runtime else None)
    result.warnings = list(clr.warnings) if clr else []
    return result


_DONE = tuple  # (snapshot, plan, size of the file, seconds the target was paused)
# "1": the CLR is always walked while the target is held (for measuring, and a way out).
WALK_IN_PAUSE_VARIABLE = "MINIDUMPER_WALK_IN_PAUSE"


def _may_walk_after_pause() -> bool:
    return os.environ.get(WALK_IN_PAUSE_VARIABLE) != "1"


def _reserve(output: OutputFile, expected: int | None):
    """Allocates the file's pages before the pause, so that the pause is only the copy;
    populated only where they will stay in memory until then (output.reserve). The mapping, or
    None where the output cannot be mapped."""
    if not expected:
        return None
    return output.reserve(expected + expected // 100 + OUTPUT_HEADER_ALLOWANCE)


def _copy_then_walk(pid: int, output: OutputFile, mode: DumpMode, progress: DumpProgress | None,
                    clr: ClrWalk, clr_layout: list, pause_timeout: float) -> tuple[_DONE | None, float]:
    """The short pause: the memory that the warm-up's walk found is copied into the output, the
    target resumed, and the CLR walked on that copy, never on the running target. None where the
    copy proves short of what the walk needs (the target changed since the warm-up, or /proc
    does not show the output to the bridge): the output is then to be made again. Also returns
    how long the target was paused."""
    from minidumper.engines.linux.core_writer import CoreWriter
    from minidumper.engines.linux.memory import address_of
    from minidumper.engines.linux.session import PausedProcess
    from clrmd_bridge import MemoryCopy

    copy_path = output.path_for_children()
    if copy_path is None:
        log.debug("the bridge cannot open the output: the CLR is walked in the pause")
        return None, 0.0
    with PausedProcess(pid, pause_timeout) as paused:
        clock = _PauseClock()
        snapshot = paused.snapshot()
        clock.mark("snapshot")
        plan = select.select(snapshot, mode, paused.memory.read, clr_layout)
        writer = CoreWriter(output, snapshot, plan)
        clock.mark("plan and notes")
        mapping = output.map(writer.planned_size)
        if mapping is not None:
            if progress:
                progress.start(plan.total_bytes)
            with address_of(mapping) as destination:
                writer.fill(paused.memory, destination, progress.advance if progress else None)
            clock.mark("copy")
        paused.resume()
        clock.mark("resume")
        log.debug("pause: %s", clock)
    if mapping is None:
        return None, paused.paused_seconds
    size = writer.finish()
    started = time.monotonic()
    registers = {t.target_tid: t.prstatus_regs for t in snapshot.threads}
    clr_ranges = clr.walk(registers, modes.clr_depth(mode), MemoryCopy(copy_path, writer.copied_pieces()))
    lacking = select.lacking(plan, snapshot, mode, clr_ranges)
    log.debug("the CLR walked on the copy in %.3f s; it lacked %d pages",
              time.monotonic() - started, sum(r.size for r in lacking) // PAGE_SIZE)
    if lacking:
        log.debug("the copy lacked %s: the CLR is walked again in a second pause",
                  ", ".join(f"{r.start:#x}-{r.end:#x} ({r.kind.value})" for r in lacking[:8]))
        return None, paused.paused_seconds
    return (snapshot, plan, size, paused.paused_seconds), 0.0


def _walk_in_pause(pid: int, output: OutputFile, mode: DumpMode, progress: DumpProgress | None,
                   clr: ClrWalk | None, pause_timeout: float) -> _DONE:
    """The CLR walked while the target is held: the plan is then exact, the pause as long as
    the walk."""
    from minidumper.engines.linux.core_writer import CoreWriter, build_notes
    from minidumper.engines.linux.memory import address_of
    from minidumper.engines.linux.session import PausedProcess

    with PausedProcess(pid, pause_timeout) as paused:
        clock = _PauseClock()
        snapshot = paused.snapshot()
        clock.mark("snapshot")
        if clr:
            # Keyed by the ids the CLR knows its threads by: those of the target's pid namespace.
            clr.start_walk({t.target_tid: t.prstatus_regs for t in snapshot.threads},
                           modes.clr_depth(mode))
        # While the bridge's process walks the CLR, this one plans the rest.
        native_ranges = select.native_part(snapshot, mode, paused.memory.read)
        notes = build_notes(snapshot)
        clock.mark("native plan and notes")
        clr_ranges = clr.finish_walk() if clr else []
        clock.mark("CLR walk")
        plan = select.select(snapshot, mode, paused.memory.read, clr_ranges, native_ranges)
        clock.mark("plan")
        log.debug("plan: %d ranges, %d bytes: %s", len(plan.ranges), plan.total_bytes,
                  plan.bytes_by_kind())
        if progress:
            progress.start(plan.total_bytes)
        advance = progress.advance if progress else None
        writer = CoreWriter(output, snapshot, plan, notes)
        mapping = output.map(writer.planned_size)
        if mapping is not None:
            # The target's memory goes straight into the file's pages: one copy, then resume.
            with address_of(mapping) as destination:
                writer.fill(paused.memory, destination, advance)
            clock.mark("copy")
            paused.resume()
            clock.mark("resume")
            log.debug("pause: %s", clock)
            size = writer.finish()
        else:
            log.debug("the output cannot be mapped: writing while the target is paused")
            size = writer.write(paused.stream(plan.ranges), advance)
    return snapshot, plan, size, paused.paused_seconds


class _PauseClock:
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


def _write_windows_minidump(pid: int, path: str, mode: DumpMode) -> DumpResult:
    """dbghelp pauses and resumes the target itself; the plan hands it the CLR's ranges."""
    from minidumper.engines.windows.engine import write_minidump
    from minidumper.plan import windows as windows_plan

    started = time.monotonic()
    depth = modes.clr_depth(mode)
    clr_ranges: list[tuple[int, int, str]] = []
    if depth and windows_plan.feeds_ranges(mode):
        # No registers to hand over: on Windows ClrMD's own reader has the true thread contexts.
        clr_ranges = _read_clr(_load_bridge(pid), pid, {}, depth)
    plan = select.select_clr_only(mode, clr_ranges)
    with open_output(path, pid, str(pid)) as output:
        written = write_minidump(pid, output.fd, windows_plan.minidump_type(mode), plan.ranges,
                                 windows_plan.include_module_code(mode), lambda: False)
        output.commit(written.bytes_written)
    return DumpResult(path=output.path, pid=pid, mode=mode, bytes_written=written.bytes_written,
                      threads=written.threads, ranges_by_kind=plan.bytes_by_kind(),
                      paused_seconds=written.seconds, total_seconds=time.monotonic() - started)


def _result(path: str, snapshot: ProcessSnapshot, plan: DumpPlan, size: int,
            paused_seconds: float, started: float, dac: str | None) -> DumpResult:
    return DumpResult(path=path, pid=snapshot.target_ids.pid, host_pid=snapshot.pid, mode=plan.mode,
                      bytes_written=size, threads=len(snapshot.threads),
                      ranges_by_kind=plan.bytes_by_kind(), paused_seconds=paused_seconds,
                      total_seconds=time.monotonic() - started, dac_path=dac)


def _target_runtime(pid: int, mappings: list):
    """The target's runtime (libcoreclr, or linked into a single-file app), read from its
    memory before the pause; None where it has none."""
    from minidumper import runtime_files
    from minidumper.engines.linux import procfs
    from minidumper.engines.linux.memory import ProcessMemory

    memory = ProcessMemory(pid)
    try:
        with _exit_explains(pid, OSError):
            return runtime_files.find_runtime(pid, mappings, procfs.read_bytes(pid, "auxv"), memory.read)
    finally:
        memory.close()


def _runtime_if_any(pid: int, mappings: list):
    """For --full, which needs no runtime: its version for the report, where one is found."""
    try:
        return _target_runtime(pid, mappings)
    except TargetExitedError:
        raise
    except Exception as error:   # an odd process is still dumped in full
        log.debug("no runtime version: %s", error)
        return None


@contextlib.contextmanager
def _exit_explains(pid: int, failures):
    """A failure of these kinds while the target is gone is its exit (7), not ours: its files and
    memory vanish with it."""
    from minidumper.engines.linux import procfs

    try:
        yield
    except failures as error:
        if not procfs.alive(pid):
            raise TargetExitedError(f"process {pid} exited") from error
        raise


def _find_dac(pid: int, runtime, dac_path: str | None) -> str:
    """The DAC that matches the target's runtime. No runtime or no DAC: exit 5."""
    from minidumper import dac

    with _exit_explains(pid, (OSError, MinidumperError)):
        if runtime is None:
            raise NotDotnetError(f"process {pid} is not a .NET process (no libcoreclr.so is loaded "
                                 "and no single-file runtime found); --full still dumps any process")
        located = dac.locate(runtime, dac_path)
    log.debug("%s; DAC: %s", runtime.describe(), located)
    return located


def _load_bridge(pid: int) -> object:
    """Windows: .NET in this process (the bridge's own process needs POSIX pipes for now)."""
    try:
        import clrmd_bridge
        clrmd_bridge.load()
    except ImportError as error:
        raise RuntimeBridgeError(f"the CLR bridge is not available: {error}") from error
    except Exception as error:
        raise RuntimeBridgeError(f"cannot start the CLR bridge: {error}") from error
    return clrmd_bridge


def _read_clr(bridge, pid: int, registers: dict[int, bytes], depth: str) -> list[tuple[int, int, str]]:
    try:
        readout = bridge.read_clr(pid, registers, depth)
    except bridge.NoClrRuntimeError as error:
        raise NotDotnetError(f"{error}; --full still dumps any process") from error
    except bridge.ClrBridgeError as error:
        raise RuntimeBridgeError(f"reading the CLR failed: {error}") from error
    return [(m.start, m.end, m.kind) for m in readout.memory]
