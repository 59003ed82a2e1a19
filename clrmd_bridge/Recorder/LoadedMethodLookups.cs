using System;
using System.Collections.Generic;
using Microsoft.Diagnostics.Runtime;

namespace ClrmdBridge
{
    /// <summary>
    /// What a debugger reads to tell a MethodDesc of any loaded type from garbage (dumpmt -md,
    /// dumpmd, ip2md on ReadyToRun code): the code-range lookup of every method table slot's code
    /// address, which leads through the range section map to a ReadyToRun module's entry point ->
    /// MethodDesc map (native memory), the MethodDesc's data and code versions, its exception
    /// clauses (ReadyToRun), each type's AssemblyLoadContext, and what dumpobj reads of each
    /// type's fields (FieldTypeLookups). Some tens of KiB,
    /// but O(loaded methods) DAC calls: too slow for a paused target. So the pages are found while
    /// the target runs (the warm-up walk before the pause) and kept in this process, with every
    /// other page that walk read, for the walk in the pause, which adds them without asking again;
    /// their bytes are read in the pause, like all.
    /// </summary>
    public static class LoadedMethodLookups
    {
        private static readonly Dictionary<(int Pid, ulong RuntimeBase), List<(ulong Start, ulong End)>> Found = new();

        // Well inside the time a walk before the pause is given: on an app with very many loaded
        // types the lookups stop there, and the types left are those a debugger is least likely
        // to ask about (their modules were loaded last).
        private static readonly TimeSpan Budget = TimeSpan.FromSeconds(4);
        private static readonly TimeSpan FieldBudget = TimeSpan.FromSeconds(2);

        /// <summary>Whether a walk before the pause left its pages here.</summary>
        public static bool Has(int pid, ulong runtimeBase)
        {
            lock (Found)
                return Found.ContainsKey((pid, runtimeBase));
        }

        /// <param name="held">The target is paused: add what the walk before the pause found;
        /// otherwise look it up now.</param>
        public static void Add(int pid, ulong runtimeBase, ClrRuntime runtime, RecordingDataReader reader, bool held,
                               Action<ulong, ulong> add)
        {
            (int, ulong) key = (pid, runtimeBase);
            if (!held)
            {
                System.Diagnostics.Stopwatch clock = System.Diagnostics.Stopwatch.StartNew();
                HashSet<ulong> loadedTypes = AllLoadedTypes(runtime);
                Timings.Say($"loaded types ({loadedTypes.Count})", clock);
                clock.Restart();
                MethodToucher methods = new(runtime);
                try
                {
                    methods.TouchSlotLookups(loadedTypes, Budget);
                }
                finally
                {
                    methods.Release();
                }

                Timings.Say($"their slots' lookups ({methods.MethodCount} methods)", clock);
                clock.Restart();
                FieldTypeLookups.Touch(runtime, reader, loadedTypes, FieldBudget);
                Timings.Say("their fields' types", clock);

                // Every page this walk read so far: the lookups also went through pages that it
                // read before them (range sections, ReadyToRun info), which the walk in the pause
                // need not read again.
                lock (Found)
                    Found[key] = reader.Reads.ToMergedList();
            }

            List<(ulong Start, ulong End)>? pages;
            lock (Found)
                Found.TryGetValue(key, out pages);
            foreach ((ulong start, ulong end) in pages ?? new())
                add(start, end);
        }

        private static HashSet<ulong> AllLoadedTypes(ClrRuntime runtime)
        {
            HashSet<ulong> all = new();
            foreach (ClrModule module in runtime.EnumerateModules())
                foreach ((ulong methodTable, int _) in module.EnumerateTypeDefToMethodTableMap())
                    all.Add(methodTable);
            return all;
        }
    }
}
