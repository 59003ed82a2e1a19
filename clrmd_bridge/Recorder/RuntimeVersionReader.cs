using System;
using System.Buffers.Binary;
using System.Text;
using Microsoft.Diagnostics.Runtime;

namespace ClrmdBridge
{
    /// <summary>
    /// Finds libcoreclr's "@(#)Version 10.0.1226.42308 @Commit: ..." string in the target's memory.
    /// ClrMD 3.1 looks only in the first writable PT_LOAD, which in .NET 10's libcoreclr is the
    /// RELRO segment; the string lies in .data, in the second. So search every writable PT_LOAD.
    /// </summary>
    public static class RuntimeVersionReader
    {
        private const uint PT_LOAD = 1;
        private const uint PF_W = 2;
        private const int ChunkSize = 64 * 1024;
        private static readonly byte[] Marker = Encoding.ASCII.GetBytes("@(#)Version ");

        /// <summary>The version after the marker (e.g. "10.0.1226.42308"), or null.</summary>
        public static string? Read(IMemoryReader reader, ulong imageBase)
        {
            Span<byte> header = stackalloc byte[64];
            if (reader.Read(imageBase, header) != header.Length || !header.Slice(0, 4).SequenceEqual(ElfMagic))
                return null;
            if (header[4] != 2 || header[5] != 1)  // ELFCLASS64, ELFDATA2LSB
                return null;

            ulong phoff = BinaryPrimitives.ReadUInt64LittleEndian(header.Slice(0x20));
            int phentsize = BinaryPrimitives.ReadUInt16LittleEndian(header.Slice(0x36));
            int phnum = BinaryPrimitives.ReadUInt16LittleEndian(header.Slice(0x38));
            if (phentsize < 0x38 || phnum == 0)
                return null;

            byte[] table = new byte[phentsize * phnum];
            if (reader.Read(imageBase + phoff, table) != table.Length)
                return null;

            ulong? bias = null;
            for (int i = 0; i < phnum; i++)
            {
                ReadOnlySpan<byte> ph = table.AsSpan(i * phentsize, phentsize);
                if (BinaryPrimitives.ReadUInt32LittleEndian(ph) != PT_LOAD)
                    continue;

                ulong vaddr = BinaryPrimitives.ReadUInt64LittleEndian(ph.Slice(0x10));
                bias ??= imageBase - (vaddr & ~0xfffUL);  // the first PT_LOAD is at the image base
                uint flags = BinaryPrimitives.ReadUInt32LittleEndian(ph.Slice(4));
                ulong filesz = BinaryPrimitives.ReadUInt64LittleEndian(ph.Slice(0x20));
                if ((flags & PF_W) == 0 || filesz == 0)
                    continue;

                string? version = Search(reader, bias.Value + vaddr, filesz);
                if (version is not null)
                    return version;
            }

            return null;
        }

        private static ReadOnlySpan<byte> ElfMagic => "\u007fELF"u8;  // not "\x7fELF": \x would take the E as a hex digit

        private static string? Search(IMemoryReader reader, ulong start, ulong length)
        {
            // Chunks overlap by the longest string we read, so none is cut in two.
            const int overlap = 128;
            byte[] chunk = new byte[ChunkSize + overlap];
            for (ulong offset = 0; offset < length; offset += ChunkSize)
            {
                int wanted = (int)Math.Min((ulong)chunk.Length, length - offset);
                int read = reader.Read(start + offset, chunk.AsSpan(0, wanted));
                if (read <= 0)
                    continue;

                ReadOnlySpan<byte> data = chunk.AsSpan(0, read);
                int at = data.IndexOf(Marker);
                if (at < 0 || (at >= ChunkSize && offset + ChunkSize < length))
                    continue;  // none here, or it starts in the overlap: the next chunk has it whole

                ReadOnlySpan<byte> rest = data.Slice(at + Marker.Length);
                int stop = rest.IndexOfAny((byte)' ', (byte)0);
                if (stop < 0)
                    stop = rest.Length;
                return Encoding.ASCII.GetString(rest.Slice(0, stop));
            }

            return null;
        }
    }
}
