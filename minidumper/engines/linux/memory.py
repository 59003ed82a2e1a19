"""Reading the target's memory: process_vm_readv, with /proc/PID/mem as the fallback.

Unreadable pages are skipped, never fatal: the caller sees only the readable pieces.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import threading
from collections.abc import Iterator

from minidumper.engines.linux import procfs
from minidumper.engines.linux._libc import iovec, last_os_error, libc
from minidumper.errors import AccessDeniedError, TargetExitedError
from minidumper.model import PAGE_SIZE

CHUNK_SIZE = 8 << 20
IOV_MAX = 1024
SHARED_COPY_MIN_BYTES = 16 << 20   # below this, threads cost more than they save
MAX_COPY_WORKERS = 4
COPY_WORKERS_VARIABLE = "MINIDUMPER_COPY_WORKERS"   # a number: a measuring knob (bench/)


def copy_workers() -> int:
    """Threads for a copy in the pause: the target is held, so its CPUs are free. On 2 cores
    two threads read 1 GiB in 180-200 ms, one in 280-300: each process_vm_readv walks the
    target's page tables as it copies, and that is not bound by memory bandwidth alone."""
    wanted = os.environ.get(COPY_WORKERS_VARIABLE, "")
    if wanted.isdigit() and int(wanted) > 0:
        return min(MAX_COPY_WORKERS, int(wanted))
    try:
        return max(1, min(MAX_COPY_WORKERS, len(os.sched_getaffinity(0))))
    except OSError:
        return 1


@contextlib.contextmanager
def address_of(buffer: mmap.mmap | bytearray) -> Iterator[int]:
    """The address of a writable buffer, such as the mapped output, for fill().

    The buffer is exported only inside the block, by one object that the block drops on every
    path: nothing left in a traceback can then keep the mapping from closing (BufferError)."""
    holder = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    try:
        yield ctypes.addressof(holder)
    finally:
        del holder


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
        buffer = ctypes.create_string_buffer(size)
        count = self._read_to(address, ctypes.addressof(buffer), size)
        return buffer.raw[:count]

    def read_pieces(self, start: int, end: int) -> Iterator[tuple[int, memoryview]]:
        """(address, bytes) for every readable piece of [start, end), in order."""
        for chunk_start in range(start, end, CHUNK_SIZE):
            chunk_end = min(chunk_start + CHUNK_SIZE, end)
            buffer = ctypes.create_string_buffer(chunk_end - chunk_start)
            view = memoryview(buffer).cast("B")
            for address, count in self.fill(chunk_start, chunk_end, ctypes.addressof(buffer)):
                offset = address - chunk_start
                yield address, view[offset:offset + count]

    def fill(self, start: int, end: int, destination: int) -> Iterator[tuple[int, int]]:
        """Reads [start, end) to the memory at address destination, byte for byte at the same
        offsets. Yields (address, length) of each readable run; what lies between runs is left
        as it was. A target that dies meanwhile raises TargetExitedError, never a dump with holes.
        """
        address = start
        while address < end:
            size = min(CHUNK_SIZE, end - address)
            count = self._read_to(address, destination + address - start, size)
            if count > 0:
                yield address, count
                address += count
                continue
            self._raise_if_exited()
            # Something in this chunk faults: go page by page to keep what can be read.
            run_start = run_end = address
            for page in range(address, address + size, PAGE_SIZE):
                page_end = min(page + PAGE_SIZE, address + size)
                if self._read_to(page, destination + page - start, page_end - page) == page_end - page:
                    if run_end != page:
                        run_start = page
                    run_end = page_end
                elif run_end > run_start:
                    yield run_start, run_end - run_start
                    run_start = run_end
            if run_end > run_start:
                yield run_start, run_end - run_start
            address += size

    def fill_many(self, pieces: list[tuple[int, int, int]],
                  workers: int = 1) -> Iterator[tuple[int, int, int]]:
        """fill() for many (start, end, destination) pieces, small ones up to IOV_MAX in one
        process_vm_readv (a dump of many threads has thousands of small ranges). Yields (index
        of the piece, address, length) of each readable run, pieces in order. workers: threads
        that share a large copy (copy_workers())."""
        if workers > 1 and sum(end - start for start, end, _ in pieces) >= SHARED_COPY_MIN_BYTES:
            yield from self._fill_shared(pieces, workers)
        else:
            yield from self._fill_in_order(pieces)

    def _fill_shared(self, pieces: list[tuple[int, int, int]],
                     workers: int) -> Iterator[tuple[int, int, int]]:
        """fill_many() with the pieces cut into chunks and shared, in runs of about equal
        bytes, between this thread and helpers. This thread's run is yielded as it is read,
        the helpers' after it: still in order."""
        chunks: list[tuple[int, int, int]] = []
        owners: list[int] = []
        for index, (start, end, destination) in enumerate(pieces):
            for at in range(start, end, CHUNK_SIZE):
                chunks.append((at, min(end, at + CHUNK_SIZE), destination + at - start))
                owners.append(index)
        bounds = _even_runs([end - start for start, end, _ in chunks], workers)
        stop = threading.Event()
        helpers = [_CopyHelper(self.pid, chunks[first:last], stop) for first, last in bounds[1:]]
        try:
            for helper in helpers:
                helper.start()
            first, last = bounds[0]
            for offset, address, length in self._fill_in_order(chunks[first:last]):
                yield owners[first + offset], address, length
            for helper, (first, _) in zip(helpers, bounds[1:]):
                for offset, address, length in helper.results():
                    yield owners[first + offset], address, length
        finally:
            # Never leave a thread writing into a mapping its caller is about to close.
            stop.set()
            for helper in helpers:
                helper.join()

    def _fill_in_order(self, pieces: list[tuple[int, int, int]]) -> Iterator[tuple[int, int, int]]:
        index = 0
        while index < len(pieces):
            batch = self._small_batch(pieces, index)
            done = self._read_batch(pieces[index:index + batch]) if batch > 1 else 0
            for offset in range(done):
                start, end, _ = pieces[index + offset]
                yield index + offset, start, end - start
            index += done
            if done < batch or batch == 0:
                # A piece with an unreadable page (or a big one): on its own, page by page.
                start, end, destination = pieces[index]
                for address, count in self.fill(start, end, destination):
                    yield index, address, count
                index += 1

    @staticmethod
    def _small_batch(pieces: list[tuple[int, int, int]], index: int) -> int:
        count = 0
        while (index + count < len(pieces) and count < IOV_MAX
               and pieces[index + count][1] - pieces[index + count][0] <= CHUNK_SIZE):
            count += 1
        return count

    def _read_batch(self, pieces: list[tuple[int, int, int]]) -> int:
        """How many of the pieces were read whole, from the first on, in one call."""
        if self._use_proc_mem:
            return 0
        local = (iovec * len(pieces))(*(iovec(d, e - s) for s, e, d in pieces))
        remote = (iovec * len(pieces))(*(iovec(s, e - s) for s, e, d in pieces))
        count = libc.process_vm_readv(self.pid, local, len(pieces), remote, len(pieces), 0)
        if count < 0:
            if ctypes.get_errno() == errno.ESRCH:
                raise TargetExitedError(f"process {self.pid} exited mid-dump")
            return 0   # the first piece faults, or the call is refused: fill() sorts it out
        done = 0
        for start, end, _ in pieces:
            if count < end - start:
                break
            count -= end - start
            done += 1
        return done

    def _raise_if_exited(self) -> None:
        if not procfs.alive(self.pid):
            raise TargetExitedError(f"process {self.pid} exited mid-dump")

    def _read_to(self, address: int, pointer: int, size: int) -> int:
        if size <= 0:
            return 0
        if self._use_proc_mem:
            return self._pread(address, pointer, size)
        local = iovec(pointer, size)
        remote = iovec(address, size)
        count = libc.process_vm_readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if count >= 0:
            return count
        err = ctypes.get_errno()
        if err in (errno.EFAULT, errno.EIO, errno.ENOMEM):
            return 0
        if err == errno.ESRCH:
            raise TargetExitedError(f"process {self.pid} exited mid-dump")
        if err in (errno.ENOSYS, errno.EPERM, errno.EACCES):
            self._raise_if_exited()   # a process on its way out refuses too
            self._use_proc_mem = True
            return self._pread(address, pointer, size)
        raise last_os_error("process_vm_readv", self.pid)

    def _pread(self, address: int, pointer: int, size: int) -> int:
        if self._mem_fd is None:
            try:
                self._mem_fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            except PermissionError as error:
                self._raise_if_exited()
                raise AccessDeniedError(f"cannot read the memory of process {self.pid}") from error
            except (FileNotFoundError, ProcessLookupError) as error:
                raise TargetExitedError(f"process {self.pid} exited mid-dump") from error
        # A view of raw memory, not an export of the caller's buffer.
        target = memoryview((ctypes.c_char * size).from_address(pointer)).cast("B")
        try:
            return os.preadv(self._mem_fd, [target], address)
        except OSError as error:
            if error.errno == errno.ESRCH:
                raise TargetExitedError(f"process {self.pid} exited mid-dump") from error
            return 0
        finally:
            target.release()


