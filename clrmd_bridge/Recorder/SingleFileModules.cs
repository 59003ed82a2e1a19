using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.IO;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Diagnostics.Runtime;

namespace ClrmdBridge
{
    /// <summary>
    /// ClrMD's live Linux reader takes a module's base to be the lowest mapping of its file. The host
    /// of a single-file app maps parts of its own file (the bundled assemblies) below its ELF image, so
    /// ClrMD reads no ELF header there, finds no <c>DotNetRuntimeInfo</c> export, and no CLR. Here such
    /// a module gets its real base (the mapping of file offset 0), and the export is looked up in the
    /// ELF dynamic symbol table in memory (ClrMD's own ELF reader is internal).
    /// </summary>
    public static class SingleFileModules
    {
        public const string RuntimeInfoExport = "DotNetRuntimeInfo";

        public static IEnumerable<ModuleInfo> Correct(IDataReader reader, IEnumerable<ModuleInfo> modules)
        {
            Dictionary<string, ulong>? imageStarts = null;
            foreach (ModuleInfo module in modules)
            {
                if (reader.TargetPlatform != OSPlatform.Linux || IsElf(reader, module.ImageBase))
                {
                    yield return module;
                    continue;
                }

                imageStarts ??= ImageStarts(reader.ProcessId);
                if (imageStarts.TryGetValue(module.FileName, out ulong start) && start != module.ImageBase
                    && ElfExports.Find(reader, start, RuntimeInfoExport) is ulong info && info != 0)
                    yield return new SingleFileRuntimeModule(start, module.FileName, info);
                else
                    yield return module;
            }
        }

        private static bool IsElf(IDataReader reader, ulong address)
        {
            Span<byte> magic = stackalloc byte[4];
            return reader.Read(address, magic) == 4 && magic.SequenceEqual("\u007fELF"u8);
        }

        /// <summary>The start of each file's mapping of offset 0, from /proc/PID/maps.</summary>
        private static Dictionary<string, ulong> ImageStarts(int pid)
        {
            Dictionary<string, ulong> starts = new();
            try
            {
                foreach (string line in File.ReadLines($"/proc/{pid}/maps"))
                {
                    string[] fields = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
                    if (fields.Length < 6 || Convert.ToUInt64(fields[2], 16) != 0)
                        continue;
                    ulong start = Convert.ToUInt64(fields[0].Split('-')[0], 16);
                    string path = fields[5];
                    if (!starts.TryGetValue(path, out ulong known) || start < known)
                        starts[path] = start;
                }
            }
            catch (IOException)
            {
            }

            return starts;
        }
    }

    /// <summary>A single-file app's executable, at its true base, answering the runtime's export.</summary>
    public sealed class SingleFileRuntimeModule : ModuleInfo
    {
        private readonly ulong _runtimeInfo;

        public SingleFileRuntimeModule(ulong imageBase, string fileName, ulong runtimeInfo)
            : base(imageBase, fileName)
        {
            _runtimeInfo = runtimeInfo;
        }

        public override ModuleKind Kind => ModuleKind.Elf;

        public override ulong GetExportSymbolAddress(string symbol) =>
            symbol == SingleFileModules.RuntimeInfoExport ? _runtimeInfo : 0;
    }

    /// <summary>An exported symbol of a loaded ELF64 module, through its GNU hash table in memory.</summary>
    public static class ElfExports
    {
        private const uint PT_LOAD = 1, PT_DYNAMIC = 2;
        private const long DT_NULL = 0, DT_STRTAB = 5, DT_SYMTAB = 6, DT_GNU_HASH = 0x6ffffef5;
        private const int MaxChain = 1 << 16;

        public static ulong? Find(IDataReader reader, ulong imageBase, string name)
        {
            byte[] header = Read(reader, imageBase, 64);
            if (header.Length < 64 || header[4] != 2)
                return null;
            ulong phoff = BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(0x20));
            int phentsize = BinaryPrimitives.ReadUInt16LittleEndian(header.AsSpan(0x36));
            int phnum = BinaryPrimitives.ReadUInt16LittleEndian(header.AsSpan(0x38));
            if (phentsize < 56 || phnum == 0)
                return null;
            byte[] table = Read(reader, imageBase + phoff, phentsize * phnum);

