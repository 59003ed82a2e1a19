"""The output file: unnamed until complete, a random hidden name where O_TMPFILE is missing, long
names, memory cgroups and tmpfs, and the library's arguments."""

from __future__ import annotations

import io
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from conftest import MINIDUMPER, REPO, run_minidumper
from test_faults import unnamed_output_size

HIDDEN_NAME = re.compile(r"^\.[0-9a-f]{24}\.minidumper-partial$")


def threads_in(data: io.BytesIO | Path) -> int:
    with (open(data, "rb") if isinstance(data, Path) else data) as core:
        notes = next(s for s in ELFFile(core).iter_segments() if s["p_type"] == "PT_NOTE")
        return sum(1 for note in notes.iter_notes() if note["n_type"] == "NT_PRSTATUS")


def test_the_output_has_no_name_until_it_is_complete(fresh_app, tmp_path):
    out = tmp_path / "app.core"
    seen, seen_unnamed = set(), False
    dumper = subprocess.Popen([*MINIDUMPER, "-p", str(fresh_app.pid), "-o", str(out), "--full"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while dumper.poll() is None:
        seen.update(os.listdir(tmp_path))
        seen_unnamed = seen_unnamed or unnamed_output_size(dumper.pid, tmp_path) > 0
    assert dumper.returncode == 0, dumper.stderr.read()
    assert seen_unnamed, "never caught the dumper writing"
    assert seen <= {"app.core"}, seen
    assert out.stat().st_mode & 0o777 == 0o600
    assert threads_in(out) == fresh_app.thread_count()


@pytest.fixture
def no_o_tmpfile(monkeypatch):
    """The file system answers O_TMPFILE as kernels and file systems without it do (EISDIR),
    and every hidden name the dumper makes is noted as the output is committed."""
    from minidumper import output, output_stream

    names: list[list[str]] = []

    def noting(commit):
        def noting_commit(self, size):
            names.append(sorted(os.listdir(self.directory)))
            commit(self, size)
        return noting_commit

    monkeypatch.setattr(output, "O_TMPFILE", os.O_DIRECTORY)
    for kind in (output.OutputFile, output_stream.StreamedOutput):
        monkeypatch.setattr(kind, "commit", noting(kind.commit))
    return names


def test_without_o_tmpfile_the_partial_name_is_random_short_and_removed(heap_app, tmp_path,
                                                                        no_o_tmpfile):
    from minidumper import write_dump

    long_name = "a" * 250                       # legal; a partial name must still fit NAME_MAX
    for name in ("one.core", "two.core", long_name):
        result = write_dump(heap_app.pid, str(tmp_path / name), "full")
        assert result.path == str(tmp_path / name)
    hidden = [n for listing in no_o_tmpfile for n in listing if n.startswith(".")]
    assert len(hidden) == 3 and len(set(hidden)) == 3
    assert all(HIDDEN_NAME.match(n) for n in hidden), hidden
    assert sorted(os.listdir(tmp_path)) == sorted(["one.core", "two.core", long_name])
    assert threads_in(tmp_path / long_name) == heap_app.thread_count()


def test_a_stream_without_o_tmpfile_leaves_nothing(heap_app, tmp_path, no_o_tmpfile, monkeypatch):
    import tempfile

    from minidumper import write_dump

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stream = io.BytesIO()
    result = write_dump(heap_app.pid, stream, "mini")
    [[hidden]] = no_o_tmpfile
    assert HIDDEN_NAME.match(hidden)
    assert os.listdir(tmp_path) == []
    stream.seek(0)
    assert threads_in(stream) == result.threads


def test_a_250_character_name_works(heap_app, tmp_path):
    out = tmp_path / ("b" * 250)
    result = run_minidumper("-p", str(heap_app.pid), "-o", str(out), "--mini")
    assert result.returncode == 0, result.stderr
    assert threads_in(out) == heap_app.thread_count()


def test_the_library_takes_modes_and_streams_and_refuses_the_rest(heap_app, tmp_path):
    from minidumper import DumpMode, MinidumperError, write_dump
    from minidumper.errors import UsageError

    assert write_dump(heap_app.pid, tmp_path / "a.core", "full").mode is DumpMode.FULL
    assert write_dump(heap_app.pid, str(tmp_path / "b.core"), DumpMode.FULL).mode is DumpMode.FULL
    with pytest.raises(UsageError) as refused:
        write_dump(heap_app.pid, tmp_path / "c.core", "bogus")
    assert isinstance(refused.value, MinidumperError) and refused.value.exit_code == 2
    for pid, path, mode in ((heap_app.pid, tmp_path / "c.core", 3), (str(heap_app.pid), tmp_path / "c.core", "full"),
                            (heap_app.pid, 3.5, "full")):
        with pytest.raises(TypeError):
            write_dump(pid, path, mode)
    # A stream without a descriptor gets the complete core too.
    stream = io.BytesIO()
    result = write_dump(heap_app.pid, stream, "mini")
    assert result.path is None and result.bytes_written == len(stream.getvalue())
    stream.seek(0)
    assert threads_in(stream) == result.threads == heap_app.thread_count()
    assert sorted(os.listdir(tmp_path)) == ["a.core", "b.core"]


def test_the_library_from_threads(heap_app, tmp_path):
    """Documented as safe from any thread: two dumps at once from worker threads."""
    from minidumper import write_dump

    results, errors = {}, []

    def dump(name: str, mode: str) -> None:
        try:
            results[name] = write_dump(heap_app.pid, tmp_path / name, mode)
        except Exception as error:   # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=dump, args=(f"{mode}.core", mode)) for mode in ("mini", "full")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [] and len(results) == 2
    for name in results:
        assert threads_in(tmp_path / name) == heap_app.thread_count()
    heap_app.assert_running()


@pytest.fixture
def memory_cgroup():
    """A child of this process's memory cgroup (v1 here), with a limit set by the test."""
    own = next((line.split(":", 2)[2].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
                if "memory" in line.split(":")[1].split(",")), None)
    base = Path("/sys/fs/cgroup/memory")
    if own is None or not (base / own.lstrip("/") / "memory.limit_in_bytes").exists():
        pytest.skip("no cgroup v1 memory controller here")
    group = base / own.lstrip("/") / f"minidumper-test-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as error:
        pytest.skip(f"cannot make a memory cgroup: {error}")
    yield group
    for _ in range(50):
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def in_cgroup(group: Path, *args: str) -> list[str]:
    """The command line of minidumper with args, run inside the cgroup from its first line."""
    command = " ".join([*MINIDUMPER, *args])
    return ["sh", "-c", f"echo $$ > {group}/cgroup.procs && exec {command}"]


def run_in_cgroup(group: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(in_cgroup(group, *args), capture_output=True, text=True, cwd=REPO,
                          timeout=300)


@pytest.fixture
def memory_disk(tmp_path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_tmpfs_beyond_the_cgroup_headroom_is_refused_before_the_pause(heap_app, memory_cgroup,
                                                                       memory_disk):
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(160 << 20))
    result = run_in_cgroup(memory_cgroup, "-p", str(heap_app.pid), "-o", str(memory_disk / "x.core"),
                           "--full", "-v")
    assert result.returncode == 6, result.stderr
    assert "tmpfs" in result.stderr and "cgroup v1" in result.stderr
    assert "paused" not in result.stderr, "refused only after pausing the target"
    assert os.listdir(memory_disk) == []
    heap_app.assert_running()


def test_populating_ahead_follows_the_cgroup_not_the_host(heap_app, memory_cgroup, tmp_path):
    """A full dump of the fixture (about 200 MiB, some 130 of them ever written) is populated
    ahead where the host has room, and not within a 200 MiB cgroup, where its pages would be
    reclaimed before the copy."""
    free = run_minidumper("-p", str(heap_app.pid), "-o", str(tmp_path / "free.core"), "--full", "-v")
    assert free.returncode == 0 and re.search(r"populated ahead: \d+ MiB in ", free.stderr), free.stderr
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(200 << 20))
    limited = run_in_cgroup(memory_cgroup, "-p", str(heap_app.pid), "-o",
                            str(tmp_path / "limited.core"), "--full", "-v")
    assert limited.returncode == 0, limited.stderr
    assert re.search(r"populated ahead: no; memory headroom \d+ MiB \(cgroup v1 /", limited.stderr), \
        limited.stderr
    assert threads_in(tmp_path / "limited.core") == heap_app.thread_count()
    heap_app.assert_running()
