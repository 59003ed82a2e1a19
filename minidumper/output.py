"""The output file: an unnamed file in the output's directory, given its name only when complete.

The file is created with O_TMPFILE, so that nothing is left behind whatever ends the dumper (even
kill -9), and linked to its name through /proc/self/fd (linkat with AT_SYMLINK_FOLLOW), which
fails rather than replace a file that appeared meanwhile. Where the file system has no O_TMPFILE,
a hidden file with a random name stands in for it. Dumps hold secrets: mode 0600, and never
through a symlink. The checks that need no target run in the constructor, before .NET starts.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import secrets
import sys
import time
from collections.abc import Callable

from minidumper import memory_budget, output_staging
from minidumper.errors import OutputError, UsageError

log = logging.getLogger(__name__)

NAME_MAX = 255
PARTIAL_SUFFIX = ".minidumper-partial"
O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)
O_PATH = getattr(os, "O_PATH", 0)
# What open(O_TMPFILE) fails with where the file system (or the kernel) cannot make one.
NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}


def describe_os_error(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on the device"
    if error.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return error.strerror or str(error)


def default_name(pid: int, process_name: str, now: float | None = None) -> str:
    """core_<name>_<pid>_<YYYYMMDD_HHMMSS> (local time), like dotnet-dump's core_<time>."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in process_name)[:100] or "process"
    return f"core_{safe}_{pid}_{time.strftime('%Y%m%d_%H%M%S', time.localtime(now))}"


def app_name(comm: str, cmdline: list[str]) -> str:
    """The name for the default file name: the app of `dotnet [exec] app.dll`, else the
    executable's name, else the process's comm."""
    from minidumper.targets import DOTNET_HOSTS, hosted_assembly

    if not cmdline:
        return comm
    executable = os.path.basename(cmdline[0])
    if executable in DOTNET_HOSTS:
        assembly = os.path.basename(hosted_assembly(cmdline[1:]))
        return assembly.removesuffix(".dll").removesuffix(".exe") or executable
    return executable or comm


def output_path(path: str | os.PathLike | None, pid: int, process_name: str) -> str:
    """The file to write: path itself, or the default name inside path where it is a
    directory (a symlink to one included), or in the current directory where it is None. A
    default name already taken (a dump of the same process in the same second) gets _2, _3, ..."""
    if path is not None:
        path = os.fspath(path)
        if not (path and os.path.isdir(path)):
            return path
    directory = os.getcwd() if path is None else path
    name = default_name(pid, process_name)
    candidate, number = os.path.join(directory, name), 2
    while os.path.lexists(candidate):
        candidate, number = os.path.join(directory, f"{name}_{number}"), number + 1
    return candidate


def check_output_path(path: str) -> tuple[str, str]:
    """(directory, name) of an output that can be written: it must not exist (not even as a
    dangling symlink), its directory must exist and be writable, its name fit NAME_MAX."""
    if not path:
        raise UsageError("the output name is empty; give a file or directory with -o/-f, "
                         "or - for stdout")
    absolute = os.path.abspath(path)
    directory, name = os.path.split(absolute)
    if path.endswith(os.sep):
        raise OutputError(f"output directory {path} does not exist")
    if os.path.islink(absolute):
        raise OutputError(f"output {path} is a symbolic link; refusing to write through it")
    if os.path.lexists(absolute):
        raise OutputError(f"output {path} already exists; refusing to overwrite it")
    if not os.path.isdir(directory):
        raise OutputError(f"output directory {directory} does not exist")
    if len(os.fsencode(name)) > NAME_MAX:
        raise OutputError(f"output name is {len(os.fsencode(name))} bytes long; "
                          f"file systems allow {NAME_MAX}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {directory} is not writable "
                          f"({describe_os_error(_access_error(directory))})")
    return directory, name


def _access_error(directory: str) -> OSError:
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return OSError(errno.EROFS, os.strerror(errno.EROFS))
    except OSError as error:
        return error
    return OSError(errno.EACCES, os.strerror(errno.EACCES))


