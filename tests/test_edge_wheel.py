"""Installed like a Python tool: the sdist carries the bridge's C# sources, a wheel built from it
runs `dotnet build` and holds the assemblies, and `pip install` of that wheel into a fresh venv
gives a `minidumper` that dumps in all three modes from any directory. Built once per session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, clrmd_read

SYSTEM_PYTHON = "/usr/bin/python3"
ASSEMBLIES = ("Recorder.dll", "Recorder.runtimeconfig.json", "Recorder.deps.json",
              "Python.Runtime.dll", "Microsoft.Diagnostics.Runtime.dll")


def run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """(venv, sdist names, wheel names): an sdist of the repository, a wheel built from it, and
    that wheel installed offline into a fresh venv that sees Debian's click."""
    if shutil.which("dotnet") is None:
        pytest.skip("building the wheel needs the .NET SDK")
    work = tmp_path_factory.mktemp("wheel")
    # The sdist is made from a copy, so that its by-products (egg-info) stay out of the repository.
    copy = work / "repository"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".build", "_dotnet", "bin", "obj", "__pycache__", "*.egg-info",
        ".pytest_cache", "build", "dist"))
    run([SYSTEM_PYTHON, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(work)!r})"],
        cwd=copy)
    [sdist] = work.glob("minidumper-*.tar.gz")
    with tarfile.open(sdist) as archive:
        sdist_names = archive.getnames()
        archive.extractall(work / "src")
    [source] = (work / "src").iterdir()
    run([SYSTEM_PYTHON, "-m", "pip", "wheel", "--no-build-isolation", "--no-index", "--no-deps",
         "-w", str(work / "dist"), "."], cwd=source)
    [wheel] = (work / "dist").glob("minidumper-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        wheel_names = archive.namelist()
    venv = work / "venv"
    run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)], cwd=work)
    run([str(venv / "bin" / "pip"), "install", "--no-index", str(wheel)], cwd=work)
    return venv, sdist_names, wheel_names


def test_the_sdist_carries_sources_and_the_wheel_the_built_bridge(installed):
    _, sdist_names, wheel_names = installed
    assert any(n.endswith("clrmd_bridge/Recorder/Recorder.csproj") for n in sdist_names)
    assert any(n.endswith("clrmd_bridge/Recorder/ClrMemoryWalker.cs") for n in sdist_names)
    assert any(n.endswith("clrmd_bridge/Recorder/build.py") for n in sdist_names)
    assert any(n.endswith("clrmd_bridge/Recorder/Directory.Build.props") for n in sdist_names)
    assert not any("/_dotnet/" in n or n.endswith(".dll") for n in sdist_names)
    for name in ASSEMBLIES:
        assert f"clrmd_bridge/_dotnet/{name}" in wheel_names
        assert f"clrmd_bridge/_dotnet/ready_to_run/{name}" in wheel_names
    config = [n for n in wheel_names if n.endswith("Recorder.runtimeconfig.json")]
    assert config


def test_the_installed_tool_dumps_in_every_mode_from_anywhere(installed, heap_app, tmp_path):
    venv, _, _ = installed
    where = run([str(venv / "bin" / "python"), "-c",
                 "import minidumper, clrmd_bridge, json; from clrmd_bridge import host; "
                 "print(json.dumps([minidumper.__file__, clrmd_bridge.__file__, "
                 "str(host.choose_assemblies(host.find_dotnet_root()))]))"], cwd=tmp_path)
    for path in json.loads(where.stdout):
        assert path.startswith(str(venv)), path     # the installed copy, not the repository
    # The SDK that built the wheel has its runtime here: the compiled-ahead build is taken.
    assert json.loads(where.stdout)[2].endswith("/_dotnet/ready_to_run")
    config = json.loads((Path(json.loads(where.stdout)[1]).parent / "_dotnet" /
                         "Recorder.runtimeconfig.json").read_text())["runtimeOptions"]
    assert config["tfm"] == "net8.0" and config["rollForward"] == "Major"

    reports = {}
    for mode in ("mini", "heap", "full"):
        directory = tmp_path / mode     # generated names have whole seconds: one directory each
        directory.mkdir()
        result = run([str(venv / "bin" / "minidumper"), "-p", str(heap_app.pid), "-o", str(directory),
                      "--type", mode, "--json"], cwd=tmp_path)
        reports[mode] = json.loads(result.stdout)
        assert reports[mode]["exit_code"] == 0 and reports[mode]["mode"] == mode
    readings = {mode: clrmd_read("--dump", report["path"]) for mode, report in reports.items()}
    assert readings["heap"]["errors"] == [] and readings["heap"]["invalid_object_count"] == 0
    assert readings["heap"]["object_count"] == readings["full"]["object_count"] > 10_000
    assert readings["heap"]["histogram"] == readings["full"]["histogram"]
    assert readings["mini"]["threads"] == readings["full"]["threads"]
    heap_app.assert_running()


