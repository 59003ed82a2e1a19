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
        for chunk_start in range(start, end, CHUNK_SIZE):
            chunk_end = min(chunk_start + CHUNK_SIZE, end)
            buffer = memoryview(bytearray(chunk_end - chunk_start))
            for address, count in self.fill(chunk_start, chunk_end, buffer):
                offset = address - chunk_start
                yield address, buffer[offset:offset + count]

    def fill(self, start: int, end: int, destination: memoryview) -> Iterator[tuple[int, int]]:
        """Reads [start, end) into destination, byte for byte at the same offsets.

        Yields (address, length) of each readable run; what lies between runs is left as it was.
        """
        address = start
        while address < end:
            size = min(CHUNK_SIZE, end - address)
            offset = address - start
            count = self._read_into(address, destination[offset:offset + size])
            if count > 0:
                yield address, count
                address += count
                continue
            # Something in this chunk faults: go page by page to keep what can be read.
            run_start = run_end = address
            for page in range(address, address + size, PAGE_SIZE):
                page_end = min(page + PAGE_SIZE, address + size)
                if self._read_into(page, destination[page - start:page_end - start]) == page_end - page:
                    if run_end != page:
                        run_start = page
                    run_end = page_end
                elif run_end > run_start:
                    yield run_start, run_end - run_start
                    run_start = run_end
            if run_end > run_start:
                yield run_start, run_end - run_start
            address += size

    def _read_into(self, address: int, buffer: bytearray | memoryview) -> int:
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

    def _pread(self, address: int, buffer: bytearray | memoryview) -> int:
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
