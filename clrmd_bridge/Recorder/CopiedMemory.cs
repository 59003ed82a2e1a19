using System;
using System.IO;
using System.IO.MemoryMappedFiles;

namespace ClrmdBridge
{
    /// <summary>
    /// The target's memory as copied in the pause, read from the dump file the copy went into: the
    /// walk after the target is resumed reads this, never the target. A read the copy cannot
    /// answer fails as an unreadable page would, and its pages are noted as missed: the caller
    /// then knows that the copy was not enough for the walk.
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

        /// <summary>Pages that reads asked for and the copy lacked.</summary>
        public PageRangeSet Missed { get; } = new();

        /// <summary>Like a read of the target: the bytes from address on, up to the first byte the
        /// copy does not hold.</summary>
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
                    if (at < UserSpaceEnd)
                        Missed.Add(at, Math.Min(buffer.Length - copied, 4096 - (int)(at & 0xfff)));
                    break;
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
