"""The CLR walk runs in the bridge's own process: its crash, abort or hang is an error the dumper
reports with its exit code, never the dumper's death; the target runs on and nothing is left.

Faults are injected with the worker's test-only setting MINIDUMPER_TEST_BRIDGE_FAULT=DEPTH:FAULT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import MINIDUMPER, REPO, clrmd_read, run_minidumper


def bridge_workers_of(parent: int) -> list[int]:
    """Live processes running clrmd_bridge.worker for this parent pid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"clrmd_bridge.worker" in argv and argv[-2:-1] == [str(parent).encode()]:
            found.append(int(entry))
    return found


def run_with_fault(app, path: Path, mode: str, fault: str) -> subprocess.CompletedProcess:
    return run_minidumper("--pid", str(app.pid), "-f", str(path), f"--{mode}", "--json",
                          env={**os.environ, "MINIDUMPER_TEST_BRIDGE_FAULT": fault})


@pytest.mark.parametrize("fault", ["warm-up:segv", "warm-up:abort", "warm-up:exit"])
def test_a_crash_before_the_pause_only_loses_the_estimate(heap_app, tmp_path, fault):
    core = tmp_path / "app.core"
    result = run_with_fault(heap_app, core, "heap", fault)
    assert result.returncode == 0, result.stderr
    heap_app.assert_running()
    # The walk in the pause ran in a fresh worker: the dump is a whole heap dump.
    seen = clrmd_read("--dump", str(core))
    live = clrmd_read("--pid", str(heap_app.pid))
    assert seen["object_count"] == live["object_count"] > 10_000
    assert seen["invalid_object_count"] == 0 and seen["histogram"] == live["histogram"]


@pytest.mark.parametrize("mode,fault", [("heap", "heap:segv"), ("mini", "mini:abort"),
                                        ("heap", "heap:exit")])
def test_a_crash_inside_the_pause_is_exit_9_and_leaves_nothing(heap_app, tmp_path, mode, fault):
    result = run_with_fault(heap_app, tmp_path / "app.core", mode, fault)
    assert result.returncode == 9, result.stdout
    reply = json.loads(result.stdout)   # with --json, the message is the JSON's error
    assert "DAC" in reply["error"] and "resumed" in reply["error"]
    assert reply["exit_code"] == 9
    assert list(tmp_path.iterdir()) == []
    heap_app.assert_running()


def test_a_bridge_that_cannot_start_is_exit_1(heap_app, tmp_path):
    result = run_with_fault(heap_app, tmp_path / "app.core", "heap", "load:abort")
    assert result.returncode == 1, result.stdout
    assert "bridge" in json.loads(result.stdout)["error"]
    assert list(tmp_path.iterdir()) == []
    heap_app.assert_running()


def test_a_walk_that_hangs_in_the_pause_is_ended(heap_app, tmp_path, monkeypatch):
    from minidumper import DumpMode, clr_walk, write_dump
    from minidumper.errors import ClrReadFailedError

    monkeypatch.setattr(clr_walk, "WALK_TIMEOUT_SECONDS", 2.0)
    monkeypatch.setenv("MINIDUMPER_TEST_BRIDGE_FAULT", "mini:hang")
    started = time.monotonic()
    with pytest.raises(ClrReadFailedError, match="longer than 2 s"):
        write_dump(heap_app.pid, str(tmp_path / "app.core"), DumpMode.MINI)
    assert time.monotonic() - started < 30
    heap_app.assert_running()
    assert list(tmp_path.iterdir()) == []
    assert bridge_workers_of(os.getpid()) == []


