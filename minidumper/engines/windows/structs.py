"""dbghelp's interop structures as ctypes classes, laid out as dbghelp.h lays them out.

dbghelp.h packs every minidump structure at 4 bytes (pshpack4). The structures that hold a pointer
or a HANDLE differ between 32-bit and 64-bit processes, so one builder makes the whole set for a
given pointer size, with pointer-sized fields as plain unsigned integers. That lets a 64-bit Linux
host define and test the 32-bit layouts too. The set for the running process comes from
native_structs().

CONTEXT is kept opaque (its bytes only): the engine never reads registers, it only needs the
records around it laid out right. Under pack 4 the 16-byte alignment of the x64 CONTEXT does not
apply, so MINIDUMP_THREAD_CALLBACK.Context sits at offset 12 on x64.

The union members follow the Windows SDK (minidumpapiset.h), which has the I/O, read-memory-failure
and VM callback members that mingw's older header lacks. The newest SDK's compressed-memory-stream
members are left out: no dbghelp we call sends them unasked.

The file-format records (MINIDUMP_HEADER and the stream records) hold no pointers and are the same
for both sizes; they are defined once, at module level, for readers of a written dump.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

from minidumper.engines.windows.consts import CONTEXT_SIZE_AMD64, CONTEXT_SIZE_X86

c_ULONG = ctypes.c_uint32
c_ULONG64 = ctypes.c_uint64
c_LONG = ctypes.c_int32
c_HRESULT = ctypes.c_int32
c_BOOL = ctypes.c_int32
c_USHORT = ctypes.c_uint16
c_UCHAR = ctypes.c_uint8

PACK = 4


class _Packed(ctypes.Structure):
    """Base of every structure here: MSVC layout, pshpack4."""

    _layout_ = "ms"
    _pack_ = PACK


class _PackedUnion(ctypes.Union):
    _layout_ = "ms"
    _pack_ = PACK


def _struct(name: str, fields: list[tuple], anonymous: tuple[str, ...] = ()) -> type[ctypes.Structure]:
    namespace: dict = {"_fields_": fields}
    if anonymous:
        namespace["_anonymous_"] = anonymous
    return type(name, (_Packed,), namespace)


def _union(name: str, fields: list[tuple], anonymous: tuple[str, ...] = ()) -> type[ctypes.Union]:
    namespace: dict = {"_fields_": fields}
    if anonymous:
        namespace["_anonymous_"] = anonymous
    return type(name, (_PackedUnion,), namespace)


# --- pointer-free records (the same for both pointer sizes) ---

class VS_FIXEDFILEINFO(_Packed):
    _fields_ = [
        ("dwSignature", c_ULONG),
        ("dwStrucVersion", c_ULONG),
        ("dwFileVersionMS", c_ULONG),
        ("dwFileVersionLS", c_ULONG),
        ("dwProductVersionMS", c_ULONG),
        ("dwProductVersionLS", c_ULONG),
        ("dwFileFlagsMask", c_ULONG),
        ("dwFileFlags", c_ULONG),
        ("dwFileOS", c_ULONG),
        ("dwFileType", c_ULONG),
        ("dwFileSubtype", c_ULONG),
        ("dwFileDateMS", c_ULONG),
        ("dwFileDateLS", c_ULONG),
    ]


class MINIDUMP_MEMORY_INFO(_Packed):
    _fields_ = [
        ("BaseAddress", c_ULONG64),
        ("AllocationBase", c_ULONG64),
        ("AllocationProtect", c_ULONG),
        ("__alignment1", c_ULONG),
        ("RegionSize", c_ULONG64),
        ("State", c_ULONG),
        ("Protect", c_ULONG),
        ("Type", c_ULONG),
        ("__alignment2", c_ULONG),
    ]


class MINIDUMP_EXCEPTION_INFORMATION64(_Packed):
    _fields_ = [
        ("ThreadId", c_ULONG),
        ("ExceptionRecord", c_ULONG64),
        ("ContextRecord", c_ULONG64),
        ("ClientPointers", c_BOOL),
    ]


class MINIDUMP_INCLUDE_THREAD_CALLBACK(_Packed):
    _fields_ = [("ThreadId", c_ULONG)]


class MINIDUMP_INCLUDE_MODULE_CALLBACK(_Packed):
    _fields_ = [("BaseOfImage", c_ULONG64)]


class MINIDUMP_READ_MEMORY_FAILURE_CALLBACK(_Packed):
    _fields_ = [
        ("Offset", c_ULONG64),
        ("Bytes", c_ULONG),
        ("FailureStatus", c_HRESULT),
    ]


class MINIDUMP_VM_QUERY_CALLBACK(_Packed):
    _fields_ = [("Offset", c_ULONG64)]


# File format.

class MINIDUMP_LOCATION_DESCRIPTOR(_Packed):
    _fields_ = [("DataSize", c_ULONG), ("Rva", c_ULONG)]


class MINIDUMP_LOCATION_DESCRIPTOR64(_Packed):
    _fields_ = [("DataSize", c_ULONG64), ("Rva", c_ULONG64)]


class MINIDUMP_HEADER(_Packed):
    _fields_ = [
        ("Signature", c_ULONG),
        ("Version", c_ULONG),
        ("NumberOfStreams", c_ULONG),
        ("StreamDirectoryRva", c_ULONG),
        ("CheckSum", c_ULONG),
        ("TimeDateStamp", c_ULONG),
        ("Flags", c_ULONG64),
    ]


class MINIDUMP_DIRECTORY(_Packed):
    _fields_ = [("StreamType", c_ULONG), ("Location", MINIDUMP_LOCATION_DESCRIPTOR)]


class MINIDUMP_MEMORY_DESCRIPTOR(_Packed):
    _fields_ = [("StartOfMemoryRange", c_ULONG64), ("Memory", MINIDUMP_LOCATION_DESCRIPTOR)]


class MINIDUMP_MEMORY_DESCRIPTOR64(_Packed):
    _fields_ = [("StartOfMemoryRange", c_ULONG64), ("DataSize", c_ULONG64)]


class MINIDUMP_THREAD(_Packed):
    _fields_ = [
        ("ThreadId", c_ULONG),
        ("SuspendCount", c_ULONG),
        ("PriorityClass", c_ULONG),
        ("Priority", c_ULONG),
        ("Teb", c_ULONG64),
        ("Stack", MINIDUMP_MEMORY_DESCRIPTOR),
        ("ThreadContext", MINIDUMP_LOCATION_DESCRIPTOR),
    ]


class MINIDUMP_MODULE(_Packed):
    _fields_ = [
        ("BaseOfImage", c_ULONG64),
        ("SizeOfImage", c_ULONG),
        ("CheckSum", c_ULONG),
        ("TimeDateStamp", c_ULONG),
        ("ModuleNameRva", c_ULONG),
        ("VersionInfo", VS_FIXEDFILEINFO),
        ("CvRecord", MINIDUMP_LOCATION_DESCRIPTOR),
        ("MiscRecord", MINIDUMP_LOCATION_DESCRIPTOR),
        ("Reserved0", c_ULONG64),
        ("Reserved1", c_ULONG64),
    ]


class MINIDUMP_THREAD_LIST(_Packed):
    """Header of the thread list stream; NumberOfThreads MINIDUMP_THREAD records follow."""

    _fields_ = [("NumberOfThreads", c_ULONG)]


class MINIDUMP_MODULE_LIST(_Packed):
    _fields_ = [("NumberOfModules", c_ULONG)]


class MINIDUMP_MEMORY_LIST(_Packed):
    _fields_ = [("NumberOfMemoryRanges", c_ULONG)]


class MINIDUMP_MEMORY64_LIST(_Packed):
    _fields_ = [("NumberOfMemoryRanges", c_ULONG64), ("BaseRva", c_ULONG64)]


class MINIDUMP_MEMORY_INFO_LIST(_Packed):
    _fields_ = [
        ("SizeOfHeader", c_ULONG),
        ("SizeOfEntry", c_ULONG),
        ("NumberOfEntries", c_ULONG64),
    ]


# --- pointer-sized records: one set per pointer size ---

@dataclass(frozen=True)
class MinidumpStructs:
    """The callback-side interop structures for one pointer size (4 or 8)."""

    pointer_size: int
    CONTEXT: type[ctypes.Structure]
    MINIDUMP_EXCEPTION_INFORMATION: type[ctypes.Structure]
    MINIDUMP_USER_STREAM: type[ctypes.Structure]
    MINIDUMP_USER_STREAM_INFORMATION: type[ctypes.Structure]
    MINIDUMP_CALLBACK_INFORMATION: type[ctypes.Structure]
    MINIDUMP_THREAD_CALLBACK: type[ctypes.Structure]
    MINIDUMP_THREAD_EX_CALLBACK: type[ctypes.Structure]
    MINIDUMP_INCLUDE_THREAD_CALLBACK: type[ctypes.Structure]
    MINIDUMP_MODULE_CALLBACK: type[ctypes.Structure]
    MINIDUMP_INCLUDE_MODULE_CALLBACK: type[ctypes.Structure]
    MINIDUMP_IO_CALLBACK: type[ctypes.Structure]
    MINIDUMP_READ_MEMORY_FAILURE_CALLBACK: type[ctypes.Structure]
    MINIDUMP_VM_QUERY_CALLBACK: type[ctypes.Structure]
    MINIDUMP_VM_PRE_READ_CALLBACK: type[ctypes.Structure]
    MINIDUMP_VM_POST_READ_CALLBACK: type[ctypes.Structure]
    MINIDUMP_MEMORY_INFO: type[ctypes.Structure]
    MINIDUMP_CALLBACK_INPUT: type[ctypes.Structure]
    MINIDUMP_CALLBACK_OUTPUT: type[ctypes.Structure]


@functools.cache
def minidump_structs(pointer_size: int) -> MinidumpStructs:
    """Builds the structures as a process with pointers of `pointer_size` bytes sees them.

    8 means x64 (AMD64), 4 means x86.
    """
    if pointer_size == 8:
        pointer, context_size, arch = c_ULONG64, CONTEXT_SIZE_AMD64, "amd64"
    elif pointer_size == 4:
        pointer, context_size, arch = c_ULONG, CONTEXT_SIZE_X86, "x86"
    else:
        raise ValueError(f"pointer size must be 4 or 8, not {pointer_size}")
    handle = pointer

    def name(base: str) -> str:
        return f"{base}_{arch}"

    context = _struct(name("CONTEXT"), [("Data", c_UCHAR * context_size)])

    exception_information = _struct(name("MINIDUMP_EXCEPTION_INFORMATION"), [
        ("ThreadId", c_ULONG),
        ("ExceptionPointers", pointer),      # PEXCEPTION_POINTERS
        ("ClientPointers", c_BOOL),
    ])
    user_stream = _struct(name("MINIDUMP_USER_STREAM"), [
        ("Type", c_ULONG),
        ("BufferSize", c_ULONG),
        ("Buffer", pointer),
    ])
    user_stream_information = _struct(name("MINIDUMP_USER_STREAM_INFORMATION"), [
        ("UserStreamCount", c_ULONG),
        ("UserStreamArray", pointer),        # PMINIDUMP_USER_STREAM
    ])
    callback_information = _struct(name("MINIDUMP_CALLBACK_INFORMATION"), [
        ("CallbackRoutine", pointer),        # MINIDUMP_CALLBACK_ROUTINE
        ("CallbackParam", pointer),
    ])

    thread_callback = _struct(name("MINIDUMP_THREAD_CALLBACK"), [
        ("ThreadId", c_ULONG),
        ("ThreadHandle", handle),
        ("Context", context),
        ("SizeOfContext", c_ULONG),
        ("StackBase", c_ULONG64),
        ("StackEnd", c_ULONG64),
    ])
    thread_ex_callback = _struct(name("MINIDUMP_THREAD_EX_CALLBACK"), [
        ("ThreadId", c_ULONG),
        ("ThreadHandle", handle),
        ("Context", context),
        ("SizeOfContext", c_ULONG),
        ("StackBase", c_ULONG64),
        ("StackEnd", c_ULONG64),
        ("BackingStoreBase", c_ULONG64),
        ("BackingStoreEnd", c_ULONG64),
    ])
    module_callback = _struct(name("MINIDUMP_MODULE_CALLBACK"), [
        ("FullPath", pointer),               # PWCHAR
        ("BaseOfImage", c_ULONG64),
        ("SizeOfImage", c_ULONG),
        ("CheckSum", c_ULONG),
        ("TimeDateStamp", c_ULONG),
        ("VersionInfo", VS_FIXEDFILEINFO),
        ("CvRecord", pointer),
        ("SizeOfCvRecord", c_ULONG),
        ("MiscRecord", pointer),
        ("SizeOfMiscRecord", c_ULONG),
    ])
    io_callback = _struct(name("MINIDUMP_IO_CALLBACK"), [
        ("Handle", handle),
        ("Offset", c_ULONG64),
        ("Buffer", pointer),
        ("BufferBytes", c_ULONG),
    ])
    vm_pre_read_callback = _struct(name("MINIDUMP_VM_PRE_READ_CALLBACK"), [
        ("Offset", c_ULONG64),
        ("Buffer", pointer),
        ("Size", c_ULONG),
    ])
    vm_post_read_callback = _struct(name("MINIDUMP_VM_POST_READ_CALLBACK"), [
        ("Offset", c_ULONG64),
        ("Buffer", pointer),
        ("Size", c_ULONG),
        ("Completed", c_ULONG),
        ("Status", c_HRESULT),
    ])

    input_union = _union(name("MINIDUMP_CALLBACK_INPUT_u"), [
        ("Status", c_HRESULT),
        ("Thread", thread_callback),
        ("ThreadEx", thread_ex_callback),
        ("Module", module_callback),
        ("IncludeThread", MINIDUMP_INCLUDE_THREAD_CALLBACK),
        ("IncludeModule", MINIDUMP_INCLUDE_MODULE_CALLBACK),
        ("Io", io_callback),
        ("ReadMemoryFailure", MINIDUMP_READ_MEMORY_FAILURE_CALLBACK),
        ("SecondaryFlags", c_ULONG),
        ("VmQuery", MINIDUMP_VM_QUERY_CALLBACK),
        ("VmPreRead", vm_pre_read_callback),
        ("VmPostRead", vm_post_read_callback),
    ])
    callback_input = _struct(name("MINIDUMP_CALLBACK_INPUT"), [
        ("ProcessId", c_ULONG),
        ("ProcessHandle", handle),
        ("CallbackType", c_ULONG),
        ("u", input_union),
    ], anonymous=("u",))

    output_union = _union(name("MINIDUMP_CALLBACK_OUTPUT_u"), [
        ("ModuleWriteFlags", c_ULONG),
        ("ThreadWriteFlags", c_ULONG),
        ("SecondaryFlags", c_ULONG),
        ("memory", _struct(name("MINIDUMP_CALLBACK_OUTPUT_memory"), [
            ("MemoryBase", c_ULONG64),
            ("MemorySize", c_ULONG),
        ])),
        ("cancel", _struct(name("MINIDUMP_CALLBACK_OUTPUT_cancel"), [
            ("CheckCancel", c_BOOL),
            ("Cancel", c_BOOL),
        ])),
        ("Handle", handle),
        ("vm_region", _struct(name("MINIDUMP_CALLBACK_OUTPUT_vm_region"), [
            ("VmRegion", MINIDUMP_MEMORY_INFO),
            ("Continue", c_BOOL),
        ])),
        ("vm_query", _struct(name("MINIDUMP_CALLBACK_OUTPUT_vm_query"), [
            ("VmQueryStatus", c_HRESULT),
            ("VmQueryResult", MINIDUMP_MEMORY_INFO),
        ])),
        ("vm_read", _struct(name("MINIDUMP_CALLBACK_OUTPUT_vm_read"), [
            ("VmReadStatus", c_HRESULT),
            ("VmReadBytesCompleted", c_ULONG),
        ])),
        ("Status", c_HRESULT),
    ], anonymous=("memory", "cancel", "vm_region", "vm_query", "vm_read"))
    callback_output = _struct(name("MINIDUMP_CALLBACK_OUTPUT"), [("u", output_union)], anonymous=("u",))

    return MinidumpStructs(
        pointer_size=pointer_size,
        CONTEXT=context,
        MINIDUMP_EXCEPTION_INFORMATION=exception_information,
        MINIDUMP_USER_STREAM=user_stream,
        MINIDUMP_USER_STREAM_INFORMATION=user_stream_information,
        MINIDUMP_CALLBACK_INFORMATION=callback_information,
        MINIDUMP_THREAD_CALLBACK=thread_callback,
        MINIDUMP_THREAD_EX_CALLBACK=thread_ex_callback,
        MINIDUMP_INCLUDE_THREAD_CALLBACK=MINIDUMP_INCLUDE_THREAD_CALLBACK,
        MINIDUMP_MODULE_CALLBACK=module_callback,
        MINIDUMP_INCLUDE_MODULE_CALLBACK=MINIDUMP_INCLUDE_MODULE_CALLBACK,
        MINIDUMP_IO_CALLBACK=io_callback,
        MINIDUMP_READ_MEMORY_FAILURE_CALLBACK=MINIDUMP_READ_MEMORY_FAILURE_CALLBACK,
        MINIDUMP_VM_QUERY_CALLBACK=MINIDUMP_VM_QUERY_CALLBACK,
        MINIDUMP_VM_PRE_READ_CALLBACK=vm_pre_read_callback,
        MINIDUMP_VM_POST_READ_CALLBACK=vm_post_read_callback,
        MINIDUMP_MEMORY_INFO=MINIDUMP_MEMORY_INFO,
        MINIDUMP_CALLBACK_INPUT=callback_input,
        MINIDUMP_CALLBACK_OUTPUT=callback_output,
    )


def native_structs() -> MinidumpStructs:
    """The set for this Python process, the one dbghelp will hand to our callback."""
    return minidump_structs(ctypes.sizeof(ctypes.c_void_p))
