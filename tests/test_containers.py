"""A target in a container: its own pid and mount namespaces, dumped from the host by its host pid
and from a sidecar that shares only its pid namespace. The dumps carry the ids the target knows,
so ClrMD and SOS read its managed stacks, objects and roots as they read the live process."""

from __future__ import annotations

import glob
import json
import re
import struct

import pytest
from elftools.elf.elffile import ELFFile

import containers
from conftest import HEAP_FIXTURE, clrmd_read, run_minidumper, sos

MODES = ("full", "heap", "mini")
PARKED_METHODS = ("WaitInAlpha", "WaitInBeta", "WaitInGamma", "ParkMain")


def _dac_inside(container: containers.Container) -> str | None:
    """The DAC, where the dump names a runtime path the host does not have: the host's own copy
    of the .NET the container has bound in."""
    if container.root is None:
        return None
    return sorted(glob.glob(f"{containers.dotnet_dir()}/shared/Microsoft.NETCore.App/*/libmscordaccore.so"))[-1]


@pytest.fixture(scope="module", params=["shared-root", "chroot"])
def container_dumps(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"container-{request.param}")
    root = directory / "root" if request.param == "chroot" else None
    container = containers.start([str(HEAP_FIXTURE), "--native-mb", "16"], chroot_root=root)
    try:
        reports, paths = {}, {}
        for mode in MODES:
            paths[mode] = directory / f"{mode}.core"
            result = run_minidumper("--pid", str(container.host_pid), "-f", str(paths[mode]),
                                    f"--{mode}", "--json")
            assert result.returncode == 0, result.stdout + result.stderr
            reports[mode] = json.loads(result.stdout)
            container.assert_running()
        for mode in ("heap", "mini"):
            paths[f"sidecar-{mode}"] = directory / f"sidecar-{mode}.core"
            result = containers.run_sidecar(container, "--pid", str(container.inner_pid), "-f",
                                            str(paths[f"sidecar-{mode}"]), f"--{mode}", "--json")
            assert result.returncode == 0, result.stdout + result.stderr
            reports[f"sidecar-{mode}"] = json.loads(result.stdout)
            container.assert_running()
        live = containers.clrmd_read_inside(container)
        inner_tids = container.threads_inside()
        container.assert_running()
        yield container, paths, reports, live, inner_tids
    finally:
        containers.stop(container)
        assert containers.mounts_under(str(directory)) == []
        assert containers.mounts_under("/tmp/") == []


def _read(container, path) -> dict:
    dac = _dac_inside(container)
    return clrmd_read("--dump", str(path), *(["--dac", dac] if dac else []))


def _note_ids(path) -> tuple[int, list[int]]:
    """(pid of NT_PRPSINFO, tids of the NT_PRSTATUS notes)."""
    with open(path, "rb") as core:
        notes = next(s for s in ELFFile(core).iter_segments() if s["p_type"] == "PT_NOTE")
        pid, tids = 0, []
        for note in notes.iter_notes():
            if note["n_type"] == "NT_PRPSINFO":
                pid = note["n_desc"]["pr_pid"]
            elif note["n_type"] == "NT_PRSTATUS":
                tids.append(struct.unpack_from("<i", note["n_desc"], 32)[0])  # elf_prstatus.pr_pid
    return pid, tids


def test_the_notes_and_the_json_carry_the_ids_of_the_targets_namespace(container_dumps):
    container, paths, reports, _, inner_tids = container_dumps
    assert container.host_pid != container.inner_pid
    for name, path in paths.items():
        pid, tids = _note_ids(path)
        assert pid == container.inner_pid == reports[name]["pid"], name
        assert set(tids) == inner_tids and tids[0] == container.inner_pid, name
    for mode in MODES:
        assert reports[mode]["host_pid"] == container.host_pid
    assert reports["sidecar-heap"]["host_pid"] == container.inner_pid  # the sidecar sees the inner ids


def test_runtime_files_are_reached_through_the_targets_root(container_dumps):
    container, _, reports, _, _ = container_dumps
    assert reports["heap"]["dac_path"].startswith(f"/proc/{container.host_pid}/root/")
    assert reports["sidecar-heap"]["dac_path"].startswith(f"/proc/{container.inner_pid}/root/")


@pytest.mark.parametrize("name", ["full", "heap", "sidecar-heap"])
def test_clrmd_reads_heap_and_full_dumps_as_the_live_process(container_dumps, name):
    container, paths, _, live, _ = container_dumps
    reading = _read(container, paths[name])
    assert reading["errors"] == [] and reading["invalid_object_count"] == 0
    assert reading["object_count"] == live["object_count"] > 10_000
    assert reading["histogram"] == live["histogram"]
    assert reading["roots"] == live["roots"]
    assert reading["threads"] == live["threads"]


@pytest.mark.parametrize("name", ["mini", "sidecar-mini"])
def test_clrmd_reads_mini_stacks_as_live(container_dumps, name):
    container, paths, _, live, _ = container_dumps
    mini = _read(container, paths[name])
    assert mini["threads"] == live["threads"]
    frames = [f for t in mini["threads"] for f in t["frames"]]
    for method in PARKED_METHODS:
        assert any(method in f for f in frames), frames


@pytest.mark.parametrize("name", ["heap", "mini"])
def test_sos_reads_the_managed_stacks(container_dumps, name):
    container, paths, _, _, _ = container_dumps
    dac = _dac_inside(container)
    setup = [f"setclrpath {dac.rsplit('/', 1)[0]}"] if dac else []
    out = sos(paths[name], *setup, "clrthreads", "clrstack -all")
    for method in PARKED_METHODS:
        assert re.search(rf"HeapFixture\.\S*{method}\(", out), out
    assert "80070057" not in out and "warning" not in out.lower(), out
