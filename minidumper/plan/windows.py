"""What each dump mode means on Windows: the one table of dbghelp flags, and the rest the plan decides there.

The Windows engine writes what MiniDumpWriteDump writes for the flags chosen here, plus the ranges
it is given, one per MemoryCallback. So:
- full: every committed page (MiniDumpWithFullMemory); the ranges are not needed.
- mini: threads with their stacks and contexts, the module list and headers, and the modules'
  data segments, which hold the runtime's globals that a debugger reads to walk managed stacks
  (createdump's own Windows mini dump does the same). Plus the plan's mini ranges.
- heap: mini's flags; the CLR's memory (GC heap, handle tables, loader, code and stub heaps,
  what the DAC read) comes only from the plan's ranges, through the callback. Native heaps and
  module code stay out, which is where heap beats a MiniDumpWithPrivateReadWriteMemory dump.
"""

from __future__ import annotations

from minidumper.engines.windows.consts import MINIDUMP_TYPE as T
from minidumper.model import DumpMode

# In every mode: a page that cannot be read leaves a hole instead of failing the whole dump;
# the memory-info list lets a reader tell "not captured" from "not mapped".
_ALWAYS = (T.MiniDumpWithFullMemoryInfo
           | T.MiniDumpWithThreadInfo
           | T.MiniDumpWithHandleData
           | T.MiniDumpWithUnloadedModules
           | T.MiniDumpIgnoreInaccessibleMemory)

_MINI = (_ALWAYS
         | T.MiniDumpWithDataSegs
         | T.MiniDumpWithModuleHeaders)

MINIDUMP_TYPES: dict[DumpMode, T] = {
    DumpMode.FULL: _ALWAYS | T.MiniDumpWithFullMemory,
    DumpMode.MINI: _MINI,
    DumpMode.HEAP: _MINI,   # the heap itself arrives through MemoryCallback
}


def minidump_type(mode: DumpMode) -> int:
    """The MINIDUMP_TYPE flags for MiniDumpWriteDump in this mode."""
    return int(MINIDUMP_TYPES[mode])


def include_module_code(mode: DumpMode) -> bool:
    """Whether modules' code pages go in. Only full takes them: readers load code from the files."""
    return mode is DumpMode.FULL


def feeds_ranges(mode: DumpMode) -> bool:
    """Whether the plan's ranges reach the dump. Under MiniDumpWithFullMemory dbghelp never asks."""
    return not (MINIDUMP_TYPES[mode] & T.MiniDumpWithFullMemory)
