"""SIGINT, SIGTERM and SIGHUP from the first line of minidumper on, and while .NET starts: exit 130
and the one JSON object, the target running, nothing written, no bridge process left."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from conftest import MINIDUMPER, REPO
from test_bridge_isolation import bridge_workers_of
from test_edge_cli import assert_schema

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


def _blocked_at_spawn() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def _assert_interrupted(dumper: subprocess.Popen, stdout: str, app, directory) -> None:
    assert dumper.returncode == 130, stdout
    answer = assert_schema(json.loads(stdout))
    assert answer["exit_code"] == 130 and "interrupted" in answer["error"]
    assert list(directory.iterdir()) == []
    deadline = time.monotonic() + 10          # the worker dies with its parent (PDEATHSIG)
    while bridge_workers_of(dumper.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bridge_workers_of(dumper.pid) == []
    app.assert_running()


@pytest.mark.parametrize("signal_number", SIGNALS)
def test_a_signal_at_the_first_line(heap_app, tmp_path, signal_number):
    """The signal is sent before the interpreter starts, blocked by the parent as a supervisor
    would: it reaches minidumper at the earliest moment its handler can run."""
    dumper = subprocess.Popen([*MINIDUMPER, "-p", str(heap_app.pid), "-o", str(tmp_path / "x"),
                               "--heap", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, preexec_fn=_blocked_at_spawn)
    dumper.send_signal(signal_number)
    stdout, stderr = dumper.communicate(timeout=60)
    assert stderr == ""
    _assert_interrupted(dumper, stdout, heap_app, tmp_path)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3])
@pytest.mark.parametrize("signal_number", SIGNALS)
def test_a_signal_while_dotnet_starts(heap_app, tmp_path, signal_number, delay):
    dumper = subprocess.Popen([*MINIDUMPER, "-p", str(heap_app.pid), "-o", str(tmp_path / "x"),
                               "--heap", "--json", "-v"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO)
    seen = ""
    while "bridge process" not in seen:       # the bridge's process is starting .NET now
        line = dumper.stderr.readline()
        assert line, seen
        seen += line
    time.sleep(delay)
    dumper.send_signal(signal_number)
    stdout, _ = dumper.communicate(timeout=60)
    _assert_interrupted(dumper, stdout, heap_app, tmp_path)


# A signal whose handler runs inside a callback (here a weakref's, as the import system's module
# locks use): the exception raised there would be printed and dropped.
_SIGNAL_IN_A_CALLBACK = """
import os, signal, weakref
import minidumper.entry as entry
entry._armed = True
class Lock: pass
lock = Lock()
def collected(_):
    os.kill(os.getpid(), signal.{name})
    for _ in range(1000): pass
ref = weakref.ref(lock, collected)
try:
    del lock
    for _ in range(10 ** 8): pass
    print("lost")
except (KeyboardInterrupt, entry.Interrupted):
    print("raised")
"""


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_in_a_callback_is_raised_after_it(signal_number):
    result = subprocess.run([MINIDUMPER[0], "-c", _SIGNAL_IN_A_CALLBACK.format(name=signal_number.name)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "raised", result.stdout + result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
