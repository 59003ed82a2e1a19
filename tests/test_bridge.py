"""clrmd_bridge: .NET in this process, and ClrMD's view of a live .NET target held with ptrace.

The live tests start fixtures/HeapFixture, hold it stopped with PTRACE_SEIZE + PTRACE_INTERRUPT
(as the engine does), hand its real registers to read_clr, and always detach.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import clrmd_bridge
from clrmd_bridge import host
from minidumper.engines.linux.session import PausedProcess
from clrmd_bridge.runtime import DAC_READ, GC_SEGMENT_PREFIX, JIT_CODE_HEAP, NATIVE_HEAP_PREFIX

REPO = Path(__file__).resolve().parent.parent
PAGE = 4096
KiB, MiB = 1024, 1024 * 1024

# --- holding a target the way the engine does ------------------------------------------------

@contextlib.contextmanager
def held_registers(pid: int) -> Iterator[dict[int, bytes]]:
    """The engine's own pause: yield tid -> user_regs_struct while every thread is held."""
    with PausedProcess(pid) as paused:
        yield {thread.tid: thread.prstatus_regs for thread in paused.snapshot().threads}


def process_state(pid: int) -> tuple[str, int]:
    """(State letter, TracerPid) of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return fields["State"].split()[0], int(fields["TracerPid"])


def readable_maps(pid: int) -> list[tuple[int, int, str]]:
    result = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if parts[1][0] == "r":
            result.append((start, end, parts[5] if len(parts) == 6 else ""))
    return result


def readable_bytes(maps: list[tuple[int, int, str]], start: int, end: int) -> int:
    return sum(max(0, min(end, e) - max(start, s)) for s, e, _ in maps)


# --- the live target ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def heap_fixture(heap_app) -> int:
    return heap_app.pid


@pytest.fixture(scope="module")
def readouts(heap_fixture: int) -> Iterator[dict[str, object]]:
    """read_clr mini and heap on the fixture, both while it is held with ptrace."""
    pid = heap_fixture
    with held_registers(pid) as registers:
        state, tracer = process_state(pid)
        # Traced by a thread of ours: the engine's tracer thread.
        assert state == "t" and str(tracer) in os.listdir("/proc/self/task")
        results: dict[str, object] = {"registers": registers, "maps": readable_maps(pid)}
        for depth in ("mini", "heap"):
            started = time.perf_counter()
            results[depth] = clrmd_bridge.read_clr(pid, registers, depth)
            results[f"{depth}_seconds"] = time.perf_counter() - started
        results["main thread"] = clrmd_bridge.read_clr(pid, registers,
                                                       clrmd_bridge.threads_depth([pid]))
    state, tracer = process_state(pid)
    assert tracer == 0 and state != "t", "the target was left stopped"
    yield results


# --- import and host ---------------------------------------------------------------------------

def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


def test_import_loads_no_dotnet() -> None:
    result = run_python("""
        import sys, clrmd_bridge
        maps = open("/proc/self/maps").read()
        assert "libhostfxr" not in maps and "libcoreclr" not in maps, "importing loaded .NET"
        assert "clr" not in sys.modules
        assert not any(name == "minidumper" or name.startswith("minidumper.") for name in sys.modules)
        print("ok")
    """)
    assert result.stdout.strip() == "ok", result.stderr


def test_host_starts_dotnet_and_import_clr_works() -> None:
    clrmd_bridge.load()
    started = time.perf_counter()
    clrmd_bridge.load()   # idempotent: the second call does nothing
    assert time.perf_counter() - started < 0.01
    assert host.is_loaded()

    import clr  # noqa: F401
    import System
    from Microsoft.Diagnostics.Runtime import DataTarget  # noqa: F401 (ClrMD is loadable)

    assert System.Environment.Version.Major >= 10
    assert "libcoreclr.so" in Path("/proc/self/maps").read_text()


def test_the_ready_to_run_build_is_taken_where_its_runtime_is(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ahead = tmp_path / "ready_to_run"
    ahead.mkdir()
    monkeypatch.setattr(host, "READY_TO_RUN_DIR", ahead)
    root = tmp_path / "dotnet"
    runtimes = root / "shared" / "Microsoft.NETCore.App"
    runtimes.mkdir(parents=True)
    assert host.choose_assemblies(root) == host.ASSEMBLY_DIR        # not built
    (ahead / host.RUNTIME_CONFIG).write_text(
        '{"runtimeOptions": {"framework": {"name": "Microsoft.NETCore.App", "version": "10.0.0"}}}')
    for version in ("8.0.22", "11.0.1", "1.0.0"):
        (runtimes / version).mkdir()
    assert host.choose_assemblies(root) == host.ASSEMBLY_DIR        # its code would be ignored
    (runtimes / "10.0.3").mkdir()
    assert host.choose_assemblies(root) == ahead
    (ahead / host.RUNTIME_CONFIG).write_text("{")
    assert host.choose_assemblies(root) == host.ASSEMBLY_DIR


def test_the_ready_to_run_build_leaves_little_to_compile(heap_fixture: int) -> None:
    """Built here (setup.sh) for this SDK's runtime, the ReadyToRun build is the one loaded, and
    the runtime uses its code: a walk compiles a fraction of the methods the IL build does."""
    assert host.choose_assemblies(host.find_dotnet_root()) == host.READY_TO_RUN_DIR
    compiled = {}
    for build in (host.READY_TO_RUN_DIR, host.ASSEMBLY_DIR):
        result = run_python(f"""
            from pathlib import Path
            from clrmd_bridge import host, runtime
            host.load(Path({str(build)!r}))
            runtime.read_clr({heap_fixture}, {{}}, "mini")
            import System
            print(System.Runtime.JitInfo.GetCompiledMethodCount(False))
        """)
        assert result.returncode == 0, result.stderr[-2000:]
        compiled[build.name] = int(result.stdout.split()[-1])
    assert compiled["ready_to_run"] < compiled["_dotnet"] / 2, compiled


def test_missing_assemblies_say_run_setup(tmp_path: Path) -> None:
    result = run_python(f"""
        from pathlib import Path
        from clrmd_bridge import host, BridgeLoadError
        try:
            host.load(Path({str(tmp_path)!r}))
        except BridgeLoadError as e:
            print(e)
        else:
            print("no error")
    """)
    assert "run ./setup.sh" in result.stdout, result.stdout + result.stderr
    assert "Python.Runtime.dll" in result.stdout


def test_no_hostfxr_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(clrmd_bridge.BridgeLoadError, match="no libhostfxr.so"):
        host.find_hostfxr(tmp_path)

    def add(version: str) -> None:
        (tmp_path / "host" / "fxr" / version).mkdir(parents=True)
        (tmp_path / "host" / "fxr" / version / "libhostfxr.so").touch()

    for version in ("9.0.1", "10.0.2", "10.0.12", "10.0.13-rc.1"):
        add(version)
    assert host.find_hostfxr(tmp_path).parent.name == "10.0.13-rc.1"
    add("10.0.13")
    assert host.find_hostfxr(tmp_path).parent.name == "10.0.13"
    monkeypatch.setenv("DOTNET_ROOT", str(tmp_path))
    assert host.find_dotnet_root() == tmp_path


def test_no_dotnet_anywhere_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOTNET_ROOT", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(host, "DOTNET_ROOT_FALLBACKS", (tmp_path / "none",))
    with pytest.raises(clrmd_bridge.BridgeLoadError, match="no .NET runtime found"):
        host.find_dotnet_root()


# --- registers ---------------------------------------------------------------------------------

def test_user_regs_struct_becomes_an_amd64_context() -> None:
    """Every register lands at its CONTEXT offset: the kernel has r9 before r8 and rsp before ss."""
    clrmd_bridge.load()
    import System
    from ClrmdBridge import UserRegsStruct

    names = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss "
             "fs_base gs_base ds es fs gs").split()
    values = {name: 0x1111 * (i + 1) for i, name in enumerate(names)}
    regs = UserRegsStruct.FromArray(System.Array[System.Byte](struct.pack("<27Q", *values.values())))

    context = bytes(regs.ToContext(0))
    flags, = struct.unpack_from("<I", context, 0x30)
    assert flags == 0x100007   # CONTEXT_AMD64 | CONTROL | INTEGER | SEGMENTS
    q = {off: struct.unpack_from("<Q", context, off)[0] for off in range(0x78, 0x100, 8)}
    order = "rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14 r15 rip".split()
    assert [q[0x78 + 8 * i] for i in range(len(order))] == [values[n] for n in order]
    segments = struct.unpack_from("<6H", context, 0x38)
    assert segments == tuple(values[n] & 0xFFFF for n in "cs ds es fs gs ss".split())
    assert struct.unpack_from("<I", context, 0x44)[0] == values["eflags"]

    control_only = bytes(regs.ToContext(0x100001))
    assert struct.unpack_from("<I", control_only, 0x30)[0] == 0x100001
    assert struct.unpack_from("<Q", control_only, 0xF8)[0] == values["rip"]
    assert struct.unpack_from("<Q", control_only, 0x78)[0] == 0   # rax is an integer register


def test_read_clr_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="depth"):
        clrmd_bridge.read_clr(os.getpid(), {}, "full")
    with pytest.raises(ValueError, match="216"):
        clrmd_bridge.read_clr(os.getpid(), {1: b"\0" * 10}, "mini")


# --- live targets ------------------------------------------------------------------------------

def test_a_process_without_clr_is_no_clr_runtime_error() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.05)
        with held_registers(sleeper.pid) as registers:
            with pytest.raises(clrmd_bridge.NoClrRuntimeError, match=str(sleeper.pid)):
                clrmd_bridge.read_clr(sleeper.pid, registers, "heap")
        assert process_state(sleeper.pid)[1] == 0
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_gone_process_is_clr_read_error() -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    with pytest.raises(clrmd_bridge.ClrReadError, match="not running"):
        clrmd_bridge.read_clr(finished.pid, {}, "mini")


def test_mini_walks_every_managed_stack(readouts: dict) -> None:
    mini = readouts["mini"]
    maps = readouts["maps"]
    coreclr = [start for start, _, path in maps if path.endswith("/libcoreclr.so")]
    assert mini.runtime_base == min(coreclr)
    assert mini.runtime_version.split(".")[0].isdigit() and int(mini.runtime_version.split(".")[0]) >= 10
    assert mini.warnings == []
    # main, the finalizer and three parked workers
    assert mini.threads_walked >= 5
    # Each parked thread shows at least Thread.Sleep, its park method and the start callback.
    assert mini.managed_frames >= 3 * 3 + 3
    assert not mini.of_kind(GC_SEGMENT_PREFIX), "mini lists no GC heap"

    reads = mini.of_kind(DAC_READ)
    assert_page_ranges(reads)
    total = sum(r.size for r in reads)
    assert 256 * KiB < total < 256 * MiB
    # The walks started at our registers: the stack page under some thread's rsp was read.
    rsp_pages = {struct.unpack_from("<Q", regs, 19 * 8)[0] & ~(PAGE - 1) for regs in readouts["registers"].values()}
    assert any(r.start <= page < r.end for r in reads for page in rsp_pages)


def test_a_threads_walk_walks_those_stacks_only(readouts: dict) -> None:
    """The pause's walk of threads started since the last walk: their stacks (here the main
    thread's), and what the DAC says a minidump needs; no modules, no heaps."""
    main, mini = readouts["main thread"], readouts["mini"]
    assert main.warnings == []
    assert main.threads_walked == 1 and 1 <= main.managed_frames < mini.managed_frames
    assert main.of_kind(DAC_READ) and main.of_kind("DacEnumMemory")
    assert not main.of_kind(GC_SEGMENT_PREFIX) and not main.of_kind("ModuleImage")
    with pytest.raises(ValueError, match="depth"):
        clrmd_bridge.read_clr(os.getpid(), {}, "threads:1,x")


