// Reads a .NET process or dump with ClrMD and prints one JSON object: the tests' independent reader.
//   ClrmdReader --dump PATH | --pid PID  [--dac PATH: the DAC to use, where it is not beside the runtime]
// Sections that fail are reported in "errors" and the rest is still printed, so a dump that lacks
// memory ClrMD needs shows up as differences, not as a crash. Fatal errors print {"error": ...}, exit 1.
using System;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using Microsoft.Diagnostics.Runtime;
using Microsoft.Diagnostics.Runtime.DataReaders.Implementation;

namespace ClrmdReader;

public sealed record Reading(
    string RuntimeVersion,
    string? VersionString,
    int PointerSize,
    List<ThreadReading> Threads,
    long ObjectCount,
    long InvalidObjectCount,
    SortedDictionary<string, TypeTally> Histogram,
    KindTally Roots,
    KindTally Handles,
    List<SegmentReading> Segments,
    int Modules,
    List<string> Errors);

public sealed record ThreadReading(uint OsId, bool Managed, List<string> Frames);

public sealed class TypeTally
{
    public long Count { get; set; }
    public ulong Size { get; set; }
}

public sealed class KindTally
{
    public long Total { get; set; }
    public SortedDictionary<string, long> ByKind { get; } = new(StringComparer.Ordinal);

    public void Add(string kind)
    {
        Total++;
        ByKind[kind] = ByKind.GetValueOrDefault(kind) + 1;
    }
}

public sealed record SegmentReading(string Kind, ulong Start, ulong End, ulong CommittedEnd);

