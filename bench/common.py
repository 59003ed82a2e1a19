"""Small pieces the bench shares: logging, the target's thread states, running a tool measured
(wall, CPU, peak RSS), and the copy floor (process_vm_readv speed on the target)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GNU_TIME = "/usr/bin/time"
MIB = 1024 * 1024


class BenchInterrupted(Exception):
    """SIGTERM or SIGHUP, unwound like Ctrl-C so that every finally runs."""


def raise_interrupted(signum: int, frame: object) -> None:
    raise BenchInterrupted(signal.Signals(signum).name)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- the target's threads ------------------------------------------------------------------

def state_of(stat: bytes) -> int:
    """The state letter (as an int) from a /proc/.../stat line; the comm may hold spaces and ')'."""
    close = stat.rfind(b")")
    return stat[close + 2] if close >= 0 and close + 2 < len(stat) else 0


def stopped_threads(pid: int) -> dict[int, str]:
    stopped: dict[int, str] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return stopped
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as stat:
                state = chr(state_of(stat.read()))
        except (OSError, IndexError):
            continue
        if state in "tT":
            stopped[int(tid)] = state
    return stopped


def resume_if_stopped(pid: int, wait_seconds: float = 2.0) -> str | None:
    """Make sure the target runs. Returns a note when the bench had to step in, else None.

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
    note = f"target had {len(stopped)} stopped thread(s) after the dump; sent SIGCONT"
    still = stopped_threads(pid)
    if still:
        note += f"; still stopped: {sorted(still.items())[:5]}"
    log(note)
    return note


def steal_seconds() -> float:
    """CPU time the hypervisor gave to others while this VM's CPUs had work, summed over the
    CPUs so far (/proc/stat): a target's gap that it explains was the host's, not the tool's."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- one tool, measured --------------------------------------------------------------------

@dataclass
class ToolRun:
    exit_code: int
    stdout: str
    stderr: str
    started: float          # time.monotonic() at launch
    ended: float            # ... at exit
    cpu_seconds: float      # user + system, the tool and every child it waited for
    peak_rss_mib: float     # the largest of the tool and its waited-for children


def run_tool(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> ToolRun:
    """Runs argv in its own session (a terminal Ctrl-C reaches the bench first) and takes its
    resource use from wait4. On a timeout or an interrupt the tool gets SIGINT, then SIGTERM,
    then SIGKILL, so that it can resume the target and clean up first."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="minidumper-bench-time-") as usage_file:
        # GNU time starts the tool: a child forked from the bench would count the bench's own
        # memory in its peak RSS (the kernel keeps the high-water mark across exec).
        wrapped = ([GNU_TIME, "-q", "-f", "%M %U %S", "-o", usage_file.name, *argv]
                   if os.access(GNU_TIME, os.X_OK) else argv)
        started = time.monotonic()
        process = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                   start_new_session=True, env=env)
        try:
            status, usage = _wait(process, timeout)
        except BaseException:
            _stop(process)
            raise
        ended = time.monotonic()
        process.returncode = os.waitstatus_to_exitcode(status)
        cpu, peak = usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
        fields = Path(usage_file.name).read_text().split()
        if wrapped is not argv and len(fields) == 3:
            peak, cpu = int(fields[0]) / 1024, float(fields[1]) + float(fields[2])
        out.seek(0)
        err.seek(0)
        return ToolRun(process.returncode, out.read().decode(errors="replace"),
                       err.read().decode(errors="replace"), started, ended, cpu, peak)


def _wait(process: subprocess.Popen, timeout: float):
    """A blocking wait4 (no polling to steal the CPU from the target); a timer stops the tool."""
    timer = threading.Timer(timeout, _stop, (process,))
    timer.daemon = True
    timer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    return status, usage


def _stop(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)   # the tool's own session: GNU time and the tool
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not os.path.exists(f"/proc/{process.pid}") or _zombie(process.pid):
                return
            time.sleep(0.01)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return state_of(stat.read()) == ord("Z")
    except OSError:
        return True


# --- the copy floor ------------------------------------------------------------------------

MADV_POPULATE_WRITE = 23


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def copy_rate(pid: int, limit: int = 512 * MIB, chunk: int = 8 * MIB) -> float:
    """Bytes per second process_vm_readv copies from the target's anonymous memory (the floor
    of any dump's pause: its bytes must be read, and written somewhere). Best of three passes
    over up to `limit` bytes of memory that was ever written (a dump reads no other: never-touched
    pages are zeros, and read through the kernel's zero page far faster), into a prefaulted
    destination as large as the copy: a dump writes every byte to memory of its own, never
    through a buffer that stays in the CPU's cache (which made an earlier floor 20-30 % faster)."""
    import mmap
    sys.path.insert(0, str(REPO_ROOT))
    from minidumper.engines.linux import pagemap
    from minidumper.model import MemoryRange
    from minidumper.plan.select import subtract

    libc = ctypes.CDLL(None, use_errno=True)
    libc.process_vm_readv.restype = ctypes.c_ssize_t
    regions = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if fields[1].startswith("rw") and len(fields) == 5:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            regions.append((start, end))
    regions.sort()
    untouched = [MemoryRange(start, end) for start, end in pagemap.untouched(pid, regions)]
    regions = [(r.start, r.end) for r in subtract([MemoryRange(*r) for r in regions], untouched)]
    regions.sort(key=lambda r: r[0] - r[1])   # largest first
    destination = mmap.mmap(-1, limit)
    destination.madvise(MADV_POPULATE_WRITE)
    base = ctypes.addressof((ctypes.c_char * limit).from_buffer(destination))
    best = 0.0
    for _ in range(3):
        copied, began = 0, time.perf_counter()
        for start, end in regions:
            address = start
            while address < end and copied < limit:
                size = min(chunk, end - address, limit - copied)
                local = _IoVec(base + copied, size)
                remote = _IoVec(address, size)
                done = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
                if done <= 0:
                    break
                copied += done
                address += done
            if copied >= limit:
                break
        elapsed = time.perf_counter() - began
        if copied and elapsed:
            best = max(best, copied / elapsed)
    return best
