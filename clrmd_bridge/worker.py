"""The bridge's own process: .NET, ClrMD and the DAC run here, so that their crash is not ours.

Started by ``clrmd_bridge.process.ClrWalkerProcess`` as ``python -m clrmd_bridge.worker IN OUT
PARENT``. It loads .NET, says "ready", then answers one request at a time: (pid, registers,
depth, dac_path, copy) in, a ClrReadout or an error out, each frame a length and a pickle, on the two
inherited pipe descriptors. Its stdout and stderr are its parent's log, never the user's terminal.

Its scheduling class before and during the pause is clrmd_bridge.priority's (normal unless
MINIDUMPER_BRIDGE_PRIORITY says otherwise, for measuring).

The parent alone decides when this process ends: signals from the terminal are ignored, and it
dies with its parent (PR_SET_PDEATHSIG), even when the parent is killed with SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

from .frames import read_frame, write_frame

PR_SET_PDEATHSIG = 1
# A test-only fault: "DEPTH:FAULT" makes the worker fail on purpose when asked to walk a held
# target, or a pause's copy, at that depth ("warm-up": the walk before the pause; "copy": only
# the walk of a copy; "load": at start-up). FAULT is segv, abort, exit or hang.
FAULT_VARIABLE = "MINIDUMPER_TEST_BRIDGE_FAULT"


def _die_with(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:   # the parent died before prctl took effect
        os._exit(1)


def _inject_fault(depth: str) -> None:
    wanted, _, fault = os.environ.get(FAULT_VARIABLE, "").partition(":")
    if wanted != depth:
        return
    if fault == "segv":   # a real fault: .NET's own handler swallows a SIGSEGV sent by kill
        ctypes.c_int.from_address(8).value
    elif fault == "abort":
        os.abort()
    elif fault == "exit":
        os._exit(3)
    elif fault == "hang":
        time.sleep(3600)


def main(argv: list[str]) -> int:
    requests, replies, parent = (int(a) for a in argv)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    _die_with(parent)
    from .priority import Priority

    # Lowered (when asked to, for measuring) until a walk of a held target.
    priority = Priority()
    priority.lower()
    from . import errors, host, runtime

    try:
        _inject_fault("load")
        host.load()
    except errors.ClrBridgeError as error:
        write_frame(replies, ("error", type(error).__name__, str(error)))
        return 1
    write_frame(replies, ("ready", os.getpid()))
    while (request := read_frame(requests)) is not None:
        pid, registers, depth, dac_path, copy = request
        # Registers come only from a target that our engine holds: without a copy of its memory
        # to walk, the pause waits for this walk.
        if copy is not None:
            priority.after_pause()
        elif registers:
            priority.normal()
        else:
            priority.lower()
        _inject_fault(depth if registers else "warm-up")
        if copy is not None:
            _inject_fault("copy")
        try:
            readout = runtime.read_clr(pid, registers, depth, dac_path=dac_path, copy=copy)
        except errors.ClrBridgeError as error:
            write_frame(replies, ("error", type(error).__name__, str(error)))
        except Exception as error:   # pythonnet's own failures: reported, never a traceback
            write_frame(replies, ("error", "ClrReadError", f"{type(error).__name__}: {error}"))
        else:
            write_frame(replies, ("readout", readout))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
