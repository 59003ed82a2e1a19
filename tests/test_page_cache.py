"""The recording reader's page cache (clrmd_bridge/Recorder/PageCache.cs) changes nothing a dump
holds: walking a held target with and without it records the same ranges from the same reads,
and the heap and mini dumps written with it read in ClrMD as the live process does.

MINIDUMPER_NO_PAGE_CACHE=1 turns the cache off; the bridge's process reads it when it starts.
"""

from __future__ import annotations

import pytest

import clrmd_bridge
from conftest import clrmd_read, dump
from minidumper.engines.linux.session import PausedProcess


def walker(monkeypatch, cached: bool) -> clrmd_bridge.ClrWalkerProcess:
    with monkeypatch.context() as env:
        if cached:
            env.delenv("MINIDUMPER_NO_PAGE_CACHE", raising=False)
        else:
            env.setenv("MINIDUMPER_NO_PAGE_CACHE", "1")
        process = clrmd_bridge.ClrWalkerProcess()
        process.start()
        process.wait_ready()
    return process


@pytest.mark.parametrize("depth", ["heap", "mini"])
def test_a_walk_with_the_cache_records_what_a_walk_without_it_does(heap_app, monkeypatch, depth):
    with walker(monkeypatch, cached=True) as cached, walker(monkeypatch, cached=False) as direct:
        # Both warm, then both walk the target in one pause: the same memory, read two ways.
        for process in (cached, direct):
            process.read_clr(heap_app.pid, {}, depth, timeout=120)
        with PausedProcess(heap_app.pid) as paused:
            threads = paused.snapshot().threads
            registers = {t.target_tid: t.prstatus_regs for t in threads}
            with_cache = cached.read_clr(heap_app.pid, registers, depth, timeout=120)
            without = direct.read_clr(heap_app.pid, registers, depth, timeout=120)
    heap_app.assert_running()
    assert with_cache.warnings == without.warnings == []
    assert with_cache.threads_walked == without.threads_walked > 0
    assert with_cache.managed_frames == without.managed_frames > 0
    # The DAC asked for the same bytes, and the same pages are recorded, range for range.
    assert with_cache.dac_read_count == without.dac_read_count > 1000
    assert sorted(with_cache.memory) == sorted(without.memory)


def test_dumps_written_with_the_cache_read_as_the_live_process(heap_app, tmp_path, monkeypatch):
    monkeypatch.delenv("MINIDUMPER_NO_PAGE_CACHE", raising=False)
    live = clrmd_read("--pid", str(heap_app.pid))
    for mode in ("heap", "mini"):
        dump(heap_app, tmp_path / f"{mode}.core", mode)
    heap = clrmd_read("--dump", str(tmp_path / "heap.core"))
    mini = clrmd_read("--dump", str(tmp_path / "mini.core"))
    assert heap["errors"] == [] and heap["invalid_object_count"] == 0
    assert heap["object_count"] == live["object_count"] > 10_000
    for key in ("histogram", "roots", "handles", "segments", "threads"):
        assert heap[key] == live[key], key
    assert mini["threads"] == live["threads"]


def test_the_cache_answers_each_read_as_the_target_does(heap_app):
    """In this process: two recording readers over one live reader, with the cache (given
    registers: a held target) and without; pointer reads at mapping starts and ends, across
    8-page blocks and mappings, and past a mapping's end into a hole, read alike; and most
    reads never reach the target."""
    from clrmd_bridge import host

    host.load()
    import System
    from System.Collections.Generic import Dictionary
    from ClrmdBridge import RecordingDataReader, UserRegsStruct
    from Microsoft.Diagnostics.Runtime import DataTarget

    block = 8 * 4096
    with PausedProcess(heap_app.pid) as paused:
        snapshot = paused.snapshot()
        registers = Dictionary[System.UInt32, UserRegsStruct]()
        for thread in snapshot.threads:
            registers[System.UInt32(thread.target_tid)] = UserRegsStruct.FromArray(
                System.Array[System.Byte](thread.prstatus_regs))
        live = DataTarget.AttachToProcess(heap_app.pid, False)
        try:
            cached = RecordingDataReader(live.DataReader, registers, None)
            direct = RecordingDataReader(live.DataReader, Dictionary[System.UInt32, UserRegsStruct](), None)
            addresses = []
            for mapping in snapshot.mappings:
                if not mapping.readable or mapping.path.startswith("[v"):
                    continue
                first_block_end = (mapping.start // block + 1) * block
                addresses += [mapping.start, mapping.start + 8, first_block_end - 4,
                              first_block_end - 8, mapping.end - 8, mapping.end - 4, mapping.end]
            answers = []
            for _ in range(3):   # again and again: the cache's hits
                for address in addresses:
                    a = cached.ReadPointer(System.UInt64(address))
                    b = direct.ReadPointer(System.UInt64(address))
                    answers.append((address, a, b))
            misses, reads = cached.CacheMisses, cached.Reads.ReadCount
            recorded_cached = [(r.Item1, r.Item2) for r in cached.Reads.ToMergedList()]
            recorded_direct = [(r.Item1, r.Item2) for r in direct.Reads.ToMergedList()]
        finally:
            live.Dispose()
    heap_app.assert_running()
    differing = [(hex(a), x, y) for a, x, y in answers if x != y]
    assert differing == []
    assert sum(1 for _, x, _ in answers if x) > len(answers) // 3   # mostly real reads
    assert recorded_cached == recorded_direct
    assert 0 < misses < reads // 2
