"""How the bridge's process shares the CPU with the target before the pause: measured, and left
at normal priority by default.

Before the pause the target runs and the bridge's work (loading .NET, the warm-up walk) competes
with it; inside the pause the target waits for the walk. Lowering the bridge until a walk of a
held target starts, then raising it again, was measured on a loaded 2-core VM (bench/) and was
worse on every count. At SCHED_IDLE with its autogroup at nice 19 (when the bridge had a session
of its own) the bridge starved behind other load (.NET took up to 60 s to start), and the walk in
the pause, set back to normal, still ran 5-15x slower. SCHED_BATCH (the same share, no wakeup
preemption of the target) lengthened every pause and removed no gaps. MINIDUMPER_BRIDGE_PRIORITY
keeps them for measuring: "normal" (default), "batch", "idle" (needs CAP_SYS_NICE to return;
otherwise batch). The bridge now shares the dumper's session and autogroup (process.py), so
"idle" sets the scheduling class alone: the autogroup's nice would slow the dumper too.

After the pause, the walk on the pause's copy competes with the target again. SCHED_BATCH there
(MINIDUMPER_BRIDGE_AFTER_PAUSE_PRIORITY=batch, for measuring) gave no fewer gaps and no shorter
pauses in 4 rounds on the small and ASP.NET apps (small heap 31 against 23 ms, 4 extra gaps
against 0): normal by default.
"""

from __future__ import annotations

import os

CAP_SYS_NICE = 23
VARIABLE = "MINIDUMPER_BRIDGE_PRIORITY"
# The walk on the pause's copy, after the target runs again: "normal" or "batch" (measuring).
AFTER_PAUSE_VARIABLE = "MINIDUMPER_BRIDGE_AFTER_PAUSE_PRIORITY"


def _has_cap_sys_nice() -> bool:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_NICE & 1)
    except OSError:
        pass
    return False


class Priority:
    """lower() before the pause, normal() when the target is held; cheap and idempotent."""

    def __init__(self) -> None:
        how = os.environ.get(VARIABLE, "normal")
        if how == "idle" and not _has_cap_sys_nice():
            how = "batch"   # leaving SCHED_IDLE needs CAP_SYS_NICE: never walk the pause at idle
        self._how = how if how in ("batch", "idle") and hasattr(os, "SCHED_BATCH") else "normal"
        self._after_pause = (os.environ.get(AFTER_PAUSE_VARIABLE) == "batch"
                             and hasattr(os, "SCHED_BATCH"))
        self.low = False
        self.batch = False

    def after_pause(self) -> None:
        """For the walk on the pause's copy: the target runs again and competes for the CPU."""
        self.normal()
        if self._after_pause and not self.batch:
            self._set(os.SCHED_BATCH)
            self.batch = True

    def lower(self) -> None:
        if self.low or self._how == "normal":
            return
        if self._how == "idle":
            self._set(os.SCHED_IDLE)
        else:
            self._set(os.SCHED_BATCH)
        self.low = True

    def normal(self) -> None:
        if self.batch:
            self._set(os.SCHED_OTHER)
            self.batch = False
        if not self.low:
            return
        self._set(os.SCHED_OTHER)
        self.low = False

    @staticmethod
    def _set(policy: int) -> None:
        # Every thread: .NET's own (JIT, finalizer, GC) inherit the main thread's class only
        # when they start after it changed.
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setscheduler(int(tid), policy, os.sched_param(0))
            except OSError:
                pass   # a thread that just ended
