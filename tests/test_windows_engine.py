"""The Windows engine's parts that run anywhere: import, rights, error mapping."""

from __future__ import annotations

import ctypes
import importlib
import sys

import pytest

from minidumper.engines.windows import consts
from minidumper.engines.windows.callback import MAX_MEMORY_CALLBACK_SIZE
from minidumper.engines.windows.consts import MINIDUMP_CALLBACK_TYPE as Kind
from minidumper.engines.windows.engine import FileHandle, process_access_for, write_minidump
from minidumper.engines.windows.structs import native_structs
from minidumper.engines.windows.win32_errors import error_for, win32_code
from minidumper.errors import (
    AccessDeniedError,
    ExitCode,
    InterruptedDumpError,
    MinidumperError,
    OutputError,
    TargetExitedError,
    TargetNotFoundError,
)
from minidumper.model import DumpMode, MemoryRange
from minidumper.plan import windows as windows_plan


def hresult_from_win32(code: int) -> int:
    return 0x80070000 | code


def test_the_package_imports_anywhere() -> None:
    package = importlib.import_module("minidumper.engines.windows")
    assert package.available() == (sys.platform == "win32")
    assert callable(package.write_minidump)


@pytest.mark.skipif(sys.platform == "win32", reason="checks the refusal off Windows")
def test_writing_off_windows_says_why(tmp_path) -> None:
    with pytest.raises(MinidumperError, match="only on Windows"):
        write_minidump(1, tmp_path / "x.dmp", 0, [], False, lambda: False)
    assert not (tmp_path / "x.dmp").exists()


def test_process_rights_are_the_least_needed() -> None:
    base = consts.PROCESS_QUERY_INFORMATION | consts.PROCESS_VM_READ
    assert process_access_for(consts.MINIDUMP_TYPE.MiniDumpNormal) == base
    assert process_access_for(consts.MINIDUMP_TYPE.MiniDumpWithHandleData) == base | consts.PROCESS_DUP_HANDLE
    for mode in DumpMode:
        access = process_access_for(windows_plan.minidump_type(mode))
        assert access & ~(base | consts.PROCESS_DUP_HANDLE) == 0


def test_hresults_from_win32_are_unwrapped() -> None:
    assert win32_code(hresult_from_win32(consts.ERROR_DISK_FULL)) == consts.ERROR_DISK_FULL
    assert win32_code(-2147024891) == consts.ERROR_ACCESS_DENIED     # signed, as ctypes may give it
    assert win32_code(consts.ERROR_ACCESS_DENIED) == consts.ERROR_ACCESS_DENIED
    assert win32_code(consts.E_ABORT) == consts.E_ABORT


@pytest.mark.parametrize("call, error, expected", [
    ("OpenProcess", consts.ERROR_ACCESS_DENIED, AccessDeniedError),
    ("MiniDumpWriteDump", hresult_from_win32(consts.ERROR_ACCESS_DENIED), AccessDeniedError),
    ("OpenProcess", consts.ERROR_INVALID_PARAMETER, TargetNotFoundError),
    ("MiniDumpWriteDump", hresult_from_win32(consts.ERROR_DISK_FULL), OutputError),
    ("MiniDumpWriteDump", consts.ERROR_HANDLE_DISK_FULL, OutputError),
    ("MiniDumpWriteDump", hresult_from_win32(consts.ERROR_CANCELLED), InterruptedDumpError),
    ("MiniDumpWriteDump", consts.E_ABORT, InterruptedDumpError),
    ("MiniDumpWriteDump", hresult_from_win32(consts.ERROR_INVALID_PARAMETER), MinidumperError),
    ("MiniDumpWriteDump", hresult_from_win32(consts.ERROR_PARTIAL_COPY), MinidumperError),
])
def test_win32_errors_become_minidumper_errors(call: str, error: int, expected: type) -> None:
    mapped = error_for(call, error, 4242)
    assert type(mapped) is expected
    assert "4242" in str(mapped)


def test_error_messages_name_the_call_and_the_code() -> None:
    mapped = error_for("MiniDumpWriteDump", hresult_from_win32(consts.ERROR_DISK_FULL), 7,
                       "There is not enough space on the disk.")
    assert mapped.exit_code == ExitCode.OUTPUT
    assert "MiniDumpWriteDump" in str(mapped)
    assert "0x80070070" in str(mapped) and "ERROR_DISK_FULL" in str(mapped)
    assert "not enough space" in str(mapped)