def dotnet_8_root(directory: Path) -> Path | None:
    """A .NET root that holds only the .NET 8 runtime (no SDK, no .NET 10), made of links into
    NuGet's runtime pack of .NET 8, where the NuGet cache has one."""
    packs = sorted((Path.home() / ".nuget" / "packages" / "microsoft.netcore.app.runtime.linux-x64")
                   .glob("8.0.*/runtimes/linux-x64"))
    if not packs:
        return None
    pack, version = packs[-1], packs[-1].parent.parent.name
    fxr = directory / "host" / "fxr" / version
    framework = directory / "shared" / "Microsoft.NETCore.App" / version
    fxr.mkdir(parents=True)
    framework.mkdir(parents=True)
    (fxr / "libhostfxr.so").symlink_to(pack / "native" / "libhostfxr.so")
    for file in [*(pack / "lib" / "net8.0").iterdir(), *(pack / "native").iterdir()]:
        (framework / file.name).symlink_to(file)
    return directory


def test_the_installed_bridge_runs_where_only_dotnet_8_is(installed, heap_app, tmp_path):
    venv, _, _ = installed
    root = dotnet_8_root(tmp_path / "dotnet8")
    if root is None:
        pytest.skip("no .NET 8 runtime pack in the NuGet cache")
    env = {**os.environ, "DOTNET_ROOT": str(root)}
    env.pop("PYTHONPATH", None)
    version = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "from clrmd_bridge import host; host.load(); import System; "
                              "print(System.Environment.Version)"],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert version.stdout.startswith("8.0."), version.stdout + version.stderr
    result = subprocess.run([str(venv / "bin" / "minidumper"), "-p", str(heap_app.pid), "-o",
                             str(tmp_path / "heap.core"), "--heap", "--json"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stdout
    reading = clrmd_read("--dump", str(tmp_path / "heap.core"))
    assert reading["errors"] == [] and reading["object_count"] > 10_000
    heap_app.assert_running()


def test_requires_python_is_what_pythonnet_needs():
    """pyproject's requires-python (>=3.11) against pythonnet itself: the bridge's .NET loads in
    each Python 3.11+ found here (pyenv's), and fails in Loader.Initialize on 3.10."""
    import tomllib

    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert required == ">=3.11"
    interpreters = sorted(Path("/root/.pyenv/versions").glob("3.1[0-9]*/bin/python"))
    if not any("3.10" in str(p) for p in interpreters):
        pytest.skip("no Python 3.10 here to check the lower bound against")
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from clrmd_bridge import host; "
             "host.load(); import System; print(System.Environment.Version)")
    for interpreter in interpreters:
        result = subprocess.run([str(interpreter), "-c", probe, str(REPO)], capture_output=True,
                                text=True, timeout=120)
        minor = int(interpreter.parent.parent.name.split(".")[1])
        if minor >= 11:
            assert result.returncode == 0, (interpreter, result.stderr[-500:])
        else:
            assert "Loader.Initialize failed" in result.stderr, (interpreter, result.stderr[-500:])
