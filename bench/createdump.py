"""createdump of the target's runtime, and the diagnostics IPC fallback (the dotnet-dump way) for
a runtime whose createdump refuses the pid."""

from __future__ import annotations

import glob
import os
import re
import socket
import struct
import subprocess
from pathlib import Path

FLAGS = {"full": "--full", "withheap": "--withheap", "normal": "--normal"}


def find_createdump(pid: int) -> Path:
    """createdump of the runtime the target runs on, found through `dotnet --list-runtimes`."""
    listing = subprocess.run(["dotnet", "--list-runtimes"], capture_output=True, text=True,
                             check=True).stdout
    candidates: list[tuple[tuple[int, ...], Path]] = []
    for line in listing.splitlines():
        match = re.match(r"Microsoft\.NETCore\.App (\S+) \[(.+)\]", line.strip())
        if not match:
            continue
        version, base = match.groups()
        folder = Path(base) / version
        if (folder / "createdump").is_file():
            numbers = tuple(int(n) for n in re.findall(r"\d+", version.split("-")[0]))
            candidates.append((numbers, folder))
    if not candidates:
        raise SystemExit("bench: no Microsoft.NETCore.App runtime with createdump found")
    # Prefer the runtime folder the target actually loaded libcoreclr.so from.
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
        for _, folder in candidates:
            if f"{folder}/libcoreclr.so" in maps:
                return folder / "createdump"
    except OSError:
        pass
    return max(candidates)[1] / "createdump"


class DiagnosticsIpcError(Exception):
    pass


class DiagnosticsClient:
    """Just enough of the .NET diagnostics IPC protocol to ask a runtime for a core dump.

    A message is a 20-byte header (magic "DOTNET_IPC_V1\\0", uint16 total size, uint8 command set,
    uint8 command id, uint16 reserved) and a payload. The Dump command set is 0x01; the payload of
    GenerateCoreDump (0x01) and GenerateCoreDump3 (0x03) is a length-prefixed UTF-16 path, a uint32
    dump type and uint32 flags. The reply's command set is 0xFF (server): id 0x00 OK, 0xFF error,
    with a uint32 result (and, for GenerateCoreDump3 errors, a message string).
    """

    MAGIC = b"DOTNET_IPC_V1\x00"
    HEADER = struct.Struct("<14sHBBH")
    COMMAND_SET_DUMP = 0x01
    GENERATE_CORE_DUMP = 0x01
    GENERATE_CORE_DUMP3 = 0x03
    SERVER = 0xFF
    OK = 0x00
    UNKNOWN_COMMAND = 0x80131384
    DUMP_TYPES = {"normal": 1, "withheap": 2, "triage": 3, "full": 4}

    def __init__(self, pid: int, timeout: float = 600.0) -> None:
        self.pid = pid
        self.timeout = timeout

    def socket_path(self) -> str:
        tmp = "/tmp"
        try:  # the runtime puts its socket under the target's own TMPDIR
            for entry in Path(f"/proc/{self.pid}/environ").read_bytes().split(b"\0"):
                if entry.startswith(b"TMPDIR=") and len(entry) > 7:
                    tmp = entry[7:].decode()
        except OSError:
            pass
        paths = glob.glob(os.path.join(tmp, f"dotnet-diagnostic-{self.pid}-*-socket"))
        if not paths:
            raise DiagnosticsIpcError(f"no diagnostics socket for pid {self.pid} in {tmp}")
        return max(paths, key=os.path.getmtime)

    def generate_core_dump(self, path: str, mode: str) -> None:
        try:
            self._request(self.GENERATE_CORE_DUMP3, path, mode)
        except DiagnosticsIpcError as error:
            if getattr(error, "code", None) != self.UNKNOWN_COMMAND:
                raise
            self._request(self.GENERATE_CORE_DUMP, path, mode)  # an older runtime

    def _request(self, command: int, path: str, mode: str) -> None:
        name = (path + "\0").encode("utf-16-le")
        payload = (struct.pack("<I", len(name) // 2) + name
                   + struct.pack("<II", self.DUMP_TYPES[mode], 0))
        header = self.HEADER.pack(self.MAGIC, self.HEADER.size + len(payload),
                                  self.COMMAND_SET_DUMP, command, 0)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(self.timeout)
            connection.connect(self.socket_path())
            connection.sendall(header + payload)
            reply = self._receive(connection, self.HEADER.size)
            magic, size, command_set, command_id, _ = self.HEADER.unpack(reply)
            if magic != self.MAGIC or command_set != self.SERVER:
                raise DiagnosticsIpcError(f"unexpected reply header {reply!r}")
            body = self._receive(connection, size - self.HEADER.size)
        code = struct.unpack_from("<I", body)[0] if len(body) >= 4 else 0
        if command_id == self.OK and code == 0:
            return
        message = ""
        if len(body) >= 8:
            length = struct.unpack_from("<I", body, 4)[0]
            message = body[8:8 + 2 * length].decode("utf-16-le", "replace").rstrip("\0")
        error = DiagnosticsIpcError(f"runtime refused the dump: result {code:#010x} {message}".strip())
        error.code = code  # type: ignore[attr-defined]
        raise error

    @staticmethod
    def _receive(connection: socket.socket, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = connection.recv(count - len(data))
            if not chunk:
                raise DiagnosticsIpcError("the runtime closed the diagnostics connection")
            data += chunk
        return data
