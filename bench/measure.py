"""One dump of a target by one tool, measured: the target's own pause (its clock stamper), wall,
CPU, peak RSS, size, and the tool's own account."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import createdump as cd
from common import MIB, log, resume_if_stopped, run_tool, steal_seconds
from proc_sampler import PauseSampler
from targets import Target, pause_of

MINIDUMPER = "minidumper"
CREATEDUMP = "createdump"
# Each minidumper mode and the createdump mode it is compared with.
COUNTERPART = {"full": "full", "heap": "withheap", "mini": "normal"}


@dataclass
class Tool:
    """minidumper (or a variant of it: the same command with settings in its environment), or
    createdump."""
    name: str
    kind: str                           # MINIDUMPER or CREATEDUMP
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class DumpRecord:
    target: str
    tool: str
    mode: str                            # minidumper's mode name; createdump's own for createdump
    round: int
    method: str = "exec"                 # or "diagnostics-ipc" (createdump asked over the socket)
    ok: bool = False
    exit_code: int | None = None
    error: str = ""
    size_bytes: int = 0
    wall_seconds: float = 0.0            # launch to exit, seen by the bench
    cpu_seconds: float = 0.0             # user + system of the tool and its children
    peak_rss_mib: float = 0.0
    pause_seconds: float = 0.0           # the target's longest gap during the run
    extra_gaps: int = 0                  # the target's other gaps >= 5 ms during the run
    extra_gap_seconds: float = 0.0
    steal_seconds: float = 0.0           # the host's steal time on this VM's CPUs during the run
    self_paused_seconds: float | None = None   # minidumper's paused_seconds
    self_total_seconds: float | None = None    # the tool's own run time
    proc_pause_seconds: float | None = None    # from /proc sampling, with --proc-sampler
    left_stopped: str | None = None
    ranges_by_kind: dict[str, int] = field(default_factory=dict)


class DumpRunner:
    def __init__(self, target: Target, workdir: Path, minidumper: Path, createdump: Path,
                 createdump_via: str, timeout: float, proc_sampler: bool) -> None:
        self.target = target
        self.workdir = workdir
        self.minidumper = minidumper
        self.createdump = createdump
        self.createdump_via = createdump_via   # "auto", "exec" or "ipc"
        self.timeout = timeout
        self.proc_sampler = proc_sampler

    def run(self, tool: Tool, mode: str, round_number: int) -> DumpRecord:
        record = DumpRecord(self.target.spec.name, tool.name, mode, round_number)
        if tool.kind == CREATEDUMP and self.createdump_via == "ipc":
            record.method = "diagnostics-ipc"
        output = self.workdir / f"{tool.name}-{mode}-{round_number}.core"
        note = resume_if_stopped(self.target.pid)
        if note:
            record.error = f"before the dump: {note}"
        try:
            self._measure(record, tool, output)
            if (tool.kind == CREATEDUMP and self.createdump_via == "auto" and not record.ok
                    and record.exit_code not in (None, 0)):
                log(f"createdump refused pid {self.target.pid} ({record.error}); asking the "
                    "runtime over its diagnostics socket from now on")
                self.createdump_via = "ipc"
                record = DumpRecord(self.target.spec.name, tool.name, mode, round_number,
                                    "diagnostics-ipc")
                output.unlink(missing_ok=True)
                self._measure(record, tool, output)
        finally:
            output.unlink(missing_ok=True)
            for leftover in self.workdir.glob(output.name + "*"):
                leftover.unlink(missing_ok=True)
        return record

    def _measure(self, record: DumpRecord, tool: Tool, output: Path) -> None:
        pid = self.target.pid
        sampler = PauseSampler(pid, 0.0002) if self.proc_sampler else None
        self.target.mark()
        steal_before = steal_seconds()
        if sampler:
            sampler.__enter__()
        stdout = stderr = ""
        try:
            if record.method == "diagnostics-ipc":
                started = time.monotonic()
                try:
                    cd.DiagnosticsClient(pid, self.timeout).generate_core_dump(str(output), record.mode)
                    record.exit_code = 0
                except (cd.DiagnosticsIpcError, OSError) as error:
                    record.error = f"{type(error).__name__}: {error}"
                ended = time.monotonic()
            else:
                env = {**os.environ, **tool.env} if tool.env else None
                run = run_tool(self._argv(tool, record.mode, output), self.timeout, env)
                started, ended = run.started, run.ended
                record.exit_code, stdout, stderr = run.exit_code, run.stdout, run.stderr
                record.cpu_seconds, record.peak_rss_mib = run.cpu_seconds, run.peak_rss_mib
            time.sleep(0.05)   # a tracee resumes as its tracer goes away
        finally:
            if sampler:
                record.proc_pause_seconds = sampler.stop().any_thread_seconds
        record.steal_seconds = steal_seconds() - steal_before
        record.left_stopped = resume_if_stopped(pid)
        record.wall_seconds = ended - started
        gaps = self.target.gaps()
        record.pause_seconds, record.extra_gaps, record.extra_gap_seconds = pause_of(
            gaps, started, ended)
        if record.exit_code == 0 and output.is_file():
            record.size_bytes = output.stat().st_size
            record.ok = True
        elif not record.error:
            lines = (stderr or stdout).strip().splitlines()
            record.error = f"exit {record.exit_code}: {lines[-1] if lines else ''}".strip()
        if tool.kind == MINIDUMPER and record.ok:
            _read_minidumper_json(record, stdout)
        if tool.kind == CREATEDUMP and record.method == "exec":
            match = re.search(r"written in (\d+)\s*ms", stdout + stderr)
            if match:
                record.self_total_seconds = int(match.group(1)) / 1000

    def _argv(self, tool: Tool, mode: str, output: Path) -> list[str]:
        if tool.kind == MINIDUMPER:
            return [str(self.minidumper), "--pid", str(self.target.pid), "-f", str(output),
                    f"--{mode}", "--json"]
        return [str(self.createdump), cd.FLAGS[mode], "-f", str(output), str(self.target.pid)]


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
                f"{record.size_bytes / MIB:.1f} MiB")
        return
