using System;
using System.Runtime.InteropServices;
using Microsoft.Diagnostics.Runtime;

namespace ClrmdBridge
{
    /// <summary>
    /// x86-64 Linux <c>struct user_regs_struct</c> (sys/user.h), as PTRACE_GETREGSET NT_PRSTATUS
    /// returns it. The field order is the kernel's: note r9 before r8, and rsp before ss.
    /// (ClrMD 3.1's own RegSetX64 swaps both pairs.)
    /// </summary>
    [StructLayout(LayoutKind.Sequential, Pack = 8)]
    public readonly struct UserRegsStruct
    {
        public const int Size = 27 * sizeof(ulong);

        public readonly ulong r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8;
        public readonly ulong rax, rcx, rdx, rsi, rdi, orig_rax;
        public readonly ulong rip, cs, eflags, rsp, ss;
        public readonly ulong fs_base, gs_base, ds, es, fs, gs;

        public static UserRegsStruct FromBytes(ReadOnlySpan<byte> bytes)
        {
            if (bytes.Length != Size)
                throw new ArgumentException($"user_regs_struct is {Size} bytes, not {bytes.Length}");
            return MemoryMarshal.Read<UserRegsStruct>(bytes);
        }

        /// <summary>
        /// Fills a Windows-layout AMD64 CONTEXT with the register groups that
        /// <paramref name="contextFlags"/> asks for (0 means control, integer and segments).
        /// There are no floating-point registers here, so that group is never reported as filled.
        /// </summary>
        public bool CopyTo(uint contextFlags, Span<byte> context)
        {
            if (context.Length < AMD64Context.Size)
                return false;

            const uint groups = AMD64Context.ContextControl | AMD64Context.ContextInteger | AMD64Context.ContextSegments;
            uint wanted = contextFlags == 0 ? groups : contextFlags;

            context.Slice(0, AMD64Context.Size).Clear();
            ref AMD64Context ctx = ref MemoryMarshal.AsRef<AMD64Context>(context);
            ctx.ContextFlags = AMD64Context.Context | (wanted & groups);

            if (Has(wanted, AMD64Context.ContextControl))
            {
                ctx.Rip = rip;
                ctx.Rsp = rsp;
                ctx.Rbp = rbp;  // the PAL counts rbp as control, Windows as integer: fill it for both
                ctx.Cs = (ushort)cs;
                ctx.Ss = (ushort)ss;
                ctx.EFlags = (int)eflags;
            }

            if (Has(wanted, AMD64Context.ContextInteger))
            {
                ctx.Rax = rax;
                ctx.Rcx = rcx;
                ctx.Rdx = rdx;
                ctx.Rbx = rbx;
                ctx.Rbp = rbp;
                ctx.Rsi = rsi;
                ctx.Rdi = rdi;
                ctx.R8 = r8;
                ctx.R9 = r9;
                ctx.R10 = r10;
                ctx.R11 = r11;
                ctx.R12 = r12;
                ctx.R13 = r13;
                ctx.R14 = r14;
                ctx.R15 = r15;
            }

            if (Has(wanted, AMD64Context.ContextSegments))
            {
                ctx.Ds = (ushort)ds;
                ctx.Es = (ushort)es;
                ctx.Fs = (ushort)fs;
                ctx.Gs = (ushort)gs;
            }

            return true;
        }

        /// <summary>The CONTEXT as a byte array: <see cref="CopyTo"/> for callers that cannot pass a Span (pythonnet).</summary>
        public byte[] ToContext(uint contextFlags)
        {
            byte[] context = new byte[AMD64Context.Size];
            CopyTo(contextFlags, context);
            return context;
        }

        /// <summary>Reads one record from a byte array: <see cref="FromBytes(ReadOnlySpan{byte})"/> for pythonnet.</summary>
        public static UserRegsStruct FromArray(byte[] bytes) => FromBytes(bytes);

        // The group constants carry the architecture bit (0x100000) too, so test the low bits only.
        private static bool Has(uint flags, uint group) => (flags & group & ~AMD64Context.Context) != 0;
    }
}
