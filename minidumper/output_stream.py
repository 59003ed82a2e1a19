"""The dump for a stream (stdout, a pipe, any writable binary file object): written like a file
into an unnamed temporary file, then copied to the stream in order once the target runs again."""

from __future__ import annotations

import errno
import os
import select
import tempfile

from minidumper.errors import OutputError, UsageError
from minidumper.output import OutputFile, describe_os_error


class StreamedOutput(OutputFile):
    """The dump for a stream (stdout): written like a file, into an unnamed file in the
    temporary directory, so that the target's pause is as short as with a file; the complete
    core is then copied to the stream, in order, after the target is resumed."""

    def __init__(self, stream: object, directory: str | None = None) -> None:
        self._stream = stream
        self.stream_fd = _stream_fd(stream)
        if self.stream_fd is not None and os.isatty(self.stream_fd):
            raise UsageError("refusing to write a binary dump to a terminal; pipe it "
                             "(| zstd > app.core.zst) or redirect it (> app.core)")
        self.directory = directory or tempfile.gettempdir()
        self.name = None
        self.path = "the dump stream"
        self.fd = None
        self.hidden_name = None
        self._dir_fd = None
        self._mapping = None
        self._staging = None
        self._committed = False

    def commit(self, size: int) -> None:
        self._unmap()
        try:
            os.ftruncate(self.fd, size)
            if hasattr(self._stream, "flush"):
                self._stream.flush()
            if self.stream_fd is not None:
                self._send(size)
            else:
                self._copy(size)
        except OSError as error:
            if error.errno == errno.EPIPE:
                raise OutputError("the dump stream was closed by its reader") from error
            raise OutputError(f"writing the dump stream failed: {describe_os_error(error)}") from error
        self._committed = True
        self._remove_hidden()     # where O_TMPFILE was missing: the stream has it all now

    def _send(self, size: int) -> None:
        offset = 0
        while offset < size:
            try:
                sent = os.sendfile(self.stream_fd, self.fd, offset, min(size - offset, 1 << 30))
            except BlockingIOError:      # a non-blocking pipe that is full: wait for its reader
                select.select([], [self.stream_fd], [])
                continue
            except OSError as error:
                if error.errno not in (errno.EINVAL, errno.ENOSYS) or offset:
                    raise
                self._copy(size)
                return
            if sent == 0:
                raise OSError(errno.EIO, "the dump stream accepted no more bytes")
            offset += sent

    def _copy(self, size: int) -> None:
        offset = 0
        while offset < size:
            chunk = os.pread(self.fd, min(size - offset, 8 << 20), offset)
            if not chunk:
                raise OSError(errno.EIO, "the dump's temporary file ended early")
            if self.stream_fd is not None:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self.stream_fd, view):]
            else:
                self._stream.write(chunk)
            offset += len(chunk)
        if self.stream_fd is None and hasattr(self._stream, "flush"):
            self._stream.flush()


def _stream_fd(stream: object) -> int | None:
    """The descriptor behind a stream, or None for one that only has write()."""
    if isinstance(stream, int):
        return stream
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        if not hasattr(stream, "write"):
            raise TypeError(f"output must be a path or a writable binary stream, not "
                            f"{type(stream).__name__}") from None
        return None
