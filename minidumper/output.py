"""The output file: written under a temporary name beside it, renamed into place only on success.

Dumps hold secrets: mode 0600, and never through a symlink.
"""

from __future__ import annotations

import errno
import mmap
import os

from minidumper.errors import OutputError

MADV_POPULATE_WRITE = 23


def _describe(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on the device"
    if error.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return error.strerror or str(error)


class OutputFile:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        directory = os.path.dirname(self.path)
        if os.path.islink(self.path):
            raise OutputError(f"output {path} is a symbolic link; refusing to write through it")
        if os.path.lexists(self.path):
            raise OutputError(f"output {path} already exists; refusing to overwrite it")
        if not os.path.isdir(directory):
            raise OutputError(f"output directory {directory} does not exist")
        self.temporary_path = os.path.join(
            directory, f".{os.path.basename(self.path)}.{os.getpid()}.minidumper-partial")
        self.fd: int | None = None
        self._mapping: mmap.mmap | None = None

    def __enter__(self) -> OutputFile:
        # O_NOFOLLOW and O_CLOEXEC are POSIX; O_BINARY is Windows'. O_EXCL alone never follows a
        # final symlink either.
        flags = (os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
        try:
            self.fd = os.open(self.temporary_path, flags, 0o600)
        except OSError as error:
            raise OutputError(f"cannot create {self.temporary_path}: {_describe(error)}") from error
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._unmap()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if exc_type is not None:
            self.discard()

    def discard(self) -> None:
        try:
            os.unlink(self.temporary_path)
        except FileNotFoundError:
            pass

    def map(self, size: int, *, populate: bool = False) -> mmap.mmap | None:
        """The file, grown to at least size with its blocks reserved, mapped for writing in
        place; None where the filesystem cannot reserve blocks (writing through a mapping there
        could fault). A mapping that is large enough already is reused. populate allocates every
        page now, so that writing them later is a plain copy.
        """
        if self._mapping is not None and len(self._mapping) >= size:
            return self._mapping
        self._unmap()
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise OutputError(f"cannot write {self.path}: {_describe(error)}") from error
            return None
        try:
            self._mapping = mmap.mmap(self.fd, size, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.ftruncate(self.fd, 0)
            return None
        if populate:
            try:
                self._mapping.madvise(MADV_POPULATE_WRITE)
            except OSError:
                pass   # kernels before 5.14: the pages are allocated as they are written
        return self._mapping

    def _unmap(self) -> None:
        if self._mapping is not None:
            self._mapping.close()
            self._mapping = None

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError as error:
            raise OutputError(f"writing {self.path} failed: {_describe(error)}") from error

    def write_at(self, data: bytes, offset: int) -> None:
        try:
            os.pwrite(self.fd, data, offset)
        except OSError as error:
            raise OutputError(f"writing {self.path} failed: {_describe(error)}") from error

    def seek(self, offset: int) -> None:
        os.lseek(self.fd, offset, os.SEEK_SET)

    def commit(self, size: int) -> None:
        """Cuts the file to size, closes it and gives it its real name, unless something took
        that name meanwhile."""
        self._unmap()
        try:
            os.ftruncate(self.fd, size)
        except OSError as error:
            raise OutputError(f"writing {self.path} failed: {_describe(error)}") from error
        os.close(self.fd)
        self.fd = None
        try:
            os.link(self.temporary_path, self.path)
        except FileExistsError as error:
            self.discard()
            raise OutputError(f"output {self.path} appeared while dumping; left untouched") from error
        except OSError:
            # Filesystems without hard links: the existence check at start must do.
            os.rename(self.temporary_path, self.path)
            return
        self.discard()
