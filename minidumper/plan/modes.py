"""The one table of what each dump mode includes."""

from __future__ import annotations

import enum

from minidumper.model import DumpMode, RangeKind


class Part(enum.Flag):
    ALL_MAPPINGS = enum.auto()      # every readable mapping
    STACKS = enum.auto()
    CODE_AROUND_IP = enum.auto()
    MODULE_HEADERS = enum.auto()    # ELF header, PT_DYNAMIC, PT_NOTE, eh_frame of each module
    LINK_MAP = enum.auto()          # so that gdb finds the shared libraries
    THREAD_LIBRARY = enum.auto()    # so that gdb's libthread_db finds the threads
    VDSO = enum.auto()
    RUNTIME_DATA = enum.auto()      # libcoreclr's data and bss: the runtime's globals and version
    PE_HEADERS = enum.auto()        # first page of each managed assembly image
    DIAG_INFO = enum.auto()         # the page that tells readers where the runtime is
    CLR_STACK_READS = enum.auto()   # what the DAC read to walk every managed stack
    CLR_HEAPS = enum.auto()         # GC heap, handle tables, loader/code/stub heaps, DAC reads


_NATIVE_MINI = (Part.STACKS | Part.CODE_AROUND_IP | Part.MODULE_HEADERS | Part.LINK_MAP
                | Part.THREAD_LIBRARY | Part.VDSO | Part.RUNTIME_DATA | Part.PE_HEADERS | Part.DIAG_INFO)

MODE_PARTS: dict[DumpMode, Part] = {
    DumpMode.FULL: Part.ALL_MAPPINGS | Part.DIAG_INFO,
    DumpMode.MINI: _NATIVE_MINI | Part.CLR_STACK_READS,
    DumpMode.HEAP: _NATIVE_MINI | Part.CLR_STACK_READS | Part.CLR_HEAPS,
}


def clr_depth(mode: DumpMode) -> str | None:
    """How deep the bridge walks the CLR for a mode: None, "mini" or "heap"."""
    parts = MODE_PARTS[mode]
    if Part.CLR_HEAPS in parts:
        return "heap"
    if Part.CLR_STACK_READS in parts:
        return "mini"
    return None


# What the bridge reports (ClrMD's names) and how heap mode tags it; None leaves it out.
# GC free regions hold no objects: a debugger never reads them.
CLR_KINDS: dict[str, RangeKind | None] = {
    "GCSegment": RangeKind.GC_HEAP,
    "NativeHeap:LoaderHeap": RangeKind.LOADER_HEAP,
    "NativeHeap:HighFrequencyHeap": RangeKind.LOADER_HEAP,
    "NativeHeap:LowFrequencyHeap": RangeKind.LOADER_HEAP,
    "NativeHeap:StaticsHeap": RangeKind.LOADER_HEAP,
    "NativeHeap:IndirectionCellHeap": RangeKind.STUB_HEAP,
    "NativeHeap:CacheEntryHeap": RangeKind.STUB_HEAP,
    "NativeHeap:LookupHeap": RangeKind.STUB_HEAP,
    "NativeHeap:DispatchHeap": RangeKind.STUB_HEAP,
    "NativeHeap:ResolveHeap": RangeKind.STUB_HEAP,
    "NativeHeap:VtableHeap": RangeKind.STUB_HEAP,
    "NativeHeap:FixupPrecodeHeap": RangeKind.STUB_HEAP,
    "NativeHeap:NewStubPrecodeHeap": RangeKind.STUB_HEAP,
    "NativeHeap:StubHeap": RangeKind.STUB_HEAP,
    "NativeHeap:InteropHeap": RangeKind.STUB_HEAP,
    "NativeHeap:ExecutableHeap": RangeKind.CODE_HEAP,
    "NativeHeap:LoaderCodeHeap": RangeKind.CODE_HEAP,
    "NativeHeap:HostCodeHeap": RangeKind.CODE_HEAP,
    "JitCodeHeap": RangeKind.CODE_HEAP,
    "NativeHeap:HandleTable": RangeKind.HANDLE_TABLE,
    "NativeHeap:GCBookkeeping": RangeKind.GC_BOOKKEEPING,
    "NativeHeap:GCFreeRegion": None,
    "NativeHeap:GCFreeGlobalHugeRegion": None,
    "NativeHeap:GCFreeGlobalRegion": None,
    "NativeHeap:GCFreeSohSegment": None,
    "NativeHeap:GCFreeUohSegment": None,
    "ModuleImage": None,            # module code stays out; the DAC's reads of it come in below
    "ModuleMetadata": RangeKind.MODULE_METADATA,
    "ReadyToRunSection": RangeKind.READY_TO_RUN,
    "DacRead": RangeKind.DAC_READ,
    "DacReadMissed": RangeKind.DAC_READ,            # what a walk of a copy read that it lacked
    "DacEnumMemory": RangeKind.DAC_ENUM,
    "DacReadOfLoadedMethods": RangeKind.DAC_READ,   # found before the pause, heap mode only
}
# A kind the table does not know is still the CLR's own memory: heap mode keeps it.
UNKNOWN_CLR_KIND = RangeKind.LOADER_HEAP


def clr_range_kind(clr_kind: str, mode: DumpMode) -> RangeKind | None:
    """The kind a CLR range is written as in this mode, or None to leave it out."""
    parts = MODE_PARTS[mode]
    if clr_kind in ("DacRead", "DacReadMissed", "DacEnumMemory"):
        return CLR_KINDS[clr_kind] if Part.CLR_STACK_READS in parts else None
    if Part.CLR_HEAPS not in parts:
        return None
    family = clr_kind.split(":")[0] if clr_kind.startswith("GCSegment") else clr_kind
    if family in CLR_KINDS:
        return CLR_KINDS[family]
    return UNKNOWN_CLR_KIND
