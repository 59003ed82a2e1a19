"""Other shapes of .NET process: self-contained single-file apps (.NET 8, runtime linked into the
executable), framework-dependent single-file apps, Server GC; the DAC search, and no network."""

from __future__ import annotations

import glob
import json
import os
import re
import struct
import subprocess
import time

import pytest
from elftools.elf.elffile import ELFFile

from conftest import (BUILD, HEAP_FIXTURE, MINIDUMPER, READY_TIMEOUT, REPO, LiveApp, clrmd_read,
                      run_minidumper, sos, stop_app)

SINGLE_FILE_NET8 = BUILD / "fixtures" / "SingleFileNet8" / "SingleFileNet8"
SINGLE_FILE_FRAMEWORK = BUILD / "fixtures" / "SingleFileFramework" / "SingleFileFramework"
PARKED_METHODS = ("WaitInAlpha", "WaitInBeta", "WaitInGamma", "ParkMain")
DIAG_INFO_ADDRESS = 0x7FFFFFF10000


def start(argv: list[str], env: dict[str, str] | None = None) -> LiveApp:
    if not os.path.exists(argv[0]) and argv[0] != "dotnet":
        pytest.fail(f"{argv[0]} is missing: run ./setup.sh")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    deadline = time.monotonic() + READY_TIMEOUT
    line = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("READY"):
            return LiveApp(int(line.split()[1]), process)
        if not line and process.poll() is not None:
            break
    process.kill()
    process.wait()
    pytest.fail(f"fixture did not print READY (last line {line!r})")


def dac_of_runtime_pack(version_line: bytes) -> str:
    """The NuGet cache's DAC whose "@(#)Version" line is the runtime's: setup's publish put it there."""
    packs = os.path.expanduser("~/.nuget/packages/microsoft.netcore.app.runtime.linux-x64")
    for path in glob.glob(f"{packs}/*/runtimes/linux-x64/native/libmscordaccore.so"):
        with open(path, "rb") as dac:
            if version_line in dac.read():
                return path
    pytest.fail(f"no runtime pack DAC for {version_line!r} in {packs}")


def version_line(path) -> bytes:
    data = open(path, "rb").read()
    at = data.index(b"@(#)Version ")
    return data[at:data.index(b"\0", at)]


