using System;
using System.Collections.Generic;
using Microsoft.Diagnostics.Runtime;

namespace ClrmdBridge
{
    /// <summary>
    /// The sections of a ReadyToRun image that readers use to find code and types: the runtime
    /// functions (code ranges), method entry points, the available-types table, import sections,
    /// exception info, and the like, listed by the image's READYTORUN_HEADER. On the
    /// machine of the dump a reader finds them in the file; on another machine only the dump has
    /// them. Code, IL and metadata are not among them.
    /// </summary>
    public static class ReadyToRunSections
    {
        private const uint ReadyToRunSignature = 0x00525452;  // "RTR"
        private const int ComDescriptorDirectory = 14;
        private const uint MaxSections = 256;
        private const uint MaxSectionBytes = 64u << 20;

        // READYTORUN_SECTION types left out: what only the runtime itself uses (inlining and
        // profile data), and DebugInfo, large, of which the DAC reports the part of each method on
        // a stack (the walk and EnumMemoryRegions read it).
        private static readonly HashSet<uint> LeftOut = new() { 105, 110, 111, 114, 117, 119 };

        /// <summary>[start, end) of each section of the module's image, or none if it is not
        /// a ReadyToRun image mapped as loaded (RVA = offset from the base).</summary>
        public static IEnumerable<(ulong Start, ulong End)> Of(IDataReader reader, ClrModule module)
        {
            ulong image = module.ImageBase;
            if (image == 0 || module.IsDynamic || !module.IsPEFile || module.Layout is not (ModuleLayout.Loaded or ModuleLayout.Mapped))
                yield break;
            if (!TryReadDirectory(reader, image, ComDescriptorDirectory, out uint corRva, out uint corSize) || corSize < 72)
                yield break;
            // IMAGE_COR20_HEADER.ManagedNativeHeader: the READYTORUN_HEADER.
            if (!reader.Read(image + corRva + 64, out uint headerRva) || !reader.Read(image + corRva + 68, out uint headerSize)
                || headerSize < 16 || !reader.Read(image + headerRva, out uint signature) || signature != ReadyToRunSignature)
                yield break;
            if (!reader.Read(image + headerRva + 12, out uint sectionCount) || sectionCount > MaxSections)
                yield break;
            yield return (image + headerRva, image + headerRva + 16 + 12 * (ulong)sectionCount);
            for (uint i = 0; i < sectionCount; i++)
            {
                ulong entry = image + headerRva + 16 + 12 * (ulong)i;   // { Type, RVA, Size }
                if (reader.Read(entry, out uint type) && !LeftOut.Contains(type) && reader.Read(entry + 4, out uint rva) && reader.Read(entry + 8, out uint size) && size != 0 && size <= MaxSectionBytes)
                    yield return (image + rva, image + rva + size);
            }
        }

        private static bool TryReadDirectory(IDataReader reader, ulong image, int index, out uint rva, out uint size)
        {
            rva = size = 0;
            if (!reader.Read(image + 0x3c, out int ntHeaders) || ntHeaders <= 0 || ntHeaders > 0x1000
                || !reader.Read(image + (ulong)ntHeaders, out uint peSignature) || peSignature != 0x4550)
                return false;
            ulong optional = image + (ulong)ntHeaders + 24;
            if (!reader.Read(optional, out ushort magic))
                return false;
            ulong directories = optional + (magic == 0x20b ? 112u : 96u);
            return reader.Read(directories + 8 * (ulong)index, out rva) && reader.Read(directories + 8 * (ulong)index + 4, out size) && rva != 0;
        }
    }
}
