"""Everything read from /proc, parsed in one place."""

from __future__ import annotations

import os

from minidumper.model import Mapping


def _proc(pid: int, name: str) -> str:
    return f"/proc/{pid}/{name}"


PF_KTHREAD = 0x00200000     # the flags field of /proc/PID/stat: a kernel thread


def exists(pid: int) -> bool:
    return os.path.exists(_proc(pid, "stat"))


def alive(pid: int) -> bool:
    """True while the process (or thread) runs: it exists and is neither a zombie nor dead.

    The one liveness test: a failure in the middle of a dump is blamed on the target's exit only
    when this says so."""
    try:
        return state(pid) not in ("Z", "X", "x")
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return exists(pid)


def thread_group_id(tid: int) -> int:
    """The process (thread group) a task id belongs to: itself for a process id."""
    return int(status_fields(tid).get("Tgid", tid))


def is_kernel_thread(pid: int) -> bool:
    return bool(int(stat_fields(pid)[6]) & PF_KTHREAD)


def task_ids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(_proc(pid, "task")))


# Lines of maps already parsed: most lines read in the pause were read before it, and parsing
# thousands of them again costs milliseconds of the pause. Mappings are immutable, so shared.
_parsed_lines: dict[str, Mapping] = {}
MAX_PARSED_LINES = 1 << 17


def read_maps(pid: int) -> list[Mapping]:
    with open(_proc(pid, "maps")) as f:
        lines = f.read().split("\n")
    if len(_parsed_lines) > MAX_PARSED_LINES:
        _parsed_lines.clear()
    mappings = []
    for line in lines:
        if not line:
            continue
        mapping = _parsed_lines.get(line)
        if mapping is None:
            mapping = _parsed_lines[line] = parse_maps_line(line)
        mappings.append(mapping)
    return mappings


def parse_maps_line(line: str) -> Mapping:
    # "start-end perms offset dev inode   path" where path may hold spaces.
    fields = line.rstrip("\n").split(None, 5)
    start, end = (int(x, 16) for x in fields[0].split("-"))
    path = fields[5] if len(fields) > 5 else ""
    return Mapping(start=start, end=end, perms=fields[1], offset=int(fields[2], 16),
                   inode=int(fields[4]), path=path)


def read_bytes(pid: int, name: str) -> bytes:
    with open(_proc(pid, name), "rb") as f:
        return f.read()


def comm(pid: int, name: str = "comm") -> str:
    return read_bytes(pid, name).decode(errors="replace").rstrip("\n")


def cmdline(pid: int) -> list[str]:
    raw = read_bytes(pid, "cmdline")
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def exe_path(pid: int) -> str:
    try:
        return os.readlink(_proc(pid, "exe"))
    except OSError:
        return ""


def status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in read_bytes(pid, "status").decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def stat_fields(pid: int, name: str = "stat") -> list[str]:
    """Fields of /proc/PID/stat (or of a thread's, task/TID/stat) from the state on (the name
    may hold spaces and parens)."""
    raw = read_bytes(pid, name).decode(errors="replace")
    return raw[raw.rindex(")") + 2:].split()


def state(pid: int) -> str:
    return stat_fields(pid)[0]


def thread_state(pid: int, tid: int) -> str:
    """The state letter of one thread; "" when it is gone."""
    try:
        return stat_fields(pid, f"task/{tid}/stat")[0]
    except OSError:
        return ""


def thread_name(pid: int, tid: int) -> str:
    try:
        return comm(pid, f"task/{tid}/comm")
    except OSError:
        return ""


def all_pids() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
