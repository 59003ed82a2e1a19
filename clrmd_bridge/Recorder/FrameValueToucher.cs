using System;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using Microsoft.Diagnostics.Runtime;

namespace ClrmdBridge
{
    /// <summary>
    /// Asks the DAC for the arguments and locals of every managed frame, as SOS's clrstack -a
    /// does (IXCLRDataTask::CreateStackWalk, then IXCLRDataFrame and IXCLRDataValue), so that the
    /// recording reader keeps what the DAC reads to answer: the method's and its locals'
    /// signatures, parameter names, its IL header, the native var info of its code, and the
    /// type lookups of each value's type.
    /// </summary>
    public static unsafe class FrameValueToucher
    {
        // xclrdata.idl vtables (IUnknown's three slots first).
        private const int SlotStartEnumTasks = 4;          // IXCLRDataProcess
        private const int SlotEnumTask = 5;
        private const int SlotEndEnumTasks = 6;
        private const int SlotCreateStackWalk = 11;        // IXCLRDataTask
        private const int SlotGetOSThreadID = 12;
        private const int SlotNext = 5;                    // IXCLRDataStackWalk
        private const int SlotGetFrame = 8;
        private const int SlotGetContext = 4;              // IXCLRDataFrame
        private const int SlotGetNumArguments = 6;
        private const int SlotGetArgumentByIndex = 7;
        private const int SlotGetNumLocalVariables = 8;
        private const int SlotGetLocalVariableByIndex = 9;
        private const int SlotGetBytes = 6;                // IXCLRDataValue
        private const int SlotGetNumLocations = 28;
        private const int SlotGetLocationByIndex = 29;

        // CLRDataSimpleFrameType: every kind, as SOS asks.
        private const uint AllFrameTypes = 0x1 | 0x2 | 0x4 | 0x8;
        private const int S_OK = 0;
        private const uint ContextAmd64Control = 0x100001; // CONTEXT_AMD64 | CONTEXT_CONTROL
        private const int ContextAmd64Rip = 0xF8;          // winnt.h CONTEXT (AMD64): Rip
        private const uint MaxContextBytes = 4096;
        private const int NameChars = 512;                 // SOS's mdNameLen
        private const int MaxFrames = 4096;                // a runaway walk stops here
        private const uint MaxValueBytes = 1 << 20;        // a struct on the stack; more is a misread

        /// <summary>Walks the stack of every thread the CLR knows, or of those of <paramref name="onlyThreads"/>
        /// (OS thread ids).</summary>
        public static void TouchThreads(ClrRuntime runtime, HashSet<uint>? onlyThreads = null)
        {
            IntPtr process = DacMemoryEnumerator.FindClrDataProcess(runtime)
                ?? throw new InvalidOperationException("ClrMD's IXCLRDataProcess was not found (ClrMD's internals changed)");
            // One pass over the thread list: a lookup by id per thread (SOS's way) walks the list
            // each time, which doubled this step's time at 1000 threads.
            var startEnumTasks = (delegate* unmanaged<IntPtr, ulong*, int>)DacMemoryEnumerator.VTableSlot(process, SlotStartEnumTasks);
            var enumTask = (delegate* unmanaged<IntPtr, ulong*, IntPtr*, int>)DacMemoryEnumerator.VTableSlot(process, SlotEnumTask);
            var endEnumTasks = (delegate* unmanaged<IntPtr, ulong, int>)DacMemoryEnumerator.VTableSlot(process, SlotEndEnumTasks);
            ulong handle;
            if (startEnumTasks(process, &handle) != S_OK)
                return;
            HashSet<ulong> codeAsked = new();
            try
            {
                IntPtr task;
                while (enumTask(process, &handle, &task) == S_OK)
                {
                    try
                    {
                        if (onlyThreads is null || onlyThreads.Contains(OSThreadId(task)))
                            TouchStack(task, codeAsked);
                    }
                    finally
                    {
                        DacMemoryEnumerator.Release(task);
                    }
                }
            }
            finally
            {
                _ = endEnumTasks(process, handle);
            }
        }

        private static uint OSThreadId(IntPtr task)
        {
            uint id;
            var getOSThreadID = (delegate* unmanaged<IntPtr, uint*, int>)DacMemoryEnumerator.VTableSlot(task, SlotGetOSThreadID);
            return getOSThreadID(task, &id) == S_OK ? id : 0;
        }