public static class Program
{
    static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,  // type names keep their <, > and '
    };

    public static int Main(string[] args)
    {
        try
        {
            string? dacPath = null;
            if (args.Length == 4 && args[2] == "--dac")
            {
                dacPath = args[3];
                args = args[..2];
            }
            using DataTarget target = Open(args);
            Console.WriteLine(JsonSerializer.Serialize(Read(target, dacPath), JsonOptions));
            return 0;
        }
        catch (Exception e)
        {
            Console.WriteLine(JsonSerializer.Serialize(new { error = $"{e.GetType().Name}: {e.Message}" }, JsonOptions));
            return 1;
        }
    }

    static DataTarget Open(string[] args)
    {
        if (args.Length == 2 && args[0] == "--dump")
            return DataTarget.LoadDump(args[1]);
        if (args.Length == 2 && args[0] == "--pid" && int.TryParse(args[1], out int pid))
            return DataTarget.AttachToProcess(pid, suspend: true);
        throw new ArgumentException("usage: ClrmdReader --dump PATH | --pid PID");
    }

    static Reading Read(DataTarget target, string? dacPath)
    {
        if (target.ClrVersions.Length == 0)
            throw new InvalidOperationException("no CLR found in the target");
        ClrInfo clr = target.ClrVersions[0];
        using ClrRuntime runtime = dacPath is null ? clr.CreateRuntime() : clr.CreateRuntime(dacPath, ignoreMismatch: true);  // ClrMD reads .NET 10 as 0.0
        ClrHeap heap = runtime.Heap;
        var errors = new List<string>();

        // Each section is guarded on its own and keeps what it counted before a failure.
        void Guard(string section, Action read)
        {
            try { read(); }
            catch (Exception e) { errors.Add($"{section}: {e.GetType().Name}: {e.Message}"); }
        }

        string? versionString = null;
        Guard("version string", () => versionString = ReadVersionString(target.DataReader, clr.ModuleInfo));

        var threads = new List<ThreadReading>();
        Guard("threads", () => threads = ReadThreads(target, runtime, errors));

        long objectCount = 0, invalidCount = 0;
        var histogram = new SortedDictionary<string, TypeTally>(StringComparer.Ordinal);
        Guard("heap", () =>
        {
            if (!heap.CanWalkHeap)
                errors.Add("heap: CanWalkHeap is false");
            // carefully: walk on past unreadable heap memory instead of ending the segment there. Objects
            // in memory that is missing are then simply not counted; those whose type cannot be read are
            // counted as invalid.
            foreach (ClrObject obj in heap.EnumerateObjects(carefully: true))
            {
                objectCount++;
                if (!obj.IsValid)
                {
                    invalidCount++;
                    continue;
                }
                string name = obj.Type!.Name ?? "?";
                if (!histogram.TryGetValue(name, out TypeTally? tally))
                    histogram[name] = tally = new TypeTally();
                tally.Count++;
                tally.Size += obj.Size;
            }
        });

        var roots = new KindTally();
        Guard("roots", () =>
        {
            foreach (ClrRoot root in heap.EnumerateRoots())
                roots.Add(root.RootKind.ToString());
        });

        var handles = new KindTally();
        Guard("handles", () =>
        {
            foreach (ClrHandle handle in runtime.EnumerateHandles())
                handles.Add(handle.HandleKind.ToString());
        });

        var segments = new List<SegmentReading>();
        Guard("segments", () => segments = heap.Segments
            .Select(s => new SegmentReading(s.Kind.ToString(), s.Start, s.End, s.CommittedMemory.End))
            .OrderBy(s => s.Start)
            .ToList());

        int modules = 0;
        Guard("modules", () => modules = runtime.EnumerateModules().Count());

        return new Reading(clr.Version.ToString(), versionString, target.DataReader.PointerSize, threads, objectCount, invalidCount,
                           histogram, roots, handles, segments, modules, errors);
    }

    // The runtime's "@(#)Version <version> @Commit: <sha>" marker, searched page by page over the whole
    // runtime module. ClrMD 3.1 looks only in the first writable segment, which in .NET 10 is the RELRO
    // one, so its Version reads 0.0; this shows whether the marker is readable at all.
    static string? ReadVersionString(IDataReader reader, ModuleInfo runtimeModule)
    {
        const int PageSize = 4096;
        byte[] marker = "@(#)Version "u8.ToArray();
        byte[] window = new byte[marker.Length + PageSize];
        int carried = 0;  // tail of the previous page, so a marker across a page boundary is found
        ulong end = runtimeModule.ImageBase + (ulong)runtimeModule.ImageSize;
        for (ulong page = runtimeModule.ImageBase; page < end; page += PageSize)
        {
            if (reader.Read(page, window.AsSpan(carried, PageSize)) != PageSize)
            {
                carried = 0;
                continue;
            }
            int found = window.AsSpan(0, carried + PageSize).IndexOf(marker);
            if (found >= 0)
            {
                byte[] text = new byte[128];
                int read = reader.Read(page - (ulong)carried + (ulong)(found + marker.Length), text);
                int length = text.AsSpan(0, Math.Max(read, 0)).IndexOf((byte)0);
                return Encoding.ASCII.GetString(text, 0, length >= 0 ? length : Math.Max(read, 0));
            }
            window.AsSpan(carried + PageSize - marker.Length, marker.Length).CopyTo(window);
            carried = marker.Length;
        }
        return null;
    }

    // Every OS thread of the target, sorted by id; "managed" means the runtime has a live Thread for it.
    static List<ThreadReading> ReadThreads(DataTarget target, ClrRuntime runtime, List<string> errors)
    {
        Dictionary<uint, ClrThread> managed = runtime.Threads
            .Where(t => t.IsAlive)
            .GroupBy(t => t.OSThreadId)
            .ToDictionary(g => g.Key, g => g.First());
        var osIds = new SortedSet<uint>(managed.Keys);
        if (target.DataReader is IThreadReader threadReader)
            osIds.UnionWith(threadReader.EnumerateOSThreadIds());

        var threads = new List<ThreadReading>();
        foreach (uint osId in osIds)
        {
            var frames = new List<string>();
            if (managed.TryGetValue(osId, out ClrThread? thread))
            {
                try
                {
                    // Runtime frames (transitions, helper frames) have no method: left out.
                    foreach (ClrStackFrame frame in thread.EnumerateStackTrace())
                        if (frame.Method is ClrMethod method)
                            frames.Add($"{method.Type?.Name}.{method.Name}");
                }
                catch (Exception e)
                {
                    errors.Add($"stack of thread {osId}: {e.GetType().Name}: {e.Message}");
                }
            }
            threads.Add(new ThreadReading(osId, thread is not null, frames));
        }
        return threads;
    }
}
