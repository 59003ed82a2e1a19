"""Real containers for the tests: a fixture in its own pid and mount namespaces (unshare), with a
private /tmp on the host's root, or chrooted into a minimal root where .NET sits at a path the host
does not have; and a "sidecar" dumper that shares the target's pid namespace only.

Every namespace dies with its first process, and its mounts with it: stopping the container kills
that process; a dying test run kills the launcher (PDEATHSIG), which kills it too (--kill-child).
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import CLRMD_READER, MINIDUMPER, READY_TIMEOUT, REPO, LiveApp, process_state

# Where the chrooted container sees .NET; asserted absent on the host.
HIDDEN_DOTNET = "/opt/minidumper-container-dotnet"
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Container:
    launcher: subprocess.Popen
    host_pid: int          # the fixture as the host sees it
    inner_pid: int         # ... and as it sees itself: pid 1 of its namespace
    root: Path | None      # the chroot's root, on the host; None: the host's root

    @property
    def app(self) -> LiveApp:
        return LiveApp(self.host_pid, self.launcher)

    def assert_running(self) -> None:
        assert self.launcher.poll() is None, "the container's fixture exited"
        assert process_state(self.host_pid) not in "Tt", "the target was left stopped"

    def threads_inside(self) -> set[int]:
        """The fixture's thread ids as its namespace numbers them."""
        tids = set()
        for tid in os.listdir(f"/proc/{self.host_pid}/task"):
            with open(f"/proc/{self.host_pid}/task/{tid}/status") as status:
                line = next(l for l in status if l.startswith("NSpid:"))
            tids.add(int(line.split()[-1]))
        return tids


def dotnet_dir() -> str:
    return os.path.dirname(os.path.realpath(shutil.which("dotnet")))


def start(app_args: list[str], *, chroot_root: Path | None = None,
          env: dict[str, str] | None = None) -> Container:
    """Starts `dotnet app_args...` (the first one a .dll) in new pid and mount namespaces."""
    if chroot_root is None:
        script = _private_tmp_script()
        argv = ["dotnet", *app_args]
    else:
        assert not os.path.exists(HIDDEN_DOTNET), f"{HIDDEN_DOTNET} must not exist on the host"
        script = _chroot_script(chroot_root, Path(app_args[0]).parent)
        argv = [f"{HIDDEN_DOTNET}/dotnet", f"/app/{Path(app_args[0]).name}", *app_args[1:]]
    launcher = subprocess.Popen(
        ["unshare", "--pid", "--mount", "--fork", "--kill-child", "--mount-proc", "--propagation",
         "private", "--", "sh", "-c", script, "sh", *argv],
        stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, preexec_fn=_die_with_parent,
        env={**os.environ, **(env or {})})
    try:
        inner_pid = _wait_ready(launcher)
        host_pid = _child_of(launcher.pid)
        return Container(launcher, host_pid, inner_pid, chroot_root)
    except BaseException:
        stop_launcher(launcher)
        raise


def _private_tmp_script() -> str:
    """A tmpfs on /tmp, as a container has; a repository that lives under /tmp (a CI clone) is
    carried over it, through a mount of its own on /mnt."""
    if not str(REPO).startswith("/tmp/"):
        return 'mount -t tmpfs minidumper-test-tmp /tmp && exec "$@"'
    repo = shlex.quote(str(REPO))
    return " && ".join([
        "mount -t tmpfs minidumper-test-keep /mnt", "mkdir /mnt/repo", f"mount --bind {repo} /mnt/repo",
        "mount -t tmpfs minidumper-test-tmp /tmp", f"mkdir -p {repo}", f"mount --move /mnt/repo {repo}",
        "umount /mnt", 'exec "$@"',
    ])


def _chroot_script(root: Path, app_dir: Path) -> str:
    """A root with the host's /usr, /etc and /dev bound in read-only (the libraries .NET needs),
    .NET bound at HIDDEN_DOTNET, the app at /app, its own /proc and /tmp."""
    for directory in ("usr", "etc", "dev", "proc", "tmp", "app", "reader", HIDDEN_DOTNET.lstrip("/")):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}") and not (root / link).is_symlink():
            (root / link).symlink_to(os.readlink(f"/{link}"))
    r = str(root)
    return " && ".join([
        *(f"mount --bind /{d} {r}/{d} && mount -o remount,bind,ro {r}/{d}" for d in ("usr", "etc")),
        f"mount --bind /dev {r}/dev",
        f"mount --bind {dotnet_dir()} {r}{HIDDEN_DOTNET}",
        f"mount --bind {app_dir} {r}/app",
        f"mount --bind {CLRMD_READER.parent} {r}/reader",
        f"mount -t proc proc {r}/proc",
        f"mount -t tmpfs minidumper-test-tmp {r}/tmp",
        f'exec chroot {r} "$@"',
    ])


def _wait_ready(launcher: subprocess.Popen) -> int:
    deadline = time.monotonic() + READY_TIMEOUT
    line = ""
    while time.monotonic() < deadline:
        line = launcher.stdout.readline()
        if line.startswith("READY"):
            return int(line.split()[1])
        if not line and launcher.poll() is not None:
            break
    pytest.fail(f"the container's fixture did not print READY (last line {line!r})")


def _child_of(parent: int) -> int:
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as status:
                if any(l.split() == ["PPid:", str(parent)] for l in status):
                    return int(name)
        except OSError:
            continue
    raise AssertionError(f"unshare {parent} has no child")


def stop(container: Container) -> None:
    """Kills the namespace's first process (so every process in it) and waits for the launcher."""
    try:
        os.kill(container.host_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    stop_launcher(container.launcher)


def stop_launcher(launcher: subprocess.Popen) -> None:
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGKILL)
    launcher.wait(timeout=30)
    if launcher.stdout:
        launcher.stdout.close()
    if launcher.stdin:
        launcher.stdin.close()


def run_sidecar(container: Container, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """minidumper in the target's pid namespace, in a mount namespace of its own (with a /proc
    of that pid namespace): a sidecar, or `kubectl debug --target`. The target is pid `inner_pid`."""
    argv = ["nsenter", f"--pid=/proc/{container.host_pid}/ns/pid", "--", "unshare", "--mount",
            "--fork", "--kill-child", "--mount-proc", "--propagation", "private", "--", *MINIDUMPER, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          preexec_fn=_die_with_parent)


def clrmd_read_inside(container: Container) -> dict:
    """What ClrMD reads from the live fixture, run inside the container (its pid and mount
    namespaces, and its root): the reference the dumps are held to."""
    enter = ["nsenter", f"--target={container.host_pid}", "--pid", "--mount"]
    if container.root is None:
        argv = [*enter, "dotnet", str(CLRMD_READER)]
    else:
        argv = [*enter, "--root", "--wd=/", f"{HIDDEN_DOTNET}/dotnet", f"/reader/{CLRMD_READER.name}"]
    result = subprocess.run([*argv, "--pid", str(container.inner_pid)], capture_output=True,
                            text=True, timeout=300, preexec_fn=_die_with_parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def mounts_under(prefix: str) -> list[str]:
    """The host's mounts at or below a path: none may be left after a test."""
    with open("/proc/self/mounts") as mounts:
        return [l for l in mounts if l.split()[1].startswith(prefix)]
