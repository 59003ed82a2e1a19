"""write_dump(): resolve -> pause -> snapshot -> ask the CLR -> plan -> write -> resume.

The target is resumed on every path, and the output appears under its name only when complete.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import sys
import time
from dataclasses import dataclass, field

from minidumper import pauses
from minidumper.clr_walk import ClrWalk
from minidumper.errors import (
    MinidumperError, NotDotnetError, RuntimeBridgeError, TargetExitedError, UsageError)
from minidumper.model import DEFAULT_PAUSE_TIMEOUT, DumpMode
from minidumper.output import OutputFile, app_name, open_output
from minidumper.plan import modes, select

log = logging.getLogger(__name__)

# Where the plan has no estimate (mini): about what stacks, module headers and the DAC's reads
# take. Copying into file pages populated before the pause is 4x faster than into fresh ones.
SMALL_DUMP_ESTIMATE, SMALL_DUMP_PER_THREAD = 4 << 20, 128 << 10


DumpProgress = pauses.DumpProgress


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
    mappings = targets.mappings(pid)
    clr_layout: list[tuple[int, int, str]] = []
    known = None
    runtime = _target_runtime(pid, mappings) if clr else _runtime_if_any(pid, mappings)
    if clr:
        clr.dac_path = _find_dac(pid, runtime, dac_path)
        # The pause's walk, once before it: a target with no CLR fails unpaused, the walk in the
        # pause finds ClrMD and the DAC warm, the CLR's heaps size the output, and what it found
        # is what the pause copies (pauses.write_core).
        # A thread that starts after this is one the walk may not know: the pause walks the
        # CLR held for it. So the window opens when the walk can start, not while .NET loads.
        clr.wait_ready()
        thread_ids = set(targets.thread_ids(pid))
        clr_layout = clr.warm_up(modes.clr_depth(mode))
        known = pauses.Knowledge(clr_layout, thread_ids)

    expected = select.expected_bytes(mode, mappings, clr_layout)
    if expected is None and clr:
        expected = SMALL_DUMP_ESTIMATE + SMALL_DUMP_PER_THREAD * targets.thread_count(pid)
    with output:
        written = pauses.write_core(pid, output, mode, progress, clr, known, expected, pause_timeout)
        output.commit(written.size)
    result = _result(output.path if output.name else None, written, started,
                     clr.dac_path if clr else None)
    result.runtime_version = (clr.runtime_version if clr else "") or (runtime.version if runtime else None)
    result.warnings = list(clr.warnings) if clr else []
    return result


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


def _result(path: str, written: pauses.Written, started: float, dac: str | None) -> DumpResult:
    snapshot, plan = written.snapshot, written.plan
    return DumpResult(path=path, pid=snapshot.target_ids.pid, host_pid=snapshot.pid, mode=plan.mode,
                      bytes_written=written.size, threads=len(snapshot.threads),
                      ranges_by_kind=plan.bytes_by_kind(), paused_seconds=written.paused_seconds,
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
