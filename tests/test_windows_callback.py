"""The MiniDumpCallback answers, driven with synthetic MINIDUMP_CALLBACK_INPUT/OUTPUT structures."""

from __future__ import annotations

import ctypes

import pytest

from minidumper.engines.windows.callback import (
    MAX_MEMORY_CALLBACK_SIZE,
    MinidumpCallback,
    callback_routine,
    memory_callback_chunks,
)
from minidumper.engines.windows.consts import MINIDUMP_CALLBACK_TYPE as Kind
from minidumper.engines.windows.consts import MODULE_WRITE_FLAGS, S_OK
from minidumper.engines.windows.structs import minidump_structs
from minidumper.model import PAGE_SIZE, DumpMode, DumpPlan, MemoryRange, RangeKind

GIB = 1 << 30

PLAN = DumpPlan(mode=DumpMode.HEAP, ranges=[
    MemoryRange(0x10000, 0x12000, RangeKind.STACK),
    MemoryRange(0x7F00_0000_0000, 0x7F00_0000_0000 + 9 * GIB, RangeKind.GC_HEAP),   # 9 GiB: 3 pieces
    MemoryRange(0x7F10_0000_0000, 0x7F10_0000_1000, RangeKind.HANDLE_TABLE),
    MemoryRange(0x7F20_0000_0000, 0x7F20_0000_0000 + MAX_MEMORY_CALLBACK_SIZE, RangeKind.LOADER_HEAP),
])

pointer_sizes = pytest.mark.parametrize("pointer_size", [8, 4])


def _structs(pointer_size: int):
    return minidump_structs(pointer_size)


def _ask(callback: MinidumpCallback, structs, kind: Kind, output=None, **union_members):
    callback_input = structs.MINIDUMP_CALLBACK_INPUT(ProcessId=1234, ProcessHandle=0x44, CallbackType=kind)
    for member, values in union_members.items():
        for field, value in values.items():
            setattr(getattr(callback_input, member), field, value)
    callback_output = output if output is not None else structs.MINIDUMP_CALLBACK_OUTPUT()
    return callback.answer(callback_input, callback_output), callback_output


def _drain_memory(callback: MinidumpCallback, structs, limit: int = 1000) -> list[tuple[int, int]]:
    answers = []
    for _ in range(limit):
        more, output = _ask(callback, structs, Kind.MemoryCallback)
        if not more:
            assert (output.MemoryBase, output.MemorySize) == (0, 0)
            return answers
        answers.append((output.MemoryBase, output.MemorySize))
    raise AssertionError("MemoryCallback never said it was done")


def _never() -> bool:
    return False


@pointer_sizes
def test_memory_callback_gives_exactly_the_plan_ranges_in_order(pointer_size: int) -> None:
    structs = _structs(pointer_size)
    callback = MinidumpCallback(PLAN.ranges, include_module_code=False, cancel_requested=_never)

    answers = _drain_memory(callback, structs)

    gc_heap = 0x7F00_0000_0000
    assert answers == [
        (0x10000, 0x2000),
        (gc_heap, MAX_MEMORY_CALLBACK_SIZE),
        (gc_heap + MAX_MEMORY_CALLBACK_SIZE, MAX_MEMORY_CALLBACK_SIZE),
        (gc_heap + 2 * MAX_MEMORY_CALLBACK_SIZE, 9 * GIB - 2 * MAX_MEMORY_CALLBACK_SIZE),
        (0x7F10_0000_0000, 0x1000),
        (0x7F20_0000_0000, MAX_MEMORY_CALLBACK_SIZE),
    ]
    assert callback.chunks_given == len(answers)
    # Once done, it stays done.
    assert _ask(callback, structs, Kind.MemoryCallback)[0] is False


