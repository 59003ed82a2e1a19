"""Finding the target: by pid, or by name among the running processes (Linux /proc)."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from minidumper.engines.linux import procfs
from minidumper.model import Mapping
from minidumper.errors import (
    AccessDeniedError, ProcessNameError, TargetExitedError, TargetNotFoundError, UsageError)

log = logging.getLogger(__name__)

DOTNET_HOSTS = {"dotnet", "dotnet.exe"}


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    name: str
    cmdline: list[str]

    @property
    def command(self) -> str:
        return " ".join(self.cmdline) or f"[{self.name}]"


def describe(pid: int) -> ProcessInfo:
    if pid <= 0 or not procfs.exists(pid):
        raise TargetNotFoundError(f"no process with pid {pid}")
    try:
        return ProcessInfo(pid, procfs.comm(pid), procfs.cmdline(pid))
    except FileNotFoundError:
        raise TargetNotFoundError(f"no process with pid {pid}") from None
    except PermissionError as error:
        raise AccessDeniedError(f"cannot read /proc/{pid}: {error.strerror}") from error


def process_of(pid: int) -> int:
    """The process to dump for a --pid: the pid itself, or the process a thread id belongs to
    (with a warning). Kernel threads and zombies are refused with what they are."""
    describe(pid)
    try:
        if procfs.is_kernel_thread(pid):
            raise TargetNotFoundError(f"pid {pid} is a kernel thread ({procfs.comm(pid)}), "
                                      "not a user process; there is nothing to dump")
        process = procfs.thread_group_id(pid)
        state = procfs.state(process)
    except (FileNotFoundError, ProcessLookupError):
        raise TargetExitedError(f"process {pid} exited") from None
    if process != pid:
        log.warning("%d is a thread of process %d (%s): dumping process %d", pid, process,
                    procfs.comm(process) if procfs.exists(process) else "?", process)
    if state in ("Z", "X", "x"):
        raise TargetExitedError(
            f"process {process} has exited (a zombie, not yet collected by its parent "
            f"{_parent(process)}); there is nothing left to dump")
    return process


def _parent(pid: int) -> str:
    try:
        return procfs.stat_fields(pid)[1]
    except OSError:
        return "?"


def thread_count(pid: int) -> int:
    """How many threads the target has now, read before pausing it."""
    return len(thread_ids(pid))


def thread_ids(pid: int) -> list[int]:
    """The target's threads now, read before pausing it."""
    try:
        return procfs.task_ids(pid)
    except (FileNotFoundError, ProcessLookupError):
        raise TargetExitedError(f"process {pid} exited") from None


def mappings(pid: int) -> list[Mapping]:
    """The target's /proc/PID/maps, read before pausing it."""
    try:
        return procfs.read_maps(pid)
    except (FileNotFoundError, ProcessLookupError):
        raise TargetExitedError(f"process {pid} exited") from None
    except PermissionError as error:
        if not procfs.alive(pid):
            raise TargetExitedError(f"process {pid} exited") from None
        raise AccessDeniedError(
            f"access denied to process {pid}: run as its user or as root") from error


def names_of(info: ProcessInfo) -> set[str]:
    """The names a process answers to: its comm, its executable, and for `dotnet app.dll`, app."""
    names = {info.name}
    if info.cmdline:
        executable = os.path.basename(info.cmdline[0])
        names.add(executable)
        if executable in DOTNET_HOSTS:
            assembly = hosted_assembly(info.cmdline[1:])
            if assembly:
                base = os.path.basename(assembly)
                names.update({base, base.removesuffix(".dll").removesuffix(".exe")})
    return names


# The muxer's options that take a value, for `dotnet [options] app.dll` and
# `dotnet exec [options] app.dll`; the others (--roll-forward-on-no-candidate-fx, -d, ...) take none.
HOST_OPTIONS_WITH_VALUE = {
    "--additionalprobingpath", "--additional-deps", "--depsfile", "--fx-version", "--roll-forward",
    "--runtimeconfig", "--roll-forward-on-no-candidate-fx",
}


def hosted_assembly(arguments: list[str]) -> str:
    """The app a `dotnet` command line runs: the first argument that is neither `exec` nor a
    host option (nor an option's value)."""
    rest = arguments[1:] if arguments[:1] == ["exec"] else arguments
    skip_value = False
    for argument in rest:
        if skip_value:
            skip_value = False
        elif argument.startswith("-"):
            skip_value = "=" not in argument and argument in HOST_OPTIONS_WITH_VALUE
        else:
            return argument
    return ""


def find_by_name(name: str) -> ProcessInfo:
    if sys.platform == "win32":
        raise UsageError("--pn is not supported on Windows yet; give the target with --pid")
    processes = _processes()
    matches = [info for info in processes if name in names_of(info)]
    if not matches:
        # The candidates: the .NET processes that are running.
        dotnet = [info for info in processes if _maps_coreclr(info.pid)]
        listing = "".join(f"\n  {m.pid}  {m.command}" for m in dotnet)
        raise ProcessNameError(f"no process named {name!r}"
                               + (f"; .NET processes:{listing}" if dotnet else ""),
                               [(m.pid, m.command) for m in dotnet])
    if len(matches) > 1:
        listing = "\n".join(f"  {m.pid}  {m.command}" for m in matches)
        raise ProcessNameError(
            f"{len(matches)} processes are named {name!r}; pick one with --pid:\n{listing}",
            [(m.pid, m.command) for m in matches])
    return matches[0]


def _processes() -> list[ProcessInfo]:
    found = []
    for pid in procfs.all_pids():
        if pid == os.getpid():
            continue
        try:
            found.append(describe(pid))
        except (TargetNotFoundError, AccessDeniedError):
            continue
    return found


def _maps_coreclr(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return any(line.rstrip().endswith("/libcoreclr.so") for line in maps)
    except OSError:
        return False
