"""dbghelp's interop structures: sizes and field offsets against dbghelp.h, for both pointer sizes.

The numbers below were printed by x86_64-w64-mingw32-gcc and i686-w64-mingw32-gcc (Debian's
gcc-mingw-w64) from dbghelp.h under its pshpack4. mingw's unions predate the Windows SDK's I/O,
read-memory-failure and VM members (and its MINIDUMP_CALLBACK_OUTPUT wrongly puts VmRegion,
Continue and Status outside the union), so MINIDUMP_CALLBACK_INPUT/OUTPUT and the newer callback
records were declared in C as the SDK documents them (LAYOUT_C below) and measured the same way.
test_numbers_match_mingw re-measures them when mingw is installed; the rest needs no compiler.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

import pytest

from minidumper.engines.windows import structs
from minidumper.engines.windows.structs import MinidumpStructs, minidump_structs, native_structs

X64 = {
    "CONTEXT": (1232, {}),
    "MINIDUMP_EXCEPTION_INFORMATION": (16, {"ThreadId": 0, "ExceptionPointers": 4, "ClientPointers": 12}),
    "MINIDUMP_USER_STREAM": (16, {"Type": 0, "BufferSize": 4, "Buffer": 8}),
    "MINIDUMP_USER_STREAM_INFORMATION": (12, {"UserStreamCount": 0, "UserStreamArray": 4}),
    "MINIDUMP_CALLBACK_INFORMATION": (16, {"CallbackRoutine": 0, "CallbackParam": 8}),
    "MINIDUMP_THREAD_CALLBACK": (1264, {
        "ThreadId": 0, "ThreadHandle": 4, "Context": 12, "SizeOfContext": 1244, "StackBase": 1248,
        "StackEnd": 1256,
    }),
    "MINIDUMP_THREAD_EX_CALLBACK": (1280, {
        "ThreadId": 0, "ThreadHandle": 4, "Context": 12, "SizeOfContext": 1244, "StackBase": 1248,
        "StackEnd": 1256, "BackingStoreBase": 1264, "BackingStoreEnd": 1272,
    }),
    "MINIDUMP_MODULE_CALLBACK": (104, {
        "FullPath": 0, "BaseOfImage": 8, "SizeOfImage": 16, "CheckSum": 20, "TimeDateStamp": 24,
        "VersionInfo": 28, "CvRecord": 80, "SizeOfCvRecord": 88, "MiscRecord": 92,
        "SizeOfMiscRecord": 100,
    }),
    "MINIDUMP_IO_CALLBACK": (28, {"Handle": 0, "Offset": 8, "Buffer": 16, "BufferBytes": 24}),
    "MINIDUMP_VM_PRE_READ_CALLBACK": (20, {"Offset": 0, "Buffer": 8, "Size": 16}),
    "MINIDUMP_VM_POST_READ_CALLBACK": (28, {
        "Offset": 0, "Buffer": 8, "Size": 16, "Completed": 20, "Status": 24,
    }),
    "MINIDUMP_CALLBACK_INPUT": (1296, {
        "ProcessId": 0, "ProcessHandle": 4, "CallbackType": 12, "Status": 16, "Thread": 16,
        "ThreadEx": 16, "Module": 16, "IncludeThread": 16, "IncludeModule": 16, "Io": 16,
        "ReadMemoryFailure": 16, "SecondaryFlags": 16, "VmQuery": 16, "VmPreRead": 16, "VmPostRead": 16,
    }),
    "MINIDUMP_CALLBACK_OUTPUT": (52, {
        "ModuleWriteFlags": 0, "ThreadWriteFlags": 0, "SecondaryFlags": 0, "MemoryBase": 0,
        "MemorySize": 8, "CheckCancel": 0, "Cancel": 4, "Handle": 0, "VmRegion": 0, "Continue": 48,
        "VmQueryStatus": 0, "VmQueryResult": 4, "VmReadStatus": 0, "VmReadBytesCompleted": 4,
        "Status": 0,
    }),
}

X86 = {
    "CONTEXT": (716, {}),
    "MINIDUMP_EXCEPTION_INFORMATION": (12, {"ThreadId": 0, "ExceptionPointers": 4, "ClientPointers": 8}),
    "MINIDUMP_USER_STREAM": (12, {"Type": 0, "BufferSize": 4, "Buffer": 8}),
    "MINIDUMP_USER_STREAM_INFORMATION": (8, {"UserStreamCount": 0, "UserStreamArray": 4}),
    "MINIDUMP_CALLBACK_INFORMATION": (8, {"CallbackRoutine": 0, "CallbackParam": 4}),
    "MINIDUMP_THREAD_CALLBACK": (744, {
        "ThreadId": 0, "ThreadHandle": 4, "Context": 8, "SizeOfContext": 724, "StackBase": 728,
        "StackEnd": 736,
    }),
    "MINIDUMP_THREAD_EX_CALLBACK": (760, {
        "ThreadId": 0, "ThreadHandle": 4, "Context": 8, "SizeOfContext": 724, "StackBase": 728,
        "StackEnd": 736, "BackingStoreBase": 744, "BackingStoreEnd": 752,
    }),
    "MINIDUMP_MODULE_CALLBACK": (92, {
        "FullPath": 0, "BaseOfImage": 4, "SizeOfImage": 12, "CheckSum": 16, "TimeDateStamp": 20,
        "VersionInfo": 24, "CvRecord": 76, "SizeOfCvRecord": 80, "MiscRecord": 84,
        "SizeOfMiscRecord": 88,
    }),
    "MINIDUMP_IO_CALLBACK": (20, {"Handle": 0, "Offset": 4, "Buffer": 12, "BufferBytes": 16}),
    "MINIDUMP_VM_PRE_READ_CALLBACK": (16, {"Offset": 0, "Buffer": 8, "Size": 12}),
    "MINIDUMP_VM_POST_READ_CALLBACK": (24, {
        "Offset": 0, "Buffer": 8, "Size": 12, "Completed": 16, "Status": 20,
    }),
    "MINIDUMP_CALLBACK_INPUT": (772, {
        "ProcessId": 0, "ProcessHandle": 4, "CallbackType": 8, "Status": 12, "Thread": 12,
        "ThreadEx": 12, "Module": 12, "IncludeThread": 12, "IncludeModule": 12, "Io": 12,
        "ReadMemoryFailure": 12, "SecondaryFlags": 12, "VmQuery": 12, "VmPreRead": 12, "VmPostRead": 12,
    }),
    "MINIDUMP_CALLBACK_OUTPUT": (52, {
        "ModuleWriteFlags": 0, "ThreadWriteFlags": 0, "SecondaryFlags": 0, "MemoryBase": 0,
        "MemorySize": 8, "CheckCancel": 0, "Cancel": 4, "Handle": 0, "VmRegion": 0, "Continue": 48,
        "VmQueryStatus": 0, "VmQueryResult": 4, "VmReadStatus": 0, "VmReadBytesCompleted": 4,
        "Status": 0,
    }),
}

# The same for both pointer sizes (both compilers agree).
POINTER_FREE = {
    "VS_FIXEDFILEINFO": (52, {"dwFileDateLS": 48}),
    "MINIDUMP_EXCEPTION_INFORMATION64": (24, {
        "ExceptionRecord": 4, "ContextRecord": 12, "ClientPointers": 20,
    }),
    "MINIDUMP_INCLUDE_THREAD_CALLBACK": (4, {"ThreadId": 0}),
    "MINIDUMP_INCLUDE_MODULE_CALLBACK": (8, {"BaseOfImage": 0}),
    "MINIDUMP_READ_MEMORY_FAILURE_CALLBACK": (16, {"Offset": 0, "Bytes": 8, "FailureStatus": 12}),
    "MINIDUMP_VM_QUERY_CALLBACK": (8, {"Offset": 0}),
    "MINIDUMP_MEMORY_INFO": (48, {
        "BaseAddress": 0, "AllocationBase": 8, "AllocationProtect": 16, "RegionSize": 24, "State": 32,
        "Protect": 36, "Type": 40,
    }),
    "MINIDUMP_HEADER": (32, {
        "NumberOfStreams": 8, "StreamDirectoryRva": 12, "TimeDateStamp": 20, "Flags": 24,
    }),
    "MINIDUMP_DIRECTORY": (12, {"Location": 4}),
    "MINIDUMP_LOCATION_DESCRIPTOR": (8, {}),
    "MINIDUMP_LOCATION_DESCRIPTOR64": (16, {}),
    "MINIDUMP_MEMORY_DESCRIPTOR": (16, {"Memory": 8}),
    "MINIDUMP_MEMORY_DESCRIPTOR64": (16, {"DataSize": 8}),
    "MINIDUMP_THREAD": (48, {"Teb": 16, "Stack": 24, "ThreadContext": 40}),
    "MINIDUMP_MODULE": (108, {
        "SizeOfImage": 8, "ModuleNameRva": 20, "VersionInfo": 24, "CvRecord": 76, "MiscRecord": 84,
        "Reserved0": 92, "Reserved1": 100,
    }),
    "MINIDUMP_MEMORY64_LIST": (16, {"BaseRva": 8}),
    "MINIDUMP_MEMORY_INFO_LIST": (16, {"NumberOfEntries": 8}),
}

LAYOUTS = {8: X64, 4: X86}


def _offset(cls: type, field: str) -> int:
    return getattr(cls, field).offset


@pytest.mark.parametrize("pointer_size", [8, 4])
@pytest.mark.parametrize("name", sorted(X64))
def test_pointer_sized_layout(pointer_size: int, name: str) -> None:
    cls = getattr(minidump_structs(pointer_size), name)
    size, fields = LAYOUTS[pointer_size][name]
    assert ctypes.sizeof(cls) == size
    assert {field: _offset(cls, field) for field in fields} == fields


@pytest.mark.parametrize("name", sorted(POINTER_FREE))
def test_pointer_free_layout(name: str) -> None:
    size, fields = POINTER_FREE[name]
    candidates = [getattr(structs, name)]
    for pointer_size in (8, 4):
        candidates.append(getattr(minidump_structs(pointer_size), name, candidates[0]))
    for cls in candidates:
        assert ctypes.sizeof(cls) == size
        assert {field: _offset(cls, field) for field in fields} == fields


def test_x64_context_sits_at_offset_12_under_pack_4() -> None:
    # CONTEXT is 16-aligned on x64, but pshpack4 caps every member's alignment at 4.
    thread = minidump_structs(8).MINIDUMP_THREAD_CALLBACK
    assert thread.Context.offset == 12
    assert ctypes.sizeof(minidump_structs(8).CONTEXT) == 1232


def test_every_structure_of_the_set_is_checked() -> None:
    names = {name for name in MinidumpStructs.__dataclass_fields__ if name != "pointer_size"}
    assert names <= set(X64) | set(POINTER_FREE)


def test_the_union_members_alias() -> None:
    out = minidump_structs(8).MINIDUMP_CALLBACK_OUTPUT()
    out.MemoryBase = 0x1122334455667788
    assert out.ModuleWriteFlags == 0x55667788
    out.Status = 0
    out.CheckCancel, out.Cancel = 1, 1
    assert out.ModuleWriteFlags == 1


def test_native_set_follows_this_python() -> None:
    assert native_structs().pointer_size == ctypes.sizeof(ctypes.c_void_p)


def test_other_pointer_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        minidump_structs(2)


# The Windows SDK's definitions that mingw lacks, as documented; the measured names map onto them.
LAYOUT_C = r"""
#include <windows.h>
#include <dbghelp.h>
#include <stddef.h>
#include <pshpack4.h>
typedef struct { HANDLE Handle; ULONG64 Offset; PVOID Buffer; ULONG BufferBytes; } MINIDUMP_IO_CALLBACK;
typedef struct { ULONG64 Offset; ULONG Bytes; HRESULT FailureStatus; } MINIDUMP_READ_MEMORY_FAILURE_CALLBACK;
typedef struct { ULONG64 Offset; } MINIDUMP_VM_QUERY_CALLBACK;
typedef struct { ULONG64 Offset; PVOID Buffer; ULONG Size; } MINIDUMP_VM_PRE_READ_CALLBACK;
typedef struct { ULONG64 Offset; PVOID Buffer; ULONG Size; ULONG Completed; HRESULT Status; }
    MINIDUMP_VM_POST_READ_CALLBACK;
