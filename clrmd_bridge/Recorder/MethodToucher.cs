using System;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using Microsoft.Diagnostics.Runtime;
using static ClrmdBridge.SosDacLayout;

namespace ClrmdBridge
{
    /// <summary>
    /// Asks the DAC, through the recording reader, what a debugger asks of the methods a triage
    /// reads: the code versions of every method on a stack or in an exception's trace (the
    /// "Version History" of ip2md, dumpmd, ehinfo; the OSR frame's code version for clrstack), the
    /// code-range lookup of every instruction pointer there (ReadyToRun code included), and the
    /// MethodDescs behind the slots of the method tables of those methods' types (dumpmt -md).
    /// Costs O(frames + trace entries + their types' slots), never O(objects).
    /// </summary>
    public sealed unsafe class MethodToucher
    {
        private const int MaxTieredVersions = 64;
        private const int MaxTraceDepth = 8;       // inner exceptions followed

        private readonly ClrRuntime _runtime;
        private readonly IntPtr _sosDac;
        private readonly IntPtr _sosDac5;
        private readonly IntPtr _sosDac7;
        private readonly IntPtr _sosDac8;
        private readonly HashSet<ulong> _methods = new();
        private readonly HashSet<ulong> _instructionPointers = new();
        private readonly HashSet<ulong> _methodTables = new();
        private readonly HashSet<ulong> _exceptions = new();
        private readonly HashSet<ulong> _slotEntries = new();
        private readonly HashSet<ulong> _clauseCode = new();

        public MethodToucher(ClrRuntime runtime)
        {
            _runtime = runtime;
            IntPtr process = DacMemoryEnumerator.FindClrDataProcess(runtime) ?? IntPtr.Zero;
            _sosDac = DacMemoryEnumerator.QueryInterface(process, IidSosDac);
            _sosDac5 = DacMemoryEnumerator.QueryInterface(process, IidSosDac5);
            _sosDac7 = DacMemoryEnumerator.QueryInterface(process, IidSosDac7);
            _sosDac8 = DacMemoryEnumerator.QueryInterface(process, IidSosDac8);
        }

        public int MethodCount => _methods.Count;

        /// <summary>A frame's method and the code at its instruction pointer.</summary>
        public void TouchFrame(ClrStackFrame frame)
        {
            if (frame.InstructionPointer != 0 && _instructionPointers.Add(frame.InstructionPointer))
                TouchInstructionPointer(frame.InstructionPointer);
            if (frame.Method is ClrMethod method)
                TouchMethod(method);
        }

        /// <summary>An exception's trace, and those of its inner exceptions.</summary>
        public void TouchException(ClrException? exception)
        {
            for (int depth = 0; exception is not null && depth < MaxTraceDepth && _exceptions.Add(exception.Address); depth++)
            {
                foreach (ClrStackFrame frame in exception.StackTrace)
                    TouchFrame(frame);
                exception = exception.Inner;
            }
        }

        /// <summary>An object, if it is an exception.</summary>
        public void TouchIfException(ClrObject obj)
        {
            if (obj.IsValid && obj.Type is ClrType type && type.IsException)
                TouchException(obj.AsException());
        }

        /// <summary>What dumpmt -md reads of each method table: every slot's code address, the
        /// code-range lookup that finds its MethodDesc (ReadyToRun code of inherited methods
        /// included), and that MethodDesc's data and name. For the method tables of the methods
        /// touched so far and <paramref name="moreMethodTables"/>.</summary>
        public void TouchSlots(IEnumerable<ulong> moreMethodTables) => TouchSlots(moreMethodTables, lookupOnly: false);

        /// <summary>The code-range lookup of every slot's code address only: what validating a
        /// MethodDesc with ReadyToRun code needs (its entry point leads back to it), for method
        /// tables whose names and data nobody asked for yet.</summary>
        public void TouchSlotLookups(IEnumerable<ulong> methodTables, TimeSpan budget) => TouchSlots(methodTables, lookupOnly: true, budget);

        private void TouchSlots(IEnumerable<ulong> moreMethodTables, bool lookupOnly, TimeSpan? budget = null)
        {
            System.Diagnostics.Stopwatch clock = System.Diagnostics.Stopwatch.StartNew();
            if (_sosDac == IntPtr.Zero)
                return;
            HashSet<ulong> methodTables = lookupOnly ? new() : new(_methodTables);
            methodTables.UnionWith(moreMethodTables);
            byte* scratch = stackalloc byte[ScratchBytes];
            var getMethodTableData = (delegate* unmanaged<IntPtr, ulong, byte*, int>)DacMemoryEnumerator.VTableSlot(_sosDac, SlotGetMethodTableData);
            var getMethodTableSlot = (delegate* unmanaged<IntPtr, ulong, uint, ulong*, int>)DacMemoryEnumerator.VTableSlot(_sosDac, SlotGetMethodTableSlot);
            var getCodeHeaderData = (delegate* unmanaged<IntPtr, ulong, byte*, int>)DacMemoryEnumerator.VTableSlot(_sosDac, SlotGetCodeHeaderData);
            foreach (ulong methodTable in methodTables)
            {
                if (budget is TimeSpan limit && clock.Elapsed > limit)
                    break;
                if (methodTable == 0 || getMethodTableData(_sosDac, methodTable, scratch) != 0)
                    continue;
                TouchAssemblyLoadContext(methodTable);
                ushort slots = *(ushort*)(scratch + MethodTableDataNumMethods);
                for (uint slot = 0; slot < slots; slot++)
                {
                    ulong entry;
                    if (getMethodTableSlot(_sosDac, methodTable, slot, &entry) != 0 || entry == 0 || !_slotEntries.Add(entry))
                        continue;
                    if (lookupOnly)
                        TouchLookup(entry, scratch, getCodeHeaderData);
                    else
                        TouchCodeAddress(entry, scratch);
                }
            }
        }

