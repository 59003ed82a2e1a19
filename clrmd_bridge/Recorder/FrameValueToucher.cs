using System;
using System.Collections.Generic;
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
        private const int SlotGetTaskByOSThreadID = 7;     // IXCLRDataProcess
        private const int SlotCreateStackWalk = 11;        // IXCLRDataTask
        private const int SlotNext = 5;                    // IXCLRDataStackWalk
        private const int SlotGetFrame = 8;
        private const int SlotGetNumArguments = 6;         // IXCLRDataFrame
        private const int SlotGetArgumentByIndex = 7;
        private const int SlotGetNumLocalVariables = 8;
        private const int SlotGetLocalVariableByIndex = 9;
        private const int SlotGetBytes = 6;                // IXCLRDataValue
        private const int SlotGetNumLocations = 28;
        private const int SlotGetLocationByIndex = 29;

        // CLRDataSimpleFrameType: every kind, as SOS asks.
        private const uint AllFrameTypes = 0x1 | 0x2 | 0x4 | 0x8;
        private const int S_OK = 0;
        private const int NameChars = 512;                 // SOS's mdNameLen
        private const int MaxFrames = 4096;                // a runaway walk stops here
        private const uint MaxValueBytes = 1 << 20;        // a struct on the stack; more is a misread

        /// <summary>Walks the stacks of the threads the CLR knows by these OS thread ids. Returns
        /// the number of managed frames whose values were asked for.</summary>
        public static int TouchThreads(ClrRuntime runtime, IEnumerable<uint> osThreadIds)
        {
            IntPtr process = DacMemoryEnumerator.FindClrDataProcess(runtime)
                ?? throw new InvalidOperationException("ClrMD's IXCLRDataProcess was not found (ClrMD's internals changed)");
            int frames = 0;
            foreach (uint osThreadId in osThreadIds)
                frames += TouchThread(process, osThreadId);
            return frames;
        }

        private static int TouchThread(IntPtr process, uint osThreadId)
        {
            IntPtr task = IntPtr.Zero, walk = IntPtr.Zero;
            try
            {
                var getTask = (delegate* unmanaged<IntPtr, uint, IntPtr*, int>)DacMemoryEnumerator.VTableSlot(process, SlotGetTaskByOSThreadID);
                if (getTask(process, osThreadId, &task) != S_OK)
                    return 0;
                var createStackWalk = (delegate* unmanaged<IntPtr, uint, IntPtr*, int>)DacMemoryEnumerator.VTableSlot(task, SlotCreateStackWalk);
                if (createStackWalk(task, AllFrameTypes, &walk) != S_OK)
                    return 0;

                var next = (delegate* unmanaged<IntPtr, int>)DacMemoryEnumerator.VTableSlot(walk, SlotNext);
                int frames = 0;
                for (int i = 0; i < MaxFrames; i++)
                {
                    if (TouchFrame(walk))
                        frames++;
                    if (next(walk) != S_OK)
                        break;
                }

                return frames;
            }
            finally
            {
                DacMemoryEnumerator.Release(walk);
                DacMemoryEnumerator.Release(task);
            }
        }

        /// <summary>The current frame's arguments and locals; false where it has no method.</summary>
        private static bool TouchFrame(IntPtr walk)
        {
            IntPtr frame = IntPtr.Zero;
            var getFrame = (delegate* unmanaged<IntPtr, IntPtr*, int>)DacMemoryEnumerator.VTableSlot(walk, SlotGetFrame);
            if (getFrame(walk, &frame) != S_OK)
                return false;
            try
            {
                uint count;
                var getNumArguments = (delegate* unmanaged<IntPtr, uint*, int>)DacMemoryEnumerator.VTableSlot(frame, SlotGetNumArguments);
                if (getNumArguments(frame, &count) < 0)
                    return false;   // no method: an explicit frame
                TouchValues(frame, SlotGetArgumentByIndex, count);
                var getNumLocals = (delegate* unmanaged<IntPtr, uint*, int>)DacMemoryEnumerator.VTableSlot(frame, SlotGetNumLocalVariables);
                if (getNumLocals(frame, &count) >= 0)
                    TouchValues(frame, SlotGetLocalVariableByIndex, count);
                return true;
            }
            finally
            {
                DacMemoryEnumerator.Release(frame);
            }
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
            uint locations, flags, size;
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