def dump_app(app: LiveApp, path, mode: str, *extra: str, env: dict | None = None) -> dict:
    result = run_minidumper("--pid", str(app.pid), "-f", str(path), f"--{mode}", "--json", *extra,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stdout + result.stderr
    app.assert_running()
    return json.loads(result.stdout)


def diag_info_runtime_base(core) -> int:
    with open(core, "rb") as f:
        for segment in ELFFile(f).iter_segments():
            if segment["p_type"] == "PT_LOAD" and segment["p_vaddr"] == DIAG_INFO_ADDRESS:
                signature, _, _, base = struct.unpack_from("<16si4xQQ", segment.data())
                assert signature.rstrip(b"\0") == b"DIAGINFOHEADER"
                return base
    raise AssertionError("no diag-info page")


def executable_base(pid: int, path) -> int:
    with open(f"/proc/{pid}/maps") as maps:
        return min(int(line.split("-")[0], 16) for line in maps
                   if line.rstrip().endswith(str(path)) and line.split()[2] == "00000000")


@pytest.fixture(scope="module")
def single_file_app():
    app = start([str(SINGLE_FILE_NET8), "--native-mb", "16"])
    yield app
    stop_app(app)


@pytest.fixture(scope="module")
def single_file_dumps(single_file_app, tmp_path_factory):
    directory = tmp_path_factory.mktemp("single-file")
    dac = dac_of_runtime_pack(version_line(SINGLE_FILE_NET8))
    reports = {mode: dump_app(single_file_app, directory / f"{mode}.core", mode) for mode in ("full", "heap", "mini")}
    return {mode: directory / f"{mode}.core" for mode in reports}, reports, dac


def test_single_file_dumps_say_where_the_runtime_is(single_file_app, single_file_dumps):
    paths, reports, dac = single_file_dumps
    base = executable_base(single_file_app.pid, SINGLE_FILE_NET8)
    for mode, path in paths.items():
        assert diag_info_runtime_base(path) == base, mode
    # The NuGet cache's runtime pack is where the search found the DAC.
    assert reports["heap"]["dac_path"] == reports["mini"]["dac_path"] == dac
    assert reports["heap"]["ranges_by_kind"]["runtime-data"] > 0


@pytest.mark.parametrize("mode", ["full", "heap", "mini"])
def test_sos_reads_single_file_dumps_without_warnings(single_file_dumps, mode):
    paths, _, dac = single_file_dumps
    out = sos(paths[mode], f"setclrpath {os.path.dirname(dac)}", "clrthreads", "clrstack -all")
    for method in PARKED_METHODS:
        assert re.search(rf"HeapFixture\.\S*{method}\(", out), out
    assert "warning" not in out.lower(), out


def test_clrmd_reads_the_single_file_heap_dump_as_the_full_dump(single_file_dumps):
    paths, _, dac = single_file_dumps
    full = clrmd_read("--dump", str(paths["full"]), "--dac", dac)
    heap = clrmd_read("--dump", str(paths["heap"]), "--dac", dac)
    assert heap["errors"] == [] and heap["invalid_object_count"] == 0
    assert heap["object_count"] == full["object_count"] > 10_000
    assert heap["histogram"] == full["histogram"] and heap["roots"] == full["roots"]
    assert heap["threads"] == full["threads"]


def test_no_matching_dac_is_exit_5_naming_the_version_and_where_it_looked(single_file_app, tmp_path):
    elsewhere = {"HOME": str(tmp_path), "NUGET_PACKAGES": str(tmp_path / "none")}
    result = run_minidumper("--pid", str(single_file_app.pid), "-f", str(tmp_path / "x"), "--mini",
                            env={**os.environ, **elsewhere})
    assert result.returncode == 5, result.stderr
    version = version_line(SINGLE_FILE_NET8).split()[1].decode()
    assert version in result.stderr and "--dac" in result.stderr
    for place in ("beside the runtime", "installed .NET", "NuGet cache", "MINIDUMPER_DAC_PATH"):
        assert place in result.stderr
    assert os.listdir(tmp_path) == [] and single_file_app.state() not in "Tt"


def test_dac_given_by_flag_or_environment(single_file_app, single_file_dumps, tmp_path):
    _, _, dac = single_file_dumps
    elsewhere = {"HOME": str(tmp_path), "NUGET_PACKAGES": str(tmp_path / "none")}
    by_flag = dump_app(single_file_app, tmp_path / "flag.core", "mini", "--dac", os.path.dirname(dac),
                       env=elsewhere)
    assert by_flag["dac_path"] == dac
    by_variable = dump_app(single_file_app, tmp_path / "variable.core", "mini",
                           env={**elsewhere, "MINIDUMPER_DAC_PATH": os.path.dirname(dac)})
    assert by_variable["dac_path"] == dac
    # A DAC of another build is refused, not used.
    other = sorted(glob.glob("/usr/share/dotnet/shared/Microsoft.NETCore.App/*/libmscordaccore.so"))
    if other:
        wrong = run_minidumper("--pid", str(single_file_app.pid), "-f", str(tmp_path / "w"), "--mini",
                               "--dac", other[0])
        assert wrong.returncode == 5 and "is not the DAC" in wrong.stderr


def test_framework_dependent_single_file_app(tmp_path):
    app = start([str(SINGLE_FILE_FRAMEWORK), "--native-mb", "16"])
    try:
        reports = {mode: dump_app(app, tmp_path / f"{mode}.core", mode) for mode in ("heap", "mini")}
        for mode in reports:
            out = sos(tmp_path / f"{mode}.core", "clrstack -all")
            assert all(re.search(rf"HeapFixture\.\S*{m}\(", out) for m in PARKED_METHODS), out
            assert "warning" not in out.lower(), out
        heap = clrmd_read("--dump", str(tmp_path / "heap.core"))
        assert heap["errors"] == [] and heap["object_count"] > 10_000
    finally:
        stop_app(app)


def test_server_gc_in_all_modes(tmp_path):
    app = start(["dotnet", str(HEAP_FIXTURE), "--native-mb", "16"], env={"DOTNET_gcServer": "1"})
    try:
        for mode in ("full", "heap", "mini"):
            dump_app(app, tmp_path / f"{mode}.core", mode)
        full = clrmd_read("--dump", str(tmp_path / "full.core"))
        heap = clrmd_read("--dump", str(tmp_path / "heap.core"))
        mini = clrmd_read("--dump", str(tmp_path / "mini.core"))
        assert heap["errors"] == [] and heap["invalid_object_count"] == 0
        assert heap["object_count"] == full["object_count"] > 10_000
        assert heap["histogram"] == full["histogram"] and heap["segments"] == full["segments"]
        assert mini["threads"] == heap["threads"] == full["threads"]
        stat = lambda text: text[text.index("Statistics:"):]
        assert stat(sos(tmp_path / "heap.core", "dumpheap -stat")) == stat(sos(tmp_path / "full.core", "dumpheap -stat"))
        assert "Server" in sos(tmp_path / "heap.core", "eeversion")
    finally:
        stop_app(app)


@pytest.mark.parametrize("mode", ["heap", "mini"])
def test_no_network_is_needed(heap_app, tmp_path, mode):
    """In a network namespace with no interface up, any download would fail or hang: the dump
    succeeds, so none is tried."""
    started = time.monotonic()
    result = subprocess.run(["unshare", "--net", "--", *MINIDUMPER, "--pid", str(heap_app.pid), "-f",
                             str(tmp_path / "x.core"), f"--{mode}", "--json"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["dac_path"].endswith("libmscordaccore.so")
    assert time.monotonic() - started < 120
    heap_app.assert_running()


def test_no_network_and_no_dac_fails_clearly(single_file_app, tmp_path):
    result = subprocess.run(["unshare", "--net", "--", *MINIDUMPER, "--pid", str(single_file_app.pid),
                             "-f", str(tmp_path / "x.core"), "--heap", "--json"],
                            capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "HOME": str(tmp_path), "NUGET_PACKAGES": str(tmp_path)})
    assert result.returncode == 5 and json.loads(result.stdout)["exit_code"] == 5
    assert "no DAC" in json.loads(result.stdout)["error"]


def test_self_contained_net9_app_in_all_modes(tmp_path):
    """.NET 9, not installed here: its runtime and DAC ship beside the app."""
    executable = BUILD / "fixtures" / "SelfContainedNet9" / "SelfContainedNet9"
    app = start([str(executable), "--native-mb", "16"])
    try:
        reports = {mode: dump_app(app, tmp_path / f"{mode}.core", mode) for mode in ("full", "heap", "mini")}
        assert reports["heap"]["dac_path"] == str(executable.parent / "libmscordaccore.so")
        full = clrmd_read("--dump", str(tmp_path / "full.core"))
        heap = clrmd_read("--dump", str(tmp_path / "heap.core"))
        mini = clrmd_read("--dump", str(tmp_path / "mini.core"))
        assert heap["errors"] == [] and heap["object_count"] == full["object_count"] > 10_000
        assert heap["histogram"] == full["histogram"]
        assert mini["threads"] == heap["threads"] == full["threads"]
        assert heap["version_string"].startswith("9.")
        out = sos(tmp_path / "mini.core", "clrstack -all")
        assert all(re.search(rf"HeapFixture\.\S*{m}\(", out) for m in PARKED_METHODS), out
        assert "warning" not in out.lower(), out
    finally:
        stop_app(app)
