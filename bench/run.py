"""Side-by-side benchmark: minidumper against createdump, on the same live .NET processes.

Each target (bench/targets.py) is started once and measures its own pauses: a thread stamps the
clock in a tight loop and reports every gap. Every round dumps it with both tools, alternating
which goes first, in every mode (minidumper --full/--heap/--mini, createdump --full/--withheap/
--normal), and records the pause the target saw, wall time, CPU, peak RSS and size. Medians,
ratios and the goals of issue 12 are printed, and written as JSON and Markdown on request.

    .venv/bin/python bench/run.py [--targets small,threads,managed,aspnet] [--rounds 5]
        [--modes full,heap,mini] [--variant NAME:VAR=VALUE,...] [--json OUT] [--markdown OUT]

A variant is minidumper run with settings in its environment (for example
nocache:MINIDUMPER_NO_PAGE_CACHE=1), measured in the same rounds and modes. The target comes first: it is
never left stopped (checked after every dump) and always killed at the end, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import createdump as cd
import report
from common import MIB, REPO_ROOT, BenchInterrupted, copy_rate, log, raise_interrupted, rss_mib
from measure import COUNTERPART, CREATEDUMP, MINIDUMPER, DumpRecord, DumpRunner, Tool
from targets import TARGETS, Target


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="small,threads,aspnet,managed",
                        help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default="full,heap,mini",
                        help="minidumper modes (createdump runs the counterparts)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=V,...",
                        help="also run minidumper with these environment settings (heap, mini)")
    parser.add_argument("--no-createdump", action="store_true")
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--markdown", metavar="OUT")
    parser.add_argument("--minidumper", type=Path, default=REPO_ROOT / ".venv" / "bin" / "minidumper")
    parser.add_argument("--createdump-via", choices=("auto", "exec", "ipc"), default="auto")
    parser.add_argument("--proc-sampler", action="store_true",
                        help="also sample thread states from /proc (costs CPU)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per dump, seconds")
    arguments = parser.parse_args(argv)
    arguments.targets = arguments.targets.split(",")
    arguments.modes = arguments.modes.split(",")
    for name in arguments.targets:
        if name not in TARGETS:
            parser.error(f"unknown target {name}")
    for mode in arguments.modes:
        if mode not in COUNTERPART:
            parser.error(f"unknown mode {mode}")
    if arguments.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not os.access(arguments.minidumper, os.X_OK):
        parser.error(f"{arguments.minidumper} is not executable; run ./setup.sh first")
    return arguments


def tools_of(arguments: argparse.Namespace) -> list[Tool]:
    tools = [Tool(MINIDUMPER, MINIDUMPER)]
    for text in arguments.variant:
        name, _, settings = text.partition(":")
        env = dict(item.split("=", 1) for item in settings.split(",") if item)
        tools.append(Tool(f"minidumper[{name}]", MINIDUMPER, env))
    if not arguments.no_createdump:
        tools.append(Tool(CREATEDUMP, CREATEDUMP))
    return tools


def modes_of(tool: Tool, modes: list[str]) -> list[str]:
    if tool.kind == CREATEDUMP:
        return [COUNTERPART[m] for m in modes]
    return modes


def bench_target(target: Target, arguments: argparse.Namespace, tools: list[Tool],
                 workdir: Path, records: list[DumpRecord], copy_rates: dict[str, float]) -> str:
    pid = target.start()
    createdump = cd.find_createdump(pid)
    copy_rates[target.spec.name] = copy_rate(pid)
    log(f"{target.spec.name}: pid {pid}, RSS {rss_mib(pid):.0f} MiB, {len(os.listdir(f'/proc/{pid}/task'))} "
        f"threads, process_vm_readv {copy_rates[target.spec.name] / 1e9:.1f} GB/s")
    runner = DumpRunner(target, workdir, arguments.minidumper, createdump, arguments.createdump_via,
                        arguments.timeout, arguments.proc_sampler)
    for round_number in range(1, arguments.rounds + 1):
        # Alternate: each tool goes first in turn, and each mode runs next to its counterpart.
        order = tools[round_number % len(tools):] + tools[:round_number % len(tools)]
        for index, mode in enumerate(arguments.modes):
            for tool in order if index % 2 == 0 else order[::-1]:
                tool_mode = COUNTERPART[mode] if tool.kind == CREATEDUMP else mode
                if tool_mode not in modes_of(tool, arguments.modes):
                    continue
                if not target.alive():
                    raise RuntimeError(f"{target.spec.name} exited")
                record = runner.run(tool, tool_mode, round_number)
                records.append(record)
                if record.ok:
                    log(f"  {round_number} {tool.name:<20} {tool_mode:<8} {record.size_bytes / MIB:8.1f} "
                        f"MiB pause {record.pause_seconds * 1000:7.1f} ms wall {record.wall_seconds:6.2f} s "
                        f"cpu {record.cpu_seconds:5.2f} s gaps {record.extra_gaps}")
                else:
                    log(f"  {round_number} {tool.name:<20} {tool_mode:<8} FAILED: {record.error}")
                os.sync()   # outside the timing: the next dump starts with no writeback due
    return str(createdump)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    signal.signal(signal.SIGTERM, raise_interrupted)
    signal.signal(signal.SIGHUP, raise_interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="minidumper-bench-", dir="/tmp"))
    tools = tools_of(arguments)
    records: list[DumpRecord] = []
    copy_rates: dict[str, float] = {}
    createdump = None
    interrupted = False
    try:
        for name in arguments.targets:
            target = Target(TARGETS[name])
            try:
                createdump = bench_target(target, arguments, tools, workdir, records, copy_rates)
            finally:
                target.close()
    except (KeyboardInterrupt, BenchInterrupted):
        interrupted = True
        log("interrupted; the target was resumed and killed, the dumps removed")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not records:
        return 130 if interrupted else 1
    summary = report.summarize(records)
    ratio_values = report.ratios(summary)
    goal_list = report.goals(summary, copy_rates)
    print(report.text(summary, ratio_values, goal_list, arguments.rounds))
    if arguments.markdown:
        Path(arguments.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(arguments.markdown).write_text(report.markdown(summary, ratio_values, goal_list))
    if arguments.json:
        Path(arguments.json).parent.mkdir(parents=True, exist_ok=True)
        Path(arguments.json).write_text(json.dumps({
            "arguments": {k: str(v) for k, v in vars(arguments).items()},
            "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                        "load": os.getloadavg()},
            "createdump": createdump, "copy_rates": copy_rates,
            "summary": [{"target": k[0], "tool": k[1], "mode": k[2], **v} for k, v in summary.items()],
            "goals": [dataclasses.asdict(g) | {"verdict": g.verdict} for g in goal_list],
            "records": [dataclasses.asdict(r) for r in records],
        }, indent=1) + "\n")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
