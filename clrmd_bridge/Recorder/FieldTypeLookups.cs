using System;
using System.Collections.Generic;
using System.Diagnostics;
using Microsoft.Diagnostics.Runtime;
using static ClrmdBridge.SosDacLayout;

namespace ClrmdBridge
{
    /// <summary>
    /// dumpobj's question about each field of a type: its FieldDesc's data
    /// (ISOSDacInterface::GetFieldDescData), whose field type the DAC finds through the field's
    /// signature, the module's type reference map and, for a type of another assembly, the
    /// binder's data in native memory. That data shares no page with anything else a walk reads
    /// except by chance of layout, so it is asked for, for every loaded type, before the pause
    /// (LoadedMethodLookups keeps the pages).
    /// </summary>
    internal static unsafe class FieldTypeLookups
    {
        /// <summary>Asks for the fields each method table introduces, until the budget is spent.</summary>
        public static void Touch(ClrRuntime runtime, IDataReader reader, IEnumerable<ulong> methodTables, TimeSpan budget)
        {
            IntPtr process = DacMemoryEnumerator.FindClrDataProcess(runtime) ?? IntPtr.Zero;
            IntPtr sos = DacMemoryEnumerator.QueryInterface(process, IidSosDac);
            if (sos == IntPtr.Zero)
                return;
            try
            {
                var getMethodTableData = (delegate* unmanaged<IntPtr, ulong, byte*, int>)DacMemoryEnumerator.VTableSlot(sos, SlotGetMethodTableData);
                var getFieldData = (delegate* unmanaged<IntPtr, ulong, byte*, int>)DacMemoryEnumerator.VTableSlot(sos, SlotGetMethodTableFieldData);
                var getFieldDescData = (delegate* unmanaged<IntPtr, ulong, byte*, int>)DacMemoryEnumerator.VTableSlot(sos, SlotGetFieldDescData);
                byte* scratch = stackalloc byte[ScratchBytes];
                Stopwatch clock = Stopwatch.StartNew();
                foreach (ulong methodTable in methodTables)
                {
                    if (clock.Elapsed > budget)
                        break;
                    int count = IntroducedFields(sos, getMethodTableData, getFieldData, methodTable, scratch, out ulong field);
                    // A FieldDesc begins with its enclosing MethodTable, the same all along one
                    // type's list: past its end lies something else, which the DAC must not get
                    // (it faults on some of that).
                    ulong enclosing = field != 0 ? reader.ReadPointer(field) : 0;
                    for (int i = 0; i < count && field != 0 && enclosing != 0 && reader.ReadPointer(field) == enclosing; i++)
                    {
                        if (getFieldDescData(sos, field, scratch) != 0)
                            break;
                        field = *(ulong*)(scratch + FieldDescDataNextField);
                    }
                }
            }
            finally
            {
                DacMemoryEnumerator.Release(sos);
            }
        }

        /// <summary>How many FieldDescs the type's own list holds (its statics, thread statics
        /// among them, and the instance fields it adds to its parent's), and the first of them.</summary>
        private static int IntroducedFields(IntPtr sos, delegate* unmanaged<IntPtr, ulong, byte*, int> getMethodTableData,
                                            delegate* unmanaged<IntPtr, ulong, byte*, int> getFieldData, ulong methodTable,
                                            byte* scratch, out ulong first)
        {
            first = 0;
            if (methodTable == 0 || getMethodTableData(sos, methodTable, scratch) != 0)
                return 0;
            ulong parent = *(ulong*)(scratch + MethodTableDataParent);
            int parentInstance = parent != 0 && getFieldData(sos, parent, scratch) == 0 ? *(ushort*)scratch : 0;
            if (getFieldData(sos, methodTable, scratch) != 0)
                return 0;
            first = *(ulong*)(scratch + FieldDataFirstField);
            int instance = *(ushort*)scratch - parentInstance;
            return Math.Max(0, instance) + *(ushort*)(scratch + 2);
        }
    }
}
