"""What the command line says about a dump: one JSON schema for every outcome, or one text line.

The same keys are always there, whatever happened; what is unknown (a failed dump has no size)
is null. Imports only the standard library, so that the entry module can report an interruption
during start-up, before anything else is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

# The schema: every key and its JSON types. README.md documents it; tests validate against it.
SCHEMA: dict[str, tuple[type, ...]] = {
    "exit_code": (int,),
    "error": (str, type(None)),              # null on success
    "pid": (int, type(None)),                # as the target sees itself (inside its pid namespace)
    "host_pid": (int, type(None)),           # as minidumper found it
    "mode": (str, type(None)),               # mini, heap, full
    "path": (str, type(None)),               # null when streaming, or before the output is known
    "runtime_version": (str, type(None)),    # the target's .NET runtime
    "minidumper_version": (str,),
    "warnings": (list,),                     # strings: what ClrMD could not list, and the like
    "matches": (list,),                      # {"pid", "cmdline"} of each candidate of a failed --pn
    "dac_path": (str, type(None)),
    "bytes_written": (int, type(None)),
    "threads": (int, type(None)),
    "ranges_by_kind": (dict, type(None)),
    "paused_seconds": (float, int, type(None)),
    "total_seconds": (float, int, type(None)),
}


def version() -> str:
    from minidumper import __version__
    return __version__


@dataclass
class Outcome:
    """Filled in as the command goes, so that a failure at any step reports what was known."""

    exit_code: int = 0
    error: str | None = None
    pid: int | None = None
    host_pid: int | None = None
    mode: str | None = None
    path: str | None = None
    runtime_version: str | None = None
    minidumper_version: str = field(default_factory=version)
    warnings: list[str] = field(default_factory=list)
    matches: list[dict] = field(default_factory=list)
    dac_path: str | None = None
    bytes_written: int | None = None
    threads: int | None = None
    ranges_by_kind: dict[str, int] | None = None
    paused_seconds: float | None = None
    total_seconds: float | None = None

    def succeeded(self, result: dict) -> None:
        """Takes a DumpResult's as_dict()."""
        for key, value in result.items():
            if key in SCHEMA:
                setattr(self, key, value)
        self.exit_code, self.error = 0, None

    def failed(self, exit_code: int, message: str) -> None:
        self.exit_code, self.error = exit_code, message

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def text_line(self) -> str:
        where = self.path or "stdout"
        runtime = f".NET {self.runtime_version}" if self.runtime_version else "no .NET runtime found"
        return (f"{where}: {self.mode} dump of process {self.pid} ({runtime}), "
                f"{self.bytes_written} bytes, {self.threads} threads, "
                f"target paused {self.paused_seconds or 0:.3f} s")


def emit(text: str, fd: int) -> None:
    """One line on a descriptor, whatever became of it: a closed or broken stdout or stderr
    never turns a written dump into a failure."""
    data = (text + "\n").encode(errors="replace")
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass
