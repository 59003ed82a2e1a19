"""Side-by-side benchmark: minidumper against createdump, on the same live .NET process.

One fixture process (HeapFixture with a large native block) is started once. Every round dumps it
with both tools, alternating which tool goes first, in every mode:

    minidumper --full, --heap, --mini
    createdump --full, --withheap, --normal

For each dump it records the wall time, the file size, MiB/s (size / wall), and how long the target
was paused. The pause is measured from the outside, the same way for both tools: a sampler thread
polls /proc/PID/task/*/stat and adds up the time during which any thread of the target was in
state 't' or 'T' (stopped by ptrace or a signal). minidumper's own paused_seconds is kept too.

Run it from the repository root with the project's venv (standard library only):

    .venv/bin/python bench/run.py [--native-mb 1024] [--rounds 3] [--json OUT]

The target comes first here too: it is never left stopped (it is checked, and sent SIGCONT if need
be, after every dump) and the fixture is always killed at the end, even on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE_DLL = REPO_ROOT / ".build" / "fixtures" / "HeapFixture" / "HeapFixture.dll"
MIB = 1024 * 1024

MINIDUMPER = "minidumper"
CREATEDUMP = "createdump"

# (tool, mode) in the order they run within one tool's turn.
MINIDUMPER_MODES = ("full", "heap", "mini")
CREATEDUMP_MODES = ("full", "withheap", "normal")
CREATEDUMP_FLAGS = {"full": "--full", "withheap": "--withheap", "normal": "--normal"}

STOPPED_STATES = frozenset(b"tT")


class BenchInterrupted(Exception):
    """SIGTERM or SIGHUP, unwound like Ctrl-C so that every finally runs."""


def _raise_interrupted(signum: int, frame: object) -> None:
    raise BenchInterrupted(signal.Signals(signum).name)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The fixture
# --------------------------------------------------------------------------------------------

class Fixture:
    """HeapFixture started from the main thread; killed on close, whatever happened."""

    def __init__(self, native_mb: int, ready_timeout: float = 180.0) -> None:
        self.native_mb = native_mb
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def start(self) -> int:
        if not FIXTURE_DLL.is_file():
            raise SystemExit(f"bench: {FIXTURE_DLL} is missing; run ./setup.sh first")
        # Own session: a Ctrl-C on the terminal reaches the bench, not the fixture mid-dump.
        # PR_SET_PDEATHSIG in the fixture still kills it if this (main) thread dies.
        self.process = subprocess.Popen(
            ["dotnet", str(FIXTURE_DLL), "--native-mb", str(self.native_mb)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True)
        line = self._read_ready_line()
        match = re.fullmatch(rb"READY (\d+)\s*", line)
        if not match:
            raise RuntimeError(f"fixture printed {line!r} instead of its READY line")
        self.pid = int(match.group(1))
        return self.pid

    def _read_ready_line(self) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + self.ready_timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError("fixture did not print READY in time")
                if not selector.select(left):
                    continue
                chunk = os.read(self.process.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"fixture exited (code {self.process.poll()}) before READY")
                buffer += chunk
        return buffer.split(b"\n", 1)[0]

    def close(self) -> None:
        if self.process is None:
            return
        if self.pid:
            resume_if_stopped(self.pid)  # a SIGKILL ends a stopped process too, but be tidy
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log(f"fixture {self.process.pid} did not exit after SIGKILL")
        if self.process.stdout is not None:
            self.process.stdout.close()


# --------------------------------------------------------------------------------------------
# Thread states of the target
# --------------------------------------------------------------------------------------------

def _state_of(stat: bytes) -> int:
    """The state letter (as an int) from a /proc/.../stat line; the comm may hold spaces and ')'."""
    close = stat.rfind(b")")
    return stat[close + 2] if close >= 0 and close + 2 < len(stat) else 0


def thread_states(pid: int) -> dict[int, str]:
    states: dict[int, str] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return states
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as stat:
                states[int(tid)] = chr(_state_of(stat.read()))
        except (OSError, IndexError):
            continue
    return states


def stopped_threads(pid: int) -> dict[int, str]:
    return {tid: state for tid, state in thread_states(pid).items() if state in "tT"}


def resume_if_stopped(pid: int, wait_seconds: float = 2.0) -> str | None:
    """Make sure the target runs. Returns a note when it had to step in, else None.

    A thread in 't' has a tracer; once that tracer detaches or dies it resumes by itself, so wait
    for it a moment. A 'T' (group stop, e.g. SIGSTOP) needs a SIGCONT.
    """
    deadline = time.monotonic() + wait_seconds
    stopped = stopped_threads(pid)
    while stopped and "T" not in stopped.values() and time.monotonic() < deadline:
        time.sleep(0.01)
        stopped = stopped_threads(pid)
    if not stopped:
        return None
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        return "target is gone"
    time.sleep(0.05)
    still = stopped_threads(pid)
    note = f"target had {len(stopped)} stopped thread(s) after the dump; sent SIGCONT"
    if still:
        note += f"; still stopped: {sorted(still.items())}"
    log(note)
    return note


@dataclass
class PauseReading:
    any_thread_seconds: float = 0.0    # time during which at least one thread was stopped
    main_thread_seconds: float = 0.0   # time during which the main thread was stopped
    episodes: int = 0                  # how many separate stops (any thread) were seen
    first_stop_to_last_resume: float = 0.0
    samples: int = 0
    mean_sample_interval: float = 0.0  # resolution of the measurement


class PauseSampler:
    """Polls the target's thread states on its own thread while a dump runs.

    Each sample reads /proc/PID/task/TID/stat for every thread (pread on kept-open descriptors, so
    a sample costs a few microseconds per thread) and notes whether any thread, and whether the
    main thread, is in 't'/'T'. Time between two samples counts as stopped in proportion to how
    many of the two samples saw it stopped (the trapezoid rule), so the error is at most one sample
    interval per stop edge. The list of threads is refreshed every few milliseconds.
    """

    RELIST_SECONDS = 0.005

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pause-sampler", daemon=True)
        self._fds: dict[int, int] = {}
        self.reading = PauseReading()
        self.error: BaseException | None = None

    def __enter__(self) -> PauseSampler:
        self._relist()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> PauseReading:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        return self.reading

    def _relist(self) -> None:
        try:
            tids = {int(name) for name in os.listdir(f"/proc/{self.pid}/task")}
        except OSError:
            return
        tids.add(self.pid)
        for tid in tids - self._fds.keys():
            try:
                self._fds[tid] = os.open(f"/proc/{self.pid}/task/{tid}/stat", os.O_RDONLY)
            except OSError:
                pass

    def _sample(self) -> tuple[bool, bool]:
        any_stopped = main_stopped = False
        gone = []
        for tid, fd in self._fds.items():
            try:
                stat = os.pread(fd, 512, 0)
            except OSError:
                gone.append(tid)
                continue
            if not stat:
                gone.append(tid)
                continue
            if _state_of(stat) in STOPPED_STATES:
                any_stopped = True
                if tid == self.pid:
                    main_stopped = True
        for tid in gone:
            if tid != self.pid:
                os.close(self._fds.pop(tid))
        return any_stopped, main_stopped

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # reported by the caller; never kill the bench silently
            self.error = error

    def _loop(self) -> None:
        reading = self.reading
        clock = time.perf_counter
        sleep = time.sleep
        interval = self.interval
        start = last_relist = previous_time = clock()
        previous_any, previous_main = self._sample()
        first_stop = last_stop = start if previous_any else None
        reading.episodes = 1 if previous_any else 0
        samples = 1
        while not self._stop.is_set():
            if interval:
                sleep(interval)
            now = clock()
            if now - last_relist >= self.RELIST_SECONDS:
                self._relist()
                last_relist = now
            any_stopped, main_stopped = self._sample()
            now = clock()
            step = now - previous_time
            reading.any_thread_seconds += step * (previous_any + any_stopped) / 2
            reading.main_thread_seconds += step * (previous_main + main_stopped) / 2
            if any_stopped:
                if not previous_any:
                    reading.episodes += 1
                if first_stop is None:
                    first_stop = now
                last_stop = now
            previous_time, previous_any, previous_main = now, any_stopped, main_stopped
            samples += 1
        reading.samples = samples
        reading.mean_sample_interval = (previous_time - start) / max(samples - 1, 1)
        if first_stop is not None and last_stop is not None:
            reading.first_stop_to_last_resume = last_stop - first_stop


# --------------------------------------------------------------------------------------------
# createdump, and the diagnostics IPC fallback
# --------------------------------------------------------------------------------------------

def find_createdump(pid: int) -> Path:
    """createdump of the runtime the target runs on, found through `dotnet --list-runtimes`."""
    listing = subprocess.run(["dotnet", "--list-runtimes"], capture_output=True, text=True,
                             check=True).stdout
    candidates: list[tuple[tuple[int, ...], Path]] = []
    for line in listing.splitlines():
        match = re.match(r"Microsoft\.NETCore\.App (\S+) \[(.+)\]", line.strip())
        if not match:
            continue
        version, base = match.groups()
        folder = Path(base) / version
        if (folder / "createdump").is_file():
            numbers = tuple(int(n) for n in re.findall(r"\d+", version.split("-")[0]))
            candidates.append((numbers, folder))
    if not candidates:
        raise SystemExit("bench: no Microsoft.NETCore.App runtime with createdump found")
    # Prefer the runtime folder the target actually loaded libcoreclr.so from.
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
        for _, folder in candidates:
            if f"{folder}/libcoreclr.so" in maps:
                return folder / "createdump"
    except OSError:
        pass
    return max(candidates)[1] / "createdump"


class DiagnosticsIpcError(Exception):
    pass


class DiagnosticsClient:
    """Just enough of the .NET diagnostics IPC protocol to ask a runtime for a core dump.

    A message is a 20-byte header (magic "DOTNET_IPC_V1\\0", uint16 total size, uint8 command set,
    uint8 command id, uint16 reserved) and a payload. The Dump command set is 0x01; the payload of
    GenerateCoreDump (0x01) and GenerateCoreDump3 (0x03) is a length-prefixed UTF-16 path, a uint32
    dump type and uint32 flags. The reply's command set is 0xFF (server): id 0x00 OK, 0xFF error,
    with a uint32 result (and, for GenerateCoreDump3 errors, a message string).
    """

    MAGIC = b"DOTNET_IPC_V1\x00"
    HEADER = struct.Struct("<14sHBBH")
    COMMAND_SET_DUMP = 0x01
    GENERATE_CORE_DUMP = 0x01
    GENERATE_CORE_DUMP3 = 0x03
    SERVER = 0xFF
    OK = 0x00
    UNKNOWN_COMMAND = 0x80131384
    DUMP_TYPES = {"normal": 1, "withheap": 2, "triage": 3, "full": 4}

    def __init__(self, pid: int, timeout: float = 600.0) -> None:
        self.pid = pid
        self.timeout = timeout

    def socket_path(self) -> str:
        tmp = "/tmp"
        try:  # the runtime puts its socket under the target's own TMPDIR
            for entry in Path(f"/proc/{self.pid}/environ").read_bytes().split(b"\0"):
                if entry.startswith(b"TMPDIR=") and len(entry) > 7:
                    tmp = entry[7:].decode()
        except OSError:
            pass
        paths = glob.glob(os.path.join(tmp, f"dotnet-diagnostic-{self.pid}-*-socket"))
        if not paths:
            raise DiagnosticsIpcError(f"no diagnostics socket for pid {self.pid} in {tmp}")
        return max(paths, key=os.path.getmtime)

    def generate_core_dump(self, path: str, mode: str) -> None:
        try:
            self._request(self.GENERATE_CORE_DUMP3, path, mode)
        except DiagnosticsIpcError as error:
            if getattr(error, "code", None) != self.UNKNOWN_COMMAND:
                raise
            self._request(self.GENERATE_CORE_DUMP, path, mode)  # an older runtime

    def _request(self, command: int, path: str, mode: str) -> None:
        name = (path + "\0").encode("utf-16-le")
        payload = (struct.pack("<I", len(name) // 2) + name
                   + struct.pack("<II", self.DUMP_TYPES[mode], 0))
        header = self.HEADER.pack(self.MAGIC, self.HEADER.size + len(payload),
                                  self.COMMAND_SET_DUMP, command, 0)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(self.timeout)
            connection.connect(self.socket_path())
            connection.sendall(header + payload)
            reply = self._receive(connection, self.HEADER.size)
            magic, size, command_set, command_id, _ = self.HEADER.unpack(reply)
            if magic != self.MAGIC or command_set != self.SERVER:
                raise DiagnosticsIpcError(f"unexpected reply header {reply!r}")
            body = self._receive(connection, size - self.HEADER.size)
        code = struct.unpack_from("<I", body)[0] if len(body) >= 4 else 0
        if command_id == self.OK and code == 0:
            return
        message = ""
        if len(body) >= 8:
            length = struct.unpack_from("<I", body, 4)[0]
            message = body[8:8 + 2 * length].decode("utf-16-le", "replace").rstrip("\0")
        error = DiagnosticsIpcError(f"runtime refused the dump: result {code:#010x} {message}".strip())
        error.code = code  # type: ignore[attr-defined]
        raise error

    @staticmethod
    def _receive(connection: socket.socket, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = connection.recv(count - len(data))
            if not chunk:
                raise DiagnosticsIpcError("the runtime closed the diagnostics connection")
            data += chunk
        return data


# --------------------------------------------------------------------------------------------
# One dump
# --------------------------------------------------------------------------------------------

@dataclass
class DumpRecord:
    tool: str
    mode: str
    round: int
    method: str                          # "exec" or "diagnostics-ipc" (createdump only)
    ok: bool = False
    exit_code: int | None = None
    error: str = ""
    wall_seconds: float = 0.0            # from launching the tool to its exit, seen from outside
    size_bytes: int = 0
    mib_per_second: float = 0.0          # size / wall
    pause_seconds: float = 0.0           # sampled: any thread of the target stopped
    pause_main_thread_seconds: float = 0.0
    pause_episodes: int = 0
    pause_first_stop_to_last_resume: float = 0.0
    sample_interval_seconds: float = 0.0
    self_paused_seconds: float | None = None   # minidumper's own paused_seconds
    self_total_seconds: float | None = None    # the tool's own view of its run time
    left_stopped: str | None = None
    ranges_by_kind: dict[str, int] = field(default_factory=dict)


class DumpRunner:
    def __init__(self, pid: int, workdir: Path, minidumper: Path, createdump: Path,
                 createdump_via: str, sample_interval: float, timeout: float) -> None:
        self.pid = pid
        self.workdir = workdir
        self.minidumper = minidumper
        self.createdump = createdump
        self.createdump_via = createdump_via  # "auto", "exec" or "ipc"
        self.sample_interval = sample_interval
        self.timeout = timeout

    def run(self, tool: str, mode: str, round_number: int) -> DumpRecord:
        method = "exec"
        if tool == CREATEDUMP and self.createdump_via == "ipc":
            method = "diagnostics-ipc"
        record = DumpRecord(tool, mode, round_number, method)
        output = self.workdir / f"{tool}-{mode}-round{round_number}.core"
        note = resume_if_stopped(self.pid)
        if note:
            record.error = f"before the dump: {note}"
        try:
            self._measure(record, output)
            if (tool == CREATEDUMP and self.createdump_via == "auto" and not record.ok
                    and record.exit_code not in (None, 0)):
                log(f"createdump refused pid {self.pid} ({record.error}); "
                    "asking the runtime over its diagnostics socket from now on")
                self.createdump_via = "ipc"
                record = DumpRecord(tool, mode, round_number, "diagnostics-ipc")
                output.unlink(missing_ok=True)
                self._measure(record, output)
        finally:
            output.unlink(missing_ok=True)
            for leftover in self.workdir.glob(output.name + "*"):  # tools' temp files, if any
                leftover.unlink(missing_ok=True)
        return record

    def _measure(self, record: DumpRecord, output: Path) -> None:
        sampler = PauseSampler(self.pid, self.sample_interval)
        started = ended = 0.0
        stdout = stderr = ""
        with sampler:
            started = time.perf_counter()
            try:
                if record.method == "diagnostics-ipc":
                    DiagnosticsClient(self.pid, self.timeout).generate_core_dump(str(output),
                                                                                 record.mode)
                    record.exit_code = 0
                else:
                    record.exit_code, stdout, stderr = self._exec(self._argv(record, output))
            except (DiagnosticsIpcError, OSError) as error:
                record.error = f"{type(error).__name__}: {error}"
            finally:
                ended = time.perf_counter()
                # Keep sampling a moment: a tracee resumes as its tracer goes away.
                time.sleep(0.05)
        reading = sampler.reading
        record.left_stopped = resume_if_stopped(self.pid)
        if sampler.error is not None:
            record.error = f"pause sampler failed: {sampler.error!r}"
        record.wall_seconds = ended - started
        record.pause_seconds = reading.any_thread_seconds
        record.pause_main_thread_seconds = reading.main_thread_seconds
        record.pause_episodes = reading.episodes
        record.pause_first_stop_to_last_resume = reading.first_stop_to_last_resume
        record.sample_interval_seconds = reading.mean_sample_interval

        if record.exit_code == 0 and output.is_file():
            record.size_bytes = output.stat().st_size
            record.mib_per_second = record.size_bytes / MIB / record.wall_seconds
            record.ok = sampler.error is None
        elif not record.error:
            text = (stderr or stdout).strip().splitlines()
            last = text[-1] if text else ""
            record.error = (f"exit {record.exit_code}: {last}" if record.exit_code
                            else f"no dump file written {last}").strip()
        if record.tool == MINIDUMPER and record.ok:
            self._read_minidumper_json(record, stdout)
        if record.tool == CREATEDUMP and record.method == "exec":
            match = re.search(r"written in (\d+)\s*ms", stdout + stderr)
            if match:
                record.self_total_seconds = int(match.group(1)) / 1000

    def _argv(self, record: DumpRecord, output: Path) -> list[str]:
        if record.tool == MINIDUMPER:
            return [str(self.minidumper), "--pid", str(self.pid), "-f", str(output),
                    f"--{record.mode}", "--json"]
        return [str(self.createdump), CREATEDUMP_FLAGS[record.mode], "-f", str(output),
                str(self.pid)]

    def _exec(self, argv: list[str]) -> tuple[int, str, str]:
        # Own session, so a terminal Ctrl-C reaches the bench first; the bench then hands the
        # tool a SIGINT and lets it resume the target and clean up before anything harsher.
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=self.timeout)
            return process.returncode, stdout, stderr
        except BaseException as error:
            self._stop_tool(process)
            if isinstance(error, subprocess.TimeoutExpired):
                stdout, stderr = process.communicate()
                return process.returncode, stdout, (stderr or "") + "\n(timed out)"
            raise

    @staticmethod
    def _stop_tool(process: subprocess.Popen[str]) -> None:
        for sig, grace in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if process.poll() is not None:
                return
            try:
                process.send_signal(sig)
                process.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                return

    @staticmethod
    def _read_minidumper_json(record: DumpRecord, stdout: str) -> None:
        for line in reversed(stdout.strip().splitlines()):
            try:
                result = json.loads(line)
            except ValueError:
                continue
            record.self_paused_seconds = result.get("paused_seconds")
            record.self_total_seconds = result.get("total_seconds")
            record.ranges_by_kind = result.get("ranges_by_kind") or {}
            if result.get("bytes_written") and result["bytes_written"] != record.size_bytes:
                log(f"minidumper said {result['bytes_written']} bytes, the file has "
                    f"{record.size_bytes}")
            return


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------

SUMMARY_FIELDS = ("size_bytes", "wall_seconds", "mib_per_second", "pause_seconds",
                  "self_paused_seconds", "self_total_seconds")


def summarize(records: list[DumpRecord]) -> dict[str, dict]:
    summary: dict[str, dict] = {}
    order = [(MINIDUMPER, m) for m in MINIDUMPER_MODES] + [(CREATEDUMP, m) for m in CREATEDUMP_MODES]
    for tool, mode in order:
        runs = [r for r in records if r.tool == tool and r.mode == mode]
        if not runs:
            continue
        good = [r for r in runs if r.ok]
        entry: dict = {"tool": tool, "mode": mode, "runs": len(runs), "ok": len(good),
                       "methods": sorted({r.method for r in good}),
                       "errors": sorted({r.error for r in runs if not r.ok and r.error})}
        for name in SUMMARY_FIELDS:
            values = [getattr(r, name) for r in good if getattr(r, name) is not None]
            entry[name] = statistics.median(values) if values else None
        summary[f"{tool} {mode}"] = entry
    return summary


def _ratio(summary: dict, top: str, bottom: str, name: str) -> float | None:
    a, b = summary.get(top, {}).get(name), summary.get(bottom, {}).get(name)
    return a / b if a is not None and b else None


RATIOS = (
    # label, numerator, denominator, field
    ("full size: minidumper / createdump", "minidumper full", "createdump full", "size_bytes"),
    ("full wall: minidumper / createdump", "minidumper full", "createdump full", "wall_seconds"),
    ("full pause: minidumper / createdump", "minidumper full", "createdump full", "pause_seconds"),
    ("full MiB/s: minidumper / createdump", "minidumper full", "createdump full", "mib_per_second"),
    ("heap size / minidumper full size", "minidumper heap", "minidumper full", "size_bytes"),
    ("heap size / createdump withheap size", "minidumper heap", "createdump withheap", "size_bytes"),
    ("heap pause / createdump withheap pause", "minidumper heap", "createdump withheap",
     "pause_seconds"),
    ("heap wall / createdump withheap wall", "minidumper heap", "createdump withheap",
     "wall_seconds"),
    ("mini size / createdump normal size", "minidumper mini", "createdump normal", "size_bytes"),
    ("mini pause / createdump normal pause", "minidumper mini", "createdump normal",
     "pause_seconds"),
)
GOALS = (
    ("heap size <= 1/5 of minidumper full", "heap size / minidumper full size", 0.2),
    ("heap size <= 1/2 of createdump withheap", "heap size / createdump withheap size", 0.5),
)


def ratios(summary: dict) -> dict[str, float | None]:
    return {label: _ratio(summary, top, bottom, name) for label, top, bottom, name in RATIOS}


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        width = re.match(r"\d*", spec).group()
        return "-".rjust(int(width or 0))
    return format(value, spec)


def print_report(summary: dict, ratio_values: dict, rounds: int) -> None:
    header = (f"{'tool':<11} {'mode':<9} {'ok':>5} {'size MiB':>10} {'wall s':>8} {'MiB/s':>8} "
              f"{'pause s':>8} {'self-pause s':>12} {'tool total s':>12}")
    print(f"\nmedians over {rounds} round(s); pause = sampled from /proc (any thread in t/T)")
    print(header)
    print("-" * len(header))
    for entry in summary.values():
        ok = f"{entry['ok']}/{entry['runs']}"
        size = entry["size_bytes"] / MIB if entry["size_bytes"] is not None else None
        mode = entry["mode"] + ("*" if "diagnostics-ipc" in entry["methods"] else "")
        print(f"{entry['tool']:<11} {mode:<9} {ok:>5} {_fmt(size, '10.1f')} "
              f"{_fmt(entry['wall_seconds'], '8.3f')} {_fmt(entry['mib_per_second'], '8.0f')} "
              f"{_fmt(entry['pause_seconds'], '8.3f')} "
              f"{_fmt(entry['self_paused_seconds'], '12.3f')} "
              f"{_fmt(entry['self_total_seconds'], '12.3f')}")
        for error in entry["errors"]:
            print(f"{'':<21} failed: {error}")
    if any("diagnostics-ipc" in e["methods"] for e in summary.values()):
        print("* createdump run by the target's runtime, asked over its diagnostics socket")
    print("\nratios (medians)")
    for label, value in ratio_values.items():
        print(f"  {label:<42} {_fmt(value, '.3f')}")
    print("\ngoals")
    for label, ratio_label, limit in GOALS:
        value = ratio_values.get(ratio_label)
        verdict = "n/a" if value is None else ("MET" if value <= limit else "NOT MET")
        print(f"  {label:<42} {_fmt(value, '.3f')} -> {verdict}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--native-mb", type=int, default=1024,
                        help="native memory the fixture allocates and touches, MiB (>= 512)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every dump (default 3)")
    parser.add_argument("--json", metavar="OUT", help="also write every measurement to OUT")
    parser.add_argument("--minidumper", type=Path, default=REPO_ROOT / ".venv" / "bin" / "minidumper",
                        help="the minidumper command (default: the repo's venv)")
    parser.add_argument("--createdump-via", choices=("auto", "exec", "ipc"), default="auto",
                        help="auto: run createdump, and ask the runtime over its diagnostics "
                             "socket if createdump refuses the pid; exec / ipc: only that way")
    parser.add_argument("--sample-interval-us", type=float, default=100.0,
                        help="sleep between pause samples, microseconds; 0 = busy loop")
    parser.add_argument("--timeout", type=float, default=600.0, help="per-dump timeout, seconds")
    parser.add_argument("--allow-small", action="store_true",
                        help="allow --native-mb below 512 (for a quick try)")
    arguments = parser.parse_args(argv)
    if arguments.native_mb < 512 and not arguments.allow_small:
        parser.error("--native-mb must be at least 512 (or pass --allow-small)")
    if arguments.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not os.access(arguments.minidumper, os.X_OK):
        parser.error(f"{arguments.minidumper} is not executable; run ./setup.sh first")
    return arguments


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGHUP, _raise_interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="minidumper-bench-", dir="/tmp"))
    fixture = Fixture(arguments.native_mb)
    records: list[DumpRecord] = []
    interrupted = False
    try:
        pid = fixture.start()
        createdump = find_createdump(pid)
        log(f"fixture pid {pid}, RSS {rss_mib(pid):.0f} MiB; createdump {createdump}; "
            f"dumps in {workdir}")
        runner = DumpRunner(pid, workdir, arguments.minidumper, createdump,
                            arguments.createdump_via, arguments.sample_interval_us / 1e6,
                            arguments.timeout)
        turns = {MINIDUMPER: MINIDUMPER_MODES, CREATEDUMP: CREATEDUMP_MODES}
        for round_number in range(1, arguments.rounds + 1):
            order = (MINIDUMPER, CREATEDUMP) if round_number % 2 else (CREATEDUMP, MINIDUMPER)
            log(f"round {round_number}/{arguments.rounds}: {' then '.join(order)}")
            for tool in order:
                for mode in turns[tool]:
                    if fixture.process is not None and fixture.process.poll() is not None:
                        raise RuntimeError(f"the fixture exited (code {fixture.process.returncode})")
                    record = runner.run(tool, mode, round_number)
                    records.append(record)
                    if record.ok:
                        log(f"  {tool:<10} {mode:<8} {record.size_bytes / MIB:9.1f} MiB "
                            f"wall {record.wall_seconds:6.3f} s  pause {record.pause_seconds:6.3f} s"
                            + (f" (self {record.self_paused_seconds:.3f} s)"
                               if record.self_paused_seconds is not None else ""))
                    else:
                        log(f"  {tool:<10} {mode:<8} FAILED: {record.error}")
                    os.sync()  # outside the timing: the next dump starts with no writeback due
    except (KeyboardInterrupt, BenchInterrupted):
        interrupted = True
        log("interrupted; resuming the target, killing the fixture, removing the dumps")
    finally:
        fixture.close()
        shutil.rmtree(workdir, ignore_errors=True)

    if not records:
        return 130 if interrupted else 1
    summary = summarize(records)
    ratio_values = ratios(summary)
    print_report(summary, ratio_values, arguments.rounds)
    if arguments.json:
        report = {
            "native_mb": arguments.native_mb,
            "rounds": arguments.rounds,
            "interrupted": interrupted,
            "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                        "python": platform.python_version()},
            "createdump": str(createdump) if "createdump" in locals() else None,
            "sample_interval_us": arguments.sample_interval_us,
            "summary": summary,
            "ratios": ratio_values,
            "goals": {label: {"ratio": ratio_values.get(key), "limit": limit}
                      for label, key, limit in GOALS},
            "records": [dataclasses.asdict(r) for r in records],
        }
        Path(arguments.json).parent.mkdir(parents=True, exist_ok=True)
        Path(arguments.json).write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {arguments.json}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
