using System;

namespace ClrmdBridge
{
    /// <summary>
    /// Which share of a walk one process does, when several walk the same held target in parallel
    /// (each with its own DAC: one DAC serializes all its calls). The threads are dealt out in
    /// turn; the primary share lists the CLR's memory and modules, the secondary one (the last)
    /// takes the roots, handles and the DAC's own memory regions. One shard does it all.
    /// </summary>
    public readonly struct Shard
    {
        public Shard(int index, int count)
        {
            if (count < 1 || index < 0 || index >= count)
                throw new ArgumentException($"shard {index} of {count}");
            Index = index;
            Count = count;
        }

        public int Index { get; }
        public int Count { get; }
        public bool Primary => Index == 0;
        public bool Secondary => Index == Count - 1;

        public bool TakesThread(int ordinal) => ordinal % Count == Index;
    }
}
