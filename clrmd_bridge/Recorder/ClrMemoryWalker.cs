using System;
using System.Collections.Generic;
using System.Diagnostics;
using Microsoft.Diagnostics.Runtime;

namespace ClrmdBridge
{
    /// <summary>The target process has no CLR that ClrMD can find.</summary>
    public sealed class NoClrRuntimeException : Exception
    {
        public NoClrRuntimeException(string message) : base(message) { }
    }

    /// <summary>
    /// What the walk found. <see cref="Ranges"/> holds triples (start, end, index into
    /// <see cref="KindNames"/>): flat arrays cross into Python far faster than objects.
    /// </summary>
    public sealed class ClrWalkResult
    {
        public ulong RuntimeBase { get; init; }
        public string RuntimeVersion { get; init; } = "";
        public int ThreadsWalked { get; init; }
        public int ManagedFrames { get; init; }
        public long DacReadCount { get; init; }
        public double WalkSeconds { get; init; }
        public ulong[] Ranges { get; init; } = Array.Empty<ulong>();
        public string[] KindNames { get; init; } = Array.Empty<string>();
        public string[] Warnings { get; init; } = Array.Empty<string>();
    }

    /// <summary>
    /// The whole walk of a live target, in C#: one call from Python instead of one per object.
    /// "mini" walks every managed stack; "heap" also lists the CLR's memory and touches every
    /// root, handle, object and (once per type) type metadata, so the DAC reads of all of that
    /// are recorded.
    /// </summary>
    public static class ClrMemoryWalker
    {
        public const string DacRead = "DacRead";
        public const string DacReadMissed = "DacReadMissed";
        public const string DacEnumMemory = "DacEnumMemory";
        public const string ReadyToRunSection = "ReadyToRunSection";
        public const string DacReadOfLoadedMethods = "DacReadOfLoadedMethods";
        public const string JitCodeHeap = "JitCodeHeap";
        public const string ModuleImage = "ModuleImage";
        public const string ModuleMetadata = "ModuleMetadata";

        /// <param name="pid">The target, which may already be held stopped by a PTRACE_SEIZE tracer.</param>
        /// <param name="threadIds">OS thread ids, one per register record.</param>
        /// <param name="userRegs">The threads' x86-64 user_regs_struct records, concatenated.</param>
        /// <param name="depth">"mini": the managed stacks; "heap": stacks, the CLR's memory and every
        /// object's type; "layout": the CLR's memory only, a quick look at a running target;
        /// "threads:ID,ID,...": the stacks of those threads only, and what the DAC says a minidump
        /// needs (in a pause, for threads that started since the last walk).</param>
        /// <param name="dacPath">The runtime's data-access library (libmscordaccore.so) matching the
        /// target's runtime; ClrMD 4 no longer looks for it off Windows. Empty: let ClrMD look
        /// (Windows only). The caller vouches for the match: ClrMD reads .NET 10's version as 0.0,
        /// so its own check would refuse every DAC.</param>
        /// <param name="copyPath">Empty: read the target. Otherwise the file that holds a copy of its
        /// memory, taken in a pause that has ended (the dump being written); the walk reads only
        /// that, and reports the pages it missed there as <see cref="DacReadMissed"/>.</param>
        /// <param name="copyPieces">Where the copy lies in that file: triples (address, file offset,
        /// size), sorted by address.</param>
        public static ClrWalkResult Read(int pid, uint[] threadIds, byte[] userRegs, string depth, string dacPath,
                                         string copyPath, ulong[] copyPieces)
        {
            using CopiedMemory? copy = string.IsNullOrEmpty(copyPath) ? null : new CopiedMemory(copyPath, copyPieces);
            try
            {
                return Walk(pid, threadIds, userRegs, depth, dacPath, copy);
            }
            catch
            {
                KeptTarget.Forget();   // whatever failed, the next walk attaches afresh
                throw;
            }
            finally
            {
                // On Windows the DataTarget holds the target suspended for as long as it lives.
                if (OperatingSystem.IsWindows())
                    KeptTarget.Forget();
                KeptTarget.StopReading(copy);   // the file is about to be cut to size and named
            }
        }

