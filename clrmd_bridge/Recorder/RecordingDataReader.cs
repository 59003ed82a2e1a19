using System;
using System.Collections.Generic;
using System.Linq;
using System.Runtime.InteropServices;
using Microsoft.Diagnostics.Runtime;
using Microsoft.Diagnostics.Runtime.DataReaders.Implementation;

namespace ClrmdBridge
{
    /// <summary>
    /// Wraps ClrMD's live reader of a process (process_vm_readv, no ptrace) and
    /// <list type="bullet">
    /// <item>records every range that a read returned, page-granular, so a dump can hold what the DAC needed;</item>
    /// <item>answers thread contexts from the registers our engine captured. ClrMD's live reader
    /// asks PTRACE_GETREGS, which fails when another process is the tracer (microsoft/clrmd#295).</item>
    /// </list>
    /// </summary>
    public sealed class RecordingDataReader : IDataReader, IThreadReader, IDisposable
    {
        private readonly IDataReader _inner;
        private readonly IDisposable? _innerOwner;
        private IReadOnlyDictionary<uint, UserRegsStruct> _registers;
        private PageCache? _cache;
        private CopiedMemory? _copy;

        public RecordingDataReader(IDataReader inner, IReadOnlyDictionary<uint, UserRegsStruct> registers, IDisposable? innerOwner)
        {
            _inner = inner;
            _innerOwner = innerOwner;
            _registers = registers;
            StartRecording(registers);
        }

        /// <summary>Starts a walk afresh: these registers, nothing recorded, and the target's memory
        /// and mappings read anew. Registers come only from a target our engine holds, whose
        /// memory cannot change until the walk ends; a walk of a running target (the warm-up) is
        /// cached too: it is an estimate, and a copy taken once is no less consistent than one
        /// read again and again while the target runs.</summary>
        /// <param name="copy">Where given, the walk reads this copy of the target's memory, taken in
        /// a pause that has ended, and never the target.</param>
        public void BeginWalk(IReadOnlyDictionary<uint, UserRegsStruct> registers, CopiedMemory? copy = null)
        {
            _inner.FlushCachedData();   // the live reader reads only inside the mappings it last listed
            StartRecording(registers, copy);
        }

        private void StartRecording(IReadOnlyDictionary<uint, UserRegsStruct> registers, CopiedMemory? copy = null)
        {
            _registers = registers;
            Reads = new PageRangeSet();
            _copy = copy;
            if (copy is not null)
                copy.Fallback = ReadTarget;
            _cache = copy is not null || Environment.GetEnvironmentVariable(NoPageCacheVariable) == "1"
                ? null
                : new PageCache(ReadTarget);
        }

        private int ReadTarget(ulong address, Span<byte> buffer) => buffer.IsEmpty ? 0 : _inner.Read(address, buffer);

        /// <summary>Reads fail from now on instead of reaching a copy that is unmapped, until the
        /// next walk begins.</summary>
        public void StopReading(CopiedMemory copy)
        {
            if (ReferenceEquals(_copy, copy))
                _copy = CopiedMemory.Empty;
        }

        /// <summary>"1" turns the page cache off (for tests and measurements).</summary>
        public const string NoPageCacheVariable = "MINIDUMPER_NO_PAGE_CACHE";

        /// <summary>Reads that reached the target (one process_vm_readv each, about).</summary>
        public long CacheMisses => _cache?.Misses ?? Reads.ReadCount;

        public PageRangeSet Reads { get; private set; } = new();

        public string DisplayName => _inner.DisplayName;
        public bool IsThreadSafe => false;
        public OSPlatform TargetPlatform => _inner.TargetPlatform;
        public Architecture Architecture => _inner.Architecture;
        public int ProcessId => _inner.ProcessId;
        public int PointerSize => _inner.PointerSize;

        // A single-file app's executable gets its true base, so ClrMD finds the runtime inside it.
        public IEnumerable<ModuleInfo> EnumerateModules() => SingleFileModules.Correct(this, _inner.EnumerateModules());

        public bool GetThreadContext(uint threadID, uint contextFlags, Span<byte> context)
        {
            // Given no registers at all, the live reader's own contexts are right (Windows, or a
            // target we do not hold); given some, a thread left out has none.
            if (_registers.Count == 0)
                return _inner.GetThreadContext(threadID, contextFlags, context);
            if (Architecture != Architecture.X64 || !_registers.TryGetValue(threadID, out UserRegsStruct regs))
                return false;
            return regs.CopyTo(contextFlags, context);
        }

        public void FlushCachedData()
        {
            _cache?.Clear();
            _inner.FlushCachedData();
        }

        public int Read(ulong address, Span<byte> buffer)
        {
            if (buffer.IsEmpty)
                return 0;
            // Recorded as asked, not as the cache read ahead: the dump holds what the DAC needed.
            int read = _copy is not null ? _copy.Read(address, buffer)
                : _cache is null ? _inner.Read(address, buffer) : _cache.Read(address, buffer);
            Reads.Add(address, read);
            return read;
        }

        public unsafe bool Read<T>(ulong address, out T value) where T : unmanaged
        {
            Span<byte> buffer = stackalloc byte[sizeof(T)];
            if (Read(address, buffer) == buffer.Length)
            {
                value = MemoryMarshal.Read<T>(buffer);
                return true;
            }

            value = default;
            return false;
        }

        public T Read<T>(ulong address) where T : unmanaged
        {
            Read(address, out T value);
            return value;
        }

        public bool ReadPointer(ulong address, out ulong value)
        {
            if (PointerSize == 4)
            {
                bool ok = Read(address, out uint narrow);
                value = narrow;
                return ok;
            }

            return Read(address, out value);
        }

        public ulong ReadPointer(ulong address)
        {
            ReadPointer(address, out ulong value);
            return value;
        }

        public IEnumerable<uint> EnumerateOSThreadIds() =>
            _inner is IThreadReader threads ? threads.EnumerateOSThreadIds() : _registers.Keys.OrderBy(tid => tid);

        public ulong GetThreadTeb(uint osThreadId) => 0;

        public void Dispose()
        {
            _cache?.Clear();
            _innerOwner?.Dispose();
        }
    }
}
