using System;
using System.Collections.Generic;
using System.Reflection;
using System.Runtime.InteropServices;
using Microsoft.Diagnostics.Runtime;

namespace ClrmdBridge
{
    /// <summary>
    /// Asks the runtime's DAC what a dump needs: ICLRDataEnumMemoryRegions::EnumMemoryRegions, as
    /// createdump does. The DAC walks threads, exception traces, modules and the code manager, and
    /// reports regions through a callback; what it reads on the way goes through our recording
    /// reader too. Both are what a reader of the dump will need.
    /// </summary>
    public static unsafe class DacMemoryEnumerator
    {
        // clrdata.idl: CLRDataEnumMemoryFlags.
        public const int ClrDataEnumMemMini = 0;
        public const int ClrDataEnumMemHeap = 1;
        public const int ClrDataEnumMemTriage = 2;
        public const int ClrDataEnumMemHeap2 = 3;

        // minidumpapiset.h: MINIDUMP_TYPE. The DAC takes a heap dump's path only with this bit.
        public const uint MiniDumpNormal = 0;
        public const uint MiniDumpWithPrivateReadWriteMemory = 0x200;

        private static readonly Guid IidEnumMemoryRegions = new("471c35b4-7c2f-4ef0-a945-00f8c38056f1");
        private static readonly Guid IidEnumMemoryRegionsCallback = new("bcdd6908-ba2d-4ec5-96cf-df4d5cdcb4a4");
        private static readonly Guid IidUnknown = new("00000000-0000-0000-c000-000000000046");
        private const int S_OK = 0;
        private const int E_NOINTERFACE = unchecked((int)0x80004002);

        /// <summary>The regions the DAC reported, in the order reported.</summary>
        public sealed class Report
        {
            public List<(ulong Start, ulong End)> Regions { get; } = new();
            public int HResult { get; set; }
        }

        /// <summary>A COM object of one interface, laid out as the DAC expects: a vtable pointer
        /// first; after it the handle of the managed report it fills.</summary>
        [StructLayout(LayoutKind.Sequential)]
        private struct CallbackObject
        {
            public IntPtr VTable;
            public IntPtr Report;
        }

        private static readonly IntPtr CallbackVTable = MakeCallbackVTable();

        /// <summary>Calls EnumMemoryRegions on the DAC that <paramref name="runtime"/> uses.</summary>
        public static Report Enumerate(ClrRuntime runtime, uint miniDumpFlags, int clrFlags)
        {
            IntPtr process = FindClrDataProcess(runtime)
                ?? throw new InvalidOperationException("ClrMD's IXCLRDataProcess was not found (ClrMD's internals changed)");

            IntPtr enumerator = QueryInterface(process, IidEnumMemoryRegions);
            if (enumerator == IntPtr.Zero)
                throw new InvalidOperationException("the DAC has no ICLRDataEnumMemoryRegions");

            Report report = new();
            GCHandle handle = GCHandle.Alloc(report);
            CallbackObject* callback = (CallbackObject*)NativeMemory.Alloc((nuint)sizeof(CallbackObject));
            try
            {
                callback->VTable = CallbackVTable;
                callback->Report = GCHandle.ToIntPtr(handle);
                var enumMemoryRegions = (delegate* unmanaged<IntPtr, IntPtr, uint, int, int>)VTableSlot(enumerator, 3);
                report.HResult = enumMemoryRegions(enumerator, (IntPtr)callback, miniDumpFlags, clrFlags);
            }
            finally
            {
                Release(enumerator);
                NativeMemory.Free(callback);
                handle.Free();
            }

            return report;
        }

        internal static IntPtr VTableSlot(IntPtr comObject, int slot) => (*(IntPtr**)comObject)[slot];

        /// <summary>Another interface of a COM object, or zero where it has none.</summary>
        internal static IntPtr QueryInterface(IntPtr comObject, Guid iid)
        {
            if (comObject == IntPtr.Zero)
                return IntPtr.Zero;
            IntPtr result;
            var queryInterface = (delegate* unmanaged<IntPtr, Guid*, IntPtr*, int>)VTableSlot(comObject, 0);
            return queryInterface(comObject, &iid, &result) == S_OK ? result : IntPtr.Zero;
        }

