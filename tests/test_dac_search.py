"""The pieces of container and single-file support that stand alone: `--pn` with the dotnet
host's own syntax, the namespace ids, the ELF export lookup, and the DAC search's checks, on real
files and real processes."""

from __future__ import annotations

import glob
import json
import os
import subprocess

import pytest
from elftools.elf.elffile import ELFFile

from conftest import HEAP_FIXTURE, READY_TIMEOUT, LiveApp, run_minidumper, stop_app
from minidumper import dac, runtime_files, targets
from minidumper.engines.linux import namespaces
from minidumper.errors import DacNotFoundError
from minidumper.plan import elf_exports

INSTALLED_DACS = sorted(glob.glob(
    f"{os.path.dirname(os.path.realpath(__import__('shutil').which('dotnet')))}"
    "/shared/Microsoft.NETCore.App/*/libmscordaccore.so"))


@pytest.mark.parametrize("arguments, assembly", [
    (["app.dll"], "app.dll"),
    (["exec", "app.dll", "x"], "app.dll"),
    (["exec", "--runtimeconfig", "a.json", "--depsfile", "a.deps.json", "app.dll"], "app.dll"),
    (["--roll-forward", "Major", "--additionalprobingpath", "/p", "app.dll", "--verbose"], "app.dll"),
    (["--fx-version=8.0.0", "app.dll"], "app.dll"),
    (["exec"], ""),
])
def test_hosted_assembly(arguments, assembly):
    assert targets.hosted_assembly(arguments) == assembly


def test_pn_finds_dotnet_exec_with_host_options(tmp_path):
    name = f"ExecApp{os.getpid()}"
    (tmp_path / f"{name}.dll").symlink_to(HEAP_FIXTURE)
    config = HEAP_FIXTURE.with_name("HeapFixture.runtimeconfig.json")
    process = subprocess.Popen(["dotnet", "exec", "--runtimeconfig", str(config), "--roll-forward",
                                "Major", str(tmp_path / f"{name}.dll")],
                               stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("READY"), line
        app = LiveApp(int(line.split()[1]), process)
        result = run_minidumper("--pn", name, "-f", str(tmp_path / "x.core"), "--full", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["pid"] == app.pid
    finally:
        stop_app(LiveApp(process.pid, process))


def test_namespace_ids_of_a_process_in_the_dumpers_namespace_are_none():
    from minidumper.engines.linux import procfs
    assert namespaces.namespace_ids(procfs.status_fields(os.getpid())) is None
    assert namespaces.thread_id_in_namespace(os.getpid(), os.getpid()) == os.getpid()
    assert namespaces.innermost("4711\t12\t3") == 3


def test_elf_export_lookup_agrees_with_pyelftools():
    """Looked up in this process's own memory, as it is in the target's."""
    with open("/proc/self/maps") as maps:
        line = next(l for l in maps if "/libc.so" in l and l.split()[2] == "00000000")
    base, path = int(line.split("-")[0], 16), line.split()[-1]
    with open(f"/proc/self/mem", "rb", buffering=0) as mem:
        def read(address: int, size: int) -> bytes:
            try:
                return os.pread(mem.fileno(), size, address)
            except OSError:
                return b""
        with open(path, "rb") as f:
            symbols = ELFFile(f).get_section_by_name(".dynsym")
            for name in ("malloc", "pthread_create", "gnu_get_libc_version"):
                expected = symbols.get_symbol_by_name(name)[0]["st_value"]
                assert elf_exports.export_address(read, base, name) == base + expected
        assert elf_exports.export_address(read, base, "no_such_symbol_here") is None


@pytest.mark.skipif(not INSTALLED_DACS, reason="no installed .NET")
def test_the_search_checks_the_build_and_says_where_it_looked(tmp_path):
    installed = INSTALLED_DACS[-1]
    line = runtime_files.version_line_of_file(installed)
    runtime = runtime_files.TargetRuntime(
        module_path="/nowhere/libcoreclr.so", base=0, single_file=False, version=runtime_files.version_of(line),
        version_line=line, dac_build_id=None, reachable_dir=None)
    environ = {"PATH": os.environ["PATH"], "NUGET_PACKAGES": str(tmp_path)}
    assert dac.locate(runtime, environ=environ) == installed
    assert dac.locate(runtime, explicit=os.path.dirname(installed), environ=environ) == installed

    # A runtime of another build: the installed DAC does not count, not even by --dac.
    other = runtime_files.TargetRuntime(
        module_path="/nowhere/libcoreclr.so", base=0, single_file=False, version="1.2.3.4",
        version_line=b"@(#)Version 1.2.3.4 @Commit: 0000", dac_build_id=None, reachable_dir=None)
    with pytest.raises(DacNotFoundError) as error:
        dac.locate(other, environ={**environ, dac.ENVIRONMENT_VARIABLE: str(tmp_path)})
    message = str(error.value)
    assert "1.2.3.4" in message and str(tmp_path) in message and os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.dirname(installed)))) in message
    with pytest.raises(DacNotFoundError, match="is not the DAC"):
        dac.locate(other, explicit=installed, environ=environ)

    # By build id (a single-file runtime names its DAC's): the same file, recognised by its note.
    by_id = runtime_files.TargetRuntime(
        module_path="/nowhere/app", base=0, single_file=True, version=None, version_line=None,
        dac_build_id=runtime_files.gnu_build_id(installed), reachable_dir=None)
    assert dac.locate(by_id, environ={"PATH": "", dac.ENVIRONMENT_VARIABLE: os.path.dirname(installed),
                                      "NUGET_PACKAGES": str(tmp_path), "HOME": str(tmp_path)}) == installed
