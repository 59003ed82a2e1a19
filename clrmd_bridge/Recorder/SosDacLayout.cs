using System;

namespace ClrmdBridge
{
    /// <summary>
    /// What the bridge knows of the DAC's ISOSDacInterface family (sospriv.idl, dacprivate.h): the
    /// interfaces' ids, the vtable slots it calls (IUnknown's three slots first) and the offsets
    /// it reads in the Dacp* records they fill.
    /// </summary>
    internal static class SosDacLayout
    {
        public static readonly Guid IidSosDac = new("436f00f2-b42a-4b9f-870c-e73db66ae930");
        public static readonly Guid IidSosDac5 = new("127d6abe-6c86-4e48-8e7b-220781c58101");
        public static readonly Guid IidSosDac7 = new("c1020dde-fe98-4536-a53b-f35a74c327eb");
        public static readonly Guid IidSosDac8 = new("c12f35a9-e55c-4520-a894-b3dc5165dfce");

        public const int ScratchBytes = 1024;     // larger than any Dacp* record asked for

        // ISOSDacInterface
        public const int SlotGetAssemblyData = 10;
        public const int SlotGetAssemblyName = 11;
        public const int SlotGetMethodDescData = 20;
        public const int SlotGetMethodDescPtrFromIP = 21;
        public const int SlotGetCodeHeaderData = 26;
        public const int SlotGetMethodTableData = 37;
        public const int SlotGetMethodTableSlot = 38;
        public const int SlotGetMethodTableFieldData = 39;
        public const int SlotGetFieldDescData = 42;
        public const int SlotTraverseEHInfo = 64;
        public const int SlotGetAssemblyLocation = 85;
        // ISOSDacInterface8, after five GC methods
        public const int SlotGetAssemblyLoadContext = 8;

        public const int MethodTableDataParent = 24;        // DacpMethodTableData.ParentMethodTable
        public const int MethodTableDataNumMethods = 34;    // DacpMethodTableData.wNumMethods
        public const int FieldDataFirstField = 8;           // DacpMethodTableFieldData.FirstField
        public const int FieldDescDataNextField = 56;       // DacpFieldDescData.NextField
        public const int CodeHeaderDataJitType = 8;         // DacpCodeHeaderData.JITType
        public const int CodeHeaderDataMethodDesc = 16;     // DacpCodeHeaderData.MethodDescPtr
        public const int JitTypeJit = 1;                    // JITTypes.TYPE_JIT
    }
}
