"""The bench's targets: .NET apps (bench/apps) that stamp the clock on a thread and report every
gap, so that each measures its own pause. Built on first use into .build/bench/."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from common import REPO_ROOT, log, resume_if_stopped

APPS = REPO_ROOT / "bench" / "apps"
BUILD = REPO_ROOT / ".build" / "bench"


@dataclass(frozen=True)
class TargetSpec:
    name: str
    app: str                 # project folder under bench/apps
    args: tuple[str, ...]
    about: str
    ready_timeout: float = 300.0


TARGETS = {
    "small": TargetSpec("small", "PauseTarget", ("--threads", "10", "--native-mb", "1024"),
                        "10 parked threads, 1 GiB of touched native memory, a small heap"),
    "threads": TargetSpec("threads", "PauseTarget", ("--threads", "1000"),
                          "1000 parked threads"),
    "managed": TargetSpec("managed", "PauseTarget", ("--threads", "10", "--managed-mb", "4096"),
                          "4 GiB of small managed objects (40 bytes each, 107 M)", 900.0),
    "churn": TargetSpec("churn", "PauseTarget", ("--threads", "10", "--churn-ms", "200"),
                        "10 parked threads; a short-lived thread starts every 200 ms"),
    "aspnet": TargetSpec("aspnet", "AspNetTarget", (),
                         "an idle ASP.NET Core app (Kestrel, minimal API, warmed by 150 requests)"),
}


def build(app: str) -> Path:
    dll = BUILD / app / f"{app}.dll"
    if not dll.is_file():
        log(f"building {app}")
        subprocess.run(["dotnet", "build", str(APPS / app / f"{app}.csproj"), "-c", "Release",
                        "-o", str(BUILD / app), "-nologo", "-v", "quiet", "-clp:ErrorsOnly"],
                       check=True, stdout=subprocess.DEVNULL)
    return dll


@dataclass
class Gap:
    start: float     # CLOCK_MONOTONIC seconds, the clock of time.monotonic()
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


class Target:
    """One running target; close() kills it whatever happened."""

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        self.process: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def start(self) -> int:
        dll = build(self.spec.app)
        # Own session: a Ctrl-C on the terminal reaches the bench, not the target mid-dump.
        self.process = subprocess.Popen(["dotnet", str(dll), *self.spec.args],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        start_new_session=True)
        match = re.fullmatch(rb"READY (\d+)\s*", self._line(self.spec.ready_timeout))
        if not match:
            raise RuntimeError(f"{self.spec.name}: no READY line")
        self.pid = int(match.group(1))
        return self.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def mark(self) -> None:
        """Forget the gaps seen so far."""
        self._ask(b"mark\n")
        if self._line(30.0).strip() != b"MARKED":
            raise RuntimeError(f"{self.spec.name}: no answer to mark")

    def gaps(self) -> list[Gap]:
        """The gaps (over the stamper's threshold, 1 ms) since the last mark."""
        self._ask(b"gaps\n")
        fields = self._line(30.0).split()
        if not fields or fields[0] != b"GAPS":
            raise RuntimeError(f"{self.spec.name}: no answer to gaps")
        if int(fields[2]):
            log(f"{self.spec.name}: the stamper dropped {int(fields[2])} gaps")
        return [Gap(*(float(x) for x in item.split(b":"))) for item in fields[3:]]

    def _ask(self, line: bytes) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line)
        self.process.stdin.flush()

    def _line(self, timeout: float) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        stream = self.process.stdout
        with selectors.DefaultSelector() as selector:
            selector.register(stream, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.spec.name}: no answer in {timeout:.0f} s")
                if selector.select(left):
                    line = stream.readline()
                    if not line:
                        raise RuntimeError(f"{self.spec.name} exited (code {self.process.poll()})")
                    return line

    def close(self) -> None:
        if self.process is None:
            return
        if self.pid:
            resume_if_stopped(self.pid)   # a SIGKILL ends a stopped process too, but be tidy
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log(f"target {self.process.pid} did not exit after SIGKILL")
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if self.pid and self.process.poll() is not None:
            # Killed, its runtime never removed its debugger pipes and diagnostic socket.
            tmp = Path(os.environ.get("TMPDIR") or "/tmp")
            for leftover in [*tmp.glob(f"clr-debug-pipe-{self.pid}-*"),
                             *tmp.glob(f"dotnet-diagnostic-{self.pid}-*")]:
                leftover.unlink(missing_ok=True)
        self.process = None


def pause_of(gaps: list[Gap], started: float, ended: float,
             extra_threshold: float = 0.005) -> tuple[float, int, float]:
    """The pause a dump caused, as the target saw it: the longest gap within the tool's run;
    and the other gaps of at least extra_threshold in that time (count, total seconds): time the
    target lost to the tool's work before and after the pause, or to other load."""
    during = [g for g in gaps if g.end > started and g.start < ended]
    if not during:
        return 0.0, 0, 0.0
    longest = max(during, key=lambda g: g.seconds)
    extra = [g for g in during if g is not longest and g.seconds >= extra_threshold]
    return longest.seconds, len(extra), sum(g.seconds for g in extra)