typedef struct {
  ULONG ProcessId; HANDLE ProcessHandle; ULONG CallbackType;
  union {
    HRESULT Status; MINIDUMP_THREAD_CALLBACK Thread; MINIDUMP_THREAD_EX_CALLBACK ThreadEx;
    MINIDUMP_MODULE_CALLBACK Module; MINIDUMP_INCLUDE_THREAD_CALLBACK IncludeThread;
    MINIDUMP_INCLUDE_MODULE_CALLBACK IncludeModule; MINIDUMP_IO_CALLBACK Io;
    MINIDUMP_READ_MEMORY_FAILURE_CALLBACK ReadMemoryFailure; ULONG SecondaryFlags;
    MINIDUMP_VM_QUERY_CALLBACK VmQuery; MINIDUMP_VM_PRE_READ_CALLBACK VmPreRead;
    MINIDUMP_VM_POST_READ_CALLBACK VmPostRead;
  };
} SDK_MINIDUMP_CALLBACK_INPUT;
typedef struct {
  union {
    ULONG ModuleWriteFlags; ULONG ThreadWriteFlags; ULONG SecondaryFlags;
    struct { ULONG64 MemoryBase; ULONG MemorySize; };
    struct { BOOL CheckCancel; BOOL Cancel; };
    HANDLE Handle;
    struct { MINIDUMP_MEMORY_INFO VmRegion; BOOL Continue; };
    struct { HRESULT VmQueryStatus; MINIDUMP_MEMORY_INFO VmQueryResult; };
    struct { HRESULT VmReadStatus; ULONG VmReadBytesCompleted; };
    HRESULT Status;
  };
} SDK_MINIDUMP_CALLBACK_OUTPUT;
#include <poppack.h>
#define SIZE(T) __asm__ volatile("# LAYOUT " #T " sizeof %c0" :: "i"(sizeof(T)))
#define OFFSET(T, f) __asm__ volatile("# LAYOUT " #T " " #f " %c0" :: "i"(offsetof(T, f)))
"""

SDK_NAMES = {"MINIDUMP_CALLBACK_INPUT": "SDK_MINIDUMP_CALLBACK_INPUT",
             "MINIDUMP_CALLBACK_OUTPUT": "SDK_MINIDUMP_CALLBACK_OUTPUT"}


def _measure(compiler: str, table: dict, tmp_path) -> dict:
    lines = []
    for name, (_size, fields) in table.items():
        c_name = SDK_NAMES.get(name, name)
        lines.append(f"SIZE({c_name});")
        lines.extend(f"OFFSET({c_name}, {field});" for field in fields)
    source = tmp_path / "layout.c"
    source.write_text(LAYOUT_C + "void layout(void) {\n" + "\n".join(lines) + "\n}\n")
    assembly = tmp_path / f"{compiler}.s"
    subprocess.run([compiler, "-S", "-o", str(assembly), str(source)], check=True)
    measured: dict = {}
    for c_name, field, value in re.findall(r"LAYOUT (\w+) (\w+) \$?(\d+)", assembly.read_text()):
        name = {v: k for k, v in SDK_NAMES.items()}.get(c_name, c_name)
        size, fields = measured.setdefault(name, [0, {}])
        if field == "sizeof":
            measured[name][0] = int(value)
        else:
            fields[field] = int(value)
    return {name: (size, fields) for name, (size, fields) in measured.items()}


@pytest.mark.parametrize("compiler, table", [
    ("x86_64-w64-mingw32-gcc", {**X64, **POINTER_FREE}),
    ("i686-w64-mingw32-gcc", {**X86, **POINTER_FREE}),
])
def test_numbers_match_mingw(compiler: str, table: dict, tmp_path) -> None:
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed (Debian: gcc-mingw-w64)")
    assert _measure(compiler, table, tmp_path) == table