def test_pieces_fit_a_ulong_stay_page_aligned_and_cover_the_range() -> None:
    memory_range = MemoryRange(0x1_0000_0000, 0x1_0000_0000 + 13 * GIB + 5 * PAGE_SIZE)
    pieces = list(memory_callback_chunks([memory_range]))
    assert all(0 < size <= 0xFFFFFFFF for _, size in pieces)
    assert all(base % PAGE_SIZE == 0 and size % PAGE_SIZE == 0 for base, size in pieces)
    assert pieces[0][0] == memory_range.start
    assert all(base + size == next_base for (base, size), (next_base, _) in zip(pieces, pieces[1:]))
    assert sum(size for _, size in pieces) == memory_range.size


def test_empty_plan_and_empty_ranges_give_nothing() -> None:
    structs = _structs(8)
    callback = MinidumpCallback([MemoryRange(0x5000, 0x5000)], False, _never)
    assert _drain_memory(callback, structs) == []


@pointer_sizes
@pytest.mark.parametrize("kind", [Kind.IncludeModuleCallback, Kind.ModuleCallback])
def test_module_code_is_left_out_and_the_rest_kept(pointer_size: int, kind: Kind) -> None:
    structs = _structs(pointer_size)
    defaults = (MODULE_WRITE_FLAGS.ModuleWriteModule | MODULE_WRITE_FLAGS.ModuleWriteDataSeg
                | MODULE_WRITE_FLAGS.ModuleWriteCvRecord | MODULE_WRITE_FLAGS.ModuleWriteMiscRecord
                | MODULE_WRITE_FLAGS.ModuleWriteCodeSegs | 0x8000_0000)
    callback = MinidumpCallback([], include_module_code=False, cancel_requested=_never)
    output = structs.MINIDUMP_CALLBACK_OUTPUT(ModuleWriteFlags=defaults)

    include, output = _ask(callback, structs, kind, output,
                           IncludeModule={"BaseOfImage": 0x7FF6_0000_0000})

    assert include is True
    assert output.ModuleWriteFlags == int(defaults) - MODULE_WRITE_FLAGS.ModuleWriteCodeSegs


@pointer_sizes
def test_module_code_is_kept_when_asked(pointer_size: int) -> None:
    structs = _structs(pointer_size)
    flags = MODULE_WRITE_FLAGS.ModuleWriteModule | MODULE_WRITE_FLAGS.ModuleWriteCodeSegs
    callback = MinidumpCallback([], include_module_code=True, cancel_requested=_never)
    output = structs.MINIDUMP_CALLBACK_OUTPUT(ModuleWriteFlags=flags)
    assert _ask(callback, structs, Kind.ModuleCallback, output)[1].ModuleWriteFlags == flags


@pointer_sizes
def test_cancel_is_honoured(pointer_size: int) -> None:
    structs = _structs(pointer_size)
    requested = False
    callback = MinidumpCallback(PLAN.ranges, False, lambda: requested)

    answered, output = _ask(callback, structs, Kind.CancelCallback)
    assert answered is True
    assert (output.CheckCancel, output.Cancel) == (1, 0)     # keep asking, go on
    assert _ask(callback, structs, Kind.MemoryCallback)[0] is True

    requested = True
    answered, output = _ask(callback, structs, Kind.CancelCallback)
    assert answered is True
    assert (output.CheckCancel, output.Cancel) == (1, 1)
    assert callback.cancelled
    assert _ask(callback, structs, Kind.MemoryCallback)[0] is False


def test_a_cancel_while_gathering_stops_the_ranges_and_marks_the_dump_cancelled() -> None:
    structs = _structs(8)
    requested = False
    callback = MinidumpCallback(PLAN.ranges, False, lambda: requested)
    assert _ask(callback, structs, Kind.MemoryCallback)[0] is True
    requested = True
    answered, output = _ask(callback, structs, Kind.MemoryCallback)
    assert (answered, output.MemorySize) == (False, 0)
    assert callback.cancelled and callback.chunks_given == 1


@pointer_sizes
def test_a_failed_read_is_skipped_not_fatal(pointer_size: int) -> None:
    structs = _structs(pointer_size)
    callback = MinidumpCallback([], False, _never)
    output = structs.MINIDUMP_CALLBACK_OUTPUT(Status=-1)
    answered, output = _ask(callback, structs, Kind.ReadMemoryFailureCallback, output,
                            ReadMemoryFailure={"Offset": 0x7F00_0000_1000, "Bytes": 4096,
                                               "FailureStatus": -2147024597})
    assert answered is True
    assert output.Status == S_OK
    assert callback.read_failures == 1


