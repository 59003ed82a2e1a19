"""The target's ids inside its own pid namespace (a container's), read from /proc.

The `NSpid`, `NSpgid` and `NSsid` lines of /proc/PID/status list an id for each pid namespace
from the one of this /proc mount down to the process's own; the last is the id the process
knows itself by, and the only one its CLR knows.
"""

from __future__ import annotations

from minidumper.engines.linux import procfs
from minidumper.model import NamespaceIds


def innermost(field: str) -> int:
    """The last id of an `NSpid`-style line ("4711\t12" -> 12); 0 if the line is empty."""
    ids = field.split()
    return int(ids[-1]) if ids else 0


def namespace_ids(status: dict[str, str]) -> NamespaceIds | None:
    """The process's ids in its own pid namespace, from its status fields; None where that
    namespace is the one this /proc shows (the ids are then the same)."""
    levels = status.get("NSpid", "").split()
    if len(levels) <= 1:
        return None
    return NamespaceIds(pid=int(levels[-1]), ppid=_parent_in_namespace(status, len(levels)),
                        pgrp=innermost(status.get("NSpgid", "")),
                        sid=innermost(status.get("NSsid", "")))


def _parent_in_namespace(status: dict[str, str], depth: int) -> int:
    """The parent's id in the same namespace, or 0 where the parent lives outside it (the
    parent's namespace is the same or an ancestor: the same depth means the same one)."""
    ppid = int(status.get("PPid", "0"))
    if not ppid:
        return 0
    try:
        levels = procfs.status_fields(ppid).get("NSpid", "").split()
    except OSError:
        return 0
    return int(levels[-1]) if len(levels) == depth else 0


def thread_id_in_namespace(pid: int, tid: int) -> int:
    """A thread's id in the target's pid namespace; 0 if it cannot be read (it just ended)."""
    try:
        raw = procfs.read_bytes(pid, f"task/{tid}/status")
    except OSError:
        return 0
    for line in raw.decode(errors="replace").splitlines():
        if line.startswith("NSpid:"):
            return innermost(line.partition(":")[2])
    return 0
