"""Shared fixtures: live .NET sample apps, the minidumper command, and real readers of dumps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / ".build"
HEAP_FIXTURE = BUILD / "fixtures" / "HeapFixture" / "HeapFixture.dll"
CLRMD_READER = BUILD / "clrmd_reader" / "ClrmdReader.dll"
MINIDUMPER = [sys.executable, "-m", "minidumper"]
READY_TIMEOUT = 60


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat: never T or t once a dump is over."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    return text[text.rindex(")") + 2]


@dataclass
class LiveApp:
    pid: int
    process: subprocess.Popen

    def state(self) -> str:
        return process_state(self.pid)

    def thread_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def assert_running(self) -> None:
        assert self.process.poll() is None, "the target exited"
        assert self.state() not in "Tt", f"the target was left stopped (state {self.state()})"


def start_app(*args: str, dll: Path = HEAP_FIXTURE) -> LiveApp:
    if not dll.exists():
        pytest.fail(f"{dll} is missing: run ./setup.sh")
    process = subprocess.Popen(["dotnet", str(dll), *args], stdout=subprocess.PIPE,
                               stdin=subprocess.PIPE, text=True)
    deadline = time.monotonic() + READY_TIMEOUT
    line = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("READY"):
            return LiveApp(int(line.split()[1]), process)
        if not line and process.poll() is not None:
            break
    process.kill()
    pytest.fail(f"fixture did not print READY (last line {line!r})")


def stop_app(app: LiveApp) -> None:
    # A stopped target would not die of SIGTERM; SIGKILL always works.
    app.process.send_signal(signal.SIGKILL)
    app.process.wait(timeout=30)


@pytest.fixture(scope="module")
def heap_app():
    app = start_app("--native-mb", "64")
    yield app
    stop_app(app)


@pytest.fixture
def fresh_app():
    app = start_app("--native-mb", "256")
    yield app
    stop_app(app)


def run_minidumper(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*MINIDUMPER, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, **kwargs)


def dump(app: LiveApp, path: Path, mode: str) -> dict:
    result = run_minidumper("--pid", str(app.pid), "-f", str(path), f"--{mode}", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "quiet when stderr is not a terminal"
    app.assert_running()
    return json.loads(result.stdout)


_reader_tmp: list[str] = []


def clrmd_read(*args: str) -> dict:
    """What ClrMD sees: --dump PATH, or --pid PID for the live process. Its temporary files (ClrMD's
    default symbol cache, TMPDIR/symbols) go to a directory of this session, removed at its end."""
    if not CLRMD_READER.exists():
        pytest.fail(f"{CLRMD_READER} is missing: run ./setup.sh")
    if not _reader_tmp:
        _reader_tmp.append(tempfile.mkdtemp(prefix="clrmd-reader-"))
    result = subprocess.run(["dotnet", str(CLRMD_READER), *args], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TMPDIR": _reader_tmp[0]})
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def gdb_batch(core: Path, *commands: str) -> str:
    argv = ["gdb", "-batch", "-nx", "-iex", "set auto-load safe-path /"]
    for command in commands:
        argv += ["-ex", command]
    argv += [os.path.realpath(shutil.which("dotnet")), str(core)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    return result.stdout + result.stderr


def sos(core: Path, *commands: str) -> str:
    """SOS's answer, through dotnet-dump analyze (a local .NET tool restored by setup)."""
    argv = ["dotnet", "dotnet-dump", "analyze", str(core)]
    for command in (*commands, "exit"):
        argv += ["-c", command]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def load_segments(core: Path) -> list[tuple[int, int]]:
    from elftools.elf.elffile import ELFFile
    with open(core, "rb") as f:
        return [(s["p_vaddr"], s["p_vaddr"] + s["p_memsz"]) for s in ELFFile(f).iter_segments()
                if s["p_type"] == "PT_LOAD"]


SESSION_STARTED = time.time()


def pytest_configure(config):
    """The tests send SIGINT, SIGTERM and SIGHUP to dumpers, which keep an inherited "ignore" (as
    under nohup, or as a shell's background job gets SIGINT): whoever started the suite, its
    children start with these signals at their defaults."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(number) == signal.SIG_IGN:
            signal.signal(number, signal.default_int_handler if number == signal.SIGINT
                          else signal.SIG_DFL)
RUNTIME_IPC_PREFIXES = ("clr-debug-pipe-", "dotnet-diagnostic-")
_session_temp: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _remember_session_temp(tmp_path_factory):
    _session_temp.append(tmp_path_factory.getbasetemp())


def pytest_sessionfinish(session, exitstatus):
    """The fixtures end by SIGKILL, so their runtimes never remove their debugger pipes and
    diagnostic sockets from /tmp: those of processes gone since this session began go now.
    A run that passed leaves no dumps either (some 5 GB, kept by pytest for three runs); a run
    that failed keeps them to be looked at."""
    for directory in _reader_tmp:
        shutil.rmtree(directory, ignore_errors=True)
    if exitstatus == pytest.ExitCode.OK:
        for directory in _session_temp:
            shutil.rmtree(directory, ignore_errors=True)
            for link in directory.parent.glob("*-current"):
                if link.is_symlink() and not link.exists():
                    link.unlink()
    tmp = Path(os.environ.get("TMPDIR") or "/tmp")
    for entry in tmp.iterdir():
        if not entry.name.startswith(RUNTIME_IPC_PREFIXES):
            continue
        pid = entry.name.removeprefix("clr-debug-pipe-").removeprefix("dotnet-diagnostic-").split("-")[0]
        try:
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}") \
                    and entry.lstat().st_mtime >= SESSION_STARTED:
                entry.unlink()
        except OSError:
            pass    # already gone
