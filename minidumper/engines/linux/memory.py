"""Reading the target's memory: process_vm_readv, with /proc/PID/mem as the fallback.

Unreadable pages are skipped, never fatal: the caller sees only the readable pieces.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator

from minidumper.engines.linux._libc import iovec, last_os_error, libc
from minidumper.errors import AccessDeniedError, TargetExitedError
from minidumper.model import PAGE_SIZE

CHUNK_SIZE = 8 << 20


class ProcessMemory:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._mem_fd: int | None = None
        self._use_proc_mem = False

    def close(self) -> None:
        if self._mem_fd is not None:
            os.close(self._mem_fd)
            self._mem_fd = None

    def read(self, address: int, size: int) -> bytes:
        """The bytes at address, cut short at the first unreadable page (b"" if none)."""
        buffer = bytearray(size)
        count = self._read_into(address, buffer)
        return bytes(buffer[:count])

    def read_pieces(self, start: int, end: int) -> Iterator[tuple[int, memoryview]]:
        """(address, bytes) for every readable piece of [start, end), in order."""
        address = start
        while address < end:
            size = min(CHUNK_SIZE, end - address)
            buffer = bytearray(size)
            count = self._read_into(address, buffer)
            if count > 0:
                yield address, memoryview(buffer)[:count]
                address += count
            elif size > PAGE_SIZE:
                # Something in this chunk faults: go page by page to keep what can be read.
                yield from self._read_page_by_page(address, address + size)
                address += size
            else:
                address += size

    def _read_page_by_page(self, start: int, end: int) -> Iterator[tuple[int, memoryview]]:
        run_start, run = start, bytearray()
        for page in range(start, end, PAGE_SIZE):
            buffer = bytearray(min(PAGE_SIZE, end - page))
            if self._read_into(page, buffer) == len(buffer):
                if not run:
                    run_start = page
                run += buffer
                continue
            if run:
                yield run_start, memoryview(run)
                run = bytearray()
        if run:
            yield run_start, memoryview(run)

    def _read_into(self, address: int, buffer: bytearray) -> int:
        if not buffer:
            return 0
        if self._use_proc_mem:
            return self._pread(address, buffer)
        c_buffer = (ctypes.c_char * len(buffer)).from_buffer(buffer)
        local = iovec(ctypes.addressof(c_buffer), len(buffer))
        remote = iovec(address, len(buffer))
        count = libc.process_vm_readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        del c_buffer
        if count >= 0:
            return count
        err = ctypes.get_errno()
        if err in (errno.EFAULT, errno.EIO, errno.ENOMEM):
            return 0
        if err == errno.ESRCH:
            raise TargetExitedError(f"process {self.pid} exited mid-dump")
        if err in (errno.ENOSYS, errno.EPERM):
            self._use_proc_mem = True
            return self._pread(address, buffer)
        raise last_os_error("process_vm_readv", self.pid)

    def _pread(self, address: int, buffer: bytearray) -> int:
        if self._mem_fd is None:
            try:
                self._mem_fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            except PermissionError as error:
                raise AccessDeniedError(f"cannot read the memory of process {self.pid}") from error
            except FileNotFoundError as error:
                raise TargetExitedError(f"process {self.pid} exited mid-dump") from error
        try:
            return os.preadv(self._mem_fd, [buffer], address)
        except OSError as error:
            if error.errno == errno.ESRCH:
                raise TargetExitedError(f"process {self.pid} exited mid-dump") from error
            return 0
