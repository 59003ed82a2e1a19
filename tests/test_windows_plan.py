"""What each mode means on Windows: the dbghelp flags and the rest the plan decides."""

from __future__ import annotations

from minidumper.engines.windows.consts import MINIDUMP_TYPE as T
from minidumper.engines.windows.consts import MiniDumpValidTypeFlags
from minidumper.model import DumpMode
from minidumper.plan import windows


def test_full_takes_all_memory_and_memory_info() -> None:
    flags = windows.minidump_type(DumpMode.FULL)
    for flag in (T.MiniDumpWithFullMemory, T.MiniDumpWithFullMemoryInfo, T.MiniDumpWithHandleData,
                 T.MiniDumpWithThreadInfo, T.MiniDumpWithUnloadedModules):
        assert flags & flag, flag.name


def test_mini_takes_threads_stacks_and_module_headers_but_no_bulk_memory() -> None:
    flags = windows.minidump_type(DumpMode.MINI)
    assert flags & T.MiniDumpWithModuleHeaders
    assert flags & T.MiniDumpWithThreadInfo
    for bulk in (T.MiniDumpWithFullMemory, T.MiniDumpWithPrivateReadWriteMemory, T.MiniDumpWithCodeSegs,
                 T.MiniDumpWithIndirectlyReferencedMemory, T.MiniDumpScanMemory):
        assert not flags & bulk, bulk.name


def test_heap_is_mini_plus_the_ranges_through_the_callback() -> None:
    assert windows.minidump_type(DumpMode.HEAP) == windows.minidump_type(DumpMode.MINI)
    assert windows.feeds_ranges(DumpMode.HEAP)
    assert windows.feeds_ranges(DumpMode.MINI)
    assert not windows.feeds_ranges(DumpMode.FULL)   # dbghelp never calls MemoryCallback then


def test_module_code_only_in_full() -> None:
    assert windows.include_module_code(DumpMode.FULL)
    assert not windows.include_module_code(DumpMode.MINI)
    assert not windows.include_module_code(DumpMode.HEAP)


def test_every_mode_has_valid_flags_and_tolerates_unreadable_pages() -> None:
    for mode in DumpMode:
        flags = windows.minidump_type(mode)
        assert isinstance(flags, int) and flags & ~MiniDumpValidTypeFlags == 0
        assert flags & T.MiniDumpIgnoreInaccessibleMemory