@pointer_sizes
def test_threads_are_all_included_and_counted(pointer_size: int) -> None:
    structs = _structs(pointer_size)
    callback = MinidumpCallback([], False, _never)
    output = structs.MINIDUMP_CALLBACK_OUTPUT(ThreadWriteFlags=0x7)
    assert _ask(callback, structs, Kind.IncludeThreadCallback, output, IncludeThread={"ThreadId": 7})[0]
    assert output.ThreadWriteFlags == 0x7
    for thread_id in (7, 8):
        assert _ask(callback, structs, Kind.ThreadCallback,
                    Thread={"ThreadId": thread_id, "StackBase": 0x1000, "StackEnd": 0x2000})[0]
    assert _ask(callback, structs, Kind.ThreadExCallback, ThreadEx={"ThreadId": 9})[0]
    assert callback.threads == 3


@pointer_sizes
@pytest.mark.parametrize("kind", [
    Kind.WriteKernelMinidumpCallback, Kind.KernelMinidumpStatusCallback, Kind.RemoveMemoryCallback,
    Kind.IncludeVmRegionCallback, Kind.IoStartCallback, Kind.IoWriteAllCallback, Kind.IoFinishCallback,
    Kind.SecondaryFlagsCallback, Kind.IsProcessSnapshotCallback, Kind.VmStartCallback,
    Kind.VmQueryCallback, Kind.VmPreReadCallback, Kind.VmPostReadCallback,
])
def test_the_rest_is_left_to_dbghelp(pointer_size: int, kind: Kind) -> None:
    structs = _structs(pointer_size)
    callback = MinidumpCallback(PLAN.ranges, False, _never)
    output = structs.MINIDUMP_CALLBACK_OUTPUT()
    ctypes.memset(ctypes.addressof(output), 0xA5, ctypes.sizeof(output))
    before = bytes(output)
    assert _ask(callback, structs, kind, output)[0] is False
    assert bytes(output) == before
    assert callback.chunks_given == 0


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_error_in_the_callback_cancels_instead_of_unwinding(error: BaseException) -> None:
    structs = _structs(8)

    def cancel_requested() -> bool:
        raise error

    callback = MinidumpCallback(PLAN.ranges, False, cancel_requested)
    assert _ask(callback, structs, Kind.CancelCallback)[0] is False
    assert callback.error is error
    answered, output = _ask(callback, structs, Kind.CancelCallback)
    assert (answered, output.Cancel) == (True, 1)
    assert _ask(callback, structs, Kind.MemoryCallback)[0] is False


@pointer_sizes
def test_the_c_function_pointer_reaches_the_driver(pointer_size: int) -> None:
    # dbghelp calls through a function pointer with pointers to its structures; CFUNCTYPE stands
    # in for WINFUNCTYPE, which only differs on 32-bit Windows.
    structs = _structs(pointer_size)
    callback = MinidumpCallback(PLAN.ranges[:1], False, _never)
    routine = callback_routine(callback, structs, ctypes.CFUNCTYPE)
    information = structs.MINIDUMP_CALLBACK_INFORMATION(
        CallbackRoutine=ctypes.cast(routine, ctypes.c_void_p).value & (1 << 8 * pointer_size) - 1)
    assert information.CallbackRoutine

    callback_input = structs.MINIDUMP_CALLBACK_INPUT(CallbackType=Kind.MemoryCallback)
    callback_output = structs.MINIDUMP_CALLBACK_OUTPUT()
    assert routine(None, ctypes.byref(callback_input), ctypes.byref(callback_output)) == 1
    assert (callback_output.MemoryBase, callback_output.MemorySize) == (0x10000, 0x2000)
    assert routine(None, ctypes.byref(callback_input), ctypes.byref(callback_output)) == 0
    assert callback_output.MemorySize == 0
