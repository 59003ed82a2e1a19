"""Plain records shared by the plan and the engines. Imports nothing of the project."""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field

# Seconds a pause may take before a thread that will not stop fails it (PauseFailedError).
DEFAULT_PAUSE_TIMEOUT = 1.0

PAGE_SIZE = 4096


class DumpMode(enum.Enum):
    MINI = "mini"
    HEAP = "heap"
    FULL = "full"


class RangeKind(enum.Enum):
    """Why a range is in the dump. The plan tags every range with one."""

    MAPPING = "mapping"                # full mode: a whole readable mapping
    STACK = "stack"
    CODE_AROUND_IP = "code-around-ip"
    MODULE_HEADER = "module-header"    # ELF header, PT_DYNAMIC, PT_NOTE, eh_frame pages
    LINK_MAP = "link-map"              # r_debug and the dynamic linker's link_map chain
    THREAD_LIBRARY = "thread-library"  # ld.so's and libc's data, thread descriptors: for libthread_db
    VDSO = "vdso"
    RUNTIME_DATA = "runtime-data"      # libcoreclr's writable data and bss
    PE_HEADER = "pe-header"            # first page of a managed assembly image
    MODULE_METADATA = "module-metadata"  # a managed assembly's metadata: type and member names
    READY_TO_RUN = "ready-to-run"      # a ReadyToRun image's tables: code ranges, entry points, types
    GC_HEAP = "gc-heap"
    HANDLE_TABLE = "handle-table"
    LOADER_HEAP = "loader-heap"
    CODE_HEAP = "code-heap"            # JIT code heaps
    STUB_HEAP = "stub-heap"            # stub and precode heaps
    GC_BOOKKEEPING = "gc-bookkeeping"
    DAC_READ = "dac-read"              # what the runtime's DAC read while ClrMD walked the process
    DAC_ENUM = "dac-enum"              # what the DAC's EnumMemoryRegions reported or read to find it
    DIAG_INFO = "diag-info"            # the synthetic page that tells readers where the runtime is


@dataclass(frozen=True, order=True)
class MemoryRange:
    start: int
    end: int
    kind: RangeKind = field(default=RangeKind.MAPPING, compare=False)

    @property
    def size(self) -> int:
        return self.end - self.start

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"range end {self.end:#x} is before its start {self.start:#x}")


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str          # e.g. "r-xp"
    offset: int
    inode: int
    path: str           # "" for anonymous, "[stack]", "/usr/lib/x.so", ...

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def is_file(self) -> bool:
        return self.path.startswith("/") and self.inode != 0

    @property
    def private_anonymous(self) -> bool:
        """Private memory backed by no file: a page never touched there reads as zeros."""
        return (self.perms[3] == "p" and self.inode == 0
                and (not self.path or self.path in ("[heap]", "[stack]") or self.path.startswith("[anon:")))


class MappingIndex:
    """Finds the mapping that holds an address, in logarithmic time."""

    def __init__(self, mappings: list[Mapping]) -> None:
        self._mappings = sorted(mappings, key=lambda m: m.start)
        self._starts = [m.start for m in self._mappings]

    def at(self, address: int) -> Mapping | None:
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0 and address < self._mappings[index].end:
            return self._mappings[index]
        return None


@dataclass(frozen=True)
class ThreadState:
    """One paused thread: raw register sets as the kernel gave them (x86-64 layouts)."""

    tid: int
    prstatus_regs: bytes          # user_regs_struct
    fpregs: bytes                 # user_fpregs_struct (NT_FPREGSET)
    xstate: bytes | None          # NT_X86_XSTATE, where present
    pending_signal: int = 0       # delivered again when the thread resumes
    instruction_pointer: int = 0
    stack_pointer: int = 0
    namespace_tid: int = 0        # its id in the target's own pid namespace; 0: the same as tid

    @property
    def target_tid(self) -> int:
        """The id the target (and its CLR) knows this thread by: the one a dump must carry."""
        return self.namespace_tid or self.tid


@dataclass(frozen=True)
class NamespaceIds:
    """The target's ids inside its own pid namespace, where that is not the dumper's.
    0 where the process named is outside that namespace (a container's init has ppid 0)."""

    pid: int
    ppid: int
    pgrp: int
    sid: int


@dataclass(frozen=True)
class ProcessSnapshot:
    """What the engine gathered while the target was paused."""

    pid: int
    name: str
    cmdline: list[str]
    uid: int
    gid: int
    ppid: int
    pgrp: int
    sid: int
    state: str
    nice: int
    threads: list[ThreadState]
    mappings: list[Mapping]
    auxv: bytes
    namespace: NamespaceIds | None = None   # None: the target shares the dumper's pid namespace

    @property
    def target_ids(self) -> NamespaceIds:
        """pid, ppid, pgrp and sid as the target sees them: what the dump's notes carry."""
        return self.namespace or NamespaceIds(self.pid, self.ppid, self.pgrp, self.sid)


@dataclass(frozen=True)
class SyntheticRange:
    """Memory that is not in the target but written into the dump, for readers to find."""

    address: int
    contents: bytes
    kind: RangeKind


@dataclass(frozen=True)
class DumpPlan:
    mode: DumpMode
    ranges: list[MemoryRange]          # sorted, page-aligned, non-overlapping
    synthetic: list[SyntheticRange] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(r.size for r in self.ranges)

    def bytes_by_kind(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for r in self.ranges:
            totals[r.kind.value] = totals.get(r.kind.value, 0) + r.size
        for page in self.synthetic:
            totals[page.kind.value] = totals.get(page.kind.value, 0) + len(page.contents)
        return totals
