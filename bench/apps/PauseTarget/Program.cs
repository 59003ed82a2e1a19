// A bench target: native memory, many small managed objects, parked threads, and a thread that
// stamps the clock (ClockStamper) so the target measures its own pauses.
// usage: PauseTarget [--native-mb N] [--managed-mb M] [--threads K] [--gap-ms G] [--churn-ms C]
// --churn-ms C: every C ms a short-lived thread starts, allocates a little and ends, as a
// service's thread pool adds and retires workers now and then.
using System;
using System.Runtime.InteropServices;
using System.Threading;
using BenchTargets;

public sealed class SmallRecord
{
    public long Key;
    public SmallRecord? Next;
    public string? Label;
}

public static class Program
{
    static IntPtr s_native;
    static SmallRecord[] s_chains = Array.Empty<SmallRecord>();

    public static int Main(string[] args)
    {
        int nativeMb = 0, managedMb = 0, threads = 10;
        double gapMs = 1.0, churnMs = 0;
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            switch (args[i])
            {
                case "--native-mb": nativeMb = int.Parse(args[i + 1]); break;
                case "--managed-mb": managedMb = int.Parse(args[i + 1]); break;
                case "--threads": threads = int.Parse(args[i + 1]); break;
                case "--gap-ms": gapMs = double.Parse(args[i + 1], System.Globalization.CultureInfo.InvariantCulture); break;
                case "--churn-ms": churnMs = double.Parse(args[i + 1], System.Globalization.CultureInfo.InvariantCulture); break;
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        }

        ClockStamper.ExitWithParent();
        AllocateNative(nativeMb);
        AllocateManaged(managedMb);
        using var parked = new CountdownEvent(threads);
        for (int i = 0; i < threads; i++)
            new Thread(() => { parked.Signal(); Thread.Sleep(Timeout.Infinite); }) { IsBackground = true, Name = $"parked-{i}" }.Start();
        parked.Wait();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();

        if (churnMs > 0)
            new Thread(() => Churn(churnMs)) { IsBackground = true, Name = "churn" }.Start();
        var stamper = new ClockStamper(gapMs);
        stamper.Start();
        Console.Out.WriteLine($"READY {Environment.ProcessId}");
        Console.Out.Flush();
        stamper.Serve();
        GC.KeepAlive(s_chains);
        return 0;
    }

    static void Churn(double everyMs)
    {
        var random = new Random(1);
        while (true)
        {
            Thread.Sleep(TimeSpan.FromMilliseconds(everyMs));
            int lifeMs = random.Next(5, 50);
            new Thread(() =>
            {
                var work = new System.Collections.Generic.List<SmallRecord>();
                for (int i = 0; i < 1000; i++)
                    work.Add(new SmallRecord { Key = i });
                Thread.Sleep(lifeMs);
                GC.KeepAlive(work);
            }) { IsBackground = true, Name = "short-lived" }.Start();
        }
    }

    static unsafe void AllocateNative(int megabytes)
    {
        long size = megabytes * 1024L * 1024L;
        if (size == 0) return;
        s_native = Marshal.AllocHGlobal((nint)size);
        byte* bytes = (byte*)s_native;
        for (long offset = 0; offset < size; offset += 4096)
            bytes[offset] = 1;
    }

    static void AllocateManaged(int megabytes)
    {
        const int RecordBytes = 40;
        long count = megabytes * 1024L * 1024L / RecordBytes;
        s_chains = new SmallRecord[1024];
        for (long i = 0; i < count; i++)
        {
            int chain = (int)(i % s_chains.Length);
            s_chains[chain] = new SmallRecord { Key = i, Next = s_chains[chain], Label = i % 1000 == 0 ? "every thousandth" : null };
        }
    }
}
