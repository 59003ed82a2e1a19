using System;
using System.Diagnostics;

namespace ClrmdBridge
{
    /// <summary>Where a walk's time goes, on the worker's stderr (the dumper's debug log) when
    /// MINIDUMPER_BRIDGE_TIMINGS=1: for measuring the pause.</summary>
    internal static class Timings
    {
        private static readonly bool On = Environment.GetEnvironmentVariable("MINIDUMPER_BRIDGE_TIMINGS") == "1";

        public static void Say(string what, Stopwatch clock)
        {
            if (On)
                Console.Error.WriteLine($"TIMING {what}: {clock.Elapsed.TotalMilliseconds:F1} ms");
        }
    }
}
