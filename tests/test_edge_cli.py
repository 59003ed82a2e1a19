"""The command line as users of dotnet-dump, scripts and pipelines use it: its flags, where the
output goes (a directory, a generated name, stdout), one JSON schema for every outcome, and the
checks that come before .NET is started."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from conftest import MINIDUMPER, REPO, clrmd_read, gdb_batch, process_state, run_minidumper
from minidumper.report import SCHEMA

DEFAULT_NAME = re.compile(r"^core_HeapFixture_(\d+)_\d{8}_\d{6}$")


def assert_schema(answer: dict) -> dict:
    """Every outcome is one object of the same keys, each of its documented JSON types."""
    assert set(answer) == set(SCHEMA), set(answer) ^ set(SCHEMA)
    for key, types in SCHEMA.items():
        assert isinstance(answer[key], types), (key, answer[key])
    assert (answer["error"] is None) == (answer["exit_code"] == 0)
    return answer


def threads_in_core(path: Path) -> int:
    with open(path, "rb") as core:
        notes = next(s for s in ELFFile(core).iter_segments() if s["p_type"] == "PT_NOTE")
        return sum(1 for note in notes.iter_notes() if note["n_type"] == "NT_PRSTATUS")


def test_dotnet_dump_flags_a_directory_and_the_generated_name(heap_app, tmp_path):
    result = run_minidumper("-p", str(heap_app.pid), "-o", str(tmp_path), "--type", "Mini", "--json")
    answer = assert_schema(json.loads(result.stdout))
    assert result.returncode == 0 and result.stderr == ""
    written = Path(answer["path"])
    assert written.parent == tmp_path and DEFAULT_NAME.match(written.name)
    assert DEFAULT_NAME.match(written.name).group(1) == str(heap_app.pid)
    assert answer["mode"] == "mini" and answer["runtime_version"].startswith("10.")
    assert threads_in_core(written) == answer["threads"] == heap_app.thread_count()

    # No output at all: that name in the current directory. Long flags, another case.
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = subprocess.run([*MINIDUMPER, "--process-id", str(heap_app.pid), "--type", "FULL"],
                            capture_output=True, text=True, cwd=elsewhere, timeout=300)
    assert result.returncode == 0, result.stderr
    [written] = list(elsewhere.iterdir())
    assert DEFAULT_NAME.match(written.name)
    # The text line names the file, the mode and the runtime.
    assert result.stdout.startswith(f"{written}: full dump of process {heap_app.pid} (.NET 10.")
    heap_app.assert_running()


def test_a_generated_name_already_taken_gets_a_number(heap_app, tmp_path):
    """Dumps of one process in the same second (a script's loop) each get their own file; the
    one already there is left as it was."""
    from minidumper.output import default_name

    now = time.time()
    taken = {default_name(heap_app.pid, "HeapFixture", now + s) for s in range(-1, 30)}
    for name in taken:
        (tmp_path / name).write_text("an earlier dump")
        (tmp_path / f"{name}_2").write_text("an earlier dump")
    result = run_minidumper("-p", str(heap_app.pid), "-o", str(tmp_path), "--mini", "--json")
    answer = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    written = Path(answer["path"])
    assert written.name.endswith("_3") and written.name.removesuffix("_3") in taken
    assert threads_in_core(written) == answer["threads"]
    assert all((tmp_path / n).read_text() == "an earlier dump" for n in taken)
    heap_app.assert_running()


def test_output_alias_and_mode_flags_agree(heap_app, tmp_path):
    same = run_minidumper("--output", str(tmp_path / "a.core"), "-p", str(heap_app.pid),
                          "--type", "full", "--full", "--json")
    assert same.returncode == 0 and json.loads(same.stdout)["mode"] == "full"
    differ = run_minidumper("-o", str(tmp_path / "b.core"), "-p", str(heap_app.pid),
                            "--type", "heap", "--full")
    assert differ.returncode == 2 and "choose one mode" in differ.stderr
    assert not (tmp_path / "b.core").exists()


def test_help_says_what_heap_means():
    result = run_minidumper("--help")
    text = " ".join(result.stdout.split())
    for flag in ("-p, --pid, --process-id", "-n, --pn, --name", "-f, -o, --output", "--type",
                 "--pause-timeout", "Not dotnet-dump's Heap"):
        assert flag in text


def test_streaming_to_a_pipe_gives_the_core_that_readers_read(heap_app, tmp_path):
    """-o - writes the complete core on stdout, in order, read here from a pipe (not a file);
    ClrMD reads the same heap from it as from a file dump, and gdb sees every thread."""
    streamed = tmp_path / "streamed.core"
    with subprocess.Popen([*MINIDUMPER, "-p", str(heap_app.pid), "-o", "-", "--heap", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO) as dumper:
        with open(streamed, "wb") as sink:
            while chunk := dumper.stdout.read(1 << 20):
                sink.write(chunk)
        report = json.loads(dumper.stderr.read())   # stdout carries the core: the JSON is here
    assert dumper.returncode == 0
    assert_schema(report)
    assert report["path"] is None and report["bytes_written"] == streamed.stat().st_size
    file_dump = tmp_path / "file.core"
    assert run_minidumper("-p", str(heap_app.pid), "-o", str(file_dump), "--heap").returncode == 0
    from_stream, from_file = clrmd_read("--dump", str(streamed)), clrmd_read("--dump", str(file_dump))
    assert from_stream["errors"] == [] and from_stream["object_count"] > 10_000
    for key in ("object_count", "histogram", "roots", "threads"):
        assert from_stream[key] == from_file[key], key
    out = gdb_batch(streamed, "info threads")
    assert len(re.findall(r"^\*?\s+\d+\s+(?:Thread|LWP)", out, re.M)) == report["threads"], out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.core", "streamed.core"]
    heap_app.assert_running()


def test_a_reader_that_goes_away_mid_stream_is_an_output_error(heap_app):
    with subprocess.Popen([*MINIDUMPER, "-p", str(heap_app.pid), "-o", "-", "--full", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO) as dumper:
        assert dumper.stdout.read(4096)[:4] == b"\x7fELF"
        dumper.stdout.close()
        answer = assert_schema(json.loads(dumper.stderr.read()))
    assert dumper.returncode == answer["exit_code"] == 6
    assert "closed by its reader" in answer["error"]
    heap_app.assert_running()


def test_streaming_to_a_terminal_is_refused_before_anything_starts(heap_app):
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run([*MINIDUMPER, "-p", str(heap_app.pid), "-o", "-", "--full"],
                                stdout=terminal, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    assert "refusing to write a binary dump to a terminal" in result.stderr
    heap_app.assert_running()


@pytest.fixture
def read_only_directory(tmp_path):
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs (needs root): {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_output_problems_are_refused_before_dotnet_starts(heap_app, tmp_path, read_only_directory):
    """Heap mode starts .NET in the bridge's process as the dump begins; an unusable output is
    refused before that: no bridge process, and in a fraction of the time the bridge takes."""
    (tmp_path / "taken.core").write_bytes(b"precious")
    (tmp_path / "link.core").symlink_to(tmp_path / "nowhere")
    cases = {
        str(tmp_path / "taken.core"): "already exists",
        str(tmp_path / "link.core"): "symbolic link",
        str(tmp_path / "missing" / "x.core"): "does not exist",
        str(tmp_path / "missing") + "/": "does not exist",
        str(read_only_directory / "x.core"): "not writable",
        str(tmp_path / ("n" * 256)): "allow 255",
    }
    started = time.monotonic()
    heap = run_minidumper("-p", str(heap_app.pid), "-o", str(tmp_path / "ok.core"), "--heap", "-v")
    heap_seconds = time.monotonic() - started
    assert heap.returncode == 0 and "bridge process" in heap.stderr
    for output, message in cases.items():
        started = time.monotonic()
        result = run_minidumper("-p", str(heap_app.pid), "-o", output, "--heap", "-v", "--json")
        seconds = time.monotonic() - started
        answer = assert_schema(json.loads(result.stdout))
        assert result.returncode == 6 and answer["exit_code"] == 6, result.stderr
        assert message in answer["error"] and message in result.stderr
        assert "bridge process" not in result.stderr, "refused only after .NET was started"
        assert seconds < heap_seconds / 2, (output, seconds, heap_seconds)
    assert (tmp_path / "taken.core").read_bytes() == b"precious"
    assert (tmp_path / "link.core").is_symlink() and not (tmp_path / "nowhere").exists()
    heap_app.assert_running()


def test_every_documented_failure_speaks_the_one_schema(heap_app, tmp_path):
    sleepers = [subprocess.Popen(["sleep", "300"]) for _ in range(2)]
    try:
        runs = {
            2: ["-p", "1", "-o", str(tmp_path / "x"), "--mini", "--full"],
            3: ["-p", "999999999", "-o", str(tmp_path / "x")],
            5: ["-p", str(sleepers[0].pid), "-o", str(tmp_path / "x"), "--heap"],
            6: ["-p", str(heap_app.pid), "-o", str(tmp_path / "no" / "x")],
        }
        for code, argv in runs.items():
            result = run_minidumper(*argv, "--json")
            answer = assert_schema(json.loads(result.stdout))
            assert result.returncode == answer["exit_code"] == code, result.stdout
            assert result.stderr == "", "--json without -v keeps stderr quiet"
        not_dotnet = json.loads(run_minidumper("-p", str(sleepers[0].pid), "-o", str(tmp_path / "x"),
                                               "--json").stdout)
        assert not_dotnet["pid"] == sleepers[0].pid and not_dotnet["path"] == str(tmp_path / "x")
        assert not_dotnet["mode"] == "heap"

        ambiguous = run_minidumper("-n", "sleep", "-o", str(tmp_path / "x"), "--json")
        answer = assert_schema(json.loads(ambiguous.stdout))
        assert ambiguous.returncode == 3 and ambiguous.stderr == ""
        by_pid = {m["pid"]: m["cmdline"] for m in answer["matches"]}
        for sleeper in sleepers:
            assert by_pid[sleeper.pid] == "sleep 300"

        unknown = run_minidumper("--name", "no-such-process-here", "--json")
        answer = assert_schema(json.loads(unknown.stdout))
        assert unknown.returncode == 3 and "no process named" in answer["error"]
        # The candidates of an unknown name are the .NET processes running.
        assert heap_app.pid in {m["pid"] for m in answer["matches"]}
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
    assert list(tmp_path.iterdir()) == []
    heap_app.assert_running()


def test_closed_stdout_and_stderr_still_give_the_dump_and_success(heap_app, tmp_path):
    for redirections in (">&-", ">&- 2>&-", "2>&-"):
        out = tmp_path / f"{len(redirections)}.core"
        command = " ".join([*MINIDUMPER, "-p", str(heap_app.pid), "-o", str(out), "--full", "--json"])
        result = subprocess.run(["sh", "-c", f"exec {command} {redirections}"], cwd=REPO, timeout=300)
        assert result.returncode == 0, redirections
        assert threads_in_core(out) == heap_app.thread_count()
    # A reader that went away: the report cannot be printed, the dump is still good.
    out = tmp_path / "broken-pipe.core"
    with subprocess.Popen([*MINIDUMPER, "-p", str(heap_app.pid), "-o", str(out), "--mini", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO) as dumper:
        dumper.stdout.close()
        assert dumper.wait(timeout=300) == 0, dumper.stderr.read()
    assert threads_in_core(out) == heap_app.thread_count()
    heap_app.assert_running()


def test_too_few_open_files_is_a_clear_error(heap_app, tmp_path):
    command = " ".join([*MINIDUMPER, "-p", str(heap_app.pid), "-o", str(tmp_path / "x"), "--heap",
                        "--json"])
    result = subprocess.run(["sh", "-c", f"ulimit -n 40 && exec {command}"], capture_output=True,
                            text=True, cwd=REPO, timeout=300)
    answer = assert_schema(json.loads(result.stdout))
    assert result.returncode == answer["exit_code"] == 1
    assert "ulimit -n" in answer["error"] and "--full" in answer["error"]
    assert list(tmp_path.iterdir()) == []
    # A full dump needs no bridge, and works within that limit.
    full = subprocess.run(["sh", "-c", f"ulimit -n 40 && exec {command.replace('--heap', '--full')}"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert full.returncode == 0, full.stdout
    assert threads_in_core(tmp_path / "x") == heap_app.thread_count()
    assert heap_app.state() not in "Tt"


def test_permission_and_clr_failures_speak_the_schema_too(heap_app, tmp_path):
    """Exit 4 (another user's process) and 9 (the CLR walk failed in the pause, made to fail
    here by the bridge's test-only fault switch)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the dumper as another user")
    shared = Path(tempfile.mkdtemp(prefix="minidumper-nobody-"))   # reachable by nobody
    shared.chmod(0o777)
    try:
        denied = subprocess.run([*MINIDUMPER, "-p", str(heap_app.pid), "-o", str(shared / "x"),
                                 "--full", "--json"], capture_output=True, text=True, cwd=REPO,
                                user=65534, group=65534, timeout=120)
        answer = assert_schema(json.loads(denied.stdout))
        assert denied.returncode == answer["exit_code"] == 4 and denied.stderr == ""
        assert os.listdir(shared) == []
    finally:
        shutil.rmtree(shared)
    walk_failed = run_minidumper("-p", str(heap_app.pid), "-o", str(tmp_path / "x"), "--mini",
                                 "--json", env={**os.environ, "MINIDUMPER_TEST_BRIDGE_FAULT": "mini:exit"})
    answer = assert_schema(json.loads(walk_failed.stdout))
    assert walk_failed.returncode == answer["exit_code"] == 9
    assert answer["pid"] == heap_app.pid and answer["path"] == str(tmp_path / "x")
    assert list(tmp_path.iterdir()) == []
    heap_app.assert_running()


def test_every_key_of_a_dump_result_is_in_the_one_schema():
    """A key added to DumpResult.as_dict() must be added to report.SCHEMA (and report.Outcome,
    null on failure), or the JSON would silently leave it out."""
    from minidumper.dump import DumpResult
    from minidumper.model import DumpMode
    from minidumper.report import Outcome

    result = DumpResult(path="/x", pid=1, mode=DumpMode.FULL, bytes_written=1, threads=1)
    assert set(result.as_dict()) <= set(SCHEMA), set(result.as_dict()) - set(SCHEMA)
    assert set(Outcome().as_dict()) == set(SCHEMA)