            ulong lowest = ulong.MaxValue, dynamic = 0, dynamicSize = 0;
            for (int i = 0; i + phentsize <= table.Length; i += phentsize)
            {
                ReadOnlySpan<byte> ph = table.AsSpan(i, phentsize);
                uint type = BinaryPrimitives.ReadUInt32LittleEndian(ph);
                ulong vaddr = BinaryPrimitives.ReadUInt64LittleEndian(ph.Slice(0x10));
                if (type == PT_LOAD)
                    lowest = Math.Min(lowest, vaddr & ~0xfffUL);
                else if (type == PT_DYNAMIC)
                    (dynamic, dynamicSize) = (vaddr, BinaryPrimitives.ReadUInt64LittleEndian(ph.Slice(0x28)));
            }
            if (lowest == ulong.MaxValue || dynamicSize == 0)
                return null;
            ulong bias = imageBase - lowest;

            ulong symtab = 0, strtab = 0, gnuHash = 0;
            byte[] entries = Read(reader, bias + dynamic, (int)Math.Min(dynamicSize, 8192));
            for (int i = 0; i + 16 <= entries.Length; i += 16)
            {
                long tag = BinaryPrimitives.ReadInt64LittleEndian(entries.AsSpan(i));
                ulong value = BinaryPrimitives.ReadUInt64LittleEndian(entries.AsSpan(i + 8));
                if (tag == DT_NULL)
                    break;
                if (tag == DT_SYMTAB) symtab = value;
                else if (tag == DT_STRTAB) strtab = value;
                else if (tag == DT_GNU_HASH) gnuHash = value;
            }
            if (symtab == 0 || strtab == 0 || gnuHash == 0)
                return null;
            // glibc's loader makes the dynamic section's pointers absolute in place; else they are link-time.
            ulong Absolute(ulong address) => address >= bias ? address : bias + address;
            (symtab, strtab, gnuHash) = (Absolute(symtab), Absolute(strtab), Absolute(gnuHash));

            byte[] head = Read(reader, gnuHash, 16);
            if (head.Length < 16)
                return null;
            uint buckets = BinaryPrimitives.ReadUInt32LittleEndian(head);
            uint symOffset = BinaryPrimitives.ReadUInt32LittleEndian(head.AsSpan(4));
            uint bloomSize = BinaryPrimitives.ReadUInt32LittleEndian(head.AsSpan(8));
            if (buckets == 0)
                return null;
            byte[] wanted = Encoding.ASCII.GetBytes(name + "\0");
            uint hash = 5381;
            foreach (byte b in wanted.AsSpan(0, wanted.Length - 1))
                hash = hash * 33 + b;

            ulong bucketTable = gnuHash + 16 + bloomSize * 8UL;
            ulong chains = bucketTable + buckets * 4UL;
            byte[] bucket = Read(reader, bucketTable + (hash % buckets) * 4, 4);
            if (bucket.Length < 4)
                return null;
            uint index = BinaryPrimitives.ReadUInt32LittleEndian(bucket);
            if (index < symOffset)
                return null;
            for (int step = 0; step < MaxChain; step++, index++)
            {
                byte[] chain = Read(reader, chains + (index - symOffset) * 4UL, 4);
                if (chain.Length < 4)
                    return null;
                uint chainHash = BinaryPrimitives.ReadUInt32LittleEndian(chain);
                if ((chainHash | 1) == (hash | 1))
                {
                    byte[] symbol = Read(reader, symtab + index * 24UL, 24);
                    if (symbol.Length == 24 && BinaryPrimitives.ReadUInt16LittleEndian(symbol.AsSpan(6)) != 0)
                    {
                        uint nameOffset = BinaryPrimitives.ReadUInt32LittleEndian(symbol);
                        if (Read(reader, strtab + nameOffset, wanted.Length).AsSpan().SequenceEqual(wanted))
                            return bias + BinaryPrimitives.ReadUInt64LittleEndian(symbol.AsSpan(8));
                    }
                }
                if ((chainHash & 1) != 0)
                    return null;
            }

            return null;
        }

        private static byte[] Read(IDataReader reader, ulong address, int size)
        {
            byte[] buffer = new byte[size];
            int read = reader.Read(address, buffer);
            return read == size ? buffer : buffer.AsSpan(0, Math.Max(read, 0)).ToArray();
        }
    }
}
