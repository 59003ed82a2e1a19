"""What the interruption tests share: a dumper run as a child with a signal at a chosen moment,
the checks every such run must pass, the stamping fixture, and a cgroup v1 freezer.

Every run ends with the same promises checked: a documented exit code (never a signal death),
one JSON object on stdout, the target not left in t/T, nothing in the output directory but a
complete dump.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import HEAP_FIXTURE, MINIDUMPER, READY_TIMEOUT, REPO, LiveApp, process_state

# 0 OK, 3 gone before it was found, 5 no CLR (yet), 7 target exited, 8 pause failed,
# 9 CLR walk failed, 130 interrupted: anything else is a bug.
DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 130}
FREEZER = Path("/sys/fs/cgroup/freezer")
# MINIDUMPER_SWEEP=full runs every point of the sweeps (long); CI runs a seeded sample.
FULL_SWEEP = os.environ.get("MINIDUMPER_SWEEP") == "full"


def sample(points: list, count: int, seed: str) -> list:
    """count points spread over the sweep, the same ones on every run; all with FULL_SWEEP."""
    if FULL_SWEEP or len(points) <= count:
        return points
    return sorted(random.Random(seed).sample(points, count), key=points.index)


def start_fixture(*args: str, wait_ready: bool = True) -> LiveApp:
    process = subprocess.Popen(["dotnet", str(HEAP_FIXTURE), *args], stdout=subprocess.PIPE,
                               stdin=subprocess.PIPE, text=True)
    app = LiveApp(process.pid, process)
    if wait_ready:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if line.startswith("READY"):
                return app
            if not line and process.poll() is not None:
                break
        end_fixture(app)
        pytest.fail("fixture did not print READY")
    return app


def end_fixture(app: LiveApp) -> None:
    if app.process.poll() is None:
        app.process.kill()
    app.process.wait(timeout=60)


def longest_gap_ms(app: LiveApp) -> float:
    """The longest time the fixture (--stamp) went without running since the last question."""
    app.process.stdin.write("gap\n")
    app.process.stdin.flush()
    line = app.process.stdout.readline()
    while line and not line.startswith("GAP"):
        line = app.process.stdout.readline()
    return float(line.split()[1])


def start_dumper(pid: int, out: Path, mode: str, *extra: str, own_group: bool = False,
                 env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*MINIDUMPER, "--pid", str(pid), "-f", str(out), f"--{mode}",
                             "--json", *extra], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            process_group=0 if own_group else None)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict:
        return json.loads(self.stdout)

    @property
    def message(self) -> str:
        """What the dumper said: the JSON object's error, else stderr."""
        try:
            return str(self.report.get("error") or "") + self.stderr
        except ValueError:
            return self.stderr


def finish(dumper: subprocess.Popen, timeout: float = 120) -> Outcome:
    try:
        stdout, stderr = dumper.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        dumper.kill()
        stdout, stderr = dumper.communicate()
        pytest.fail(f"the dumper hung: {stderr}")
    return Outcome(dumper.returncode, stdout, stderr)


def wait_not_stopped(pid: int, seconds: float = 5.0) -> str:
    """The target's state once it is out of t/T (a seized tracee is released as its tracer
    ends), or its last state after seconds; "" once it is gone."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            state = process_state(pid)
        except (FileNotFoundError, ProcessLookupError):
            return ""
        if state not in "tT" or time.monotonic() > deadline:
            return state
        time.sleep(0.005)


def stopped_threads(pid: int) -> list[int]:
    stopped = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        if text[text.rindex(")") + 2] in "tT":
            stopped.append(int(tid))
    return stopped


def check_outcome(outcome: Outcome, out: Path, allowed: set[int], *,
                  target: LiveApp | None = None) -> None:
    """The promises of every run: a documented code, one JSON object, nothing left behind but a
    complete dump, and a target that runs."""
    print(f"exit {outcome.code}: {outcome.stderr.strip()[:160]}")   # shown with -rP, for the sweeps
    assert outcome.code >= 0, f"the dumper died of signal {-outcome.code}: {outcome.stderr}"
    assert outcome.code in allowed, f"exit {outcome.code}: {outcome.stderr}"
    assert "Traceback" not in outcome.stderr, outcome.stderr
    report = outcome.report    # exactly one JSON object
    assert isinstance(report, dict)
    if outcome.code == 0:
        assert out.exists() and out.stat().st_size == report["bytes_written"]
        left = [p.name for p in out.parent.iterdir() if p != out]
        out.unlink()
    else:
        assert report["exit_code"] == outcome.code
        left = [p.name for p in out.parent.iterdir()]
    assert left == [], left
    if target is not None and target.process.poll() is None:
        state = wait_not_stopped(target.pid)
        assert state not in "tT", f"target left in state {state}"
        assert stopped_threads(target.pid) == []


def signal_at(dumper: subprocess.Popen, delay: float, signal_number: int) -> None:
    """The signal, delay seconds after the dumper's first lines took SIGHUP. Before that moment
    the interpreter itself is starting, where no Python code can answer a signal."""
    assert wait_for_handler(dumper.pid, signal.SIGHUP) or dumper.poll() is not None, \
        "the dumper never took SIGHUP"
    time.sleep(delay)
    if dumper.poll() is None:
        dumper.send_signal(signal_number)


def wait_for_handler(pid: int, signal_number: int, seconds: float = 30) -> bool:
    """Waits until the process catches the signal (SigCgt of /proc/PID/status)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as status:
                caught = next(int(line.split()[1], 16) for line in status
                              if line.startswith("SigCgt:"))
        except (OSError, StopIteration):
            return False
        if caught >> (signal_number - 1) & 1:
            return True
        time.sleep(0.001)
    return False


class FrozenThread:
    """One thread of a process in its own cgroup v1 freezer cgroup, FROZEN (as docker pause
    freezes a container); thawed, moved back and removed by close(), whatever happened."""

    def __init__(self, pid: int, tid: int) -> None:
        if not (FREEZER / "tasks").exists():
            pytest.skip("no cgroup v1 freezer at /sys/fs/cgroup/freezer")
        self.tid = tid
        self.home = self._cgroup_of(pid)
        self.cgroup = FREEZER / f"minidumper-test-{os.getpid()}-{tid}"
        self.cgroup.mkdir()
        try:
            (self.cgroup / "tasks").write_text(f"{tid}\n")
            (self.cgroup / "freezer.state").write_text("FROZEN\n")
            deadline = time.monotonic() + 10
            while (self.cgroup / "freezer.state").read_text().strip() != "FROZEN":
                assert time.monotonic() < deadline, "the freezer did not freeze"
                time.sleep(0.01)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _cgroup_of(pid: int) -> Path:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "freezer" in controllers.split(","):
                return FREEZER / path.lstrip("/")
        return FREEZER

    def thaw(self) -> None:
        (self.cgroup / "freezer.state").write_text("THAWED\n")

    def close(self) -> None:
        if not self.cgroup.exists():
            return
        self.thaw()
        for tid in (self.cgroup / "tasks").read_text().split():
            try:
                (self.home / "tasks").write_text(f"{tid}\n")
            except OSError:
                pass   # it exited meanwhile
        self.cgroup.rmdir()


def thread_named(pid: int, name: str) -> int:
    for tid in os.listdir(f"/proc/{pid}/task"):
        if Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() == name:
            return int(tid)
    raise AssertionError(f"no thread named {name} in process {pid}")


def kill_quietly(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
