using System;
using System.Collections.Generic;

namespace ClrmdBridge
{
    /// <summary>
    /// Serves repeated reads of the same memory from a copy: the DAC reads the same few pages many
    /// thousands of times in one walk (one process_vm_readv each, microseconds apiece). A miss reads
    /// the whole aligned block of <see cref="BlockSize"/> bytes around it in one call.
    /// <para>Correct only while the target cannot change: the reader makes one for a walk of a held
    /// target and drops it when the walk ends, so each pause starts with an empty cache.</para>
    /// Answers as the inner read would: a read returns the bytes readable from its address on, up
    /// to the first unreadable page; whatever a block does not cover is read directly.
    /// </summary>
    public sealed class PageCache
    {
        /// <summary>A read of the target's memory (Func cannot take a Span on net8.0).</summary>
        public delegate int ReadMemory(ulong address, Span<byte> buffer);

        public const int BlockSize = 8 * 4096;
        private const ulong BlockMask = BlockSize - 1;
        private const int MaximumBlocks = 4096;   // 128 MiB at most; past that, reads go direct

        private readonly ReadMemory _read;
        private readonly Dictionary<ulong, (byte[] Data, int Valid)> _blocks = new();

        public PageCache(ReadMemory read) => _read = read;

        public long Misses { get; private set; }

        public int Read(ulong address, Span<byte> buffer)
        {
            if (buffer.Length > BlockSize)
                return _read(address, buffer);

            int copied = 0;
            while (copied < buffer.Length)
            {
                ulong at = address + (ulong)copied;
                ulong block = at & ~BlockMask;
                int offset = (int)(at - block);
                if (!TryBlock(block, out byte[] data, out int valid) || offset >= valid)
                    return copied + _read(at, buffer.Slice(copied));

                int count = Math.Min(valid - offset, buffer.Length - copied);
                data.AsSpan(offset, count).CopyTo(buffer.Slice(copied));
                copied += count;
            }

            return copied;
        }

        public void Clear() => _blocks.Clear();

        private bool TryBlock(ulong block, out byte[] data, out int valid)
        {
            if (_blocks.TryGetValue(block, out (byte[] Data, int Valid) entry))
            {
                (data, valid) = entry;
                return true;
            }

            data = Array.Empty<byte>();
            valid = 0;
            if (_blocks.Count >= MaximumBlocks || block > ulong.MaxValue - BlockSize)
                return false;

            Misses++;
            data = new byte[BlockSize];
            valid = Math.Max(0, _read(block, data));
            _blocks.Add(block, (data, valid));
            return true;
        }
    }
}