def test_the_worker_dies_with_a_killed_dumper(heap_app, tmp_path):
    dumper = subprocess.Popen([*MINIDUMPER, "--pid", str(heap_app.pid), "-f", str(tmp_path / "x"),
                               "--heap"], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL,
                              env={**os.environ, "MINIDUMPER_TEST_BRIDGE_FAULT": "warm-up:hang"})
    deadline = time.monotonic() + 60
    while not bridge_workers_of(dumper.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = bridge_workers_of(dumper.pid)
    assert workers, "the bridge's process never started"
    dumper.send_signal(signal.SIGKILL)
    dumper.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{w}").exists() for w in workers), "the worker outlived the dumper"
    heap_app.assert_running()


def test_the_library_from_worker_threads(heap_app, tmp_path):
    """write_dump from threading.Thread, several dumps in one interpreter: no crash at thread exit."""
    code = textwrap.dedent(f"""
        import json, threading
        from minidumper import DumpMode, write_dump
        results = []
        def dump(mode, name):
            results.append(write_dump({heap_app.pid}, {str(tmp_path)!r} + "/" + name,
                                      DumpMode(mode)).as_dict())
        for round_ in range(2):
            threads = [threading.Thread(target=dump, args=(mode, f"{{mode}}{{round_}}.core"))
                       for mode in ("mini", "heap")]
            for thread in threads:
                thread.start()
                thread.join()
        print(json.dumps([(r["mode"], r["bytes_written"]) for r in results]))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout)
    assert [mode for mode, _ in written] == ["mini", "heap", "mini", "heap"]
    assert all(size > 0 for _, size in written)
    for name in ("heap0.core", "mini1.core"):
        assert clrmd_read("--dump", str(tmp_path / name))["threads"]
    heap_app.assert_running()


def runtime_ipc_files() -> set[str]:
    """The debugger pipes and diagnostic sockets .NET runtimes make in /tmp."""
    return {name for name in os.listdir(os.environ.get("TMPDIR") or "/tmp")
            if name.startswith(("clr-debug-pipe-", "dotnet-diagnostic-"))}


@pytest.mark.parametrize("mode", ["heap", "mini"])
def test_the_bridge_leaves_no_runtime_files_in_tmp(heap_app, tmp_path, mode):
    """The worker is killed when done: it runs with the runtime's diagnostics off, so it leaves
    no pipes or socket behind (a container's /tmp would fill up with them)."""
    before = runtime_ipc_files()
    result = run_minidumper("--pid", str(heap_app.pid), "-f", str(tmp_path / "app.core"),
                            f"--{mode}", "--json")
    assert result.returncode == 0, result.stderr
    assert runtime_ipc_files() - before == set()


@pytest.mark.parametrize("fault", ["copy:segv", "copy:hang"])
def test_a_bridge_that_fails_on_the_copy_walks_in_the_pause(heap_app, tmp_path, fault):
    core = tmp_path / "app.core"
    started = time.monotonic()
    result = run_minidumper("--pid", str(heap_app.pid), "-f", str(core), "--heap", "--json", "-v",
                            env={**os.environ, "MINIDUMPER_TEST_BRIDGE_FAULT": fault})
    assert result.returncode == 0, result.stderr
    assert "the walk on the copy failed" in result.stderr and "CLR walk" in result.stderr, result.stderr
    # A hang is bounded by a few times the warm-up's walk, not the walk in the pause's 30 s.
    assert time.monotonic() - started < 30
    heap_app.assert_running()
    seen = clrmd_read("--dump", str(core))
    live = clrmd_read("--pid", str(heap_app.pid))
    assert seen["invalid_object_count"] == 0 and seen["errors"] == []
    assert seen["object_count"] == live["object_count"] > 10_000
    assert seen["threads"] == live["threads"]


def test_verbose_shows_everything_the_bridge_said(heap_app, tmp_path):
    """-v ends with the bridge's whole log, one line each: here its timings, every step of the
    warm-up and of the walk on the copy, not only the last three."""
    result = run_minidumper("--pid", str(heap_app.pid), "-f", str(tmp_path / "app.core"), "--mini",
                            "-v", env={**os.environ, "MINIDUMPER_BRIDGE_TIMINGS": "1"})
    assert result.returncode == 0, result.stderr
    said = [line.split(" said: ", 1)[1] for line in result.stderr.splitlines() if " said: " in line]
    # The warm-up and the walk on the copy (and any walk after them), each from its first step.
    assert sum(line.startswith("TIMING attach") for line in said) >= 2, said
    assert sum(line.startswith("TIMING walk (") for line in said) >= 2, said