        private static void TouchStack(IntPtr task, HashSet<ulong> codeAsked)
        {
            IntPtr walk = IntPtr.Zero;
            try
            {
                var createStackWalk = (delegate* unmanaged<IntPtr, uint, IntPtr*, int>)DacMemoryEnumerator.VTableSlot(task, SlotCreateStackWalk);
                if (createStackWalk(task, AllFrameTypes, &walk) != S_OK)
                    return;

                var next = (delegate* unmanaged<IntPtr, int>)DacMemoryEnumerator.VTableSlot(walk, SlotNext);
                for (int i = 0; i < MaxFrames; i++)
                {
                    TouchFrame(walk, codeAsked);
                    if (next(walk) != S_OK)
                        break;
                }
            }
            finally
            {
                DacMemoryEnumerator.Release(walk);
            }
        }

        /// <summary>The current frame's arguments and locals, once per instruction pointer: another
        /// frame there reads the same method data, and its values lie on its own stack or in its
        /// registers, which the dump has anyway.</summary>
        private static void TouchFrame(IntPtr walk, HashSet<ulong> codeAsked)
        {
            IntPtr frame = IntPtr.Zero;
            var getFrame = (delegate* unmanaged<IntPtr, IntPtr*, int>)DacMemoryEnumerator.VTableSlot(walk, SlotGetFrame);
            if (getFrame(walk, &frame) != S_OK)
                return;
            try
            {
                ulong? ip = InstructionPointer(frame);
                if (ip is ulong known && codeAsked.Contains(known))
                    return;
                uint count = 0;
                var getNumArguments = (delegate* unmanaged<IntPtr, uint*, int>)DacMemoryEnumerator.VTableSlot(frame, SlotGetNumArguments);
                if (getNumArguments(frame, &count) < 0)
                    return;   // no method: an explicit frame (which may share its IP with a managed one)
                if (ip is ulong asked)
                    codeAsked.Add(asked);
                TouchValues(frame, SlotGetArgumentByIndex, count);
                var getNumLocals = (delegate* unmanaged<IntPtr, uint*, int>)DacMemoryEnumerator.VTableSlot(frame, SlotGetNumLocalVariables);
                if (getNumLocals(frame, &count) >= 0)
                    TouchValues(frame, SlotGetLocalVariableByIndex, count);
            }
            finally
            {
                DacMemoryEnumerator.Release(frame);
            }
        }

        /// <summary>The frame's instruction pointer, where the CONTEXT's layout is known here (x64).</summary>
        private static ulong? InstructionPointer(IntPtr frame)
        {
            if (RuntimeInformation.ProcessArchitecture != Architecture.X64)
                return null;
            uint size;
            var getContext = (delegate* unmanaged<IntPtr, uint, uint, uint*, byte*, int>)DacMemoryEnumerator.VTableSlot(frame, SlotGetContext);
            _ = getContext(frame, ContextAmd64Control, 0, &size, null);   // asks the size: the DAC copies exactly that many bytes
            if (size < ContextAmd64Rip + sizeof(ulong) || size > MaxContextBytes)
                return null;
            byte* context = stackalloc byte[(int)size];
            if (getContext(frame, ContextAmd64Control, size, &size, context) != S_OK)
                return null;
            return *(ulong*)(context + ContextAmd64Rip);
        }

        /// <summary>Each value with its name, location and bytes; SOS stops at the first failure, we go on.</summary>
        private static void TouchValues(IntPtr frame, int slotGetByIndex, uint count)
        {
            char* name = stackalloc char[NameChars];
            var getByIndex = (delegate* unmanaged<IntPtr, uint, IntPtr*, uint, uint*, char*, int>)DacMemoryEnumerator.VTableSlot(frame, slotGetByIndex);
            for (uint index = 0; index < count; index++)
            {
                IntPtr value = IntPtr.Zero;
                uint nameLength;
                if (getByIndex(frame, index, &value, NameChars, &nameLength, name) != S_OK || value == IntPtr.Zero)
                    continue;
                TouchValue(value);
                DacMemoryEnumerator.Release(value);
            }
        }

        private static void TouchValue(IntPtr value)
        {
            uint locations = 0, flags, size = 0;
            ulong address;
            var getNumLocations = (delegate* unmanaged<IntPtr, uint*, int>)DacMemoryEnumerator.VTableSlot(value, SlotGetNumLocations);
            var getLocationByIndex = (delegate* unmanaged<IntPtr, uint, uint*, ulong*, int>)DacMemoryEnumerator.VTableSlot(value, SlotGetLocationByIndex);
            var getBytes = (delegate* unmanaged<IntPtr, uint, uint*, byte*, int>)DacMemoryEnumerator.VTableSlot(value, SlotGetBytes);
            if (getNumLocations(value, &locations) == S_OK && locations == 1)
                _ = getLocationByIndex(value, 0, &flags, &address);
            if (getBytes(value, 0, &size, null) >= 0 || size == 0 || size > MaxValueBytes)
                return;
            byte[] bytes = new byte[size];
            fixed (byte* buffer = bytes)
                _ = getBytes(value, size, &size, buffer);
        }
    }
}
