"""The command line's contract: flags, exit codes, and a fast start that never loads .NET."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import HEAP_FIXTURE, REPO, run_minidumper, start_app, stop_app

# Run the CLI in-process, then report whether anything of .NET got imported or mapped.
NO_DOTNET_PROBE = """
import sys
from minidumper.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    code = done.code
dotnet_modules = [m for m in sys.modules if m in ("clr", "pythonnet") or m.startswith("clrmd_bridge.")]
with open("/proc/self/maps") as maps:
    dotnet_libraries = [l for l in maps if "libcoreclr" in l or "libhostfxr" in l]
print("EXIT", code, "MODULES", dotnet_modules, "LIBRARIES", len(dotnet_libraries), file=sys.stderr)
"""


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["--version"], 0),
    (["--pid", "1", "-f", ""], 2),                  # an empty output name
    (["-p", "1", "--type", "bogus"], 2),
    (["-p", "1", "-o", "x", "--type", "Full", "--mini"], 2),
    (["--pid", "1", "-f", "x", "--mini", "--heap"], 2),
    (["-f", "x"], 2),                               # no target
    (["--pid", "1", "--pn", "x", "-f", "x"], 2),
    (["--bogus"], 2),
])
def test_help_version_and_usage_errors_never_load_dotnet(argv, code):
    result = subprocess.run([sys.executable, "-c", NO_DOTNET_PROBE, *argv], capture_output=True,
                            text=True, cwd=REPO, timeout=60)
    assert f"EXIT {code} MODULES [] LIBRARIES 0" in result.stderr, result.stderr


def test_help_names_the_default_mode_and_the_exit_codes():
    result = run_minidumper("--help")
    assert result.returncode == 0
    for text in ("--pid", "--pn", "-f", "--mini", "--heap", "--full", "--json", "-v", "The default",
                 "Exit codes", "130"):
        assert text in result.stdout


def test_version():
    result = run_minidumper("--version")
    assert result.returncode == 0 and "minidumper, version" in result.stdout


def test_two_modes_is_a_usage_error(tmp_path):
    result = run_minidumper("--pid", "1", "-f", str(tmp_path / "x"), "--full", "--mini")
    assert result.returncode == 2
    assert "choose one mode" in result.stderr
    assert not (tmp_path / "x").exists()


def test_no_such_pid(tmp_path):
    result = run_minidumper("--pid", "999999999", "-f", str(tmp_path / "x"), "--full")
    assert result.returncode == 3
    assert "no process with pid 999999999" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_such_process_name(tmp_path):
    result = run_minidumper("--pn", "no-such-process-here", "-f", str(tmp_path / "x"), "--full")
    assert result.returncode == 3
    assert "no process named" in result.stderr


def test_ambiguous_process_name_lists_the_candidates(tmp_path):
    sleepers = [subprocess.Popen(["sleep", "300"]) for _ in range(2)]
    try:
        result = run_minidumper("--pn", "sleep", "-f", str(tmp_path / "x"), "--full")
        assert result.returncode == 3
        assert "processes are named 'sleep'" in result.stderr
        for sleeper in sleepers:
            assert str(sleeper.pid) in result.stderr
        assert list(tmp_path.iterdir()) == []
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


def test_process_name_finds_a_dotnet_app_by_its_assembly(tmp_path):
    # The fixture under a name of its own, so that no other process can share it.
    name = f"NamedApp{os.getpid()}"
    for suffix in (".dll", ".runtimeconfig.json"):
        (tmp_path / f"{name}{suffix}").symlink_to(HEAP_FIXTURE.with_suffix("").with_name(
            "HeapFixture" + suffix))
    app = start_app(dll=tmp_path / f"{name}.dll")
    try:
        for given in (name, f"{name}.dll"):
            out = tmp_path / f"{given}.core"
            result = run_minidumper("--pn", given, "-f", str(out), "--full", "--json")
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["pid"] == app.pid
            app.assert_running()
    finally:
        stop_app(app)


def test_json_errors_are_machine_readable(tmp_path):
    result = run_minidumper("--pid", "999999999", "-f", str(tmp_path / "x"), "--full", "--json")
    assert result.returncode == 3
    answer = json.loads(result.stdout)
    assert (answer["error"], answer["exit_code"], answer["pid"]) == (
        "no process with pid 999999999", 3, 999999999)
    assert result.stderr == "", "with --json, stderr stays quiet unless -v"
    usage = run_minidumper("--pid", "1", "-f", str(tmp_path / "x"), "--full", "--mini", "--json")
    assert usage.returncode == 2 and json.loads(usage.stdout)["exit_code"] == 2


def test_progress_bar_only_when_stderr_is_a_terminal(heap_app, tmp_path):
    import pty
    main_end, terminal_end = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "minidumper", "--pid", str(heap_app.pid),
                                 "-f", str(tmp_path / "tty.core"), "--full"],
                                stdout=subprocess.PIPE, stderr=terminal_end, cwd=REPO, timeout=120)
        os.close(terminal_end)
        terminal_end = None
        shown = b""
        while True:
            try:
                chunk = os.read(main_end, 65536)
            except OSError:   # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main_end)
        if terminal_end is not None:
            os.close(terminal_end)
    assert result.returncode == 0
    assert b"writing dump" in shown and b"100%" in shown
    assert b"writing dump" not in result.stdout
    heap_app.assert_running()