        private static ClrWalkResult Walk(int pid, uint[] threadIds, byte[] userRegs, string depth, string dacPath, CopiedMemory? copy)
        {
            HashSet<uint>? onlyThreads = depth.StartsWith(ThreadsDepthPrefix, StringComparison.Ordinal)
                ? ParseThreadIds(depth.Substring(ThreadsDepthPrefix.Length)) : null;
            (bool walkStacks, bool listMemory, bool walkObjects) = onlyThreads is not null ? (true, false, false) : depth switch
            {
                "mini" => (true, false, false),
                "heap" => (true, true, true),
                "layout" => (false, true, false),
                _ => throw new ArgumentException($"depth must be \"mini\", \"heap\", \"layout\" or \"threads:ID,...\", not \"{depth}\""),
            };
            Dictionary<uint, UserRegsStruct> registers = SplitRegisters(threadIds, userRegs);

            Stopwatch clock = Stopwatch.StartNew();
            (DataTarget target, RecordingDataReader reader) = KeptTarget.For(pid, registers, copy);
            if (target.ClrVersions.Length == 0)
                throw new NoClrRuntimeException($"process {pid} has no .NET runtime (no libcoreclr found)");

            ClrInfo clr = target.ClrVersions[0];
            // A new runtime, so a new instance of the DAC, for every walk: nothing it cached
            // while the target ran is trusted in the pause.
            using ClrRuntime runtime = string.IsNullOrEmpty(dacPath) ? clr.CreateRuntime() : clr.CreateRuntime(dacPath, ignoreMismatch: true);
            Timings.Say("attach", clock);

            MemoryList memory = new();
            List<string> warnings = new();
            string version = RuntimeVersionReader.Read(reader, clr.ModuleInfo.ImageBase)
                ?? (clr.Version.Major != 0 ? clr.Version.ToString() : "");
            MethodToucher? methods = walkStacks ? new MethodToucher(runtime) : null;
            (int threadsWalked, int managedFrames) = methods is not null ? WalkThreads(runtime, warnings, methods, onlyThreads) : (0, 0);
            if (walkStacks)   // clrstack -a
                Step(warnings, "arguments and locals", () => FrameValueToucher.TouchThreads(runtime, onlyThreads));
            if (onlyThreads is null)
                Step(warnings, "modules", () => ListModules(runtime, memory));
            if (listMemory)
                Step(warnings, "ReadyToRun sections", () =>
                {
                    foreach (ClrModule module in runtime.EnumerateModules())
                        foreach ((ulong start, ulong end) in ReadyToRunSections.Of(reader, module))
                            memory.Add(start, end, ReadyToRunSection);
                });
            if (listMemory)
                ListClrMemory(runtime, memory, warnings);
            IReadOnlyCollection<ulong> typesTouched = walkObjects ? TouchTypes(runtime, warnings, methods!) : Array.Empty<ulong>();
            if (methods is not null)
            {
                // The types of the methods on stacks and in exception traces, and of roots, handles
                // and the finalizer queue; every other loaded type's slots were looked up before
                // the pause (LoadedMethodLookups).
                // dumpmt -md is a heap question; mini answers the stacks. In the pause, the types
                // of roots and handles were done by the warm-up (its pages are kept); the types of
                // the methods on the stacks now are done again.
                bool warmedUp = registers.Count > 0 && LoadedMethodLookups.Has(pid, clr.ModuleInfo.ImageBase);
                if (walkObjects)
                    Step(warnings, "method table slots", () => methods.TouchSlots(warmedUp ? Array.Empty<ulong>() : typesTouched));
                if (onlyThreads is null)
                    Step(warnings, "assemblies", methods.TouchAssemblies);
                methods.Release();
                Step(warnings, "the DAC's memory regions", () => AddDacRegions(runtime, reader, memory, heap: walkObjects));
            }

            if (listMemory)   // heap, and the look before the pause
                Step(warnings, "method lookups of loaded types", () => LoadedMethodLookups.Add(
                    pid, clr.ModuleInfo.ImageBase, runtime, reader, held: registers.Count > 0,
                    (start, end) => memory.Add(start, end, DacReadOfLoadedMethods)));

            foreach ((ulong start, ulong end) in reader.Reads.ToMergedList())
                memory.Add(start, end, DacRead);
            if (copy is not null)
                foreach ((ulong start, ulong end) in copy.Missed.ToMergedList())
                    memory.Add(start, end, DacReadMissed);
            Timings.Say($"walk ({memory.Ranges.Count / 3} ranges, {reader.CacheMisses} reads of the target)", clock);

            return new ClrWalkResult
            {
                RuntimeBase = clr.ModuleInfo.ImageBase,
                RuntimeVersion = version,
                ThreadsWalked = threadsWalked,
                ManagedFrames = managedFrames,
                DacReadCount = reader.Reads.ReadCount,
                WalkSeconds = clock.Elapsed.TotalSeconds,
                Ranges = memory.Ranges.ToArray(),
                KindNames = memory.KindNames.ToArray(),
                Warnings = warnings.ToArray(),
            };
        }

        private static Dictionary<uint, UserRegsStruct> SplitRegisters(uint[] threadIds, byte[] userRegs)
        {
            if (userRegs.Length != threadIds.Length * UserRegsStruct.Size)
                throw new ArgumentException(
                    $"{threadIds.Length} threads need {threadIds.Length * UserRegsStruct.Size} bytes of registers, got {userRegs.Length}");

            Dictionary<uint, UserRegsStruct> registers = new(threadIds.Length);
            for (int i = 0; i < threadIds.Length; i++)
                registers[threadIds[i]] = UserRegsStruct.FromBytes(userRegs.AsSpan(i * UserRegsStruct.Size, UserRegsStruct.Size));
            return registers;
        }

