using System.Collections.Generic;

namespace ClrmdBridge
{
    /// <summary>Arithmetic on sorted lists of non-overlapping [start, end) ranges.</summary>
    public static class PageRanges
    {
        /// <summary>The parts of <paramref name="ranges"/> outside <paramref name="covered"/>; both
        /// sorted and non-overlapping.</summary>
        public static List<(ulong Start, ulong End)> Subtract(List<(ulong Start, ulong End)> ranges, List<(ulong Start, ulong End)> covered)
        {
            List<(ulong Start, ulong End)> left = new();
            int index = 0;
            foreach ((ulong rangeStart, ulong end) in ranges)
            {
                ulong start = rangeStart;
                while (index < covered.Count && covered[index].End <= start)
                    index++;
                for (int probe = index; probe < covered.Count && covered[probe].Start < end; probe++)
                {
                    if (covered[probe].Start > start)
                        left.Add((start, covered[probe].Start));
                    if (covered[probe].End > start)
                        start = covered[probe].End;
                }

                if (start < end)
                    left.Add((start, end));
            }

            return left;
        }
    }
}