def _even_runs(sizes: list[int], count: int) -> list[tuple[int, int]]:
    """[first, last) index runs of sizes, at most count of them, of about equal sums."""
    total = sum(sizes)
    bounds: list[tuple[int, int]] = []
    first = 0
    reached = 0
    for index, size in enumerate(sizes):
        reached += size
        if reached * count >= total * (len(bounds) + 1) and len(bounds) < count - 1:
            bounds.append((first, index + 1))
            first = index + 1
    if first < len(sizes) or not bounds:
        bounds.append((first, len(sizes)))
    return bounds


class _CopyHelper(threading.Thread):
    """Reads its run of a shared copy with a reader of its own; process_vm_readv runs without
    the GIL, so the helpers copy in parallel."""

    def __init__(self, pid: int, chunks: list[tuple[int, int, int]], stop: threading.Event) -> None:
        super().__init__(name="minidumper-copy", daemon=True)
        self._pid = pid
        self._chunks = chunks
        self._stop_asked = stop
        self._read: list[tuple[int, int, int]] = []
        self._error: BaseException | None = None

    def run(self) -> None:
        memory = ProcessMemory(self._pid)
        try:
            for run in memory._fill_in_order(self._chunks):
                if self._stop_asked.is_set():
                    return
                self._read.append(run)
        except BaseException as error:   # handed to the thread that reads the results
            self._error = error
        finally:
            memory.close()

    def results(self) -> list[tuple[int, int, int]]:
        self.join()
        if self._error is not None:
            raise self._error
        return self._read
