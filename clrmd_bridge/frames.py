"""The bridge process's messages: an 8-byte length, then a pickle. Both ends are ours."""

from __future__ import annotations

import os
import pickle
import struct

FRAME_HEADER = struct.Struct("<Q")


def write_frame(fd: int, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(FRAME_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def read_frame(fd: int) -> object | None:
    """The next message, or None at the end of the stream."""
    header = _read_exactly(fd, FRAME_HEADER.size)
    if header is None:
        return None
    body = _read_exactly(fd, FRAME_HEADER.unpack(header)[0])
    if body is None:
        return None
    return pickle.loads(body)


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
