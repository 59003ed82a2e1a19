"""Pausing a whole thread group with PTRACE_SEIZE and PTRACE_INTERRUPT, never SIGSTOP.

A seized tracee resumes by itself if the tracer dies, so even a kill -9 of the dumper leaves the
target running. Every ptrace request must come from the thread that seized: keep all of this on one
thread.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass

from minidumper.engines.linux import procfs
from minidumper.engines.linux._libc import iovec, last_os_error, libc
from minidumper.errors import AccessDeniedError, TargetExitedError, TargetNotFoundError

log = logging.getLogger(__name__)

PTRACE_DETACH = 17
PTRACE_GETREGSET = 0x4204
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
WALL = 0x40000000          # __WALL: wait for clone children (threads) too

NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_X86_XSTATE = 0x202

USER_REGS_SIZE = 27 * 8    # struct user_regs_struct on x86-64
USER_FPREGS_SIZE = 512     # struct user_fpregs_struct
XSTATE_MAX_SIZE = 16384
REG_RIP = 16
REG_RSP = 19

STOP_TIMEOUT_SECONDS = 10.0
DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@dataclass
class HeldThread:
    tid: int
    pending_signal: int = 0   # a signal that arrived while we stopped it: delivered on detach


class ThreadGroupTracer:
    """Holds every thread of one process stopped, until resume()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.held: dict[int, HeldThread] = {}
        self._gone: set[int] = set()

    def pause(self) -> None:
        """Seize and interrupt every thread, until no new thread shows up."""
        while True:
            try:
                tids = procfs.task_ids(self.pid)
            except FileNotFoundError:
                raise TargetExitedError(f"process {self.pid} exited while being paused") from None
            new = [t for t in tids if t not in self.held and t not in self._gone]
            if not new:
                break
            seized = [t for t in new if self._seize(t)]
            for tid in seized:
                self._interrupt(tid)
            self._wait_for_stops(seized)
        if not self.held:
            raise TargetExitedError(f"process {self.pid} exited while being paused")

    def _seize(self, tid: int) -> bool:
        if libc.ptrace(PTRACE_SEIZE, tid, None, None) == 0:
            self.held[tid] = HeldThread(tid)
            return True
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            self._gone.add(tid)
            return False
        if err == errno.EPERM:
            raise self._permission_error() from None
        raise last_os_error("PTRACE_SEIZE", tid)

    def _permission_error(self) -> Exception:
        try:
            tracer = int(procfs.status_fields(self.pid).get("TracerPid", "0"))
        except OSError:
            return TargetNotFoundError(f"process {self.pid} does not exist")
        if tracer:
            return AccessDeniedError(
                f"process {self.pid} is already traced by process {tracer} (a debugger?)")
        return AccessDeniedError(
            f"access denied to process {self.pid}: run as its user or as root, "
            "and check /proc/sys/kernel/yama/ptrace_scope")

    def _interrupt(self, tid: int) -> None:
        if libc.ptrace(PTRACE_INTERRUPT, tid, None, None) != 0:
            if ctypes.get_errno() == errno.ESRCH:
                return   # the wait below sees it gone
            raise last_os_error("PTRACE_INTERRUPT", tid)

    def _wait_for_stops(self, tids: list[int]) -> None:
        """Waits until each thread is stopped or gone.

        All at once, not one by one: a dying leader is reported only after every other thread
        has been collected, so waiting for it first would wait forever.
        """
        pending = set(tids)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        delay = 0.0001
        while pending:
            for tid in sorted(pending):
                if self._poll_stop(tid):
                    pending.discard(tid)
            if not pending:
                return
            # Threads stopped earlier may have died since (the target was killed): collect them,
            # or the leader's death is never reported.
            for tid in sorted(set(self.held) - pending):
                self._collect_if_dead(tid)
            if time.monotonic() > deadline:
                raise TargetExitedError(
                    f"threads {sorted(pending)} of process {self.pid} did not stop within "
                    f"{STOP_TIMEOUT_SECONDS:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _poll_stop(self, tid: int) -> bool:
        """True once the thread is stopped (and held) or gone (and forgotten)."""
        try:
            waited, status = os.waitpid(tid, os.WNOHANG | WALL)
        except ChildProcessError:
            self._forget(tid)
            return True
        if waited != tid:
            return False
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._forget(tid)
            return True
        if os.WIFSTOPPED(status) and status >> 16 != PTRACE_EVENT_STOP:
            # A signal-delivery stop: the thread is stopped all the same. Keep the signal, so
            # that detaching delivers it as if we had never been here.
            self.held[tid].pending_signal = os.WSTOPSIG(status)
        return True

    def _collect_if_dead(self, tid: int) -> None:
        try:
            waited, status = os.waitpid(tid, os.WNOHANG | WALL)
        except ChildProcessError:
            self._forget(tid)
            return
        if waited == tid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            self._forget(tid)

    def _forget(self, tid: int) -> None:
        self.held.pop(tid, None)
        self._gone.add(tid)

    def get_regset(self, tid: int, note_type: int, size: int) -> bytes | None:
        """One register set of a stopped thread; None where the kernel has no such set."""
        buffer = ctypes.create_string_buffer(size)
        vector = iovec(ctypes.cast(buffer, ctypes.c_void_p), size)
        if libc.ptrace(PTRACE_GETREGSET, tid, ctypes.c_void_p(note_type), ctypes.byref(vector)) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENODEV):
                return None
            if err == errno.ESRCH:
                raise TargetExitedError(f"thread {tid} of process {self.pid} exited mid-dump")
            raise last_os_error("PTRACE_GETREGSET", tid)
        return buffer.raw[:vector.iov_len]

    def resume(self) -> None:
        """Detach from every held thread. Never raises: the target's freedom comes first.

        Ctrl-C and SIGTERM wait until every thread is detached, so that none is left behind.
        """
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED_SIGNALS)
        try:
            self._detach_all()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _detach_all(self) -> None:
        for thread in list(self.held.values()):
            if libc.ptrace(PTRACE_DETACH, thread.tid, None, ctypes.c_void_p(thread.pending_signal)) != 0:
                err = ctypes.get_errno()
                if err == errno.ESRCH:
                    self._reap(thread.tid)
                else:
                    log.warning("could not detach thread %d: %s", thread.tid, os.strerror(err))
            self.held.pop(thread.tid, None)

    @staticmethod
    def _reap(tid: int) -> None:
        # A thread that died while traced waits for its tracer to collect it.
        try:
            os.waitpid(tid, os.WNOHANG | WALL)
        except ChildProcessError:
            pass