        /// <summary>The lookup of a slot's code address, SOS's first question about the MethodDesc
        /// found (GetMethodDescData), its code versions, and for ReadyToRun code its exception
        /// clauses.</summary>
        private void TouchLookup(ulong entry, byte* scratch, delegate* unmanaged<IntPtr, ulong, byte*, int> getCodeHeaderData)
        {
            var getMethodDescPtrFromIP = (delegate* unmanaged<IntPtr, ulong, ulong*, int>)DacMemoryEnumerator.VTableSlot(_sosDac, SlotGetMethodDescPtrFromIP);
            var getMethodDescData = (delegate* unmanaged<IntPtr, ulong, ulong, byte*, uint, void*, uint*, int>)DacMemoryEnumerator.VTableSlot(_sosDac, SlotGetMethodDescData);
            ulong methodDesc = 0;
            bool jitted = false;
            if (getCodeHeaderData(_sosDac, entry, scratch) == 0)
            {
                methodDesc = *(ulong*)(scratch + CodeHeaderDataMethodDesc);
                jitted = *(int*)(scratch + CodeHeaderDataJitType) == JitTypeJit;
            }
            if (methodDesc == 0 && getMethodDescPtrFromIP(_sosDac, entry, &methodDesc) != 0)
                methodDesc = 0;
            if (methodDesc == 0 || !_methods.Add(methodDesc))
                return;
            _ = getMethodDescData(_sosDac, methodDesc, 0, scratch, 0, null, null);
            TouchCodeVersions(methodDesc);
            if (!jitted)
                TouchExceptionClauses(entry);   // ReadyToRun: the clauses are in the image
        }

        /// <summary>SOS's way from a code address to a method: the code header, else the
        /// MethodDesc behind the address (a precode or ReadyToRun code), then its data.</summary>
        private void TouchCodeAddress(ulong address, byte* scratch)
        {
            var getCodeHeaderData = (delegate* unmanaged<IntPtr, ulong, byte*, int>)DacMemoryEnumerator.VTableSlot(_sosDac, SlotGetCodeHeaderData);
            var getMethodDescPtrFromIP = (delegate* unmanaged<IntPtr, ulong, ulong*, int>)DacMemoryEnumerator.VTableSlot(_sosDac, SlotGetMethodDescPtrFromIP);
            var getMethodDescData = (delegate* unmanaged<IntPtr, ulong, ulong, byte*, uint, void*, uint*, int>)DacMemoryEnumerator.VTableSlot(_sosDac, SlotGetMethodDescData);
            ulong methodDesc = 0;
            if (getCodeHeaderData(_sosDac, address, scratch) == 0)
                methodDesc = *(ulong*)(scratch + CodeHeaderDataMethodDesc);
            if (methodDesc == 0 && getMethodDescPtrFromIP(_sosDac, address, &methodDesc) != 0)
                methodDesc = 0;
            if (methodDesc == 0)
                return;
            _ = getMethodDescData(_sosDac, methodDesc, 0, scratch, 0, null, null);
            TouchExceptionClauses(address);
            if (_methods.Add(methodDesc))
                TouchCodeVersions(methodDesc);
            if (_runtime.GetMethodByHandle(methodDesc) is ClrMethod method)
            {
                _ = method.Signature;
                _ = method.Type?.Module?.Name;
            }
        }

        /// <summary>dumpdomain's and dumpassembly's questions about each assembly: its data, name
        /// and location (paths and binder data live in native memory).</summary>
        public void TouchAssemblies()
        {
            if (_sosDac == IntPtr.Zero)
                return;
            char* name = stackalloc char[1024];
            byte* scratch = stackalloc byte[ScratchBytes];
            uint length;
            var getAssemblyData = (delegate* unmanaged<IntPtr, ulong, ulong, byte*, int>)DacMemoryEnumerator.VTableSlot(_sosDac, SlotGetAssemblyData);
            var getAssemblyName = (delegate* unmanaged<IntPtr, ulong, uint, char*, uint*, int>)DacMemoryEnumerator.VTableSlot(_sosDac, SlotGetAssemblyName);
            var getAssemblyLocation = (delegate* unmanaged<IntPtr, ulong, int, char*, uint*, int>)DacMemoryEnumerator.VTableSlot(_sosDac, SlotGetAssemblyLocation);
            foreach (ClrAppDomain domain in _runtime.AppDomains)
            {
                foreach (ClrModule module in domain.Modules)
                {
                    if (module.AssemblyAddress == 0)
                        continue;
                    _ = getAssemblyData(_sosDac, domain.Address, module.AssemblyAddress, scratch);
                    _ = getAssemblyName(_sosDac, module.AssemblyAddress, 1024, name, &length);
                    _ = getAssemblyLocation(_sosDac, module.AssemblyAddress, 1024, name, &length);
                }
            }
        }

