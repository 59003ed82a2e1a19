"""Does allocating memory stall a target that shares nothing with the allocator?

A separate process (no dumper, no ptrace, no file) populates a memfd of --size-mib and frees it,
at normal priority and at SCHED_IDLE, while a target stamps its clock. Reported per round: the
target's gaps of 5 ms or more in that time and the host's steal time on this VM's CPUs. Gaps that
SCHED_IDLE does not remove, matched by steal time, are the hypervisor's: the guest's first touch
of memory the host took back. A dump that populates its output ahead meets the same gaps.

    .venv/bin/python bench/host_stalls.py [--target small] [--size-mib 4096] [--rounds 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import steal_seconds
from targets import TARGETS, Target

ALLOCATE = r"""
import mmap, os, sys
if sys.argv[1] == "idle":
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
size = int(sys.argv[2]) << 20
fd = os.memfd_create("host-stalls")
os.ftruncate(fd, size)
memory = mmap.mmap(fd, size)
memory.madvise(23, 0, size)      # MADV_POPULATE_WRITE
memory.close()
os.close(fd)
"""


def one_round(target: Target, policy: str, size_mib: int) -> str:
    target.mark()
    steal = steal_seconds()
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", ALLOCATE, policy, str(size_mib)], check=True)
    ended = time.monotonic()
    steal = steal_seconds() - steal
    gaps = [g for g in target.gaps() if g.end > started and g.start < ended and g.seconds >= 0.005]
    lengths = ", ".join(f"{g.seconds * 1000:.0f}" for g in gaps)
    return (f"{policy:<6} {ended - started:6.2f} s  gaps >= 5 ms: {len(gaps):3d} "
            f"({sum(g.seconds for g in gaps) * 1000:.0f} ms: {lengths or '-'})  "
            f"host steal {steal * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="small", choices=sorted(TARGETS))
    parser.add_argument("--size-mib", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    target = Target(TARGETS[args.target])
    try:
        target.start()
        time.sleep(2)
        target.mark()
        time.sleep(3)
        idle = [g for g in target.gaps() if g.seconds >= 0.005]
        print(f"nothing running, 3 s: {len(idle)} gaps >= 5 ms")
        for _ in range(args.rounds):
            for policy in ("normal", "idle"):
                print(one_round(target, policy, args.size_mib), flush=True)
    finally:
        target.close()


if __name__ == "__main__":
    main()
