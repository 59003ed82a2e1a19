"""Bad input and faults: each gets its message and exit code, the target keeps running, and
nothing is left under the output name."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import MINIDUMPER, REPO, process_state, run_minidumper


def assert_nothing_written(directory: Path) -> None:
    left = [p.name for p in directory.iterdir()]
    assert left == [], left


def unnamed_output_size(dumper_pid: int, directory: Path) -> int:
    """The size of the unnamed file (O_TMPFILE) the dumper writes in directory; 0 if none yet."""
    try:
        descriptors = os.listdir(f"/proc/{dumper_pid}/fd")
    except OSError:
        return 0
    for fd in descriptors:
        try:
            if os.readlink(f"/proc/{dumper_pid}/fd/{fd}").startswith(f"{directory}/#"):
                return os.stat(f"/proc/{dumper_pid}/fd/{fd}").st_size
        except OSError:
            continue
    return 0


def test_output_that_exists_is_left_untouched(heap_app, tmp_path):
    existing = tmp_path / "taken.core"
    existing.write_bytes(b"precious")
    result = run_minidumper("--pid", str(heap_app.pid), "-f", str(existing), "--full")
    assert result.returncode == 6
    assert "already exists" in result.stderr
    assert existing.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["taken.core"]
    heap_app.assert_running()


@pytest.mark.parametrize("dangling", [False, True])
def test_output_that_is_a_symlink_is_refused(heap_app, tmp_path, dangling):
    target = tmp_path / "elsewhere"
    if not dangling:
        target.write_bytes(b"precious")
    link = tmp_path / "link.core"
    link.symlink_to(target)
    result = run_minidumper("--pid", str(heap_app.pid), "-f", str(link), "--full")
    assert result.returncode == 6
    assert "symbolic link" in result.stderr
    assert link.is_symlink()
    assert (target.read_bytes() == b"precious") if not dangling else not target.exists()
    heap_app.assert_running()


def test_output_directory_that_does_not_exist(heap_app, tmp_path):
    result = run_minidumper("--pid", str(heap_app.pid), "-f", str(tmp_path / "no" / "x.core"),
                            "--full")
    assert result.returncode == 6
    assert "does not exist" in result.stderr
    heap_app.assert_running()


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_disk_full(heap_app, small_disk):
    result = run_minidumper("--pid", str(heap_app.pid), "-f", str(small_disk / "x.core"), "--full")
    assert result.returncode == 6
    assert "no space left" in result.stderr
    assert_nothing_written(small_disk)
    heap_app.assert_running()


@pytest.mark.parametrize("mode", ["heap", "mini"])
def test_not_a_dotnet_process(tmp_path, mode):
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        result = run_minidumper("--pid", str(sleeper.pid), "-f", str(tmp_path / "x"), f"--{mode}")
        assert result.returncode == 5
        assert "not a .NET process" in result.stderr
        assert_nothing_written(tmp_path)
        assert sleeper.poll() is None and process_state(sleeper.pid) not in "Tt"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_no_permission(heap_app):
    if os.geteuid() != 0:
        pytest.skip("needs root to run the dumper as another user")
    directory = Path(tempfile.mkdtemp(prefix="minidumper-nobody-"))
    directory.chmod(0o777)
    try:
        result = subprocess.run([*MINIDUMPER, "--pid", str(heap_app.pid), "-f",
                                 str(directory / "x.core"), "--full"],
                                capture_output=True, text=True, cwd=REPO, user=65534, group=65534,
                                timeout=120)
        assert result.returncode == 4, result.stderr
        assert "access denied" in result.stderr
        assert_nothing_written(directory)
        heap_app.assert_running()
    finally:
        for leftover in directory.iterdir():
            leftover.unlink()
        directory.rmdir()



def _start_dumper(app, out: Path) -> subprocess.Popen:
    return subprocess.Popen([*MINIDUMPER, "--pid", str(app.pid), "-f", str(out), "--full"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _freeze_dumper_while_target_paused(app, dumper: subprocess.Popen) -> bool:
    """SIGSTOPs the dumper at a moment it holds the target stopped; False if it never did."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and dumper.poll() is None:
        if process_state(app.pid) in "tT":
            dumper.send_signal(signal.SIGSTOP)
            if process_state(app.pid) in "tT":
                return True
            dumper.send_signal(signal.SIGCONT)
    return False


def _freeze_dumper_while_writing(dumper: subprocess.Popen, directory: Path) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and dumper.poll() is None:
        if unnamed_output_size(dumper.pid, directory) > (32 << 20):
            dumper.send_signal(signal.SIGSTOP)
            return True
    return False


def _dumper_frozen_mid_dump(app, out: Path, phase: str) -> subprocess.Popen:
    for _ in range(5):
        dumper = _start_dumper(app, out)
        frozen = (_freeze_dumper_while_target_paused(app, dumper) if phase == "paused"
                  else _freeze_dumper_while_writing(dumper, out.parent))
        if frozen:
            return dumper
        dumper.wait(timeout=120)
        if out.exists():
            out.unlink()
    pytest.fail(f"could not catch the dumper while {phase}")


@pytest.mark.parametrize("phase", ["paused", "writing"])
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_mid_dump(fresh_app, tmp_path, phase, signal_number):
    out = tmp_path / "x.core"
    dumper = _dumper_frozen_mid_dump(fresh_app, out, phase)
    dumper.send_signal(signal_number)
    dumper.send_signal(signal.SIGCONT)
    _, stderr = dumper.communicate(timeout=120)
    assert dumper.returncode == 130, stderr
    assert "interrupted" in stderr
    assert_nothing_written(tmp_path)
    fresh_app.assert_running()


@pytest.mark.parametrize("phase", ["paused", "writing"])
def test_dumper_killed_mid_dump(fresh_app, tmp_path, phase):
    out = tmp_path / "x.core"
    dumper = _dumper_frozen_mid_dump(fresh_app, out, phase)
    dumper.send_signal(signal.SIGKILL)
    dumper.wait(timeout=60)
    # The kernel detaches a seized tracee when its tracer dies.
    deadline = time.monotonic() + 10
    while process_state(fresh_app.pid) in "tT" and time.monotonic() < deadline:
        time.sleep(0.01)
    fresh_app.assert_running()
    assert not out.exists()
    assert_nothing_written(tmp_path)   # the output was an unnamed file: nothing to clean up


def test_target_killed_mid_dump(fresh_app, tmp_path):
    out = tmp_path / "x.core"
    dumper = _dumper_frozen_mid_dump(fresh_app, out, "paused")
    fresh_app.process.kill()
    # The dead target is reported to its tracer first: only after the dumper goes on can its
    # parent collect it.
    dumper.send_signal(signal.SIGCONT)
    _, stderr = dumper.communicate(timeout=120)
    fresh_app.process.wait(timeout=30)
    assert dumper.returncode == 7, stderr
    # Seen at the seize ("has exited") or while held ("was killed mid-dump"): both are exit 7.
    assert "exited" in stderr or "killed" in stderr, stderr
    assert_nothing_written(tmp_path)
