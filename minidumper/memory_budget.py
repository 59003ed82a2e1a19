"""How much memory this process may still use: the host's MemAvailable, and below it the limit of
every memory cgroup it sits in (v1 and v2), less what that cgroup already uses.

A dump's output pages are page cache charged to the dumper's cgroup. Populated ahead beyond that
headroom, they are reclaimed again before they are written (the pause grows); on a file system
that lives in memory (tmpfs) they cannot be reclaimed at all, and the cgroup's OOM killer picks a
process, maybe the target.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

UNLIMITED = 1 << 62            # v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages)
# statfs(2) f_type of the file systems that keep their files in memory.
MEMORY_FILESYSTEMS = {0x01021994: "tmpfs", 0x858458F6: "ramfs", 0x62656570: "configfs"}


@dataclass(frozen=True)
class Headroom:
    bytes: int
    source: str      # "MemAvailable", or the cgroup whose limit binds, e.g. "cgroup v1 /a/b"

    def describe(self) -> str:
        return f"{self.bytes >> 20} MiB ({self.source})"


def headroom() -> Headroom:
    """The least, over the host and every memory cgroup from ours up to the root, of what may
    still be used. A cgroup's reclaimable page cache (inactive_file) counts as free, as the
    kubelet's working set does."""
    best = Headroom(_mem_available(), "MemAvailable")
    for source, limit, usage, reclaimable in _cgroup_levels():
        if limit >= UNLIMITED:
            continue
        free = max(0, limit - usage + reclaimable)
        if free < best.bytes:
            best = Headroom(free, source)
    return best


def memory_filesystem(fd: int) -> str | None:
    """"tmpfs" (or another in-memory file system's name) where the file lives in memory."""
    from minidumper.engines.linux._libc import libc

    buffer = ctypes.create_string_buffer(256)       # struct statfs; f_type comes first
    if libc.fstatfs(fd, buffer) != 0:
        return None
    f_type = ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF
    return MEMORY_FILESYSTEMS.get(f_type)


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return UNLIMITED


def _cgroup_levels() -> list[tuple[str, int, int, int]]:
    """(name, limit, usage, reclaimable) of each memory cgroup from ours up to its root."""
    levels = []
    mounts = _cgroup_mounts()
    try:
        with open("/proc/self/cgroup") as membership:
            lines = membership.read().splitlines()
    except OSError:
        return []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "" and "cgroup2" in mounts:
            version, (mount_point, root) = 2, mounts["cgroup2"]
        elif "memory" in controllers.split(",") and "memory" in mounts:
            version, (mount_point, root) = 1, mounts["memory"]
        else:
            continue
        if root != "/" and (path == root or path.startswith(root + "/")):
            path = path[len(root):] or "/"
        directory = os.path.normpath(mount_point + "/" + path)
        while directory.startswith(mount_point):
            level = _read_level(directory, version)
            if level is not None:
                name = "/" + os.path.relpath(directory, mount_point).removeprefix(".")
                levels.append((f"cgroup v{version} {name}", *level))
            if directory == mount_point:
                break
            directory = os.path.dirname(directory)
    return levels


def _read_level(directory: str, version: int) -> tuple[int, int, int] | None:
    files = (("memory.max", "memory.current", "inactive_file") if version == 2 else
             ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
    try:
        with open(os.path.join(directory, files[0])) as f:
            text = f.read().strip()
        limit = UNLIMITED if text == "max" else int(text)
        with open(os.path.join(directory, files[1])) as f:
            usage = int(f.read())
    except (OSError, ValueError):
        return None
    reclaimable = 0
    try:
        with open(os.path.join(directory, "memory.stat")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == files[2]:
                    reclaimable = int(value)
    except (OSError, ValueError):
        pass
    return limit, usage, reclaimable


def _cgroup_mounts() -> dict[str, tuple[str, str]]:
    """{"memory": (mount point, root), "cgroup2": (...)} from /proc/self/mountinfo."""
    found: dict[str, tuple[str, str]] = {}
    try:
        with open("/proc/self/mountinfo") as mountinfo:
            for line in mountinfo:
                before, _, after = line.partition(" - ")
                fields, tail = before.split(), after.split()
                if len(fields) < 5 or len(tail) < 3:
                    continue
                root, mount_point = _unescape(fields[3]), _unescape(fields[4])
                if tail[0] == "cgroup2":
                    found.setdefault("cgroup2", (mount_point, root))
                elif tail[0] == "cgroup" and "memory" in tail[2].split(","):
                    found.setdefault("memory", (mount_point, root))
    except OSError:
        pass
    return found


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))