        internal static void Release(IntPtr comObject)
        {
            if (comObject != IntPtr.Zero)
                ((delegate* unmanaged<IntPtr, uint>)VTableSlot(comObject, 2))(comObject);
        }

        /// <summary>ClrMD 4.2 keeps its DAC interfaces internal: take the IXCLRDataProcess pointer
        /// from the runtime's own wrapper (a ClrDataProcess, whose Self is the COM pointer).</summary>
        internal static IntPtr? FindClrDataProcess(ClrRuntime runtime)
        {
            const BindingFlags Fields = BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic;
            Queue<(object Value, int Depth)> pending = new();
            HashSet<object> seen = new(ReferenceEqualityComparer.Instance);
            pending.Enqueue((runtime, 0));
            while (pending.Count > 0)
            {
                (object value, int depth) = pending.Dequeue();
                if (!seen.Add(value))
                    continue;
                for (Type? type = value.GetType(); type is not null && type != typeof(object); type = type.BaseType)
                {
                    foreach (FieldInfo field in type.GetFields(Fields | BindingFlags.DeclaredOnly))
                    {
                        if (field.FieldType.IsValueType || field.FieldType == typeof(string))
                            continue;
                        object? child = field.GetValue(value);
                        if (child is null)
                            continue;
                        if (child.GetType().Name == "ClrDataProcess"
                            && child.GetType().GetProperty("Self", Fields)?.GetValue(child) is IntPtr self && self != IntPtr.Zero)
                            return self;
                        if (depth < 3 && child.GetType().Namespace?.StartsWith("Microsoft.Diagnostics.Runtime", StringComparison.Ordinal) == true)
                            pending.Enqueue((child, depth + 1));
                    }
                }
            }

            return null;
        }

        private static IntPtr MakeCallbackVTable()
        {
            IntPtr* table = (IntPtr*)NativeMemory.Alloc((nuint)(4 * sizeof(IntPtr)));  // lives as long as the process
            table[0] = (IntPtr)(delegate* unmanaged<IntPtr, Guid*, IntPtr*, int>)&CallbackQueryInterface;
            table[1] = (IntPtr)(delegate* unmanaged<IntPtr, uint>)&CallbackAddRef;
            table[2] = (IntPtr)(delegate* unmanaged<IntPtr, uint>)&CallbackRelease;
            table[3] = (IntPtr)(delegate* unmanaged<IntPtr, ulong, uint, int>)&CallbackEnumMemoryRegion;
            return (IntPtr)table;
        }

        // The callback's lifetime is Enumerate's: reference counts are not needed.
        [UnmanagedCallersOnly]
        private static int CallbackQueryInterface(IntPtr self, Guid* iid, IntPtr* result)
        {
            // ICLRDataEnumMemoryRegionsCallback2 (rewriting memory in the dump) is refused, as a
            // dumper that writes the target's bytes unchanged must.
            if (*iid == IidUnknown || *iid == IidEnumMemoryRegionsCallback)
            {
                *result = self;
                return S_OK;
            }

            *result = IntPtr.Zero;
            return E_NOINTERFACE;
        }

        [UnmanagedCallersOnly]
        private static uint CallbackAddRef(IntPtr self) => 1;

        [UnmanagedCallersOnly]
        private static uint CallbackRelease(IntPtr self) => 1;

        [UnmanagedCallersOnly]
        private static int CallbackEnumMemoryRegion(IntPtr self, ulong address, uint size)
        {
            try
            {
                Report report = (Report)GCHandle.FromIntPtr(((CallbackObject*)self)->Report).Target!;
                if (size != 0)
                    report.Regions.Add((address, address + size));
                return S_OK;
            }
            catch
            {
                return S_OK;  // never let an exception cross into native code
            }
        }
    }
}
