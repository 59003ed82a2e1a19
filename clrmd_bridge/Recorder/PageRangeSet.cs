using System;
using System.Collections.Generic;

namespace ClrmdBridge
{
    /// <summary>
    /// A set of page-aligned address ranges, merged when asked for. Reads arrive in bursts at
    /// nearby addresses, so each read is first merged into the last range; the list is sorted and
    /// merged whenever it doubles, which keeps memory bounded by the number of distinct ranges.
    /// </summary>
    public sealed class PageRangeSet
    {
        private const ulong PageMask = 0xfff;
        private const int MinimumCompactAt = 4096;

        private readonly List<(ulong Start, ulong End)> _ranges = new();
        private int _compactAt = MinimumCompactAt;

        public long ReadCount { get; private set; }

        public void Add(ulong address, int length)
        {
            if (length <= 0)
                return;

            ReadCount++;
            // Only reads that succeeded are added, so they lie in user space, far from 2^64.
            ulong start = address & ~PageMask;
            ulong end = (address + (ulong)length + PageMask) & ~PageMask;

            int count = _ranges.Count;
            if (count > 0)
            {
                (ulong lastStart, ulong lastEnd) = _ranges[count - 1];
                if (start <= lastEnd && end >= lastStart)
                {
                    _ranges[count - 1] = (Math.Min(start, lastStart), Math.Max(end, lastEnd));
                    return;
                }
            }

            _ranges.Add((start, end));
            if (_ranges.Count >= _compactAt)
            {
                Compact();
                _compactAt = Math.Max(MinimumCompactAt, _ranges.Count * 2);
            }
        }

        /// <summary>[start, end), however long.</summary>
        public void Add(ulong start, ulong end)
        {
            const ulong Chunk = 1UL << 30;
            for (ulong at = start; at < end; at += Math.Min(Chunk, end - at))
                Add(at, (int)Math.Min(Chunk, end - at));
        }

        /// <summary>The ranges, sorted, with overlapping and touching ones merged.</summary>
        public List<(ulong Start, ulong End)> ToMergedList()
        {
            Compact();
            return new List<(ulong Start, ulong End)>(_ranges);
        }

        private void Compact()
        {
            if (_ranges.Count < 2)
                return;

            _ranges.Sort((a, b) => a.Start.CompareTo(b.Start));
            int kept = 0;
            for (int i = 1; i < _ranges.Count; i++)
            {
                (ulong start, ulong end) = _ranges[i];
                if (start <= _ranges[kept].End)
                {
                    if (end > _ranges[kept].End)
                        _ranges[kept] = (_ranges[kept].Start, end);
                }
                else
                {
                    _ranges[++kept] = (start, end);
                }
            }

            _ranges.RemoveRange(kept + 1, _ranges.Count - kept - 1);
        }
    }
}
