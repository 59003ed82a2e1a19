"""What each mode means on Windows: the dbghelp flags and the rest the plan decides."""

from __future__ import annotations

import os

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


def test_write_dump_on_windows_hands_the_engine_the_clr_ranges(tmp_path, monkeypatch) -> None:
    """The Windows path of write_dump, with the engine and the bridge replaced by recorders."""
    from minidumper import dump
    from minidumper.engines.windows import engine

    class FakeBridge:
        class NoClrRuntimeError(Exception):
            pass

        class ClrBridgeError(Exception):
            pass

        class Readout:
            memory = [type("M", (), {"start": 0x10000, "end": 0x12000, "kind": "GCSegment:Generation0"}),
                      type("M", (), {"start": 0x20000, "end": 0x30000, "kind": "NativeHeap:GCFreeRegion"}),
                      type("M", (), {"start": 0x40000, "end": 0x40001, "kind": "DacRead"})]

        @staticmethod
        def read_clr(pid, registers, depth):
            calls.append(("read_clr", pid, registers, depth))
            return FakeBridge.Readout()

    calls = []

    def fake_write_minidump(pid, output, dump_type, ranges, include_module_code, cancel_requested):
        calls.append(("write", pid, dump_type, ranges, include_module_code))
        os.write(output, b"MDMP")
        return engine.WindowsDumpResult(bytes_written=4, threads=3, seconds=0.01)

    monkeypatch.setattr(dump, "_load_bridge", lambda pid: FakeBridge)
    monkeypatch.setattr(engine, "write_minidump", fake_write_minidump)
    out = tmp_path / "app.dmp"
    result = dump._write_windows_minidump(4242, str(out), DumpMode.HEAP)

    assert calls[0] == ("read_clr", 4242, {}, "heap")
    _, pid, dump_type, ranges, include_code = calls[1]
    assert pid == 4242 and dump_type == windows.minidump_type(DumpMode.HEAP) and not include_code
    # GC free regions stay out; ranges are page-aligned and tagged as the plan tags them.
    assert [(r.start, r.end, r.kind.value) for r in ranges] == [
        (0x10000, 0x12000, "gc-heap"), (0x40000, 0x41000, "dac-read")]
    assert out.read_bytes() == b"MDMP" and result.bytes_written == 4 and result.threads == 3
