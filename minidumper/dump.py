"""write_dump(): resolve -> pause -> snapshot -> ask the CLR -> plan -> write -> resume.

The target is resumed on every path, and the output appears under its name only when complete.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

from minidumper.clr_walk import ClrWalk
from minidumper.errors import MinidumperError, NotDotnetError, RuntimeBridgeError
from minidumper.model import DumpMode, DumpPlan, ProcessSnapshot
from minidumper.output import OutputFile
from minidumper.plan import modes, native, select

log = logging.getLogger(__name__)

OUTPUT_HEADER_ALLOWANCE = 16 << 20   # notes and program headers of a large process fit in this


class DumpProgress(Protocol):
    def start(self, total_bytes: int) -> None: ...
    def advance(self, count: int) -> None: ...


@dataclass
class DumpResult:
    path: str
    pid: int
    mode: DumpMode
    bytes_written: int
    threads: int
    ranges_by_kind: dict[str, int] = field(default_factory=dict)
    paused_seconds: float = 0.0
    total_seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path, "pid": self.pid, "mode": self.mode.value,
            "bytes_written": self.bytes_written, "threads": self.threads,
            "ranges_by_kind": self.ranges_by_kind,
            "paused_seconds": round(self.paused_seconds, 6),
            "total_seconds": round(self.total_seconds, 6),
        }


def write_dump(pid: int, path: str, mode: DumpMode = DumpMode.HEAP, *,
               progress: DumpProgress | None = None) -> DumpResult:
    """Writes a dump of process `pid` to `path` (which must not exist). Returns what was written."""
    if sys.platform == "win32":
        return _write_windows_minidump(pid, path, mode)
    return _write_linux_core(pid, path, mode, progress)


def _write_linux_core(pid: int, path: str, mode: DumpMode,
                      progress: DumpProgress | None) -> DumpResult:
    from minidumper import targets

    if platform.machine() != "x86_64":
        raise MinidumperError(f"the Linux engine writes x86-64 cores; this machine is {platform.machine()}")
    started = time.monotonic()
    targets.describe(pid)
    # The bridge's process loads .NET while this one reads /proc.
    with ClrWalk(pid) if modes.clr_depth(mode) else contextlib.nullcontext() as clr:
        return _dump_linux(pid, path, mode, progress, clr, started)


def _dump_linux(pid: int, path: str, mode: DumpMode, progress: DumpProgress | None,
                clr: ClrWalk | None, started: float) -> DumpResult:
    from minidumper import targets
    from minidumper.engines.linux import procfs
    from minidumper.engines.linux.core_writer import CoreWriter
    from minidumper.engines.linux.session import PausedProcess

    mappings = targets.mappings(pid)
    clr_layout: list[tuple[int, int, str]] = []
    if clr:
        if not _looks_like_dotnet(pid, mappings):
            raise NotDotnetError(f"process {pid} is not a .NET process (no libcoreclr.so is loaded)")
        # Also for mini: a target with no CLR fails before its pause, and ClrMD and the DAC are
        # loaded and warm, so the walk in the pause is quick.
        clr_layout = clr.layout()

    expected = select.expected_bytes(mode, mappings, clr_layout)
    with OutputFile(path) as output:
        if expected:
            # Allocate the file's pages before the pause, so that the pause is only the copy;
            # not where they would not stay in memory until then.
            output.map(expected + expected // 100 + OUTPUT_HEADER_ALLOWANCE,
                       populate=expected <= procfs.memory_available() // 2)
        with PausedProcess(pid) as paused:
            snapshot = paused.snapshot()
            clr_ranges = (clr.walk({t.tid: t.prstatus_regs for t in snapshot.threads},
                                   modes.clr_depth(mode)) if clr else [])
            plan = select.select(snapshot, mode, paused.memory.read, clr_ranges)
            log.debug("plan: %d ranges, %d bytes: %s", len(plan.ranges), plan.total_bytes,
                      plan.bytes_by_kind())
            if progress:
                progress.start(plan.total_bytes)
            advance = progress.advance if progress else None
            writer = CoreWriter(output, snapshot, plan)
            mapping = output.map(writer.planned_size)
            if mapping is not None:
                # The target's memory goes straight into the file's pages: one copy, then resume.
                with memoryview(mapping) as destination:
                    writer.fill(paused.memory, destination, advance)
                paused.resume()
                size = writer.finish()
            else:
                log.debug("the output cannot be mapped: writing while the target is paused")
                size = writer.write(paused.stream(plan.ranges), advance)
        output.commit(size)
    return _result(output.path, snapshot, plan, size, paused.paused_seconds, started)


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
    with OutputFile(path) as output:
        written = write_minidump(pid, output.fd, windows_plan.minidump_type(mode), plan.ranges,
                                 windows_plan.include_module_code(mode), lambda: False)
        output.commit(written.bytes_written)
    return DumpResult(path=output.path, pid=pid, mode=mode, bytes_written=written.bytes_written,
                      threads=written.threads, ranges_by_kind=plan.bytes_by_kind(),
                      paused_seconds=written.seconds, total_seconds=time.monotonic() - started)


def _result(path: str, snapshot: ProcessSnapshot, plan: DumpPlan, size: int,
            paused_seconds: float, started: float) -> DumpResult:
    return DumpResult(path=path, pid=snapshot.pid, mode=plan.mode, bytes_written=size,
                      threads=len(snapshot.threads), ranges_by_kind=plan.bytes_by_kind(),
                      paused_seconds=paused_seconds, total_seconds=time.monotonic() - started)


def _looks_like_dotnet(pid: int, mappings: list) -> bool:
    """libcoreclr is mapped, or (single-file apps link it in) the runtime's diagnostics socket
    exists. The bridge has the last word; this only spares a plain native process the pause."""
    if any(native.is_runtime_module(m.path) for m in mappings):
        return True
    socket_dir = os.environ.get("TMPDIR", "/tmp")
    return bool(glob.glob(os.path.join(socket_dir, f"dotnet-diagnostic-{pid}-*-socket")))


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