class FakeDbghelp:
    """Stands in for kernel32 and dbghelp: calls the engine's callback through its C function
    pointer in the order dbghelp does, and records which handles were opened and closed."""

    def __init__(self, error: int = 0, exited: bool = False, cancel_polls: int = 3) -> None:
        self.error = error
        self.exited = exited
        self.cancel_polls = cancel_polls
        self.open_handles: set[int] = set()
        self.access = 0
        self.memory: list[tuple[int, int]] = []
        self.module_flags: list[int] = []

    def install(self, monkeypatch) -> None:
        from minidumper.engines.windows import _dbghelp

        api = _dbghelp.Win32Api(kernel32=None, dbghelp=None, function_type=ctypes.CFUNCTYPE)
        monkeypatch.setattr(_dbghelp, "load", lambda: api)
        monkeypatch.setattr(_dbghelp, "open_process", self.open_process)
        monkeypatch.setattr(_dbghelp, "close_handle",
                            lambda _api, handle: self.open_handles.remove(handle))
        monkeypatch.setattr(_dbghelp, "minidump_write_dump", self.minidump_write_dump)
        monkeypatch.setattr(_dbghelp, "process_has_exited", lambda _api, _process: self.exited)
        monkeypatch.setattr(_dbghelp, "file_size", lambda _api, _file, _pid: 123456)
        monkeypatch.setattr(_dbghelp, "error_text", lambda _error: "")

    def open_process(self, _api, pid: int, access: int) -> int:
        if pid == 404:
            raise error_for("OpenProcess", consts.ERROR_INVALID_PARAMETER, pid)
        self.access = access
        self.open_handles.add(0x44)
        return 0x44

    def minidump_write_dump(self, _api, process, pid, file, dump_type, information) -> int:
        assert process in self.open_handles
        types = native_structs()
        prototype = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p,
                                     ctypes.POINTER(types.MINIDUMP_CALLBACK_INPUT),
                                     ctypes.POINTER(types.MINIDUMP_CALLBACK_OUTPUT))
        routine = ctypes.cast(ctypes.c_void_p(information.CallbackRoutine), prototype)

        def ask(kind, **values):
            callback_input = types.MINIDUMP_CALLBACK_INPUT(ProcessId=pid, ProcessHandle=process,
                                                           CallbackType=kind)
            callback_output = types.MINIDUMP_CALLBACK_OUTPUT(**values)
            answered = routine(None, ctypes.byref(callback_input), ctypes.byref(callback_output))
            return answered, callback_output

        ask(Kind.IncludeThreadCallback)
        module_output = ask(Kind.IncludeModuleCallback, ModuleWriteFlags=0x4F)[1]
        self.module_flags.append(module_output.ModuleWriteFlags)
        if ask(Kind.CancelCallback)[1].Cancel:
            return consts.E_ABORT
        if not dump_type & consts.MINIDUMP_TYPE.MiniDumpWithFullMemory:
            while True:
                more, output = ask(Kind.MemoryCallback)
                if not more or not output.MemorySize:
                    break
                self.memory.append((output.MemoryBase, output.MemorySize))
        ask(Kind.ThreadCallback)
        ask(Kind.ThreadCallback)
        for _ in range(self.cancel_polls):
            if ask(Kind.CancelCallback)[1].Cancel:
                return consts.E_ABORT
        return self.error


def _heap_ranges():
    return [MemoryRange(0x10000, 0x20000), MemoryRange(0x1_0000_0000, 0x1_0000_0000 + (5 << 30))]


def test_engine_feeds_the_plan_and_closes_the_process(monkeypatch) -> None:
    fake = FakeDbghelp()
    fake.install(monkeypatch)
    mode = DumpMode.HEAP
    result = write_minidump(1234, FileHandle(0x88), windows_plan.minidump_type(mode), _heap_ranges(),
                            windows_plan.include_module_code(mode), lambda: False)
    second_piece = 0x1_0000_0000 + MAX_MEMORY_CALLBACK_SIZE
    assert fake.memory == [(0x10000, 0x10000), (0x1_0000_0000, MAX_MEMORY_CALLBACK_SIZE),
                           (second_piece, (5 << 30) - MAX_MEMORY_CALLBACK_SIZE)]
    assert fake.module_flags == [0x0F]            # code segments dropped, the rest kept
    assert fake.access == process_access_for(windows_plan.minidump_type(mode))
    assert not fake.open_handles
    assert (result.bytes_written, result.threads, result.memory_chunks) == (123456, 2, 3)


def test_full_mode_asks_for_no_ranges_and_keeps_code(monkeypatch) -> None:
    fake = FakeDbghelp()
    fake.install(monkeypatch)
    mode = DumpMode.FULL
    write_minidump(1234, FileHandle(0x88), windows_plan.minidump_type(mode), _heap_ranges(),
                   windows_plan.include_module_code(mode), lambda: False)
    assert fake.memory == [] and fake.module_flags == [0x4F]


def test_a_cancel_becomes_interrupted_and_handles_are_closed(monkeypatch) -> None:
    fake = FakeDbghelp()
    fake.install(monkeypatch)
    polls = iter([False, False, True])
    with pytest.raises(InterruptedDumpError):
        write_minidump(1234, FileHandle(0x88), 0, _heap_ranges(), False, lambda: next(polls, True))
    assert not fake.open_handles


def test_ctrl_c_inside_the_callback_becomes_interrupted(monkeypatch) -> None:
    fake = FakeDbghelp()
    fake.install(monkeypatch)

    def ctrl_c() -> bool:
        raise KeyboardInterrupt

    with pytest.raises(InterruptedDumpError):
        write_minidump(1234, FileHandle(0x88), 0, _heap_ranges(), False, ctrl_c)
    assert not fake.open_handles


@pytest.mark.parametrize("error, exited, expected", [
    (hresult_from_win32(consts.ERROR_DISK_FULL), False, OutputError),
    (hresult_from_win32(consts.ERROR_PARTIAL_COPY), True, TargetExitedError),
    (hresult_from_win32(consts.ERROR_ACCESS_DENIED), False, AccessDeniedError),
])
def test_dbghelp_failures_are_mapped_and_handles_closed(monkeypatch, error, exited, expected) -> None:
    fake = FakeDbghelp(error=error, exited=exited)
    fake.install(monkeypatch)
    with pytest.raises(expected):
        write_minidump(1234, FileHandle(0x88), 0, [], False, lambda: False)
    assert not fake.open_handles


def test_no_such_process(monkeypatch) -> None:
    FakeDbghelp().install(monkeypatch)
    with pytest.raises(TargetNotFoundError):
        write_minidump(404, FileHandle(0x88), 0, [], False, lambda: False)