        private const string ThreadsDepthPrefix = "threads:";

        private static HashSet<uint> ParseThreadIds(string ids)
        {
            HashSet<uint> parsed = new();
            foreach (string id in ids.Split(',', StringSplitOptions.RemoveEmptyEntries))
                parsed.Add(uint.Parse(id, System.Globalization.CultureInfo.InvariantCulture));
            return parsed;
        }

        private static (int Threads, int ManagedFrames) WalkThreads(ClrRuntime runtime, List<string> warnings, MethodToucher methods,
                                                                    HashSet<uint>? onlyThreads)
        {
            int walked = 0, managedFrames = 0;
            foreach (ClrThread thread in runtime.Threads)
            {
                if (!thread.IsAlive || (onlyThreads is not null && !onlyThreads.Contains(thread.OSThreadId)))
                    continue;

                walked++;
                Step(warnings, $"stack of thread {thread.OSThreadId}", () =>
                {
                    foreach (ClrStackFrame frame in thread.EnumerateStackTrace(includeContext: false))
                    {
                        // A debugger prints method names: they come from the method descs and metadata.
                        if (frame.Method is ClrMethod method)
                        {
                            managedFrames++;
                            _ = method.Signature;
                        }

                        _ = frame.FrameName;
                        methods.TouchFrame(frame);
                    }

                    _ = thread.CurrentException?.Type?.Name;
                    methods.TouchException(thread.CurrentException);
                });
            }

            return (walked, managedFrames);
        }

        private static void ListModules(ClrRuntime runtime, MemoryList memory)
        {
            foreach (ClrModule module in runtime.EnumerateModules())
            {
                _ = module.Name;
                _ = module.AssemblyName;
                if (module.ImageBase != 0 && module.Size != 0)
                    memory.Add(module.ImageBase, module.ImageBase + module.Size, ModuleImage);
            }
        }

        private static void ListClrMemory(ClrRuntime runtime, MemoryList memory, List<string> warnings)
        {
            ClrHeap gc = runtime.Heap;
            // Type names come from the modules' metadata: with all of it in, no walk over every
            // object is needed to learn which of it a debugger will read.
            Step(warnings, "module metadata", () =>
            {
                foreach (ClrModule module in runtime.EnumerateModules())
                    if (module.MetadataAddress != 0 && module.MetadataLength != 0)
                        memory.Add(module.MetadataAddress, module.MetadataAddress + module.MetadataLength, ModuleMetadata);
            });
            // On Linux committed and reserved: what the GC commits of a segment between this walk
            // and a pause turns readable in the pause's mappings, and the plan takes it from
            // there (the rest is clipped away as unreadable), not from a second pause. dbghelp
            // (Windows) reads what it is given, so there only the committed memory.
            bool withReserve = OperatingSystem.IsLinux();
            Step(warnings, "GC segments", () =>
            {
                foreach (ClrSegment segment in gc.Segments)
                {
                    ulong end = withReserve ? Math.Max(segment.CommittedMemory.End, segment.ReservedMemory.End) : segment.CommittedMemory.End;
                    memory.Add(segment.CommittedMemory.Start, end, $"GCSegment:{segment.Kind}");
                }
            });
            Step(warnings, "native heaps", () =>
            {
                foreach (ClrNativeHeapInfo nativeHeap in runtime.EnumerateClrNativeHeaps())
                    memory.Add(nativeHeap.MemoryRange, $"NativeHeap:{nativeHeap.Kind}");
            });
            Step(warnings, "JIT managers", () =>
            {
                foreach (ClrJitManager jitManager in runtime.EnumerateJitManagers())
                    foreach (ClrNativeHeapInfo codeHeap in jitManager.EnumerateNativeHeaps())
                        memory.Add(codeHeap.MemoryRange, JitCodeHeap);
            });
        }

