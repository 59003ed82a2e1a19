"""The CLR walk, as the dump sees it: the bridge's process, its failures turned into ours.

Before the pause the walk is a warm-up, and an estimate (where the CLR's heaps are, to size the
output): losing it, even to a crash of the DAC, loses nothing else. Inside the pause a failure is the
dump's failure, reported with its own exit code once the target is resumed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from minidumper.engines.linux import procfs
from minidumper.errors import (
    ClrReadFailedError, NotDotnetError, RuntimeBridgeError, TargetExitedError)

log = logging.getLogger(__name__)

WALK_TIMEOUT_SECONDS = 30.0      # a DAC that loops must not hold the target paused for longer
# The warm-up walks a target that changes under it: a loop there costs the dump only this long
# (then the walk in the pause runs cold).
WARM_UP_TIMEOUT_SECONDS = 10.0
WARM_UP_TRIES = 2
# The walk on a pause's copy is the warm-up's walk again, on memory that no longer changes; the
# DAC can loop on what the copy lacked (read from the running target): it gets this many times
# the warm-up's time, and at least the minimum, before the CLR is walked in the pause instead.
COPY_WALK_TIMEOUT_FACTOR = 5.0
COPY_WALK_MIN_TIMEOUT_SECONDS = 3.0

CLR_RANGE = tuple[int, int, str]


class ClrWalk:
    """The bridge's process for one dump, started as early as possible; ended by close()."""

    def __init__(self, pid: int, dac_path: str | None = None) -> None:
        import clrmd_bridge

        self._bridge = clrmd_bridge
        self.pid = pid
        self.dac_path = dac_path
        self.runtime_version = ""
        self.warnings: list[str] = []
        self._depth = ""
        self._deadline = 0.0
        self._warm_up_seconds = WALK_TIMEOUT_SECONDS
        self._process = clrmd_bridge.ClrWalkerProcess()
        try:
            self._process.start()
        except clrmd_bridge.BridgeLoadError as error:
            raise RuntimeBridgeError(f"cannot start the CLR bridge: {error}") from error

    def __enter__(self) -> ClrWalk:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._process.close()

    def wait_ready(self) -> None:
        """Until the bridge's process has loaded .NET. A failure that is not fatal is left to
        the warm-up, which meets it again."""
        bridge = self._bridge
        with self._fatal_failures_explained():
            try:
                self._process.wait_ready()
            except (bridge.BridgeLoadError, bridge.NoClrRuntimeError):
                raise
            except bridge.ClrBridgeError as error:
                log.debug("the bridge's process did not start: %s", error)

    def warm_up(self, depth: str) -> list[CLR_RANGE]:
        """The walk of the pause, done once on the running target before the pause: the pause
        then pays no first-call cost (JIT, ClrMD's and the DAC's start-up). Its ranges are an
        estimate of the CLR's heaps (to size the output). A target with no CLR fails here,
        unpaused, and so does a bridge that cannot start; any other failure loses only the
        warm-up (a crashed or hung worker is replaced, and loads .NET now, not in the pause)."""
        bridge = self._bridge
        # A measuring knob (bench/): "layout" reads only the CLR's heaps, as before the warm-up.
        depth = os.environ.get("MINIDUMPER_WARM_UP_DEPTH", depth)
        # The DAC can crash on a target that changes under it: a second try, on a new worker,
        # costs less than a walk in the pause on a cold one.
        for tries_left in reversed(range(WARM_UP_TRIES)):
            started = time.monotonic()
            try:
                with self._fatal_failures_explained():
                    ranges = self._read({}, depth, WARM_UP_TIMEOUT_SECONDS)
                self._warm_up_seconds = time.monotonic() - started
                return ranges
            except bridge.BridgeCrashedError as error:
                self._raise_if_gone()
                log.debug("no warm-up of the CLR walk (%s); starting the bridge again%s", error,
                          " and walking again" if tries_left else "")
                self._replace_process(error)
            except bridge.ClrBridgeError as error:
                self._raise_if_gone()
                log.debug("no warm-up of the CLR walk: %s", error)
                break
        return []

    def walk_copy(self, thread_registers: dict[int, bytes], depth: str, copy) -> list[CLR_RANGE] | None:
        """walk() of a copy of the target's memory taken in a pause that has ended; None where
        the bridge failed on it (the DAC crashed or hung on the copy, whose missing pages it read
        from the running target): the worker is then replaced and warmed up again, for a walk
        in the next pause."""
        bridge = self._bridge
        timeout = min(WALK_TIMEOUT_SECONDS, max(COPY_WALK_MIN_TIMEOUT_SECONDS,
                                                COPY_WALK_TIMEOUT_FACTOR * self._warm_up_seconds))
        try:
            self.start_walk(thread_registers, depth, copy, timeout)
            return self.finish_walk()
        except ClrReadFailedError as error:
            cause = error.__cause__
            log.debug("the walk on the copy failed (%s): the CLR is walked in the pause", cause)
            if isinstance(cause, bridge.BridgeCrashedError):
                self._replace_process(cause)
            self.warm_up(depth)
            return None

    def _replace_process(self, cause: Exception) -> None:
        bridge = self._bridge
        self._process.close()
        self._process = bridge.ClrWalkerProcess()
        try:
            self._process.wait_ready()
        except bridge.BridgeLoadError as load_error:
            raise RuntimeBridgeError(f"cannot start the CLR bridge: {load_error}") from cause

    def walk(self, thread_registers: dict[int, bytes], depth: str, copy=None) -> list[CLR_RANGE]:
        """The CLR's ranges for a mode's depth, read while the target is held, or from copy (a
        clrmd_bridge.MemoryCopy of its memory taken in the pause with these registers)."""
        self.start_walk(thread_registers, depth, copy)
        return self.finish_walk()

    def start_walk(self, thread_registers: dict[int, bytes], depth: str, copy=None,
                   timeout: float | None = None) -> None:
        """walk() in two halves: the bridge's process walks while this one does other work."""
        self._depth = depth
        self._deadline = time.monotonic() + (WALK_TIMEOUT_SECONDS if timeout is None else timeout)
        with self._failures_explained():
            self._process.ask(self.pid, thread_registers, depth, dac_path=self.dac_path, copy=copy)

    def finish_walk(self) -> list[CLR_RANGE]:
        with self._failures_explained():
            readout = self._process.answer(max(0.0, self._deadline - time.monotonic()))
        return self._ranges_of(readout, self._depth)

    @contextlib.contextmanager
    def _fatal_failures_explained(self):
        """The failures no other try mends: no CLR in the target, a bridge that cannot start."""
        bridge = self._bridge
        try:
            yield
        except bridge.NoClrRuntimeError as error:
            self._raise_if_gone()
            raise NotDotnetError(f"{error}; --full still dumps any process") from error
        except bridge.BridgeLoadError as error:
            raise RuntimeBridgeError(f"cannot start the CLR bridge: {error}") from error

    @contextlib.contextmanager
    def _failures_explained(self):
        bridge = self._bridge
        try:
            with self._fatal_failures_explained():
                yield
        except bridge.ClrBridgeError as error:
            self._raise_if_gone()
            raise ClrReadFailedError(
                f"reading the target's CLR with the runtime's DAC failed: {error}. The target "
                "was resumed; --full does not need the DAC") from error

    def _read(self, thread_registers: dict[int, bytes], depth: str,
              timeout: float) -> list[CLR_RANGE]:
        readout = self._process.read_clr(self.pid, thread_registers, depth,
                                         dac_path=self.dac_path, timeout=timeout)
        return self._ranges_of(readout, depth)

    def _ranges_of(self, readout, depth: str) -> list[CLR_RANGE]:
        self.runtime_version = readout.runtime_version or self.runtime_version
        if depth != "layout":
            self.warnings = list(readout.warnings)
        return [(m.start, m.end, m.kind) for m in readout.memory]

    def _raise_if_gone(self) -> None:
        """A walk fails when its target dies under it: that is the target's exit, not ours."""
        if not procfs.alive(self.pid):
            raise TargetExitedError(f"process {self.pid} exited mid-dump")

