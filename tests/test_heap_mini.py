"""--heap and --mini: what ClrMD and SOS read from them matches the full dump and the live process,
while module code and native memory stay out."""

from __future__ import annotations

import re

import pytest

from conftest import clrmd_read, dump, gdb_batch, load_segments, sos

PARKED_METHODS = ("WaitInAlpha", "WaitInBeta", "WaitInGamma", "ParkMain")


@pytest.fixture(scope="module")
def dumps(heap_app, tmp_path_factory):
    directory = tmp_path_factory.mktemp("modes")
    reports = {mode: dump(heap_app, directory / f"{mode}.core", mode) for mode in ("full", "heap", "mini")}
    live = clrmd_read("--pid", str(heap_app.pid))
    heap_app.assert_running()
    return {mode: directory / f"{mode}.core" for mode in reports}, reports, live


def test_clrmd_reads_the_heap_dump_as_the_full_dump(dumps):
    paths, _, live = dumps
    full = clrmd_read("--dump", str(paths["full"]))
    heap = clrmd_read("--dump", str(paths["heap"]))
    assert heap["errors"] == [] and heap["invalid_object_count"] == 0
    assert heap["object_count"] == full["object_count"] == live["object_count"] > 10_000
    assert heap["histogram"] == full["histogram"]
    assert heap["roots"] == full["roots"]
    assert heap["handles"] == full["handles"]
    assert heap["segments"] == full["segments"]
    assert heap["threads"] == full["threads"] == live["threads"]
    assert heap["version_string"] == full["version_string"] != ""


def test_clrmd_reads_the_mini_dump_managed_stacks_as_live(dumps):
    paths, _, live = dumps
    mini = clrmd_read("--dump", str(paths["mini"]))
    assert mini["threads"] == live["threads"]
    frames = [f for t in mini["threads"] for f in t["frames"]]
    for method in PARKED_METHODS:
        assert any(method in f for f in frames), frames


def test_heap_dump_leaves_out_native_memory_and_module_code(dumps, heap_app):
    paths, reports, _ = dumps
    heap, full = reports["heap"], reports["full"]
    assert heap["bytes_written"] * 5 <= full["bytes_written"]
    kinds = heap["ranges_by_kind"]
    for kind in ("gc-heap", "handle-table", "loader-heap", "code-heap", "dac-read", "stack",
                 "runtime-data", "diag-info"):
        assert kinds.get(kind, 0) > 0, kind
    assert "mapping" not in kinds
    # The fixture's 64 MiB native block alone is larger than the whole heap dump.
    assert heap["bytes_written"] < 64 << 20
    # Module code: of libcoreclr's executable mapping only scattered pages (around instruction
    # pointers, what the DAC read) may be in.
    segments = load_segments(paths["heap"])
    for start, end in _executable_mappings(heap_app.pid, "libcoreclr.so"):
        covered = sum(max(0, min(end, b) - max(start, a)) for a, b in segments)
        assert covered < (end - start) // 10


def test_mini_is_smaller_than_heap_and_has_no_gc_heap(dumps):
    _, reports, _ = dumps
    mini = reports["mini"]
    assert mini["bytes_written"] < reports["heap"]["bytes_written"]
    assert "gc-heap" not in mini["ranges_by_kind"]
    assert mini["ranges_by_kind"]["dac-read"] > 0


def test_sos_dumpheap_stat_of_the_heap_dump_equals_the_full_dump(dumps):
    paths, _, _ = dumps
    heap = sos(paths["heap"], "dumpheap -stat")
    full = sos(paths["full"], "dumpheap -stat")
    table = lambda text: text[text.index("Statistics:"):]
    assert "Total" in heap and table(heap) == table(full)
    assert "HeapFixture.Customer" in heap


@pytest.mark.parametrize("mode", ["heap", "mini"])
def test_sos_clrstack_shows_the_parked_threads(dumps, mode):
    paths, _, _ = dumps
    out = sos(paths[mode], "clrstack -all")
    for method in PARKED_METHODS:
        assert re.search(rf"HeapFixture\.\S*{method}\(", out), out


def test_sos_finds_the_runtime_without_warnings(dumps):
    paths, _, _ = dumps
    out = sos(paths["heap"], "clrthreads")
    assert "ThreadCount:" in out
    assert "warning" not in out.lower() and "error" not in out.lower(), out


@pytest.mark.parametrize("mode", ["heap", "mini"])
def test_gdb_backtraces_every_thread(dumps, heap_app, mode):
    paths, reports, _ = dumps
    out = gdb_batch(paths[mode], "thread apply all bt 3")
    backtraces = re.split(r"^Thread \d+ \(", out, flags=re.M)[1:]
    assert len(backtraces) == reports[mode]["threads"], out
    assert all(re.search(r"^#0 ", bt, re.M) for bt in backtraces), out
    # libthread_db works too: gdb names threads by their pthread handle, not just their LWP.
    assert "Thread debugging using libthread_db enabled" in out, out
    assert len(re.findall(r"^Thread \d+ \(Thread 0x[0-9a-f]+ \(LWP \d+\)", out, re.M)) == len(backtraces)


def _executable_mappings(pid: int, name: str) -> list[tuple[int, int]]:
    with open(f"/proc/{pid}/maps") as maps:
        return [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in maps
                if line.rstrip().endswith(name) and line.split()[1][2] == "x"]


def test_heap_dump_names_types_made_at_run_time(dumps):
    """Reflection.Emit types keep their metadata in memory, not in a file image."""
    paths, _, live = dumps
    heap = clrmd_read("--dump", str(paths["heap"]))
    assert heap["histogram"]["HeapFixture.Dynamic.Widget"]["count"] == 25
    assert heap["histogram"]["HeapFixture.Dynamic.Widget"] == live["histogram"]["HeapFixture.Dynamic.Widget"]