        /// <summary>What the DAC itself says a dump needs (EnumMemoryRegions, as createdump asks it:
        /// the heap dump's flags for heap, a minidump's for mini): the regions it reports, and the
        /// pages it reads to find them that nothing before it read.</summary>
        private static void AddDacRegions(ClrRuntime runtime, RecordingDataReader reader, MemoryList memory, bool heap)
        {
            List<(ulong Start, ulong End)> before = reader.Reads.ToMergedList();
            DacMemoryEnumerator.Report report = heap
                ? DacMemoryEnumerator.Enumerate(runtime, DacMemoryEnumerator.MiniDumpWithPrivateReadWriteMemory, DacMemoryEnumerator.ClrDataEnumMemHeap2)
                : DacMemoryEnumerator.Enumerate(runtime, DacMemoryEnumerator.MiniDumpNormal, DacMemoryEnumerator.ClrDataEnumMemMini);
            // Thousands of small regions, most on shared pages: merged here, they cross into
            // Python and through the plan (inside the pause) as a few hundred.
            PageRangeSet regions = new();
            foreach ((ulong start, ulong end) in report.Regions)
                regions.Add(start, end);
            foreach ((ulong start, ulong end) in regions.ToMergedList())
                memory.Add(start, end, DacEnumMemory);
            foreach ((ulong start, ulong end) in PageRanges.Subtract(reader.Reads.ToMergedList(), before))
                memory.Add(start, end, DacEnumMemory);
            if (report.HResult < 0)
                throw new InvalidOperationException($"EnumMemoryRegions failed (HRESULT {report.HResult:x8}); kept {report.Regions.Count} regions it reported");
        }

        /// <summary>Reads types once each, so that the pages their names and layouts come from are
        /// recorded: those of handles, roots, the finalizer queue and sync blocks, and every type of a
        /// dynamic module. Other objects' types need no walk: all file metadata is listed.</summary>
        private static IReadOnlyCollection<ulong> TouchTypes(ClrRuntime runtime, List<string> warnings, MethodToucher methods)
        {
            ClrHeap gc = runtime.Heap;
            TypeToucher types = new();
            Step(warnings, "handles", () =>
            {
                foreach (ClrHandle handle in runtime.EnumerateHandles())
                {
                    types.Touch(handle.Object.Type);
                    types.Touch(handle.Dependent.Type);
                    methods.TouchIfException(handle.Object);
                }
            });
            Step(warnings, "roots", () =>
            {
                foreach (ClrRoot root in gc.EnumerateRoots())
                {
                    types.Touch(root.Object.Type);
                    methods.TouchIfException(root.Object);
                }
            });
            // Modules whose metadata is not in a file image (Reflection.Emit): their types are read
            // one by one, so that the in-memory metadata behind their names is recorded.
            Step(warnings, "types of dynamic modules", () =>
            {
                foreach (ClrModule module in runtime.EnumerateModules())
                    if (module.IsDynamic || module.MetadataAddress == 0)
                        foreach ((ulong methodTable, int _) in module.EnumerateTypeDefToMethodTableMap())
                            types.Touch(gc.GetTypeByMethodTable(methodTable));
            });
            Step(warnings, "finalizer queue", () =>
            {
                foreach (ClrObject obj in gc.EnumerateFinalizableObjects())
                    types.Touch(obj.Type);
            });
            Step(warnings, "sync blocks", () =>
            {
                foreach (SyncBlock syncBlock in gc.EnumerateSyncBlocks())
                    _ = syncBlock.Object;
            });
            Step(warnings, "thread pool", () => _ = runtime.ThreadPool?.MaxThreads);
            return types.Seen;
        }

        /// <summary>Reads a type's name, fields, base types and element type, once per method table.</summary>
        private sealed class TypeToucher
        {
            private readonly HashSet<ulong> _seen = new();

            public IReadOnlyCollection<ulong> Seen => _seen;

            public void Touch(ClrType? type)
            {
                while (type is not null && _seen.Add(type.MethodTable))
                {
                    _ = type.Name;
                    _ = type.Module?.Name;
                    foreach (ClrInstanceField field in type.Fields)
                        _ = field.Type?.Name;
                    foreach (ClrStaticField field in type.StaticFields)
                        _ = field.Name;
                    if (type.ComponentType is ClrType component)
                        Touch(component);
                    type = type.BaseType;
                }
            }
        }

        /// <summary>One lister failing must not lose what the others found: note it and go on.</summary>
        private static void Step(List<string> warnings, string what, Action action)
        {
            Stopwatch stepClock = Stopwatch.StartNew();
            try
            {
                action();
                Timings.Say(what, stepClock);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                warnings.Add($"{what}: {e.GetType().Name}: {e.Message}");
            }
        }

        private sealed class MemoryList
        {
            private readonly Dictionary<string, int> _kindIndex = new();

            public List<ulong> Ranges { get; } = new();
            public List<string> KindNames { get; } = new();

            public void Add(MemoryRange range, string kind) => Add(range.Start, range.End, kind);

            public void Add(ulong start, ulong end, string kind)
            {
                if (end <= start)
                    return;
                if (!_kindIndex.TryGetValue(kind, out int index))
                {
                    index = KindNames.Count;
                    KindNames.Add(kind);
                    _kindIndex.Add(kind, index);
                }

                Ranges.Add(start);
                Ranges.Add(end);
                Ranges.Add((ulong)index);
            }
        }
    }
}
