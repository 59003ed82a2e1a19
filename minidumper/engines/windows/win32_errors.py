"""The one place where a Win32 error or HRESULT becomes a minidumper error. Pure: testable anywhere."""

from __future__ import annotations

from minidumper.engines.windows import consts
from minidumper.errors import (
    AccessDeniedError,
    InterruptedDumpError,
    MinidumperError,
    OutputError,
    TargetNotFoundError,
)

_ERROR_NAMES = {
    consts.ERROR_FILE_NOT_FOUND: "ERROR_FILE_NOT_FOUND",
    consts.ERROR_ACCESS_DENIED: "ERROR_ACCESS_DENIED",
    consts.ERROR_INVALID_HANDLE: "ERROR_INVALID_HANDLE",
    consts.ERROR_NOT_ENOUGH_MEMORY: "ERROR_NOT_ENOUGH_MEMORY",
    consts.ERROR_WRITE_FAULT: "ERROR_WRITE_FAULT",
    consts.ERROR_HANDLE_DISK_FULL: "ERROR_HANDLE_DISK_FULL",
    consts.ERROR_NOT_SUPPORTED: "ERROR_NOT_SUPPORTED",
    consts.ERROR_INVALID_PARAMETER: "ERROR_INVALID_PARAMETER",
    consts.ERROR_DISK_FULL: "ERROR_DISK_FULL",
    consts.ERROR_PARTIAL_COPY: "ERROR_PARTIAL_COPY",
    consts.ERROR_NOACCESS: "ERROR_NOACCESS",
    consts.ERROR_CANCELLED: "ERROR_CANCELLED",
    consts.ERROR_PRIVILEGE_NOT_HELD: "ERROR_PRIVILEGE_NOT_HELD",
}

_ACCESS_DENIED = {consts.ERROR_ACCESS_DENIED, consts.ERROR_PRIVILEGE_NOT_HELD}
_OUTPUT_FAILED = {consts.ERROR_DISK_FULL, consts.ERROR_HANDLE_DISK_FULL, consts.ERROR_WRITE_FAULT}
_CANCELLED = {consts.ERROR_CANCELLED}


def win32_code(error: int) -> int:
    """The Win32 code inside an HRESULT_FROM_WIN32 value; any other value unchanged.

    MiniDumpWriteDump leaves an HRESULT in GetLastError, other calls a plain Win32 code.
    """
    error &= 0xFFFFFFFF
    if error & 0xFFFF0000 == consts.FACILITY_WIN32_PREFIX:
        return error & 0xFFFF
    return error


def describe(error: int) -> str:
    code = win32_code(error)
    name = _ERROR_NAMES.get(code)
    if code != (error & 0xFFFFFFFF):
        return f"HRESULT {error & 0xFFFFFFFF:#010x}" + (f" ({name})" if name else "")
    if (error & 0xFFFFFFFF) == consts.E_ABORT:
        return "E_ABORT"
    return f"error {code}" + (f" ({name})" if name else "")


def error_for(call: str, error: int, pid: int, detail: str = "") -> MinidumperError:
    """The minidumper error for a failed Win32 call. `detail` is the system's own text, if known."""
    code = win32_code(error)
    message = f"{call} failed for pid {pid}: {describe(error)}"
    if detail:
        message += f": {detail.strip()}"
    if code in _ACCESS_DENIED:
        return AccessDeniedError(
            message + "; run as the target's user or as administrator (protected processes cannot be dumped)")
    # OpenProcess answers ERROR_INVALID_PARAMETER for a pid that names no process. From
    # MiniDumpWriteDump the same code means a rejected argument, which is our fault, not the target's.
    if call == "OpenProcess" and code == consts.ERROR_INVALID_PARAMETER:
        return TargetNotFoundError(f"no process with pid {pid}")
    if code in _OUTPUT_FAILED:
        return OutputError(message)
    if code in _CANCELLED or (error & 0xFFFFFFFF) == consts.E_ABORT:
        return InterruptedDumpError(message)
    return MinidumperError(message)
