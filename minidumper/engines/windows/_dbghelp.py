"""kernel32 and dbghelp, loaded once with their prototypes, and one checked primitive per call.

Windows only, and loaded on first use: importing this module anywhere is harmless. Every failure
goes through win32_errors.error_for, which names the call, the error and the pid.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from ctypes import wintypes  # defines plain ctypes aliases on every platform
from dataclasses import dataclass
from typing import Any

from minidumper.engines.windows.consts import STILL_ACTIVE
from minidumper.engines.windows.structs import native_structs
from minidumper.engines.windows.win32_errors import error_for
from minidumper.errors import MinidumperError


@dataclass(frozen=True)
class Win32Api:
    kernel32: Any
    dbghelp: Any
    function_type: Any          # ctypes.WINFUNCTYPE: WINAPI callbacks


@functools.cache
def load() -> Win32Api:
    if sys.platform != "win32":
        raise MinidumperError("the dbghelp engine runs only on Windows")
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    dbghelp = ctypes.WinDLL("dbghelp", use_last_error=True)
    structs = native_structs()

    kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    kernel32.CloseHandle.restype = wintypes.BOOL
    kernel32.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    kernel32.GetExitCodeProcess.restype = wintypes.BOOL
    kernel32.GetFileSizeEx.argtypes = [wintypes.HANDLE, ctypes.POINTER(ctypes.c_int64)]
    kernel32.GetFileSizeEx.restype = wintypes.BOOL

    dbghelp.MiniDumpWriteDump.argtypes = [
        wintypes.HANDLE,                                            # hProcess
        wintypes.DWORD,                                             # ProcessId
        wintypes.HANDLE,                                            # hFile
        ctypes.c_uint32,                                            # MINIDUMP_TYPE
        ctypes.POINTER(structs.MINIDUMP_EXCEPTION_INFORMATION),
        ctypes.POINTER(structs.MINIDUMP_USER_STREAM_INFORMATION),
        ctypes.POINTER(structs.MINIDUMP_CALLBACK_INFORMATION),
    ]
    dbghelp.MiniDumpWriteDump.restype = wintypes.BOOL
    return Win32Api(kernel32=kernel32, dbghelp=dbghelp, function_type=ctypes.WINFUNCTYPE)


def _failure(call: str, pid: int) -> MinidumperError:
    error = ctypes.get_last_error()
    return error_for(call, error, pid, ctypes.FormatError(error) if error else "")


def open_process(api: Win32Api, pid: int, access: int) -> int:
    handle = api.kernel32.OpenProcess(access, False, pid)
    if not handle:
        raise _failure("OpenProcess", pid)
    return handle


def close_handle(api: Win32Api, handle: int) -> None:
    api.kernel32.CloseHandle(handle)


def process_has_exited(api: Win32Api, process: int) -> bool:
    exit_code = wintypes.DWORD()
    if not api.kernel32.GetExitCodeProcess(process, ctypes.byref(exit_code)):
        return False
    return exit_code.value != STILL_ACTIVE


def file_size(api: Win32Api, file: int, pid: int) -> int:
    size = ctypes.c_int64()
    if not api.kernel32.GetFileSizeEx(file, ctypes.byref(size)):
        raise _failure("GetFileSizeEx", pid)
    return size.value


def minidump_write_dump(api: Win32Api, process: int, pid: int, file: int, dump_type: int,
                        callback_information: Any) -> int:
    """Calls MiniDumpWriteDump. Returns 0 on success, or the error it left (an HRESULT)."""
    ok = api.dbghelp.MiniDumpWriteDump(process, pid, file, dump_type, None, None,
                                       ctypes.byref(callback_information))
    return 0 if ok else (ctypes.get_last_error() or 0xFFFFFFFF)


def error_text(error: int) -> str:
    return ctypes.FormatError(error) if sys.platform == "win32" else ""
