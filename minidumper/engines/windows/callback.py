"""The answers to dbghelp's MiniDumpCallback, as a plain class.

MiniDumpWriteDump asks its callback questions while it writes. MinidumpCallback answers them from
plain data (the ranges to add, whether module code goes in, whether to cancel), so it can be driven
on any platform with structures built from minidumper.engines.windows.structs.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from minidumper.engines.windows.consts import MINIDUMP_CALLBACK_TYPE, MODULE_WRITE_FLAGS, S_OK
from minidumper.model import PAGE_SIZE, MemoryRange

log = logging.getLogger(__name__)

# MINIDUMP_CALLBACK_OUTPUT.MemorySize is a ULONG: a range of 4 GiB or more goes out in pieces.
# 4 GiB less 64 KiB keeps every piece page- and allocation-granularity-aligned.
MAX_MEMORY_CALLBACK_SIZE = 0x1_0000_0000 - 0x1_0000
assert MAX_MEMORY_CALLBACK_SIZE % PAGE_SIZE == 0

CallbackType = MINIDUMP_CALLBACK_TYPE


def memory_callback_chunks(ranges: Iterable[MemoryRange],
                           max_size: int = MAX_MEMORY_CALLBACK_SIZE) -> Iterator[tuple[int, int]]:
    """(base, size) pairs for MemoryCallback: the ranges in order, each cut to at most max_size."""
    for memory_range in ranges:
        start = memory_range.start
        while start < memory_range.end:
            size = min(memory_range.end - start, max_size)
            yield start, size
            start += size


class MinidumpCallback:
    """Answers MiniDumpCallback. answer() takes the MINIDUMP_CALLBACK_INPUT and
    MINIDUMP_CALLBACK_OUTPUT structures (not pointers) and returns the callback's BOOL.

    - MemoryCallback: one planned range (or piece of one) per call, in order; then FALSE and a
      size of 0, after which dbghelp stops asking.
    - IncludeModuleCallback, ModuleCallback: every module stays; its code pages go only when
      include_module_code is false.
    - CancelCallback: keeps dbghelp asking, and cancels once cancel_requested() says so, or once
      the callback itself failed. MemoryCallback asks too, and gives no more ranges then.
    - ReadMemoryFailureCallback: S_OK, so an unreadable page leaves a hole instead of failing the dump.
    - ThreadCallback, ThreadExCallback: counted.
    - Anything else: FALSE, which dbghelp takes as "not handled".

    It never raises into dbghelp: an exception (Ctrl-C included) is kept in `error`, and the dump
    is then cancelled at the next chance.
    """

    def __init__(self, ranges: Iterable[MemoryRange], include_module_code: bool,
                 cancel_requested: Callable[[], bool]) -> None:
        self._chunks = list(memory_callback_chunks(ranges))
        self._next_chunk = 0
        self._include_module_code = include_module_code
        self._cancel_requested = cancel_requested
        self.threads = 0
        self.read_failures = 0
        self.cancelled = False
        self.error: BaseException | None = None

    @property
    def chunks_given(self) -> int:
        return self._next_chunk

    def answer(self, callback_input: Any, callback_output: Any) -> bool:
        try:
            return self._answer(callback_input, callback_output)
        except BaseException as error:  # nothing may unwind through dbghelp's frames
            self.failed(error)
            return False

    def failed(self, error: BaseException) -> None:
        """Keeps the first error; the dump is cancelled at the next Cancel- or MemoryCallback."""
        if self.error is None:
            self.error = error

    def _answer(self, callback_input: Any, callback_output: Any) -> bool:
        kind = callback_input.CallbackType
        if kind in (CallbackType.ThreadCallback, CallbackType.ThreadExCallback):
            self.threads += 1
            return True
        if kind == CallbackType.IncludeThreadCallback:
            return True
        if kind in (CallbackType.IncludeModuleCallback, CallbackType.ModuleCallback):
            if not self._include_module_code:
                callback_output.ModuleWriteFlags &= ~int(MODULE_WRITE_FLAGS.ModuleWriteCodeSegs)
            return True
        if kind == CallbackType.MemoryCallback:
            return self._next_memory(callback_output)
        if kind == CallbackType.CancelCallback:
            callback_output.CheckCancel = True
            callback_output.Cancel = self._should_cancel()
            return True
        if kind == CallbackType.ReadMemoryFailureCallback:
            failure = callback_input.ReadMemoryFailure
            self.read_failures += 1
            log.debug("dbghelp could not read %#x bytes at %#x (status %#x); left out",
                      failure.Bytes, failure.Offset, failure.FailureStatus & 0xFFFFFFFF)
            callback_output.Status = S_OK
            return True
        return False

    def _should_cancel(self) -> bool:
        if not self.cancelled and (self.error is not None or self._cancel_requested()):
            self.cancelled = True
        return self.cancelled

    def _next_memory(self, callback_output: Any) -> bool:
        # Asked here too: a cancel while dbghelp gathers stops the ranges at once, and the
        # engine then reports the dump as interrupted rather than short.
        if self._should_cancel() or self._next_chunk >= len(self._chunks):
            callback_output.MemoryBase = 0
            callback_output.MemorySize = 0
            return False
        base, size = self._chunks[self._next_chunk]
        self._next_chunk += 1
        callback_output.MemoryBase = base
        callback_output.MemorySize = size
        return True


def callback_routine(callback: MinidumpCallback, structs: Any,
                     function_type: Callable[..., Any]) -> Any:
    """A C function pointer of type MINIDUMP_CALLBACK_ROUTINE that calls callback.answer().

    function_type is ctypes.WINFUNCTYPE on Windows (WINAPI is stdcall on x86); tests pass
    ctypes.CFUNCTYPE. The caller keeps the returned object alive for as long as dbghelp may call it.
    """
    prototype = function_type(
        ctypes.c_int32,                                      # BOOL
        ctypes.c_void_p,                                     # PVOID CallbackParam
        ctypes.POINTER(structs.MINIDUMP_CALLBACK_INPUT),
        ctypes.POINTER(structs.MINIDUMP_CALLBACK_OUTPUT),
    )

    def routine(_param: Any, callback_input: Any, callback_output: Any) -> int:
        try:
            return int(callback.answer(callback_input.contents, callback_output.contents))
        except BaseException as error:  # a Ctrl-C can land here too
            callback.failed(error)
            return 0

    return prototype(routine)
