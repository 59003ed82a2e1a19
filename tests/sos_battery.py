"""An SOS battery: the same dotnet-dump analyze commands on several dumps of one process, output
by output. Commands that need an address (an object, a method, an instruction pointer) take it
from a full dump first, so every dump is asked exactly the same thing."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
END = re.compile(r"<END_COMMAND_(OUTPUT|ERROR)>")
SESSION_TIMEOUT = 600

# The same on every dump of a quiescent process, whatever it holds.
FIXED_COMMANDS = (
    "clrthreads", "clrstack -all", "clrstack -a -all", "clrstack -f -all", "pstacks",
    "dumpheap -stat", "eeheap -gc", "eeheap -loader", "gchandles", "finalizequeue", "syncblk",
    "dumpasync", "threadpool", "timerinfo", "dumpdomain", "dso", "verifyheap", "dumpgen gen0",
    "dumpgen gen2", "dumpexceptions", "pe -nested",
)
# What a mini dump must answer as a full one does: the managed stacks and their methods.
STACK_COMMANDS = ("clrthreads", "clrstack -all", "clrstack -a -all", "clrstack -f -all", "pstacks")

HEX = r"[0-9a-fA-F]{8,16}"
MAX_ADDRESSES = 40     # of each sort: keeps a session of a busy app to seconds


def session(core: Path, commands: list[str], *, clr_path: str | None = None) -> dict[str, str]:
    """Each command's output, in one dotnet-dump analyze session fed on stdin (one start, many
    commands). The dump's own path, which is the reader's side, is the only thing normalized."""
    # No symbol server: nothing may come from the network, so every byte comes from the dump
    # (or, on the same machine, the files it names).
    script = ["setsymbolserver -disable"] + ([f"setclrpath {clr_path}"] if clr_path else [])
    script += list(commands) + ["exit"]
    result = subprocess.run(["dotnet", "dotnet-dump", "analyze", str(core)], input="\n".join(script) + "\n",
                            capture_output=True, text=True, timeout=SESSION_TIMEOUT, cwd=REPO)
    text = result.stdout.replace(str(core), "<dump>")
    # dumpil names the reader's own metadata importer, an address in dotnet-dump's process.
    text = re.sub(r"pImport is [0-9A-Fa-f]+", "pImport is <reader>", text)
    outputs: dict[str, str] = {}
    pieces = END.split(text)   # text, kind, text, kind, ...: each command's echo, output, end kind
    for block, kind in zip(pieces[2::2], pieces[3::2]):
        first, _, rest = block.lstrip("\n").partition("\n")
        if first.startswith("> "):
            outputs[first[2:].strip()] = rest + ("" if kind == "OUTPUT" else "<error>\n")
    missing = [c for c in script if c not in outputs and c != "exit"]
    assert not missing, f"dotnet-dump analyze stopped (exit {result.returncode}) before {missing[:3]}: {result.stderr[:1500]}"
    return outputs


@dataclass
class Battery:
    """The commands for one process, found by asking its first full dump."""

    commands: list[str] = field(default_factory=list)
    stack_commands: list[str] = field(default_factory=list)   # the stacks, and their methods

    def add(self, *commands: str) -> None:
        for command in commands:
            if command not in self.commands:
                self.commands.append(command)


def managed_ips(clrstack: str) -> list[str]:
    """Instruction pointers of managed frames (SOS prints them in capitals; explicit frames in
    lower case, with a bracketed name)."""
    ips = re.findall(rf"^\s*{HEX}\s+([0-9A-F]{{8,16}})\s+(?!\[)\S", clrstack, re.M)
    return list(dict.fromkeys(ips))


def exception_trace_ips(pe: str) -> list[str]:
    return list(dict.fromkeys(re.findall(rf"^\s*{HEX}\s+({HEX})\s+\S+!", pe, re.M)))


def discover(full_core: Path, *, types: tuple[str, ...], clr_path: str | None = None) -> Battery:
    """The battery for a process: fixed commands, and commands on the addresses its first full
    dump shows (threads' frames, exceptions and their traces, methods, modules, objects of
    ``types``)."""
    battery = Battery()
    battery.add(*FIXED_COMMANDS)
    first = [f"dumpheap -type {t}" for t in types] + [f"name2ee *!{t}" for t in types]
    out = session(full_core, ["clrstack -all", "dumpexceptions", "dumpdomain", *first], clr_path=clr_path)

    exceptions = re.findall(rf"^\s*({HEX})\s+{HEX}\s+System\.\S*Exception", out["dumpexceptions"], re.M)
    modules = re.findall(rf"^Module\s+({HEX})", out["dumpdomain"], re.M)
    objects, method_tables = [], []
    for t in types:
        objects += re.findall(rf"^\s*({HEX})\s+{HEX}\s+\d+\s*$", out[f"dumpheap -type {t}"], re.M)[:3]
        method_tables += re.findall(rf"^MethodTable:\s+({HEX})", out[f"name2ee *!{t}"], re.M)
    ips = managed_ips(out["clrstack -all"])
    stack_ips = set(ips)
    second = [f"pe {e}" for e in exceptions[:MAX_ADDRESSES]]
    second += [f"dumpmt -md {mt}" for mt in dict.fromkeys(method_tables)]
    out2 = session(full_core, second, clr_path=clr_path) if second else {}
    for e in exceptions[:MAX_ADDRESSES]:
        ips += exception_trace_ips(out2[f"pe {e}"])
    ips = list(dict.fromkeys(ips))[:MAX_ADDRESSES * 2]
    out3 = session(full_core, [f"ip2md {ip}" for ip in ips], clr_path=clr_path) if ips else {}
    method_descs, stack_method_descs = [], set()
    for ip in ips:
        found = re.findall(rf"^MethodDesc:\s+({HEX})", out3[f"ip2md {ip}"], re.M)
        method_descs += found
        if ip in stack_ips:
            stack_method_descs.update(found)
    for command, text in out2.items():
        if command.startswith("dumpmt"):
            method_descs += re.findall(rf"^{HEX}\s+({HEX})\s+\S+\s+\S", text, re.M)[:8]
    method_descs = list(dict.fromkeys(method_descs))[:MAX_ADDRESSES]

    battery.add(*first, *second)
    battery.add(*(f"dumpmodule {m}" for m in modules[:MAX_ADDRESSES]))
    battery.add(*(f"ip2md {ip}" for ip in ips))
    for md in method_descs:
        battery.add(f"dumpmd {md}", f"ehinfo {md}", f"gcinfo {md}", f"dumpil {md}")
    battery.stack_commands = list(STACK_COMMANDS) + [f"ip2md {ip}" for ip in ips if ip in stack_ips]
    battery.stack_commands += [f"{c} {md}" for md in method_descs if md in stack_method_descs
                               for c in ("dumpmd", "ehinfo", "gcinfo")]
    for obj in objects[:MAX_ADDRESSES]:
        battery.add(f"dumpobj {obj}", f"gcroot {obj}", f"objsize {obj}")
    return battery


@dataclass
class Comparison:
    same: list[str]
    differ: list[str]       # the dump under test differs where both full dumps agree
    volatile: list[str]     # the two full dumps differ: the process itself changed


def compare(outputs: dict[str, str], full: dict[str, str], control: dict[str, str],
            commands: list[str]) -> Comparison:
    result = Comparison([], [], [])
    for command in commands:
        if full[command] != control[command]:
            result.volatile.append(command)
        elif outputs[command] == full[command]:
            result.same.append(command)
        else:
            result.differ.append(command)
    return result


def first_difference(a: str, b: str) -> str:
    """A short account of where two outputs part, for an assertion message."""
    for number, (x, y) in enumerate(zip(a.splitlines(), b.splitlines()), 1):
        if x != y:
            return f"line {number}:\n  full: {x!r}\n  this: {y!r}"
    return f"lengths {len(a)} and {len(b)}"
