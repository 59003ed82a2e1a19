"""The target's runtime files, reached from where the target sees them, and what they are.

A process in a container maps files from its own mount namespace: the paths in /proc/PID/maps
may not exist in the dumper's, or name other files there. /proc/PID/root is the target's root
as the kernel sees it, so PATH is reachable as /proc/PID/root/PATH from any mount namespace.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

from minidumper.model import Mapping
from minidumper.plan import elf_exports, native

VERSION_MARKER = b"@(#)Version "
RUNTIME_INFO_SIGNATURE = b"DotNetRuntimeInfo\0"
RUNTIME_INFO_SIZE = 112          # signature[18], version, 3 module indexes of 24 bytes, int[4]
MAX_VERSION_LINE = 200
MAX_DATA_SEARCH = 64 << 20


def shares_mount_namespace(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        return True


def reachable_path(pid: int, path: str, inode: int = 0) -> str | None:
    """Where a file the target maps as `path` can be opened from here: through the target's root
    where it lives in another mount namespace (or its path does not exist here), else the path
    itself; one with the mapping's inode first. None where neither exists.

    From outside its mount namespace, /proc/PID/maps names a chrooted target's files from that
    namespace's root, and readlink(/proc/PID/root) is the chroot there: that prefix goes."""
    path = path.removesuffix(" (deleted)")
    root = f"/proc/{pid}/root"
    try:
        chroot = os.readlink(root).rstrip("/")
    except OSError:
        chroot = ""
    inside = path[len(chroot):] if chroot and path.startswith(chroot + "/") else path
    through_root = root + inside
    candidates = [path, through_root] if shares_mount_namespace(pid) else [through_root, path]
    existing = [c for c in candidates if os.path.exists(c)]
    if inode:
        existing.sort(key=lambda c: _inode(c) != inode)
    return existing[0] if existing else None


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0


@dataclass(frozen=True)
class TargetRuntime:
    """The CLR of a target, as far as finding its DAC goes."""

    module_path: str                 # libcoreclr.so, or the single-file executable (the target's path)
    base: int
    single_file: bool
    version: str | None              # "8.0.3126.42015", from "@(#)Version" or DotNetRuntimeInfo
    version_line: bytes | None       # the whole "@(#)Version ... @Commit: ..." string
    dac_build_id: bytes | None       # from DotNetRuntimeInfo: the exact DAC this runtime wants
    reachable_dir: str | None        # the runtime's directory, as reachable from here

    def describe(self) -> str:
        what = f".NET runtime {self.version or '(version unknown)'}"
        if self.dac_build_id:
            what += f" (DAC build id {self.dac_build_id.hex()})"
        return what + (" linked into the single-file app " if self.single_file else " at ") + self.module_path


def find_runtime(pid: int, mappings: list[Mapping], auxv: bytes,
                 read: native.ReadMemory) -> TargetRuntime | None:
    """The target's CLR, read from its memory (and the runtime's file where reachable); None
    where it has none."""
    module = native.runtime_module(mappings, auxv, read)
    if module is None:
        return None
    single_file = not native.is_runtime_module(module.path)
    reachable = reachable_path(pid, module.path, module.inode)
    info = None
    if single_file:
        address = elf_exports.export_address(read, module.start, native.RUNTIME_INFO_EXPORT)
        info = parse_runtime_info(read(address, RUNTIME_INFO_SIZE)) if address else None
    version_line = _version_line_in_memory(mappings, module, read)
    if version_line is None and reachable and not single_file:
        version_line = version_line_of_file(reachable)
    version = version_of(version_line) if version_line else (info or {}).get("version")
    return TargetRuntime(
        module_path=module.path.removesuffix(" (deleted)"), base=module.start,
        single_file=single_file, version=version, version_line=version_line,
        dac_build_id=(info or {}).get("dac_build_id"),
        reachable_dir=os.path.dirname(reachable) if reachable else None)


def parse_runtime_info(data: bytes) -> dict | None:
    """DotNetRuntimeInfo (runtimeinfo.h): its signature, a version, then the runtime's, the
    DAC's and the DBI's module indexes (a length byte and an ELF build id), then, from
    version 2 on, the runtime's version numbers."""
    if len(data) < 96 or not data.startswith(RUNTIME_INFO_SIGNATURE):
        return None
    info_version, = struct.unpack_from("<i", data, 20)
    dac_index = data[48:72]
    result: dict = {"dac_build_id": bytes(dac_index[1:1 + dac_index[0]]) if 0 < dac_index[0] < 24 else None}
    if info_version >= 2 and len(data) >= RUNTIME_INFO_SIZE:
        result["version"] = ".".join(str(n) for n in struct.unpack_from("<4i", data, 96))
    return result


def version_of(version_line: bytes) -> str:
    """ "@(#)Version 8.0.3126.42015 @Commit: ..." -> "8.0.3126.42015" """
    return version_line[len(VERSION_MARKER):].split(b" ")[0].decode(errors="replace")


def version_line_of_file(path: str) -> bytes | None:
    """The "@(#)Version ..." string of a runtime or DAC file: the same in both for one build."""
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = data.find(VERSION_MARKER)
            if at < 0:
                return None
            return _until_nul(data[at:at + MAX_VERSION_LINE])
    except (OSError, ValueError):
        return None


def _version_line_in_memory(mappings: list[Mapping], module: Mapping,
                            read: native.ReadMemory) -> bytes | None:
    """The "@(#)Version" string in the runtime module's writable mappings (where it lies)."""
    for mapping in mappings:
        if mapping.path != module.path or not mapping.writable or not mapping.readable:
            continue
        data = read(mapping.start, min(mapping.size, MAX_DATA_SEARCH))
        at = data.find(VERSION_MARKER)
        if at >= 0:
            return _until_nul(data[at:at + MAX_VERSION_LINE])
    return None


def _until_nul(data: bytes) -> bytes:
    return bytes(data).split(b"\0")[0]


def gnu_build_id(path: str) -> bytes | None:
    """The GNU build id note of an ELF file, read from its program headers' PT_NOTE."""
    try:
        with open(path, "rb") as file:
            header = file.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2:
                return None
            phoff, = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            file.seek(phoff)
            table = file.read(phentsize * phnum)
            for i in range(len(table) // phentsize):
                p_type, _, p_offset, _, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", table, i * phentsize)
                if p_type != 4:
                    continue
                file.seek(p_offset)
                build_id = _build_id_in_notes(file.read(min(p_filesz, 1 << 16)))
                if build_id:
                    return build_id
    except (OSError, struct.error):
        return None
    return None


def _build_id_in_notes(notes: bytes) -> bytes | None:
    offset = 0
    while offset + 12 <= len(notes):
        namesz, descsz, note_type = struct.unpack_from("<III", notes, offset)
        name_at = offset + 12
        desc_at = name_at + (namesz + 3) // 4 * 4
        if note_type == 3 and notes[name_at:name_at + namesz].rstrip(b"\0") == b"GNU":
            return notes[desc_at:desc_at + descsz]
        offset = desc_at + (descsz + 3) // 4 * 4
    return None
