"""write_dump(): resolve -> pause -> snapshot -> ask the CLR -> plan -> write -> resume.

The target is resumed on every path, and the output appears under its name only when complete.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

from minidumper.errors import MinidumperError, NotDotnetError, RuntimeBridgeError
from minidumper.model import DumpMode, DumpPlan, ProcessSnapshot
from minidumper.output import OutputFile
from minidumper.plan import modes, native, select

log = logging.getLogger(__name__)


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
        raise MinidumperError("the Windows engine is not wired to write_dump yet")
    return _write_linux_core(pid, path, mode, progress)


def _write_linux_core(pid: int, path: str, mode: DumpMode,
                      progress: DumpProgress | None) -> DumpResult:
    from minidumper import targets
    from minidumper.engines.linux import procfs
    from minidumper.engines.linux.core_writer import CoreWriter
    from minidumper.engines.linux.session import PausedProcess, capture_budget_bytes

    started = time.monotonic()
    targets.describe(pid)
    depth = modes.clr_depth(mode)
    bridge = _load_bridge(pid, procfs.read_maps(pid)) if depth else None

    with OutputFile(path) as output:
        with PausedProcess(pid) as paused:
            snapshot = paused.snapshot()
            clr_ranges = _read_clr(bridge, snapshot, depth) if bridge else []
            plan = select.select(snapshot, mode, paused.memory.read, clr_ranges)
            log.debug("plan: %d ranges, %d bytes: %s", len(plan.ranges), plan.total_bytes,
                      plan.bytes_by_kind())
            if plan.total_bytes <= capture_budget_bytes():
                pieces = paused.capture(plan.ranges)
                paused.resume()
            else:
                log.debug("plan is larger than the memory budget: writing while paused")
                pieces = paused.stream(plan.ranges)
            if progress:
                progress.start(plan.total_bytes)
            size = CoreWriter(output, snapshot, plan).write(
                pieces, progress.advance if progress else None)
        output.commit()
    return _result(output.path, snapshot, plan, size, paused.paused_seconds, started)


def _result(path: str, snapshot: ProcessSnapshot, plan: DumpPlan, size: int,
            paused_seconds: float, started: float) -> DumpResult:
    return DumpResult(path=path, pid=snapshot.pid, mode=plan.mode, bytes_written=size,
                      threads=len(snapshot.threads), ranges_by_kind=plan.bytes_by_kind(),
                      paused_seconds=paused_seconds, total_seconds=time.monotonic() - started)


def _load_bridge(pid: int, mappings: list) -> object:
    """Starts .NET in this process before the target is paused, so the pause stays short."""
    if not any(native.is_runtime_module(m.path) for m in mappings):
        raise NotDotnetError(f"process {pid} is not a .NET process (no libcoreclr.so is loaded)")
    try:
        import clrmd_bridge
        clrmd_bridge.load()
    except ImportError as error:
        raise RuntimeBridgeError(f"the CLR bridge is not available: {error}") from error
    except Exception as error:
        raise RuntimeBridgeError(f"cannot start the CLR bridge: {error}") from error
    return clrmd_bridge


def _read_clr(bridge, snapshot: ProcessSnapshot, depth: str) -> list[tuple[int, int, str]]:
    registers = {t.tid: t.prstatus_regs for t in snapshot.threads}
    try:
        readout = bridge.read_clr(snapshot.pid, registers, depth)
    except bridge.NoClrRuntimeError as error:
        raise NotDotnetError(f"process {snapshot.pid} has no CLR the bridge can read: {error}") from error
    except bridge.ClrBridgeError as error:
        raise RuntimeBridgeError(f"reading the CLR failed: {error}") from error
    return [(m.start, m.end, m.kind) for m in readout.memory]
