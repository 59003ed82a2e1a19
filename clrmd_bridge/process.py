"""The client of the bridge's own process (clrmd_bridge.worker): the CLR walk, out of our process.

The DAC is native code reading a process that is changing under it (before the pause) and .NET can
abort; in a worker process their death is an error to report, never the death of the dumper that
holds the target and the output. Start it early: loading .NET takes a few tenths of a second, which
then run while the dumper reads /proc.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import errors
from .runtime import ClrReadout, MemoryCopy
from .frames import read_frame, write_frame

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 60.0
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)
LOG_TAIL_BYTES = 2000          # of the worker's output, in the message of its crash
LOG_BYTES_SHOWN = 256 << 10    # of the worker's output, with -v, when it ends


class ClrWalkerProcess:
    """One worker process; ``read_clr`` asks it, ``close`` (or the with block) ends it.

    Not for two threads at once; each dump starts its own.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._requests: int | None = None
        self._replies: int | None = None
        self._log = None
        self._ready = False
        self._asked = ""

    def __enter__(self) -> ClrWalkerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Starts the worker and returns at once; the first read waits until .NET is loaded."""
        if self._process is not None:
            return
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        self._log = tempfile.TemporaryFile(prefix="minidumper-bridge-")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (PACKAGE_PARENT, env.get("PYTHONPATH"))))
        # The worker is killed when done: a runtime with its diagnostics on would leave its
        # debugger pipes and diagnostic socket in /tmp after every dump.
        env["DOTNET_EnableDiagnostics"] = "0"
        # Its own process group, out of reach of the terminal's Ctrl-C, but the dumper's session:
        # so its autogroup, the share of the CPU that the target's threads compete with. In a
        # session of its own, the walk on the pause's copy took a third of a 2-core machine
        # from the target, not a half: 7-26 extra gaps in 6 dumps of 1000 threads, now 1-4.
        # -S: no site-packages (the worker needs the standard library and this package, on
        # PYTHONPATH): 20-40 ms less before .NET starts.
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-S", "-m", "clrmd_bridge.worker",
                 str(request_read), str(reply_write), str(os.getpid())],
                pass_fds=(request_read, reply_write), stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=self._log, env=env, process_group=0)
        except OSError as error:
            for fd in (request_read, request_write, reply_read, reply_write):
                os.close(fd)
            raise errors.BridgeLoadError(f"cannot start the bridge's process: {error}") from error
        finally:
            if self._process is not None:
                os.close(request_read)
                os.close(reply_write)
        self._requests, self._replies = request_write, reply_read
        log.debug("bridge process %d started", self._process.pid)

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        if self._ready:
            return
        self.start()
        try:
            reply = self._receive(timeout, "starting .NET")
        except errors.BridgeCrashedError as error:
            raise errors.BridgeLoadError(str(error)) from None
        if reply[0] == "error":
            raise self._error(reply)
        self._ready = True

    def read_clr(self, pid: int, thread_registers: dict[int, bytes], depth: str, *,
                 dac_path: str | None = None, timeout: float) -> ClrReadout:
        """clrmd_bridge.read_clr, in the worker. Raises BridgeCrashedError when it dies or takes
        longer than timeout (it is then ended), and the worker's own errors as they are."""
        deadline = time.monotonic() + timeout
        self.ask(pid, thread_registers, depth, dac_path=dac_path)
        return self.answer(max(0.0, deadline - time.monotonic()))

    def ask(self, pid: int, thread_registers: dict[int, bytes], depth: str, *,
            dac_path: str | None = None, copy: MemoryCopy | None = None) -> None:
        """read_clr's request alone: the worker walks while the caller does other work, then
        takes the readout with answer()."""
        self.wait_ready()
        self._asked = depth
        try:
            write_frame(self._requests, (pid, thread_registers, depth, dac_path, copy))
        except OSError:
            raise self._crashed(f"walking the CLR ({depth})") from None

    def answer(self, timeout: float) -> ClrReadout:
        """The readout of the request that ask() made."""
        reply = self._receive(timeout, f"walking the CLR ({self._asked})")
        if reply[0] == "error":
            raise self._error(reply)
        return reply[1]

    def _receive(self, timeout: float, doing: str) -> tuple:
        readable, _, _ = select.select([self._replies], [], [], timeout)
        if not readable:
            self._kill()
            raise errors.BridgeCrashedError(f"the bridge's process took longer than {timeout:.0f} s "
                                            f"{doing}, and was ended")
        reply = read_frame(self._replies)
        if reply is None:
            raise self._crashed(doing)
        return reply

    def _crashed(self, doing: str) -> errors.BridgeCrashedError:
        self._kill()
        code = self._process.returncode
        how = (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}")
        tail = self._log_tail()
        return errors.BridgeCrashedError(f"the bridge's process {how} while {doing}"
                                         + (f": {tail}" if tail else ""))

    @staticmethod
    def _error(reply: tuple) -> errors.ClrBridgeError:
        _, kind, message = reply
        error_class = getattr(errors, kind, errors.ClrReadError)
        return error_class(message)

    def _log_tail(self) -> str:
        """The last lines the worker printed (a .NET abort says why there)."""
        return " | ".join(self._log_lines(LOG_TAIL_BYTES)[-3:])

    def _log_lines(self, most: int) -> list[str]:
        """The non-blank lines of the worker's last `most` bytes of output."""
        if self._log is None:
            return []
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - most))
        lines = self._log.read().decode(errors="replace").splitlines()
        if size > most:
            lines = lines[1:]   # cut in the middle
        return [line.strip() for line in lines if line.strip()]

    def _kill(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.kill()
        self._process.wait()

    def close(self) -> None:
        """Ends the worker (it holds nothing worth a graceful exit) and every descriptor."""
        if self._process is not None:
            self._kill()
            if self._log is not None and log.isEnabledFor(logging.DEBUG):
                for line in self._log_lines(LOG_BYTES_SHOWN):
                    log.debug("bridge process %d said: %s", self._process.pid, line)
        for fd in (self._requests, self._replies):
            if fd is not None:
                os.close(fd)
        self._requests = self._replies = None
        if self._log is not None:
            self._log.close()
            self._log = None
