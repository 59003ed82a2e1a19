"""The command line's side of the engine's work: --pause-timeout reaches the pause, and a thread
id given as --pid is named among the JSON's warnings."""

from __future__ import annotations

import json
import time

from conftest import run_minidumper
from interruptions import FrozenThread, thread_named
from test_edge_cli import assert_schema


def test_pause_timeout_flag_reaches_the_pause(heap_app, tmp_path):
    frozen = FrozenThread(heap_app.pid, thread_named(heap_app.pid, "parked-1"))
    try:
        timings = {}
        for seconds in ("0.2", "2.5"):
            started = time.monotonic()
            result = run_minidumper("-p", str(heap_app.pid), "-o", str(tmp_path / "x"), "--full",
                                    "--pause-timeout", seconds, "--json")
            timings[seconds] = time.monotonic() - started
            answer = assert_schema(json.loads(result.stdout))
            assert result.returncode == answer["exit_code"] == 8, result.stdout
        assert timings["2.5"] > 2.5 > timings["0.2"], timings
    finally:
        frozen.close()
    assert list(tmp_path.iterdir()) == []
    refused = run_minidumper("-p", str(heap_app.pid), "--pause-timeout", "0", "--json")
    assert refused.returncode == 2
    heap_app.assert_running()


def test_a_thread_id_is_named_in_the_warnings(heap_app, tmp_path):
    tid = thread_named(heap_app.pid, "parked-0")
    result = run_minidumper("-p", str(tid), "-o", str(tmp_path), "--full", "--json")
    answer = assert_schema(json.loads(result.stdout))
    assert result.returncode == 0 and result.stderr == ""
    assert answer["host_pid"] == heap_app.pid and f"_{heap_app.pid}_" in answer["path"]
    assert any(f"{tid} is a thread of process {heap_app.pid}" in w for w in answer["warnings"])