def test_heap_lists_the_clr_memory(readouts: dict) -> None:
    heap = readouts["heap"]
    maps = readouts["maps"]
    assert heap.warnings == []
    assert heap.runtime_base == readouts["mini"].runtime_base

    segments = heap.of_kind(GC_SEGMENT_PREFIX)
    kinds = {s.kind for s in segments}
    assert "GCSegment:Large" in kinds   # HeapFixture keeps a 256 KiB array
    assert kinds & {"GCSegment:Generation0", "GCSegment:Generation2", "GCSegment:Ephemeral"}
    # Committed and reserved: the committed part, from the start, is what is readable.
    assert 1 * MiB < sum(readable_bytes(maps, s.start, s.end) for s in segments) < 2048 * MiB
    for segment in segments:
        assert readable_bytes(maps, segment.start, segment.start + PAGE) == PAGE, segment

    handle_tables = heap.of_kind("NativeHeap:HandleTable")
    assert handle_tables and all(readable_bytes(maps, h.start, h.end) > 0 for h in handle_tables)
    loader_heaps = [m for m in heap.of_kind(NATIVE_HEAP_PREFIX)
                    if m.kind in ("NativeHeap:LowFrequencyHeap", "NativeHeap:HighFrequencyHeap")]
    assert sum(h.size for h in loader_heaps) > 64 * KiB
    code_heaps = heap.of_kind(JIT_CODE_HEAP)
    assert code_heaps and all(readable_bytes(maps, c.start, c.end) > 0 for c in code_heaps)

    reads = heap.of_kind(DAC_READ)
    assert_page_ranges(reads)
    assert sum(r.size for r in reads) > sum(r.size for r in readouts["mini"].of_kind(DAC_READ))
    assert heap.dac_read_count > readouts["mini"].dac_read_count


def assert_page_ranges(ranges: list) -> None:
    assert ranges
    for previous, current in zip(ranges, ranges[1:]):
        assert previous.end < current.start, "ranges are sorted, merged and apart"
    for r in ranges:
        assert r.start % PAGE == 0 and r.end % PAGE == 0 and r.end > r.start
