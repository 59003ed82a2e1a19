using System;
using System.IO;
using System.IO.MemoryMappedFiles;

namespace ClrmdBridge
{
    /// <summary>
    /// The target's memory as copied in the pause, read from the dump file the copy went into: the
    /// walk after the target is resumed reads this. A read the copy cannot answer is noted as
    /// missed: the caller then knows that the copy was not enough for the walk.
    /// </summary>
    public sealed unsafe class CopiedMemory : IDisposable
    {
        private readonly MemoryMappedFile? _file;
        private readonly MemoryMappedViewAccessor? _view;
        private readonly byte* _base;
        private readonly ulong[] _starts;     // sorted target addresses
        private readonly ulong[] _ends;
        private readonly ulong[] _offsets;    // where each piece lies in the file
        private const ulong UserSpaceEnd = 1UL << 47;   // x86-64: no process memory above

        /// <summary>A copy of nothing: every read misses.</summary>
        public static CopiedMemory Empty { get; } = new();

        private CopiedMemory()
        {
            _starts = _ends = _offsets = Array.Empty<ulong>();
        }

        /// <param name="path">The file (the dump being written).</param>
        /// <param name="pieces">Triples (address, file offset, size), sorted by address, not
        /// overlapping.</param>
        public CopiedMemory(string path, ulong[] pieces)
        {
            if (pieces.Length % 3 != 0)
                throw new ArgumentException("pieces come in triples (address, offset, size)");
            int count = pieces.Length / 3;
            _starts = new ulong[count];
            _ends = new ulong[count];
            _offsets = new ulong[count];
            for (int i = 0; i < count; i++)
            {
                _starts[i] = pieces[3 * i];
                _offsets[i] = pieces[3 * i + 1];
                _ends[i] = pieces[3 * i] + pieces[3 * i + 2];
                if (i > 0 && _starts[i] < _ends[i - 1])
                    throw new ArgumentException("pieces must be sorted and not overlap");
            }

            using FileStream stream = new(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            _file = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            _view = _file.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* at = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref at);
            _base = at + _view.PointerOffset;
        }

        /// <summary>Pages that reads asked for, that the copy lacked and the target has.</summary>
        public PageRangeSet Missed { get; } = new();

        /// <summary>Where what the copy lacks is read from: the target, which runs again. What it
        /// answers is not the pause's memory, but it lets the walk go on past a miss and find
        /// everything the next copy must hold (the walk's result is then only that).</summary>
        public PageCache.ReadMemory? Fallback { get; set; }

        /// <summary>Like a read of the target: the bytes from address on, up to the first byte
        /// neither the copy nor <see cref="Fallback"/> has.</summary>
        public int Read(ulong address, Span<byte> buffer)
        {
            int copied = 0;
            while (copied < buffer.Length)
            {
                ulong at = address + (ulong)copied;
                int index = Array.BinarySearch(_starts, at);
                if (index < 0)
                    index = ~index - 1;
                if (index < 0 || at >= _ends[index])
                {
                    // Up to the next piece of the copy, or the end of the buffer.
                    int next = index + 1;
                    ulong gapEnd = next < _starts.Length ? _starts[next] : ulong.MaxValue;
                    int want = (int)Math.Min((ulong)(buffer.Length - copied), gapEnd - at);
                    int found = Fallback is null || at >= UserSpaceEnd ? 0 : Math.Max(0, Fallback(at, buffer.Slice(copied, want)));
                    Missed.Add(at, found);
                    copied += found;
                    if (found < want)
                        break;
                    continue;
                }

                int count = (int)Math.Min((ulong)(buffer.Length - copied), _ends[index] - at);
                new ReadOnlySpan<byte>(_base + _offsets[index] + (at - _starts[index]), count).CopyTo(buffer.Slice(copied));
                copied += count;
            }

            return copied;
        }

        public void Dispose()
        {
            if (_view is null)
                return;
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
            _file?.Dispose();
        }
    }
}
