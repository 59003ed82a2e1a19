"""Ask ClrMD, inside this process, what memory the CLR of a live target owns and reads.

The walk itself runs in C# (clrmd_bridge/Recorder, ``ClrmdBridge.ClrMemoryWalker``): one call
across pythonnet instead of one per object. The names here are ClrMD's.
"""

from __future__ import annotations

import array
import base64
import logging
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from . import host
from .errors import ClrReadError, NoClrRuntimeError

log = logging.getLogger(__name__)

DEPTHS = ("mini", "heap", "layout")
THREADS_DEPTH_PREFIX = "threads:"
USER_REGS_SIZE = 27 * 8     # struct user_regs_struct on x86-64 Linux, as NT_PRSTATUS holds it

# Kind names of ClrMemory, in ClrMD's vocabulary.
GC_SEGMENT_PREFIX = "GCSegment:"     # + GCSegmentKind: Generation0..2, Large, Pinned, Frozen, Ephemeral
NATIVE_HEAP_PREFIX = "NativeHeap:"   # + NativeHeapKind: LoaderCodeHeap, HandleTable, GCFreeRegion, ...
JIT_CODE_HEAP = "JitCodeHeap"        # the JIT managers' code heaps
MODULE_IMAGE = "ModuleImage"         # a managed module's image (ImageBase, Size): informational
DAC_READ = "DacRead"                 # pages that ClrMD and the DAC read during the walk
DAC_READ_MISSED = "DacReadMissed"    # pages a walk of a copy asked for and the copy lacked


class ClrMemory(NamedTuple):
    """One range of the target's memory, [start, end), and why ClrMD knows of it."""

    start: int
    end: int
    kind: str

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class ClrReadout:
    runtime_base: int                 # load address of libcoreclr.so
    runtime_version: str
    memory: list[ClrMemory]
    threads_walked: int
    managed_frames: int = 0           # frames with a managed method, over all threads walked
    dac_read_count: int = 0           # reads that succeeded, before merging into pages
    warnings: list[str] = field(default_factory=list)   # listers that failed; the rest went on

    def of_kind(self, kind: str) -> list[ClrMemory]:
        """The ranges of one kind, or of every kind that starts with a prefix such as "GCSegment:"."""
        if kind.endswith(":"):
            return [m for m in self.memory if m.kind.startswith(kind)]
        return [m for m in self.memory if m.kind == kind]


DAC_NAME = "libmscordaccore.so"
RUNTIME_NAME = "libcoreclr.so"


def dac_beside_runtime(pid: int) -> str | None:
    """libmscordaccore.so beside the target's libcoreclr.so, through /proc/PID/root: in a
    container the same path may name another file here, or none. None where the runtime is not a
    separate library (a single-file app) or has no DAC beside it."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            runtime = next((line.split(maxsplit=5)[5].strip() for line in maps
                            if line.rstrip().endswith("/" + RUNTIME_NAME)), None)
    except OSError:
        return None
    if runtime is None:
        return None
    beside = os.path.join(os.path.dirname(runtime), DAC_NAME)
    for candidate in (f"/proc/{pid}/root{beside}", beside):
        if os.path.isfile(candidate):
            return candidate
    return None


@dataclass(frozen=True)
class MemoryCopy:
    """A copy of the target's memory taken in a pause, in a file (the dump being written):
    pieces are (address, file offset, size), sorted by address."""

    path: str
    pieces: list[tuple[int, int, int]]


def threads_depth(thread_ids) -> str:
    """The depth that walks only these threads' stacks (the ids the CLR knows them by)."""
    return THREADS_DEPTH_PREFIX + ",".join(str(tid) for tid in sorted(thread_ids))


def _valid_depth(depth: str) -> bool:
    if depth in DEPTHS:
        return True
    ids = depth.removeprefix(THREADS_DEPTH_PREFIX)
    return ids != depth and all(tid.isdigit() for tid in ids.split(",") if tid)


