"""The short pause: the memory the walk before the pause found is copied, the target resumed, and
the CLR walked on the copy. A dump made so reads as one with the CLR walked in the pause; a copy
short of what the walk needs is made again."""

from __future__ import annotations

import json
import logging
import os

import pytest

from conftest import clrmd_read, run_minidumper

FOUND = ("object_count", "histogram", "roots", "handles", "segments", "threads", "version_string")


def _dump(app, path, mode, **environment):
    env = {**os.environ, **environment}
    result = run_minidumper("--pid", str(app.pid), "-f", str(path), f"--{mode}", "--json", "-v",
                            env=env)
    assert result.returncode == 0, result.stderr
    app.assert_running()
    return json.loads(result.stdout), result.stderr


def test_a_walk_after_the_pause_reads_as_a_walk_in_it(heap_app, tmp_path):
    after, after_log = _dump(heap_app, tmp_path / "after.core", "heap")
    held, held_log = _dump(heap_app, tmp_path / "held.core", "heap", MINIDUMPER_WALK_IN_PAUSE="1")
    assert "walked on the copy" in after_log and "lacked 0 pages" in after_log, after_log
    assert "walked on the copy" not in held_log and "CLR walk" in held_log, held_log
    copy, walked = clrmd_read("--dump", str(tmp_path / "after.core")), clrmd_read("--dump", str(tmp_path / "held.core"))
    assert copy["errors"] == [] and copy["invalid_object_count"] == 0
    assert copy["object_count"] > 10_000
    for name in FOUND:
        assert copy[name] == walked[name], name
    assert after["mode"] == held["mode"] == "heap"


def test_a_copy_short_of_what_the_walk_needs_is_made_again(heap_app, tmp_path):
    # A warm-up that reads the CLR's heaps only finds none of the pages the stack walk reads:
    # the first copy of a mini dump lacks them, the second has what the first walk found.
    report, log = _dump(heap_app, tmp_path / "mini.core", "mini", MINIDUMPER_WARM_UP_DEPTH="layout")
    assert "paused again" in log and log.count("walked on the copy") == 2, log
    assert log.count("lacked 0 pages") == 1, log
    live = clrmd_read("--pid", str(heap_app.pid))
    mini = clrmd_read("--dump", str(tmp_path / "mini.core"))
    assert mini["threads"] == live["threads"]
    assert report["ranges_by_kind"]["dac-read"] > 0


def test_a_plan_prepared_before_the_pause_is_the_plan_made_in_it(heap_app):
    from minidumper.engines.linux import procfs
    from minidumper.engines.linux.session import PausedProcess
    from minidumper.model import DumpMode, RangeKind
    from minidumper.plan import select

    # The CLR's ranges as a walk reports them, overlapping each other, the threads' stacks and
    # the modules' headers: DAC reads and enumerations, GC and loader heaps.
    with PausedProcess(heap_app.pid) as paused:
        snapshot = paused.snapshot()
        clr_ranges = []
        for number, mapping in enumerate(m for m in snapshot.mappings if m.readable):
            kind = ("DacRead", "DacEnumMemory", "GCSegment", "NativeHeap:LoaderHeap")[number % 4]
            clr_ranges.append((mapping.start, min(mapping.end, mapping.start + 3 * 4096), kind))
        for thread in snapshot.threads:
            clr_ranges.append((thread.stack_pointer - 8192, thread.stack_pointer + 8192, "DacRead"))
        for mode in (DumpMode.MINI, DumpMode.HEAP):
            prepared = select.prepare(mode, snapshot.mappings, snapshot.auxv, paused.memory.read, clr_ranges)
            assert prepared.fits(snapshot)
            quick = select.select(snapshot, mode, paused.memory.read, prepared=prepared)
            whole = select.select(snapshot, mode, paused.memory.read, clr_ranges)
            assert select.extents(quick.ranges) == select.extents(whole.ranges), mode
            for kind in (RangeKind.DAC_READ, RangeKind.DAC_ENUM):
                assert ([(r.start, r.end) for r in quick.ranges if r.kind is kind]
                        == [(r.start, r.end) for r in whole.ranges if r.kind is kind]), (mode, kind)
            assert all(a.end <= b.start for a, b in zip(quick.ranges, quick.ranges[1:]))
    assert procfs.alive(heap_app.pid)
    heap_app.assert_running()


def test_a_thread_started_during_the_walk_before_the_pause_is_walked_again_not_in_it(
        heap_app, tmp_path, monkeypatch, caplog):
    # As if the fixture's newest thread had started while the walk before the pause ran: the
    # first look at the thread list, made as that walk begins, does not see it.
    import minidumper
    from minidumper import targets
    from minidumper.model import DumpMode

    real_thread_ids = targets.thread_ids
    looks = []

    def newest_thread_late(pid):
        ids = sorted(real_thread_ids(pid))
        looks.append(ids)
        return ids[:-1] if len(looks) == 1 else ids

    monkeypatch.setattr(targets, "thread_ids", newest_thread_late)
    caplog.set_level(logging.DEBUG, logger="minidumper")
    core = tmp_path / "heap.core"
    minidumper.write_dump(heap_app.pid, str(core), DumpMode.HEAP)
    assert len(looks) == 2, looks
    assert "1 threads started during the walk before the pause: walked again" in caplog.text
    assert "walked on the copy" in caplog.text and "lacked 0 pages" in caplog.text, caplog.text
    assert "walked in the pause" not in caplog.text, caplog.text
    heap_app.assert_running()
    seen, live = clrmd_read("--dump", str(core)), clrmd_read("--pid", str(heap_app.pid))
    assert seen["errors"] == [] and seen["invalid_object_count"] == 0
    for name in ("object_count", "histogram", "threads"):
        assert seen[name] == live[name], name


@pytest.mark.parametrize("mode", ["heap", "mini"])
def test_a_thread_the_walks_before_the_pause_did_not_know_is_walked_in_it_alone(
        heap_app, tmp_path, monkeypatch, caplog, mode):
    # As if the fixture's newest thread had started after both looks at the thread list before
    # the pause: the pause finds it, walks its stack alone while the target is held, copies that
    # with the rest, and the walk on the copy finds nothing lacking.
    import minidumper
    from minidumper import targets
    from minidumper.model import DumpMode

    real_thread_ids = targets.thread_ids
    monkeypatch.setattr(targets, "thread_ids", lambda pid: sorted(real_thread_ids(pid))[:-1])
    caplog.set_level(logging.DEBUG, logger="minidumper")
    core = tmp_path / f"{mode}.core"
    minidumper.write_dump(heap_app.pid, str(core), DumpMode(mode))
    assert "1 threads started since the CLR was last walked: their stacks walked in the pause" \
        in caplog.text, caplog.text
    pauses = [line for line in caplog.text.splitlines() if "pause: snapshot" in line]
    assert len(pauses) == 1 and "CLR walk" in pauses[0], pauses
    assert "walked on the copy" in caplog.text and "lacked 0 pages" in caplog.text, caplog.text
    heap_app.assert_running()
    seen, live = clrmd_read("--dump", str(core)), clrmd_read("--pid", str(heap_app.pid))
    assert seen["errors"] == [] and seen["threads"] == live["threads"]
    if mode == "heap":
        assert seen["invalid_object_count"] == 0 and seen["histogram"] == live["histogram"]
