"""The CLR walk, as the dump sees it: the bridge's processes, their failures turned into ours.

Before the pause the walk is a warm-up, and an estimate (where the CLR's heaps are, to size the
output): losing it, even to a crash of the DAC, loses nothing else. Inside the pause a failure is the
dump's failure, reported with its own exit code once the target is resumed.

Where the machine has a second CPU for it, two processes share the walk (the threads dealt out
between them; one lists the CLR's memory, the other its roots, handles and the DAC's own
regions): a DAC serializes all its calls, so one process cannot walk faster, and the pause is
mostly this walk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from minidumper.engines.linux import procfs
from minidumper.errors import (
    ClrReadFailedError, NotDotnetError, RuntimeBridgeError, TargetExitedError, UsageError)

log = logging.getLogger(__name__)

WALK_TIMEOUT_SECONDS = 30.0      # a DAC that loops must not hold the target paused for longer
# The warm-up walks a target that changes under it: a loop there costs the dump only this long
# (then the walk in the pause runs cold).
WARM_UP_TIMEOUT_SECONDS = 10.0
MAX_WALKERS = 2
WALKERS_VARIABLE = "MINIDUMPER_CLR_WALKERS"   # 1 or 2; unset: 2 where two CPUs are ours

CLR_RANGE = tuple[int, int, str]


def walker_count() -> int:
    wanted = os.environ.get(WALKERS_VARIABLE, "")
    if wanted:
        if not wanted.isdigit() or not 1 <= int(wanted) <= MAX_WALKERS:
            raise UsageError(f"{WALKERS_VARIABLE} must be 1 or {MAX_WALKERS}, not {wanted!r}")
        return int(wanted)
    return min(MAX_WALKERS, len(os.sched_getaffinity(0)))


class ClrWalk:
    """The bridge's processes for one dump, started as early as possible; ended by close()."""

    def __init__(self, pid: int, dac_path: str | None = None, walkers: int | None = None) -> None:
        import clrmd_bridge

        self._bridge = clrmd_bridge
        self.pid = pid
        self.dac_path = dac_path
        self.runtime_version = ""
        self.warnings: list[str] = []
        self._processes: list = []
        self._depth = ""
        self._deadline = 0.0
        try:
            for _ in range(walkers or walker_count()):
                self._processes.append(clrmd_bridge.ClrWalkerProcess())
                self._processes[-1].start()
        except clrmd_bridge.BridgeLoadError as error:
            self.close()
            raise RuntimeBridgeError(f"cannot start the CLR bridge: {error}") from error

    def __enter__(self) -> ClrWalk:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for process in self._processes:
            process.close()

    def warm_up(self, depth: str) -> list[CLR_RANGE]:
        """The walk of the pause, done once on the running target before the pause: the pause
        then pays no first-call cost (JIT, ClrMD's and the DAC's start-up). Its ranges are an
        estimate of the CLR's heaps (to size the output). A target with no CLR fails here,
        unpaused, and so does a bridge that cannot start; any other failure loses only the
        warm-up (a crashed or hung worker is replaced, and loads .NET now, not in the pause)."""
        bridge = self._bridge
        # A measuring knob (bench/): "layout" reads only the CLR's heaps, as before the warm-up.
        depth = os.environ.get("MINIDUMPER_WARM_UP_DEPTH", depth)
        deadline = time.monotonic() + WARM_UP_TIMEOUT_SECONDS
        asked = []
        for index, process in enumerate(self._processes):
            try:
                process.ask(self.pid, {}, depth, dac_path=self.dac_path, shard=self._shard(index))
                asked.append(index)
            except bridge.BridgeLoadError as error:
                raise RuntimeBridgeError(f"cannot start the CLR bridge: {error}") from error
            except bridge.BridgeCrashedError as error:
                self._replace(index, error)
        ranges: list[CLR_RANGE] = []
        for index in asked:
            try:
                readout = self._processes[index].answer(max(0.0, deadline - time.monotonic()))
            except bridge.NoClrRuntimeError as error:
                self._raise_if_gone()
                raise NotDotnetError(f"{error}; --full still dumps any process") from error
            except bridge.BridgeCrashedError as error:
                self._raise_if_gone()
                self._replace(index, error)
            except bridge.ClrBridgeError as error:
                self._raise_if_gone()
                log.debug("no warm-up of the CLR walk: %s", error)
            else:
                ranges += self._take([readout], depth)
        return ranges

    def walk(self, thread_registers: dict[int, bytes], depth: str) -> list[CLR_RANGE]:
        """The CLR's ranges for a mode's depth, read while the target is held."""
        self.start_walk(thread_registers, depth)
        return self.finish_walk()

    def start_walk(self, thread_registers: dict[int, bytes], depth: str) -> None:
        """walk() in two halves: the bridge's processes walk while this one does other work."""
        self._depth = depth
        self._deadline = time.monotonic() + WALK_TIMEOUT_SECONDS
        with self._failures_explained():
            for index, process in enumerate(self._processes):
                process.ask(self.pid, thread_registers, depth, dac_path=self.dac_path,
                            shard=self._shard(index))

    def finish_walk(self) -> list[CLR_RANGE]:
        with self._failures_explained():
            readouts = [process.answer(max(0.0, self._deadline - time.monotonic()))
                        for process in self._processes]
        return self._take(readouts, self._depth)

    def _shard(self, index: int) -> tuple[int, int]:
        return index, len(self._processes)

    def _replace(self, index: int, error: Exception) -> None:
        log.debug("no warm-up of the CLR walk (%s); starting the bridge again", error)
        self._processes[index].close()
        self._processes[index] = self._bridge.ClrWalkerProcess()
        try:
            self._processes[index].wait_ready()
        except self._bridge.BridgeLoadError as load_error:
            raise RuntimeBridgeError(f"cannot start the CLR bridge: {load_error}") from error

    @contextlib.contextmanager
    def _failures_explained(self):
        bridge = self._bridge
        try:
            yield
        except bridge.NoClrRuntimeError as error:
            self._raise_if_gone()
            raise NotDotnetError(f"{error}; --full still dumps any process") from error
        except bridge.BridgeLoadError as error:
            raise RuntimeBridgeError(f"cannot start the CLR bridge: {error}") from error
        except bridge.ClrBridgeError as error:
            self._raise_if_gone()
            raise ClrReadFailedError(
                f"reading the target's CLR with the runtime's DAC failed: {error}. The target "
                "was resumed; --full does not need the DAC") from error

    def _take(self, readouts: list, depth: str) -> list[CLR_RANGE]:
        """The ranges of the shares of one walk, and what they say of the runtime."""
        for readout in readouts:
            self.runtime_version = readout.runtime_version or self.runtime_version
        if depth != "layout":
            self.warnings = list(dict.fromkeys(w for r in readouts for w in r.warnings))
        return [(m.start, m.end, m.kind) for r in readouts for m in r.memory]

    def _raise_if_gone(self) -> None:
        """A walk fails when its target dies under it: that is the target's exit, not ours."""
        if not procfs.alive(self.pid):
            raise TargetExitedError(f"process {self.pid} exited mid-dump")
