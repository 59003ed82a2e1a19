"""A copy larger than the kernel lets the page cache hold dirty before writing it back is staged
in shared memory in the pause and written to the file with O_DIRECT after it: the same core, read
by the same readers, with the same holes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from conftest import REPO, clrmd_read, run_minidumper, start_app, stop_app
from interruptions import check_outcome, finish, wait_not_stopped
from minidumper import output_staging
from minidumper.output_staging import Staging
from test_edge_output import in_cgroup, memory_cgroup, run_in_cgroup, threads_in  # noqa: F401 (a fixture)

STAGED = "(staged in shared memory)"


def read_only_segments(path: Path) -> dict[int, bytes]:
    """The contents of the core's PT_LOAD segments that the target could not write, by address."""
    with open(path, "rb") as core:
        return {s["p_vaddr"]: s.data() for s in ELFFile(core).iter_segments()
                if s["p_type"] == "PT_LOAD" and not s["p_flags"] & 2 and s["p_filesz"]}


@pytest.fixture(scope="module")
def managed_app():
    """300 MiB of managed objects: dumps large enough to stage within a cgroup's limit."""
    app = start_app("--managed-mb", "300")
    yield app
    stop_app(app)


def limit_that_stages(size: int) -> int:
    """A memory cgroup limit whose background writeback threshold (a share of it, as the kernel
    reckons it) is half a dump of size bytes, and whose headroom holds the dump twice."""
    if int(Path("/proc/sys/vm/dirty_background_bytes").read_text()):
        pytest.skip("vm.dirty_background_bytes is set: the threshold is not a share of the cgroup")
    limit = size * 100 // int(Path("/proc/sys/vm/dirty_background_ratio").read_text()) // 2
    if limit < 2 * size + (400 << 20):
        pytest.skip("vm.dirty_background_ratio is too high to stage a dump within a cgroup")
    return limit


def test_a_full_dump_past_the_dirty_threshold_is_staged(managed_app, memory_cgroup, tmp_path):
    staged_core, plain_core = tmp_path / "staged.core", tmp_path / "plain.core"
    plain = run_minidumper("-p", str(managed_app.pid), "-o", str(plain_core), "--full", "-v")
    assert plain.returncode == 0 and STAGED not in plain.stderr, plain.stderr
    written = plain_core.stat().st_blocks * 512
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(limit_that_stages(written)))
    staged = run_in_cgroup(memory_cgroup, "-p", str(managed_app.pid), "-o", str(staged_core),
                           "--full", "-v")
    assert staged.returncode == 0, staged.stderr
    assert STAGED in staged.stderr and "the staged copy written to the file" in staged.stderr
    managed_app.assert_running()

    assert threads_in(staged_core) == managed_app.thread_count()
    assert staged_core.stat().st_size == plain_core.stat().st_size
    # Never-written memory stays a hole: the disk holds what the plain dump's does.
    assert staged_core.stat().st_blocks <= plain_core.stat().st_blocks * 1.05
    code = read_only_segments(staged_core)
    assert len(code) > 20 and code == read_only_segments(plain_core)
    seen, live = clrmd_read("--dump", str(staged_core)), clrmd_read("--pid", str(managed_app.pid))
    assert seen["object_count"] == live["object_count"] > 1_000_000
    assert seen["invalid_object_count"] == 0 and seen["histogram"] == live["histogram"]
    for core in (staged_core, plain_core):    # pytest keeps the last runs' files: 1 GB here
        core.unlink()


def test_a_heap_dump_staged_is_walked_and_read_whole(managed_app, memory_cgroup, tmp_path):
    """The CLR is walked on the pause's copy: staged, it is in the file before the walk reads it."""
    plain = run_minidumper("-p", str(managed_app.pid), "-o", str(tmp_path / "plain.core"), "--heap")
    assert plain.returncode == 0, plain.stderr
    limit = limit_that_stages((tmp_path / "plain.core").stat().st_size)
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(limit))
    core = tmp_path / "heap.core"
    result = run_in_cgroup(memory_cgroup, "-p", str(managed_app.pid), "-o", str(core), "--heap", "-v")
    assert result.returncode == 0, result.stderr
    assert STAGED in result.stderr and "the CLR walked on the copy" in result.stderr
    managed_app.assert_running()
    seen, live = clrmd_read("--dump", str(core)), clrmd_read("--pid", str(managed_app.pid))
    assert seen["object_count"] == live["object_count"] > 1_000_000
    assert seen["invalid_object_count"] == 0 and seen["histogram"] == live["histogram"]
    for dump in (core, tmp_path / "plain.core"):
        dump.unlink()


@pytest.mark.parametrize("alignment", [4096, 256])
def test_write_out_puts_every_byte_where_the_mapping_had_it(tmp_path, monkeypatch, caplog,
                                                            alignment):
    """Whole pages go with O_DIRECT, the partial pages at the ends through the page cache. With
    256-byte "pages", which no disk takes with O_DIRECT (EINVAL), all of it goes through the
    page cache."""
    monkeypatch.setattr(output_staging, "DIRECT_ALIGNMENT", alignment)
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        size = 3 << 20
        os.posix_fallocate(fd, 0, size)
        staging = Staging.open(fd, size)
        if staging is None:
            pytest.skip("no O_DIRECT on the test's file system")
        pattern = bytes(range(251)) * (size // 251 + 1)
        staging.mapping[:] = pattern[:size]
        regions = [(0, 4096), (4096 + 17, 70_000), (200_000, 1 << 20), ((2 << 20) - 5, 1000)]
        told = []
        with caplog.at_level(logging.DEBUG, logger="minidumper.output_staging"):
            staging.write_out(regions, fd, told.append)
        staging.close()
        assert sum(told) == sum(length for _, length in regions)    # what a progress bar is told
        written = path.read_bytes()
    finally:
        os.close(fd)
    expected = bytearray(size)
    for offset, length in regions:
        expected[offset:offset + length] = pattern[offset:offset + length]
    assert written == bytes(expected)
    assert ("O_DIRECT writes refused" in caplog.text) == (alignment == 256)


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_signal_while_the_staged_copy_is_written(managed_app, memory_cgroup, tmp_path,
                                                   signal_number):
    """The target is running again by then: a signal ends the dumper as anywhere else (130, the
    JSON object, no output; SIGKILL: no output), and the shared memory goes with it."""
    plain = tmp_path / "plain.core"
    assert run_minidumper("-p", str(managed_app.pid), "-o", str(plain), "--full").returncode == 0
    limit = limit_that_stages(plain.stat().st_blocks * 512)
    plain.unlink()
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(limit))
    out = tmp_path / "x.core"
    dumper = subprocess.Popen(in_cgroup(memory_cgroup, "-p", str(managed_app.pid), "-o", str(out),
                                        "--full", "-v", "--json"),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = []
    for line in dumper.stderr:
        said.append(line)
        if "minidumper.pauses: pause:" in line:     # resumed: the staged copy is being written
            dumper.send_signal(signal_number)
            break
    outcome = finish(dumper)
    said.append(outcome.stderr)
    assert any(STAGED in line for line in said), said
    assert not any("the staged copy written" in line for line in said), "signalled too late"
    if signal_number == signal.SIGKILL:
        assert outcome.code == -signal.SIGKILL and list(tmp_path.iterdir()) == []
        assert wait_not_stopped(managed_app.pid) not in "tT"
    else:
        check_outcome(outcome, out, {130}, target=managed_app)
    managed_app.assert_running()
