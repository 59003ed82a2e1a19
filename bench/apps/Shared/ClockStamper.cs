// A thread that reads the clock in a tight loop and notes every gap longer than a threshold: the
// target's own measure of how long it was held (ptrace stop, or simply not scheduled).
// Shared by the bench targets (linked into each project). Nothing here allocates once started.
using System;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Threading;

namespace BenchTargets;

public sealed class ClockStamper
{
    private const int Capacity = 65536;
    private readonly long _thresholdTicks;
    private readonly long[] _starts = new long[Capacity];
    private readonly long[] _ends = new long[Capacity];
    private int _count;          // gaps noted since the last Mark(), up to Capacity
    private int _dropped;

    public ClockStamper(double thresholdMs) =>
        _thresholdTicks = (long)(thresholdMs * Stopwatch.Frequency / 1000.0);

    public void Start()
    {
        var thread = new Thread(Run) { IsBackground = true, Name = "clock-stamper" };
        thread.Start();
    }

    private void Run()
    {
        long last = Stopwatch.GetTimestamp();
        while (true)
        {
            long now = Stopwatch.GetTimestamp();
            if (now - last >= _thresholdTicks)
            {
                lock (_starts)
                {
                    if (_count < Capacity)
                    {
                        _starts[_count] = last;
                        _ends[_count] = now;
                        _count++;
                    }
                    else
                    {
                        _dropped++;
                    }
                }
            }
            last = now;
        }
    }

    public void Mark()
    {
        lock (_starts)
        {
            _count = 0;
            _dropped = 0;
        }
    }

    /// <summary>"GAPS now dropped start:end ..." in seconds of CLOCK_MONOTONIC (Stopwatch's clock on Linux).</summary>
    public string Report()
    {
        var text = new StringBuilder("GAPS ");
        double scale = 1.0 / Stopwatch.Frequency;
        lock (_starts)
        {
            text.Append((Stopwatch.GetTimestamp() * scale).ToString("F6", CultureInfo.InvariantCulture));
            text.Append(' ').Append(_dropped);
            for (int i = 0; i < _count; i++)
                text.Append(' ')
                    .Append((_starts[i] * scale).ToString("F6", CultureInfo.InvariantCulture)).Append(':')
                    .Append((_ends[i] * scale).ToString("F6", CultureInfo.InvariantCulture));
        }
        return text.ToString();
    }

    /// <summary>Answers the bench on stdin: "mark" forgets the gaps so far, "gaps" reports them;
    /// end of input ends the process.</summary>
    public void Serve()
    {
        string? line;
        while ((line = Console.In.ReadLine()) is not null)
        {
            if (line == "mark")
            {
                Mark();
                Console.Out.WriteLine("MARKED");
            }
            else if (line == "gaps")
            {
                Console.Out.WriteLine(Report());
            }
            Console.Out.Flush();
        }
    }

    /// <summary>The target dies with the bench (SIGTERM when its parent exits).</summary>
    public static void ExitWithParent()
    {
        const int PR_SET_PDEATHSIG = 1, SIGTERM = 15;
        prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    }

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int prctl(int option, nint arg2, nint arg3, nint arg4, nint arg5);
}