class OutputFile:
    """with OutputFile(path) as output: ... output.commit(size). Checks at construction; the
    unnamed file is made on entry and dropped on exit unless committed."""

    def __init__(self, path: str) -> None:
        directory, self.name = check_output_path(path)
        self.path = os.path.join(directory, self.name)
        self.directory = directory
        self.fd: int | None = None
        self.hidden_name: str | None = None     # only where O_TMPFILE is not supported
        self._dir_fd: int | None = None
        self._mapping: mmap.mmap | None = None
        self._staging: output_staging.Staging | None = None
        self._committed = False

    def __enter__(self) -> OutputFile:
        try:
            if hasattr(os, "O_DIRECTORY"):    # POSIX; on Windows names are full paths instead
                self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.fd = self._create()
        except OSError as error:
            self._close_descriptors()
            raise OutputError(f"cannot create the output in {self.directory}: "
                              f"{describe_os_error(error)}") from error
        return self

    def _create(self) -> int:
        if self._dir_fd is not None:
            try:
                return os.open(".", O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=self._dir_fd)
            except OSError as error:
                if error.errno not in NO_TMPFILE:
                    raise
                log.debug("no O_TMPFILE in %s (%s): a hidden file with a random name instead",
                          self.directory, error.strerror)
        # A name nobody can predict, so nobody can plant it; short, so that NAME_MAX holds.
        self.hidden_name = self._at(f".{secrets.token_hex(12)}{PARTIAL_SUFFIX}")
        flags = (os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
        return os.open(self.hidden_name, flags, 0o600, dir_fd=self._dir_fd)

    def _at(self, name: str) -> str:
        """A name relative to the directory's descriptor, or a full path where there is none."""
        return name if self._dir_fd is not None else os.path.join(self.directory, name)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._drop_staging()
        self._unmap(dropping=True)
        if not self._committed:
            self._remove_hidden()
        self._close_descriptors()

    def _close_descriptors(self) -> None:
        for name in ("fd", "_dir_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def _remove_hidden(self) -> None:
        if self.hidden_name is not None:
            try:
                os.unlink(self.hidden_name, dir_fd=self._dir_fd)
            except FileNotFoundError:
                pass

    def reserve(self, size: int, only: list[tuple[int, int]] | None = None) -> mmap.mmap | None:
        """Before the pause: the file's blocks reserved and mapped (see map), and populated
        ahead only where that memory will stay: within half of what this process may still use
        (its cgroup's limit and usage, not only the host's MemAvailable). only: the (offset,
        length) regions to populate, where not the whole file."""
        room = self._check_memory(size)
        populated = size if only is None else sum(length for _, length in only)
        populate = populated <= room.bytes // 2
        mapping = self.map(size, only)
        regions = [(0, size)] if only is None else only
        started = time.monotonic()
        if mapping is not None and populate and self._stage(size, populated, room):
            output_staging.populate(self._staging.mapping, regions)
        elif mapping is not None and populate:
            output_staging.populate(mapping, regions)
        ahead = "no" if not populate else (f"{populated >> 20} MiB"
                                            + (" (staged in shared memory)" if self._staging else "")
                                            + f" in {time.monotonic() - started:.2f} s")
        log.debug("output: reserving %d MiB, populated ahead: %s; memory headroom %s",
                  size >> 20, ahead, room.describe())
        return mapping

    def _stage(self, size: int, populated: int, room: memory_budget.Headroom) -> bool:
        """Stages the copy in shared memory (output_staging) where the file's page cache would
        be written back while it waits for the pause."""
        self._drop_staging()
        if os.environ.get(output_staging.NO_STAGING_VARIABLE) == "1" \
                or populated <= output_staging.dirty_background_bytes(room.bytes):
            return False
        if memory_budget.memory_filesystem(self.fd):    # in memory already, never written back
            return False
        self._staging = output_staging.Staging.open(self.fd, size)
        return self._staging is not None

    def copy_destination(self, size: int) -> mmap.mmap | None:
        """Where the pause copies the memory, laid out as the file: the staging where there is
        one (write_staged() then writes it to the file), else the file's mapping (map())."""
        mapping = self.map(size)
        if mapping is None or self._staging is None:
            return mapping
        return self._staging.mapping_of(size)

    @property
    def staged(self) -> bool:
        """Whether the copy goes to a staging (copy_destination), for write_staged()."""
        return self._staging is not None

    def write_staged(self, regions: list[tuple[int, int]],
                     advance: Callable[[int], None] | None = None) -> None:
        """After the pause: the staged (offset, length) regions written to the file (advance
        told the bytes as they go), and the staging's memory given back."""
        started = time.monotonic()
        try:
            self._staging.write_out(regions, self.fd, advance)
        except OSError as error:
            self._raise_if_full(error)
            raise OutputError(f"writing {self.path} failed: {describe_os_error(error)}") from error
        finally:
            self._drop_staging()
        log.debug("the staged copy written to the file in %.3f s", time.monotonic() - started)

    def _drop_staging(self) -> None:
        if self._staging is not None:
            self._staging.close()
            self._staging = None

    def _check_memory(self, size: int) -> memory_budget.Headroom:
        """On a file system in memory the output is memory that cannot be reclaimed: refuse
        what would exceed the headroom (exit 6), rather than meet the OOM killer."""
        room = memory_budget.headroom()
        filesystem = memory_budget.memory_filesystem(self.fd)
        if filesystem and size > room.bytes:
            raise OutputError(
                f"the output's file system ({filesystem}) keeps files in memory: this dump needs "
                f"about {size >> 20} MiB, more than the {room.describe()} this process may still "
                "use; write it to a disk, or stream it with -o -")
        return room

    def map(self, size: int, only: list[tuple[int, int]] | None = None) -> mmap.mmap | None:
        """The file, grown to at least size with its blocks reserved, mapped for writing in
        place; None where the filesystem cannot reserve blocks (writing through a mapping there
        could fault). A mapping that is large enough already is reused. only: the (offset,
        length) regions to reserve; the rest stays a hole, read as zeros, and whatever else is
        written through the mapping must be allocate()d first.
        """
        if self._mapping is not None and len(self._mapping) >= size:
            return self._mapping
        self._unmap()
        if memory_budget.memory_filesystem(self.fd):
            self._check_memory(size)
        try:
            if only is not None:
                # Blocks for what will be written only: a thousand threads' untouched stacks
                # are gigabytes of zeros, a hole in the file.
                os.ftruncate(self.fd, size)
            self.allocate([(0, size)] if only is None else only)
        except OSError as error:
            self._raise_if_full(error)
            return None
        try:
            self._mapping = mmap.mmap(self.fd, size, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.ftruncate(self.fd, 0)
            return None
        return self._mapping

    def allocate(self, regions: list[tuple[int, int]]) -> None:
        """Reserves the blocks of the (offset, length) regions: a write through the mapping into
        a hole on a full disk would be a SIGBUS, this is a clean error."""
        for offset, length in regions:
            try:
                os.posix_fallocate(self.fd, offset, length)
            except OSError as error:
                self._raise_if_full(error)
                raise

    def _raise_if_full(self, error: OSError) -> None:
        """OutputError where the disk, the quota or the file size limit is reached."""
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OutputError(f"cannot write {self.path}: {describe_os_error(error)}") from error

    def allocate_mapped(self) -> None:
        """allocate() all of the mapped part of the file (where it has one)."""
        if self._mapping is not None:
            self.allocate([(0, len(self._mapping))])

    def reset(self) -> None:
        """Drops everything written so far, for a dump started over: empty and unmapped."""
        self._drop_staging()
        self._unmap()
        try:
            os.ftruncate(self.fd, 0)
        except OSError as error:
            raise OutputError(f"writing {self.path} failed: {describe_os_error(error)}") from error

    def path_for_children(self) -> str | None:
        """A path by which a child process opens this very file (it may have no name yet), or
        None where there is none (/proc of another pid namespace)."""
        path = f"/proc/{os.getpid()}/fd/{self.fd}"
        try:
            mine, seen = os.fstat(self.fd), os.stat(path)
        except OSError:
            return None
        return path if (mine.st_dev, mine.st_ino) == (seen.st_dev, seen.st_ino) else None

    def _unmap(self, dropping: bool = False) -> None:
        if self._mapping is not None:
            try:
                self._mapping.close()
            except BufferError:
                if not dropping:
                    raise
                # Views of it are still alive on an error path: it unmaps when they go.
            self._mapping = None

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError as error:
            raise OutputError(f"writing {self.path} failed: {describe_os_error(error)}") from error

    def write_at(self, data: bytes, offset: int) -> None:
        try:
            os.pwrite(self.fd, data, offset)
        except OSError as error:
            raise OutputError(f"writing {self.path} failed: {describe_os_error(error)}") from error

    def seek(self, offset: int) -> None:
        os.lseek(self.fd, offset, os.SEEK_SET)

    def commit(self, size: int) -> None:
        """Cuts the file to size and gives it its name, unless something took that name
        meanwhile (then it is dropped, and the other file left alone)."""
        self._unmap()
        try:
            os.ftruncate(self.fd, size)
        except OSError as error:
            raise OutputError(f"writing {self.path} failed: {describe_os_error(error)}") from error
        try:
            if self.hidden_name is None:
                os.link(f"/proc/self/fd/{self.fd}", self.name, dst_dir_fd=self._dir_fd,
                        follow_symlinks=True)
            else:
                self._link_hidden()
        except FileExistsError as error:
            raise OutputError(f"output {self.path} appeared while dumping; left untouched") from error
        except OSError as error:
            raise OutputError(f"cannot name the output {self.path}: "
                              f"{describe_os_error(error)}") from error
        self._committed = True
        self._remove_hidden()

    def _link_hidden(self) -> None:
        try:
            os.link(self.hidden_name, self._at(self.name), src_dir_fd=self._dir_fd,
                    dst_dir_fd=self._dir_fd)
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            # No hard links here (vfat, ...): a rename, after one more look at the name.
            if os.path.lexists(os.path.join(self.directory, self.name)):
                raise FileExistsError(errno.EEXIST, "exists") from error
            os.rename(self.hidden_name, self._at(self.name), src_dir_fd=self._dir_fd,
                      dst_dir_fd=self._dir_fd)
            self.hidden_name = None


def open_output(path: object, pid: int, process_name: str) -> OutputFile:
    """The output for write_dump's path argument: a path (a directory gets the default name;
    None is the current directory), "-" for stdout, or a writable binary stream."""
    if path is None or isinstance(path, (str, os.PathLike)):
        text = os.fspath(path) if path is not None else None
        if text == "-":
            from minidumper.output_stream import StreamedOutput
            return StreamedOutput(sys.stdout.buffer if sys.stdout is not None else 1)
        return OutputFile(output_path(text, pid, process_name))
    from minidumper.output_stream import StreamedOutput
    return StreamedOutput(path)