def read_clr(pid: int, thread_registers: dict[int, bytes], depth: str, *,
             dac_path: str | None = None, copy: MemoryCopy | None = None) -> ClrReadout:
    """Walk the CLR of a live process, which may be held stopped by our PTRACE_SEIZE.

    ``thread_registers`` maps each thread id to its raw x86-64 ``user_regs_struct`` (NT_PRSTATUS),
    which the DAC gets as the thread's context. ``depth`` is "mini" (managed stacks), "heap"
    (stacks, plus GC segments, native heaps, handles, roots, every object's type) or "layout"
    (GC segments and native heaps only: quick, and safe on a target nobody holds); or
    threads_depth(ids): those threads' stacks and what the DAC says a minidump needs.
    ``dac_path`` is the runtime's libmscordaccore.so for the target's exact runtime version;
    None takes the one beside the target's libcoreclr.so. Nothing is ever downloaded.
    ``copy``: the walk reads this copy of the target's memory instead of the target (which may
    run again); the pages it lacked come back as DAC_READ_MISSED ranges.
    """
    if not _valid_depth(depth):
        raise ValueError(f"depth must be one of {DEPTHS} or threads_depth(ids), not {depth!r}")
    for tid, regs in thread_registers.items():
        if len(regs) != USER_REGS_SIZE:
            raise ValueError(f"registers of thread {tid} are {len(regs)} bytes, not {USER_REGS_SIZE}")

    if dac_path is None and os.name != "nt":
        dac_path = dac_beside_runtime(pid)
    host.load()
    import System  # these modules exist only once .NET is loaded
    from ClrmdBridge import ClrMemoryWalker, NoClrRuntimeException

    started = time.perf_counter()
    tids = _to_net_array(System, System.UInt32, array.array("I", thread_registers).tobytes())
    regs = _to_net_array(System, System.Byte, b"".join(thread_registers.values()))
    pieces = array.array("Q", [n for piece in copy.pieces for n in piece] if copy else [])
    copy_pieces = _to_net_array(System, System.UInt64, pieces.tobytes())
    try:
        result = ClrMemoryWalker.Read(pid, tids, regs, depth, dac_path or "",
                                      copy.path if copy else "", copy_pieces)
    except NoClrRuntimeException as e:
        raise NoClrRuntimeError(str(e.Message)) from None
    except System.Exception as e:
        raise ClrReadError(f"ClrMD could not read process {pid}: {e.GetType().Name}: {e.Message}") from None

    kinds = list(result.KindNames)
    flat = _from_net_array(System, result.Ranges, "Q")
    memory = [ClrMemory(flat[i], flat[i + 1], kinds[flat[i + 2]]) for i in range(0, len(flat), 3)]
    readout = ClrReadout(
        runtime_base=result.RuntimeBase,
        runtime_version=str(result.RuntimeVersion),
        memory=memory,
        threads_walked=result.ThreadsWalked,
        managed_frames=result.ManagedFrames,
        dac_read_count=result.DacReadCount,
        warnings=[str(w) for w in result.Warnings],
    )
    for warning in readout.warnings:
        log.warning("ClrMD: %s", warning)
    log.debug("read_clr(%d, %s): %d ranges, %d threads, %.3f s (walk %.3f s)", pid, depth, len(memory),
              readout.threads_walked, time.perf_counter() - started, result.WalkSeconds)
    return readout


# pythonnet converts arrays element by element (about half a microsecond each: 0.1 s for the
# registers of 1000 threads, inside the pause). Base64 crosses as one string instead.

def _to_net_array(System, element_type, data: bytes):
    raw = System.Convert.FromBase64String(base64.b64encode(data).decode("ascii"))
    if element_type == System.Byte:
        return raw
    result = System.Array.CreateInstance(element_type, len(data) // System.Runtime.InteropServices.Marshal.SizeOf(element_type))
    System.Buffer.BlockCopy(raw, 0, result, 0, len(data))
    return result


def _from_net_array(System, values, typecode: str) -> list[int]:
    count = System.Buffer.ByteLength(values)
    raw = System.Array.CreateInstance(System.Byte, count)
    System.Buffer.BlockCopy(values, 0, raw, 0, count)
    numbers = array.array(typecode)
    numbers.frombytes(base64.b64decode(str(System.Convert.ToBase64String(raw))))
    return numbers.tolist()
