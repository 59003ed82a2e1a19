using System;
using System.Collections.Generic;
using Microsoft.Diagnostics.Runtime;

namespace ClrmdBridge
{
    /// <summary>
    /// The DataTarget of the last process walked, kept for the next walk of the same process: the
    /// walk in the pause then skips attaching, listing the target's modules and finding its runtime
    /// (several milliseconds, all while the target is held). Each walk starts with the reader's
    /// caches dropped and the target's mappings listed again.
    /// <para>The module list of the DataTarget stays as the first walk saw it. ClrMD's DAC data
    /// target uses it only to find libcoreclr (which cannot move) and, for reads that fail, to read
    /// from module files; a live process's mapped memory is always readable.</para>
    /// </summary>
    internal static class KeptTarget
    {
        private static int s_pid;
        private static DataTarget? s_target;
        private static RecordingDataReader? s_reader;

        /// <param name="copy">The target's memory as copied in a pause, for the walk to read instead
        /// of the target (see <see cref="RecordingDataReader.BeginWalk"/>).</param>
        public static (DataTarget Target, RecordingDataReader Reader) For(int pid, IReadOnlyDictionary<uint, UserRegsStruct> registers, CopiedMemory? copy)
        {
            if (s_target is not null && s_reader is not null && s_pid == pid)
            {
                s_reader.BeginWalk(registers, copy);
                return (s_target, s_reader);
            }

            Forget();
            // On Linux the target is held by our tracer: suspend: false reads with process_vm_readv
            // only. On Windows nobody holds it, and suspending threads there needs no tracer.
            DataTarget live = DataTarget.AttachToProcess(pid, suspend: OperatingSystem.IsWindows(), OfflineOptions());
            RecordingDataReader reader = new(live.DataReader, registers, innerOwner: live);
            s_target = new DataTarget(reader, OfflineOptions());   // disposes reader, then live
            s_reader = reader;
            s_pid = pid;
            if (copy is not null)   // the modules were listed from the target; the memory is the copy's
                reader.BeginWalk(registers, copy);
            return (s_target, s_reader);
        }

        /// <summary>The kept reader lets go of a copy of memory that is about to be unmapped.</summary>
        public static void StopReading(CopiedMemory? copy)
        {
            if (copy is not null)
                s_reader?.StopReading(copy);
        }

        /// <summary>Lets go of the target (a failed walk must not leave its state to the next).</summary>
        public static void Forget()
        {
            s_target?.Dispose();
            s_target = null;
            s_reader = null;
            s_pid = 0;
        }

        /// <summary>Nothing is ever downloaded at dump time: no symbol server, no file locator.</summary>
        private static DataTargetOptions OfflineOptions() => new()
        {
            FileLocator = new OfflineFileLocator(),
            SymbolPaths = Array.Empty<string>(),
        };

        private sealed class OfflineFileLocator : IFileLocator
        {
            public string? FindPEImage(string fileName, int buildTimeStamp, int imageSize, bool checkProperties) => null;

            public string? FindPEImage(string fileName, SymbolProperties archivedUnder, System.Collections.Immutable.ImmutableArray<byte> buildIdOrUUID,
                                       System.Runtime.InteropServices.OSPlatform originalPlatform, bool checkProperties) => null;
        }
    }
}
