"""PowerShell, as its users script minidumper: --json parsed with ConvertFrom-Json, branching on
$LASTEXITCODE. pwsh is the PowerShell .NET global tool that setup.sh installs into .build/pwsh;
the test skips where it could not be installed."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import BUILD, REPO

PWSH = BUILD / "pwsh" / "pwsh"
SCRIPT = REPO / "tests" / "powershell" / "dump.ps1"
MINIDUMPER = REPO / ".venv" / "bin" / "minidumper"


def run_script(pid: str, output: str) -> subprocess.CompletedProcess:
    if not PWSH.exists():
        pytest.skip(f"PowerShell is not installed ({PWSH}); setup.sh installs it where NuGet serves it")
    env = {**os.environ, "POWERSHELL_TELEMETRY_OPTOUT": "1", "POWERSHELL_UPDATECHECK": "Off"}
    return subprocess.run([str(PWSH), "-NoProfile", "-NonInteractive", "-File", str(SCRIPT),
                           str(MINIDUMPER), pid, output], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)


def test_powershell_branches_on_the_exit_code_and_reads_the_json(heap_app, tmp_path):
    dumped = run_script(str(heap_app.pid), str(tmp_path))
    assert dumped.returncode == 0, dumped.stdout + dumped.stderr
    [written] = list(tmp_path.iterdir())
    assert re.fullmatch(rf"DUMPED path={re.escape(str(written))} runtime=10\.[\d.]+ "
                        rf"threads={heap_app.thread_count()}", dumped.stdout.strip()), dumped.stdout

    missing = run_script("999999999", str(tmp_path / "x.core"))
    assert missing.returncode == 3
    assert missing.stdout.strip() == "NOT FOUND pid=999999999 error=no process with pid 999999999"

    taken = run_script(str(heap_app.pid), str(written))
    assert taken.returncode == 6
    assert taken.stdout.strip() == (f"OUTPUT PROBLEM path={written} error=output {written} "
                                    "already exists; refusing to overwrite it")
    heap_app.assert_running()
