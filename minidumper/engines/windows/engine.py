"""The Windows engine: dbghelp's MiniDumpWriteDump, with the plan's ranges fed through its callback.

dbghelp suspends the target's threads itself while it writes and resumes them when it returns,
whatever happens, so the target's fate here is dbghelp's; the engine's part is to open nothing
more than it needs and to close what it opened. It opens only the process: dbghelp opens the
threads itself.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Union

from minidumper.engines.windows import _dbghelp
from minidumper.engines.windows.callback import MinidumpCallback, callback_routine
from minidumper.engines.windows.consts import (
    MINIDUMP_TYPE,
    PROCESS_DUP_HANDLE,
    PROCESS_QUERY_INFORMATION,
    PROCESS_VM_READ,
)
from minidumper.engines.windows.structs import native_structs
from minidumper.engines.windows.win32_errors import error_for
from minidumper.errors import InterruptedDumpError, MinidumperError, OutputError, TargetExitedError
from minidumper.model import MemoryRange

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileHandle:
    """A Win32 file HANDLE opened for writing, as opposed to a C runtime file descriptor."""

    value: int


Output = Union[str, "os.PathLike[str]", int, FileHandle, IO[bytes]]


@dataclass(frozen=True)
class WindowsDumpResult:
    bytes_written: int
    threads: int
    seconds: float              # time inside MiniDumpWriteDump, when the target's threads are held
    memory_chunks: int = 0      # MemoryCallback answers given (ranges, split below 4 GiB)
    read_failures: int = 0      # pages dbghelp could not read and left out


def process_access_for(dump_type: int) -> int:
    """The least rights MiniDumpWriteDump needs on the process for this dump type."""
    access = PROCESS_QUERY_INFORMATION | PROCESS_VM_READ
    if dump_type & MINIDUMP_TYPE.MiniDumpWithHandleData:
        access |= PROCESS_DUP_HANDLE
    return access


def write_minidump(pid: int, output: Output, dump_type: int, ranges: Sequence[MemoryRange],
                   include_module_code: bool, cancel_requested: Callable[[], bool]) -> WindowsDumpResult:
    """Writes a minidump of `pid` to `output` with MiniDumpWriteDump.

    output: a path (created exclusively, and removed again if the dump fails), a C runtime file
    descriptor, a file object, or a FileHandle. dump_type: MINIDUMP_TYPE flags, as the plan chose.
    ranges: added one per MemoryCallback (ignored by dbghelp under MiniDumpWithFullMemory).
    include_module_code: false drops the modules' code pages. cancel_requested: polled from
    dbghelp's CancelCallback and MemoryCallback; once it says yes the dump stops with
    InterruptedDumpError.
    """
    api = _dbghelp.load()
    structs = native_structs()
    callback = MinidumpCallback(ranges, include_module_code, cancel_requested)
    routine = callback_routine(callback, structs, api.function_type)  # alive while this frame is
    callback_information = structs.MINIDUMP_CALLBACK_INFORMATION(
        CallbackRoutine=ctypes.cast(routine, ctypes.c_void_p).value, CallbackParam=0)

    log.debug("MiniDumpWriteDump pid %d, type %#x, %d ranges, module code %s",
              pid, dump_type, len(ranges), "in" if include_module_code else "out")
    with _opened_process(api, pid, process_access_for(dump_type)) as process, \
            _opened_output(output, pid) as file:
        started = time.monotonic()
        error = _dbghelp.minidump_write_dump(api, process, pid, file, dump_type, callback_information)
        seconds = time.monotonic() - started
        if callback.error is not None:
            if isinstance(callback.error, KeyboardInterrupt):
                raise InterruptedDumpError("interrupted while writing the minidump") from callback.error
            raise MinidumperError(f"the minidump callback failed: {callback.error!r}") from callback.error
        if callback.cancelled:
            raise InterruptedDumpError("the minidump was cancelled")
        if error:
            if _dbghelp.process_has_exited(api, process):
                raise TargetExitedError(f"process {pid} exited while it was being dumped")
            raise error_for("MiniDumpWriteDump", error, pid, _dbghelp.error_text(error))
        bytes_written = _dbghelp.file_size(api, file, pid)
    return WindowsDumpResult(bytes_written=bytes_written, threads=callback.threads, seconds=seconds,
                             memory_chunks=callback.chunks_given, read_failures=callback.read_failures)


@contextmanager
def _opened_process(api: _dbghelp.Win32Api, pid: int, access: int) -> Iterator[int]:
    process = _dbghelp.open_process(api, pid, access)
    try:
        yield process
    finally:
        _dbghelp.close_handle(api, process)


@contextmanager
def _opened_output(output: Output, pid: int) -> Iterator[int]:
    """The Win32 file handle to write to. A path is created here, and removed on failure."""
    if isinstance(output, FileHandle):
        yield output.value
        return
    import msvcrt  # Windows only: C runtime descriptors to Win32 handles

    if isinstance(output, int):
        yield msvcrt.get_osfhandle(output)
        return
    if hasattr(output, "fileno"):
        output.flush()
        yield msvcrt.get_osfhandle(output.fileno())
        return
    path = os.fspath(output)
    try:
        file = open(path, "xb")  # exclusive: never over an existing file or through a link
    except OSError as error:
        raise OutputError(f"cannot create {path}: {error.strerror or error}") from error
    try:
        with file:
            yield msvcrt.get_osfhandle(file.fileno())
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            log.warning("could not remove the partial dump %s", path)
        raise
