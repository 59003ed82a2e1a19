"""--full against a live .NET app, checked with gdb, ClrMD and pyelftools."""

from __future__ import annotations

import re
import struct

import pytest
from elftools.elf.elffile import ELFFile

from conftest import clrmd_read, dump, gdb_batch


@pytest.fixture(scope="module")
def full_core(heap_app, tmp_path_factory):
    path = tmp_path_factory.mktemp("full") / "app.core"
    threads = heap_app.thread_count()
    report = dump(heap_app, path, "full")
    return path, report, threads


def test_json_report_describes_the_dump(full_core, heap_app):
    path, report, threads = full_core
    assert report["path"] == str(path)
    assert report["mode"] == "full"
    assert report["pid"] == heap_app.pid
    assert report["bytes_written"] == path.stat().st_size
    assert report["threads"] == threads
    assert report["ranges_by_kind"]["mapping"] > 64 << 20   # the fixture's native block is in
    assert 0 < report["paused_seconds"] <= report["total_seconds"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_gdb_sees_every_thread_with_a_backtrace(full_core):
    path, _, threads = full_core
    out = gdb_batch(path, "info threads", "thread apply all bt 3")
    listed = re.findall(r"^\*?\s+\d+\s+(?:Thread 0x[0-9a-f]+ \(LWP \d+\)|LWP \d+)", out, re.M)
    assert len(listed) == threads, out
    backtraces = re.split(r"^Thread \d+ \(", out, flags=re.M)[1:]
    assert len(backtraces) == threads, out
    assert all(re.search(r"^#0 ", bt, re.M) for bt in backtraces), out
    assert "Cannot access memory" not in out


def test_clrmd_reads_the_full_dump_as_it_reads_the_live_process(full_core, heap_app):
    path, _, _ = full_core
    live = clrmd_read("--pid", str(heap_app.pid))
    heap_app.assert_running()
    dumped = clrmd_read("--dump", str(path))
    assert dumped["invalid_object_count"] == 0
    assert dumped["object_count"] == live["object_count"] > 10_000
    assert dumped["histogram"] == live["histogram"]
    assert dumped["roots"] == live["roots"]
    assert dumped["handles"] == live["handles"]
    assert dumped["threads"] == live["threads"]
    frames = [f for t in dumped["threads"] for f in t["frames"]]
    for method in ("WaitInAlpha", "WaitInBeta", "WaitInGamma", "ParkMain"):
        assert any(method in f for f in frames), frames


def test_pyelftools_reads_the_notes_and_segments_as_written(full_core, heap_app):
    path, _, threads = full_core
    with open(path, "rb") as f:
        core = ELFFile(f)
        assert core["e_type"] == "ET_CORE" and core["e_machine"] == "EM_X86_64"
        segments = list(core.iter_segments())
        assert segments[0]["p_type"] == "PT_NOTE"
        notes = [(n["n_type"], n) for n in segments[0].iter_notes()]
        types = [t for t, _ in notes]
        assert types[:3] == ["NT_PRPSINFO", "NT_AUXV", "NT_FILE"]
        assert types.count("NT_PRSTATUS") == types.count("NT_FPREGSET") == threads
        prstatus = [n for t, n in notes if t == "NT_PRSTATUS"]
        assert struct.unpack_from("<i", prstatus[0]["n_descdata"], 32)[0] == heap_app.pid
        with open(f"/proc/{heap_app.pid}/auxv", "rb") as auxv:
            assert notes[1][1]["n_descdata"] == auxv.read()

        loads = [s for s in segments if s["p_type"] == "PT_LOAD"]
        assert loads == sorted(loads, key=lambda s: s["p_vaddr"])
        for segment in loads:
            assert segment["p_vaddr"] % 4096 == 0 and segment["p_filesz"] == segment["p_memsz"] > 0
        # The notes follow the memory (built after the pause), and end the file.
        end_of_data = max(s["p_offset"] + s["p_filesz"] for s in loads)
        assert segments[0]["p_offset"] == end_of_data
        assert segments[0]["p_offset"] + segments[0]["p_filesz"] == path.stat().st_size

        # createdump's page that points readers at the runtime: signature, version, runtime base.
        diag = next(s for s in loads if s["p_vaddr"] == 0x7FFFFFF10000)
        signature, version, _, runtime_base = struct.unpack_from("<16si4xQQ", diag.data())
        assert signature.rstrip(b"\0") == b"DIAGINFOHEADER" and version == 2
        assert runtime_base == _libcoreclr_base(heap_app.pid)


def test_full_dump_holds_every_readable_mapping(full_core, heap_app):
    path, _, _ = full_core
    with open(path, "rb") as f:
        loads = [(s["p_vaddr"], s["p_vaddr"] + s["p_memsz"]) for s in ELFFile(f).iter_segments()
                 if s["p_type"] == "PT_LOAD"]
    with open(f"/proc/{heap_app.pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else ""
            if fields[1][0] != "r" or name.startswith("[vvar") or name == "[vsyscall]":
                continue
            if start >= 0x7FFFFFF10000:
                continue
            # An anonymous heap page could be unreadable only if it vanished; files may end early.
            assert any(a <= start < b for a, b in loads) or name.startswith("/"), line


def _libcoreclr_base(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as maps:
        return min(int(line.split("-")[0], 16) for line in maps if line.rstrip().endswith("/libcoreclr.so"))
