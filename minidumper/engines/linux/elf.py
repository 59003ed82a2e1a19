"""ELF64 little-endian records of a core file, named as the ELF and Linux headers name them."""

from __future__ import annotations

import struct

ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_NONE = 0
ET_CORE = 4
EM_X86_64 = 62

PT_LOAD = 1
PT_DYNAMIC = 2
PT_NOTE = 4
PT_PHDR = 6
PT_GNU_EH_FRAME = 0x6474E550

PF_X = 1
PF_W = 2
PF_R = 4

PN_XNUM = 0xFFFF

NT_PRSTATUS = 1
NT_FPREGSET = 2
NT_PRPSINFO = 3
NT_AUXV = 6
NT_FILE = 0x46494C45
NT_X86_XSTATE = 0x202

EHDR_SIZE = 64
PHDR_SIZE = 56
SHDR_SIZE = 64

_ehdr = struct.Struct("<16sHHIQQQIHHHHHH")
_phdr = struct.Struct("<IIQQQQQQ")
_shdr = struct.Struct("<IIQQQQIIQQ")
_nhdr = struct.Struct("<III")


def elf_header(*, phoff: int, phnum: int, shoff: int, shnum: int, machine: int = EM_X86_64) -> bytes:
    ident = b"\x7fELF" + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE]) + bytes(8)
    return _ehdr.pack(ident, ET_CORE, machine, EV_CURRENT, 0, phoff, shoff, 0,
                      EHDR_SIZE, PHDR_SIZE, phnum, SHDR_SIZE, shnum, 0)


def program_header(p_type: int, p_flags: int, p_offset: int, p_vaddr: int,
                   p_filesz: int, p_memsz: int, p_align: int) -> bytes:
    return _phdr.pack(p_type, p_flags, p_offset, p_vaddr, 0, p_filesz, p_memsz, p_align)


def phnum_overflow_section(real_phnum: int) -> bytes:
    """Section header 0 that carries the real program header count (sh_info) past PN_XNUM."""
    return _shdr.pack(0, 0, 0, 0, 0, 0, 0, real_phnum, 0, 0)


def note(name: bytes, note_type: int, desc: bytes) -> bytes:
    name_z = name + b"\0"
    return (_nhdr.pack(len(name_z), len(desc), note_type)
            + _pad4(name_z) + _pad4(desc))


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


# struct elf_prpsinfo (x86-64): state, sname, zomb, nice, flag, uid, gid, pid, ppid, pgrp, sid,
# fname[16], psargs[80].
_prpsinfo = struct.Struct("<bcbbxxxxQIIiiii16s80s")

# struct elf_prstatus (x86-64): siginfo (signo, code, errno), cursig, sigpend, sighold,
# pid, ppid, pgrp, sid, four timevals, the registers, fpvalid.
_prstatus_head = struct.Struct("<iiihxxQQiiii64x")
PRSTATUS_SIZE = 336


def prpsinfo(*, state: str, pid: int, ppid: int, pgrp: int, sid: int, uid: int, gid: int,
             nice: int, flags: int, fname: str, psargs: str) -> bytes:
    state_code = "RSDTZW".find(state[:1]) if state else 0
    return _prpsinfo.pack(max(state_code, 0), (state[:1] or "R").encode(), int(state == "Z"), nice,
                          flags, uid, gid, pid, ppid, pgrp, sid,
                          fname.encode()[:15], psargs.encode()[:79])


def prstatus(*, tid: int, ppid: int, pgrp: int, sid: int, regs: bytes, cursig: int = 0,
             fpvalid: bool = True) -> bytes:
    head = _prstatus_head.pack(cursig, 0, 0, cursig, 0, 0, tid, ppid, pgrp, sid)
    body = head + regs + struct.pack("<i", int(fpvalid))
    return body + bytes(PRSTATUS_SIZE - len(body))


def file_note(entries: list[tuple[int, int, int, str]], page_size: int) -> bytes:
    """NT_FILE: (start, end, file offset, path) of every file-backed mapping."""
    head = struct.pack("<QQ", len(entries), page_size)
    table = b"".join(struct.pack("<QQQ", start, end, offset // page_size)
                     for start, end, offset, _ in entries)
    names = b"".join(path.encode() + b"\0" for *_, path in entries)
    return head + table + names
