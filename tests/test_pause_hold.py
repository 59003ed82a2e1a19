"""How long the target is held, measured by the target itself (the fixture's --stamp): a thread
that will not stop (frozen by a cgroup v1 freezer, as docker pause does) fails the pause within
about a second with exit 8; a Ctrl-Z of the dumper waits until the target runs again. And what a
--pid can be besides a process: a thread, a zombie, a kernel thread."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from conftest import process_state
from interruptions import (
    FrozenThread, check_outcome, end_fixture, finish, longest_gap_ms, start_dumper,
    start_fixture, stopped_threads, thread_named, wait_not_stopped)

import minidumper
from minidumper.errors import PauseFailedError

# pause_timeout is 1 s; a loaded 2-core machine may add some. Held for 10 s was the bug.
HELD_AT_MOST_MS = 2500


@pytest.fixture
def stamped_app():
    app = start_fixture("--native-mb", "64", "--stamp")
    yield app
    end_fixture(app)


def _thaw_and_check_released(app, frozen: FrozenThread) -> None:
    frozen.close()
    # Thawed, the thread meets the interrupt it never answered; its tracer is gone, so it must
    # run on, not stop.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and frozen.tid in stopped_threads(app.pid):
        time.sleep(0.01)
    assert stopped_threads(app.pid) == []
    app.assert_running()


@pytest.mark.parametrize("mode", ["full", "heap"])
def test_a_frozen_thread_fails_the_pause_within_a_second(stamped_app, tmp_path, mode):
    app = stamped_app
    tid = thread_named(app.pid, "parked-1")
    frozen = FrozenThread(app.pid, tid)
    try:
        longest_gap_ms(app)   # starts the measure over
        out = tmp_path / "x.core"
        started = time.monotonic()
        outcome = finish(start_dumper(app.pid, out, mode))
        elapsed = time.monotonic() - started
        held_ms = longest_gap_ms(app)
        print(f"held {held_ms} ms, dumper ran {elapsed:.2f} s")
        check_outcome(outcome, out, {8}, target=app)
        assert str(tid) in outcome.message and "parked-1" in outcome.message
        assert "did not stop" in outcome.message
        assert held_ms < HELD_AT_MOST_MS, f"the target was held {held_ms} ms"
        assert elapsed < 30
        # Every other thread runs; the frozen one stays in the freezer (D), not in t.
        assert stopped_threads(app.pid) == []
    finally:
        _thaw_and_check_released(app, frozen)
    # Thawed, the target dumps as usual.
    outcome = finish(start_dumper(app.pid, out, "full"))
    check_outcome(outcome, out, {0}, target=app)


def test_library_pause_timeout_releases_the_thread_that_never_stopped(stamped_app, tmp_path):
    """In a process that lives on (the library), the thread that never stopped must not stop
    later under it: the tracer thread has ended, so the kernel has let go of it."""
    app = stamped_app
    tid = thread_named(app.pid, "parked-2")
    frozen = FrozenThread(app.pid, tid)
    try:
        longest_gap_ms(app)
        with pytest.raises(PauseFailedError) as failure:
            minidumper.write_dump(app.pid, str(tmp_path / "x.core"), minidumper.DumpMode.FULL,
                                  pause_timeout=0.3)
        held_ms = longest_gap_ms(app)
        print(f"held {held_ms} ms")
        assert failure.value.exit_code == 8
        assert str(tid) in str(failure.value)
        assert held_ms < HELD_AT_MOST_MS - 700
        assert list(tmp_path.iterdir()) == []
    finally:
        _thaw_and_check_released(app, frozen)
    with open(f"/proc/{app.pid}/task/{tid}/status") as status:
        assert "TracerPid:\t0" in status.read()


def test_ctrl_z_of_the_dumper_waits_until_the_target_runs(tmp_path):
    """SIGTSTP while the target is held: the dumper stops only once the target runs again."""
    app = start_fixture("--busy", "1", "--stamp", "--native-mb", "128")
    try:
        out = tmp_path / "x.core"
        for attempt in range(8):
            longest_gap_ms(app)
            dumper = start_dumper(app.pid, out, "heap", own_group=True)
            caught = _send_while_target_held(app.pid, dumper, signal.SIGTSTP)
            if caught:
                break
            check_outcome(finish(dumper), out, {0}, target=app)
        else:
            pytest.fail("never caught the target held")
        # The dumper stops, but only after letting the target go.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process_state(dumper.pid) not in "T":
            time.sleep(0.005)
        assert process_state(dumper.pid) == "T", "the held Ctrl-Z never stopped the dumper"
        assert wait_not_stopped(app.pid, 0.0) not in "tT"
        time.sleep(3.0)    # the dumper stays stopped; the target must not
        assert stopped_threads(app.pid) == []
        held_ms = longest_gap_ms(app)
        dumper.send_signal(signal.SIGCONT)
        outcome = finish(dumper)
        assert outcome.report.get("paused_seconds") is not None, outcome
        paused_ms = outcome.report["paused_seconds"] * 1000
        print(f"held {held_ms} ms (the dump's pause {paused_ms:.0f} ms) while the dumper was "
              "stopped 3 s")
        # The target felt the dump's own pause, not the 3 s the dumper spent stopped.
        assert held_ms < min(3000, paused_ms + 500), f"the target was held {held_ms} ms"
        check_outcome(outcome, out, {0}, target=app)
    finally:
        end_fixture(app)


def _send_while_target_held(pid: int, dumper: subprocess.Popen, signal_number: int) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and dumper.poll() is None:
        if process_state(pid) == "t":
            dumper.send_signal(signal_number)
            return True
    return False


def test_pid_of_a_thread_dumps_its_process(stamped_app, tmp_path):
    tid = thread_named(stamped_app.pid, "parked-0")
    out = tmp_path / "x.core"
    outcome = finish(start_dumper(tid, out, "full", "-v"))
    assert f"{tid} is a thread of process {stamped_app.pid}" in outcome.stderr
    assert outcome.report["host_pid"] == stamped_app.pid
    check_outcome(outcome, out, {0}, target=stamped_app)


def test_pid_of_a_zombie(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while process_state(child.pid) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        out = tmp_path / "x.core"
        outcome = finish(start_dumper(child.pid, out, "full"))
        check_outcome(outcome, out, {7})
        assert "zombie" in outcome.message
        assert "access denied" not in outcome.message
    finally:
        child.wait()


def test_pid_of_a_kernel_thread(tmp_path):
    kthreadd = 2
    with open(f"/proc/{kthreadd}/stat") as stat:
        if "kthreadd" not in stat.read():
            pytest.skip("pid 2 is not kthreadd here (a pid namespace?)")
    out = tmp_path / "x.core"
    outcome = finish(start_dumper(kthreadd, out, "full"))
    check_outcome(outcome, out, {3})
    assert "kernel thread" in outcome.message and "not a user process" in outcome.message
    assert "root" not in outcome.message


def test_pause_timeout_is_a_library_parameter():
    import inspect
    parameter = inspect.signature(minidumper.write_dump).parameters["pause_timeout"]
    assert parameter.default == 1.0
