"""Limits of this process that the CLR bridge needs room in.

.NET, ClrMD and the DAC open about a hundred files in the bridge's process, which inherits our
RLIMIT_NOFILE. Below that, .NET aborts in odd places (opening its standard error stream, loading
an assembly); better a clear error before it starts.
"""

from __future__ import annotations

import resource

from minidumper.errors import RuntimeBridgeError

BRIDGE_DESCRIPTORS = 256     # measured: the bridge fails below about 100 (ulimit -n 64 fails)


def ensure_descriptors_for_bridge() -> None:
    """Raises the soft limit on open files up to what the bridge needs, where the hard limit
    allows; else a RuntimeBridgeError that says so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= BRIDGE_DESCRIPTORS:
        return
    if hard == resource.RLIM_INFINITY or hard >= BRIDGE_DESCRIPTORS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (BRIDGE_DESCRIPTORS, hard))
        return
    raise RuntimeBridgeError(
        f"too few open files allowed: the limit is {hard} (ulimit -n), and reading the CLR "
        f"(heap and mini modes) needs about {BRIDGE_DESCRIPTORS}; raise it (ulimit -n 1024), "
        "or take a --full dump, which does not need the bridge")