        /// <summary>ehinfo: the exception clauses of the code at an address (for ReadyToRun code,
        /// tables in the image), through ISOSDacInterface::TraverseEHInfo.</summary>
        private void TouchExceptionClauses(ulong code)
        {
            if (_sosDac == IntPtr.Zero || code == 0 || !_clauseCode.Add(code))
                return;
            var traverseEHInfo = (delegate* unmanaged<IntPtr, ulong, delegate* unmanaged<uint, uint, void*, void*, int>, void*, int>)
                DacMemoryEnumerator.VTableSlot(_sosDac, SlotTraverseEHInfo);
            _ = traverseEHInfo(_sosDac, code, &EachClause, null);
        }

        [UnmanagedCallersOnly]
        private static int EachClause(uint clauseIndex, uint totalClauses, void* clause, void* token) => 1;   // TRUE: go on

        /// <summary>dumpmt's "AssemblyLoadContext" line: the type's module's binder and its
        /// managed context (ISOSDacInterface8::GetAssemblyLoadContext).</summary>
        private void TouchAssemblyLoadContext(ulong methodTable)
        {
            if (_sosDac8 == IntPtr.Zero)
                return;
            ulong context;
            var getAssemblyLoadContext = (delegate* unmanaged<IntPtr, ulong, ulong*, int>)DacMemoryEnumerator.VTableSlot(_sosDac8, SlotGetAssemblyLoadContext);
            _ = getAssemblyLoadContext(_sosDac8, methodTable, &context);
        }

        private void TouchInstructionPointer(ulong ip)
        {
            // ip2md: the code-range lookup (the range section map; for ReadyToRun code the image's
            // runtime functions and the entry point -> MethodDesc map), then the method's data.
            if (_runtime.GetMethodByInstructionPointer(ip) is ClrMethod method)
            {
                _ = method.HotColdInfo;
                _ = method.ILOffsetMap;
                TouchMethod(method);
            }
        }

        private void TouchMethod(ClrMethod method)
        {
            _ = method.Signature;
            TouchExceptionClauses(method.NativeCode);
            if (method.Type is ClrType type)
                _methodTables.Add(type.MethodTable);
            if (_methods.Add(method.MethodDesc))
                TouchCodeVersions(method.MethodDesc);
        }

        /// <summary>What SOS shows as a method's "Version History": its IL code versions
        /// (ISOSDacInterface7) and each one's native code versions (ISOSDacInterface5).</summary>
        private void TouchCodeVersions(ulong methodDesc)
        {
            if (methodDesc == 0)
                return;
            byte* scratch = stackalloc byte[ScratchBytes];
            if (_sosDac7 != IntPtr.Zero)
            {
                int pendingRejitId;
                var getPendingReJitId = (delegate* unmanaged<IntPtr, ulong, int*, int>)DacMemoryEnumerator.VTableSlot(_sosDac7, 3);
                var getReJitInformation = (delegate* unmanaged<IntPtr, ulong, int, byte*, int>)DacMemoryEnumerator.VTableSlot(_sosDac7, 4);
                var getProfilerModifiedIL = (delegate* unmanaged<IntPtr, ulong, byte*, int>)DacMemoryEnumerator.VTableSlot(_sosDac7, 5);
                _ = getPendingReJitId(_sosDac7, methodDesc, &pendingRejitId);
                _ = getReJitInformation(_sosDac7, methodDesc, 0, scratch);
                _ = getProfilerModifiedIL(_sosDac7, methodDesc, scratch);
            }

            if (_sosDac5 != IntPtr.Zero)
            {
                // DacpTieredVersionData: native code address, optimization tier, node address.
                byte* versions = stackalloc byte[MaxTieredVersions * 24];
                int count;
                var getTieredVersions = (delegate* unmanaged<IntPtr, ulong, int, byte*, int, int*, int>)DacMemoryEnumerator.VTableSlot(_sosDac5, 3);
                _ = getTieredVersions(_sosDac5, methodDesc, 0, versions, MaxTieredVersions, &count);
            }
        }

        public void Release()
        {
            DacMemoryEnumerator.Release(_sosDac);
            DacMemoryEnumerator.Release(_sosDac5);
            DacMemoryEnumerator.Release(_sosDac7);
            DacMemoryEnumerator.Release(_sosDac8);
        }
    }
}
