"""The numbers of dbghelp.h (minidumpapiset.h) and the few Win32 ones the engine needs.

Names are the Windows SDK's own, so that they can be looked up. Pure data: importable anywhere.
"""

from __future__ import annotations

import enum


class MINIDUMP_TYPE(enum.IntFlag):
    MiniDumpNormal = 0x00000000
    MiniDumpWithDataSegs = 0x00000001
    MiniDumpWithFullMemory = 0x00000002
    MiniDumpWithHandleData = 0x00000004
    MiniDumpFilterMemory = 0x00000008
    MiniDumpScanMemory = 0x00000010
    MiniDumpWithUnloadedModules = 0x00000020
    MiniDumpWithIndirectlyReferencedMemory = 0x00000040
    MiniDumpFilterModulePaths = 0x00000080
    MiniDumpWithProcessThreadData = 0x00000100
    MiniDumpWithPrivateReadWriteMemory = 0x00000200
    MiniDumpWithoutOptionalData = 0x00000400
    MiniDumpWithFullMemoryInfo = 0x00000800
    MiniDumpWithThreadInfo = 0x00001000
    MiniDumpWithCodeSegs = 0x00002000
    MiniDumpWithoutAuxiliaryState = 0x00004000
    MiniDumpWithFullAuxiliaryState = 0x00008000
    MiniDumpWithPrivateWriteCopyMemory = 0x00010000
    MiniDumpIgnoreInaccessibleMemory = 0x00020000
    MiniDumpWithTokenInformation = 0x00040000
    MiniDumpWithModuleHeaders = 0x00080000
    MiniDumpFilterTriage = 0x00100000
    MiniDumpWithAvxXStateContext = 0x00200000
    MiniDumpWithIptTrace = 0x00400000
    MiniDumpScanInaccessiblePartialPages = 0x00800000
    MiniDumpFilterWriteCombinedMemory = 0x01000000


MiniDumpValidTypeFlags = 0x01FFFFFF


class MINIDUMP_CALLBACK_TYPE(enum.IntEnum):
    ModuleCallback = 0
    ThreadCallback = 1
    ThreadExCallback = 2
    IncludeThreadCallback = 3
    IncludeModuleCallback = 4
    MemoryCallback = 5
    CancelCallback = 6
    WriteKernelMinidumpCallback = 7
    KernelMinidumpStatusCallback = 8
    RemoveMemoryCallback = 9
    IncludeVmRegionCallback = 10
    IoStartCallback = 11
    IoWriteAllCallback = 12
    IoFinishCallback = 13
    ReadMemoryFailureCallback = 14
    SecondaryFlagsCallback = 15
    IsProcessSnapshotCallback = 16
    VmStartCallback = 17
    VmQueryCallback = 18
    VmPreReadCallback = 19
    VmPostReadCallback = 20


class THREAD_WRITE_FLAGS(enum.IntFlag):
    ThreadWriteThread = 0x0001
    ThreadWriteStack = 0x0002
    ThreadWriteContext = 0x0004
    ThreadWriteBackingStore = 0x0008
    ThreadWriteInstructionWindow = 0x0010
    ThreadWriteThreadData = 0x0020
    ThreadWriteThreadInfo = 0x0040


class MODULE_WRITE_FLAGS(enum.IntFlag):
    ModuleWriteModule = 0x0001
    ModuleWriteDataSeg = 0x0002
    ModuleWriteMiscRecord = 0x0004
    ModuleWriteCvRecord = 0x0008
    ModuleReferencedByMemory = 0x0010
    ModuleWriteTlsData = 0x0020
    ModuleWriteCodeSegs = 0x0040


class MINIDUMP_SECONDARY_FLAGS(enum.IntFlag):
    MiniSecondaryWithoutPowerInfo = 0x00000001


class MINIDUMP_STREAM_TYPE(enum.IntEnum):
    UnusedStream = 0
    ReservedStream0 = 1
    ReservedStream1 = 2
    ThreadListStream = 3
    ModuleListStream = 4
    MemoryListStream = 5
    ExceptionStream = 6
    SystemInfoStream = 7
    ThreadExListStream = 8
    Memory64ListStream = 9
    CommentStreamA = 10
    CommentStreamW = 11
    HandleDataStream = 12
    FunctionTableStream = 13
    UnloadedModuleListStream = 14
    MiscInfoStream = 15
    MemoryInfoListStream = 16
    ThreadInfoListStream = 17
    HandleOperationListStream = 18
    TokenStream = 19
    JavaScriptDataStream = 20
    SystemMemoryInfoStream = 21
    ProcessVmCountersStream = 22
    IptTraceStream = 23
    ThreadNamesStream = 24
    LastReservedStream = 0xFFFF


MINIDUMP_SIGNATURE = 0x504D444D  # "MDMP"
MINIDUMP_VERSION = 42899

# Sizes of the CONTEXT record inside MINIDUMP_THREAD_CALLBACK (winnt.h).
CONTEXT_SIZE_X86 = 716
CONTEXT_SIZE_AMD64 = 1232

# Process access rights (winnt.h).
PROCESS_VM_READ = 0x0010
PROCESS_DUP_HANDLE = 0x0040
PROCESS_QUERY_INFORMATION = 0x0400
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000

STILL_ACTIVE = 259

# HRESULTs.
S_OK = 0
S_FALSE = 1
E_ABORT = 0x80004004
FACILITY_WIN32_PREFIX = 0x80070000    # HRESULT_FROM_WIN32(code) == 0x8007xxxx

# Win32 error codes (winerror.h).
ERROR_SUCCESS = 0
ERROR_FILE_NOT_FOUND = 2
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6
ERROR_NOT_ENOUGH_MEMORY = 8
ERROR_WRITE_FAULT = 29
ERROR_HANDLE_DISK_FULL = 39
ERROR_NOT_SUPPORTED = 50
ERROR_INVALID_PARAMETER = 87
ERROR_DISK_FULL = 112
ERROR_PARTIAL_COPY = 299
ERROR_NOACCESS = 998
ERROR_CANCELLED = 1223
ERROR_PRIVILEGE_NOT_HELD = 1314
