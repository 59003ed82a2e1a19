"""A large dump's memory, copied in the pause into shared memory, written to the file after it.

A file's page cache holds its dirty pages to a limit: past the kernel's background threshold
(vm.dirty_background_*) the flusher writes them back as they are made, and a page under
writeback must fault again to be written. Populated ahead of a 4 GiB copy, the output's pages were
being written back as zeros when the pause began: the copy ran at half the speed of
process_vm_readv. Shared memory (a memfd) has no writeback; it is laid out as the file is, and
once the target runs again its pages go to the file with O_DIRECT, which leaves no gigabytes of
dirty page cache behind.

populate() allocates the pages ahead, of the staging or of the file's mapping where the copy is
not staged.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

MADV_POPULATE_WRITE = 23
DIRECT_ALIGNMENT = 4096          # O_DIRECT's offsets, lengths and buffers: a page serves every block size
DIRECT_CHUNK = 64 << 20
NO_STAGING_VARIABLE = "MINIDUMPER_NO_STAGING"   # "1": never staged (a measuring knob: bench/)


def populate(mapping: mmap.mmap, regions: list[tuple[int, int]]) -> None:
    """Allocates the mapping's pages in the (offset, length) regions now, so that writing them
    later is a plain copy."""
    if len(regions) > 1:
        # Each fault of a file would read ahead (zero-fill) megabytes around it: 2,000
        # scattered regions of a sparse file took 24 s, not 0.1 s.
        mapping.madvise(mmap.MADV_RANDOM)
    for offset, length in regions:
        start = offset // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(len(mapping), offset + length)
        if start >= end:
            continue
        try:
            mapping.madvise(MADV_POPULATE_WRITE, start, end - start)
        except OSError:
            return   # kernels before 5.14: the pages are allocated as they are written


def dirty_background_bytes(available: int) -> int:
    """The dirty page cache past which the kernel starts writing back: vm.dirty_background_bytes,
    else vm.dirty_background_ratio percent of the memory available."""
    try:
        with open("/proc/sys/vm/dirty_background_bytes") as f:
            fixed = int(f.read())
        if fixed:
            return fixed
        with open("/proc/sys/vm/dirty_background_ratio") as f:
            return available * int(f.read()) // 100
    except (OSError, ValueError):
        return available // 10     # the kernel's default ratio


class Staging:
    """Shared memory as large as the file, and a second descriptor of the file opened with
    O_DIRECT. Staging.open() returns None where either cannot be had."""

    def __init__(self, memfd: int, direct_fd: int, size: int) -> None:
        self._memfd = memfd
        self._direct_fd = direct_fd
        self.mapping = mmap.mmap(memfd, size)

    @classmethod
    def open(cls, file_fd: int, size: int) -> Staging | None:
        if not hasattr(os, "memfd_create"):
            return None
        try:
            direct_fd = os.open(f"/proc/self/fd/{file_fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as error:    # no O_DIRECT on this file system, no /proc
            log.debug("no O_DIRECT for the output (%s): its page cache takes the copy", error.strerror)
            return None
        memfd = -1
        try:
            memfd = os.memfd_create("minidumper-staging", os.MFD_CLOEXEC)
            os.ftruncate(memfd, size)
            return cls(memfd, direct_fd, size)
        except OSError as error:
            log.debug("no shared memory to stage the copy in (%s)", error.strerror)
            os.close(direct_fd)
            if memfd >= 0:
                os.close(memfd)
            return None

    def mapping_of(self, size: int) -> mmap.mmap:
        """The staging mapped at least size long: the pages staged so far stay."""
        if len(self.mapping) < size:
            os.ftruncate(self._memfd, size)
            self.mapping.close()
            self.mapping = mmap.mmap(self._memfd, size)
        return self.mapping

    def write_out(self, regions: list[tuple[int, int]], file_fd: int,
                  advance: Callable[[int], None] | None = None) -> None:
        """Writes the staged (offset, length) regions to the file: whole pages with O_DIRECT, any
        partial page at either end through the page cache (file_fd); all of it through the page
        cache from the first O_DIRECT write the file system refuses. advance: told the bytes
        written, as they are. Raises OSError."""
        with memoryview(self.mapping) as view:
            for offset, length in regions:
                end = offset + length
                direct_start = -(-offset // DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT
                direct_end = max(direct_start, end // DIRECT_ALIGNMENT * DIRECT_ALIGNMENT)
                if direct_start == direct_end:
                    _write_all(file_fd, view[offset:end], offset)
                else:
                    _write_all(file_fd, view[offset:direct_start], offset)
                    for at in range(direct_start, direct_end, DIRECT_CHUNK):
                        chunk_end = min(at + DIRECT_CHUNK, direct_end)
                        self._write_direct(view[at:chunk_end], at, file_fd)
                        if advance:
                            advance(chunk_end - at)
                    _write_all(file_fd, view[direct_end:end], direct_end)
                if advance:
                    advance(length - (direct_end - direct_start))

    def _write_direct(self, data: memoryview, offset: int, file_fd: int) -> None:
        if self._direct_fd >= 0:
            try:
                _write_all(self._direct_fd, data, offset)
                return
            except OSError as error:
                # Opened with O_DIRECT, yet its writes refused (a block larger than a page, ...).
                if error.errno != errno.EINVAL:
                    raise
                log.debug("O_DIRECT writes refused (%s): the rest goes through the page cache",
                          error.strerror)
                os.close(self._direct_fd)
                self._direct_fd = -1
        _write_all(file_fd, data, offset)

    def close(self) -> None:
        try:
            self.mapping.close()
        except BufferError:     # a view of it is alive on an error path: it unmaps when it goes
            pass
        for fd in (self._memfd, self._direct_fd):
            if fd >= 0:
                os.close(fd)
        self._memfd = self._direct_fd = -1


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
