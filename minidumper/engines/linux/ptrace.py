"""Pausing a whole thread group with PTRACE_SEIZE and PTRACE_INTERRUPT, never SIGSTOP.

A seized tracee resumes by itself if the tracer dies, so even a kill -9 of the dumper leaves the
target running. Every ptrace request must come from the thread that seized: all of them go through
one TracerThread, which ends with the pause.
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
from minidumper.engines.linux.tracer_thread import TracerThread
from minidumper.model import DEFAULT_PAUSE_TIMEOUT
from minidumper.errors import (
    AccessDeniedError, PauseFailedError, TargetExitedError, TargetNotFoundError)

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

EPERM_RETRY_SECONDS = 0.05      # an exiting thread refuses PTRACE_SEIZE with EPERM until it is gone
DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
STOP_SIGNALS = {signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


@dataclass
class HeldThread:
    tid: int
    stopped: bool = False
    pending_signal: int = 0   # a signal that arrived while we stopped it: delivered on detach


class ThreadGroupTracer:
    """Holds every thread of one process stopped, until resume().

    Every ptrace request goes through one TracerThread, which ends in resume(): the kernel then
    releases whatever thread is still attached, even one that stops only later.
    """

    def __init__(self, pid: int, pause_timeout: float = DEFAULT_PAUSE_TIMEOUT) -> None:
        self.pid = pid
        self.pause_timeout = pause_timeout
        self.held: dict[int, HeldThread] = {}
        self.died_while_held = False     # a stopped thread was gone at resume: the target was killed
        self._gone: set[int] = set()
        self._thread: TracerThread | None = None

    def pause(self) -> None:
        """Seize and interrupt every thread, until no new thread shows up. Raises
        PauseFailedError when a thread does not stop within pause_timeout (the caller resumes)."""
        self._thread = TracerThread()
        self._thread.call(self._pause)

    def get_regsets(self, tids: list[int], sets: list[tuple[int, int]]) -> dict[int, list[bytes | None]]:
        """Each (note type, size) register set of each stopped thread (None where the kernel has
        no such set), in one hand-off to the tracer thread (one per set and thread costs tens of
        microseconds each, in the pause)."""
        return self._thread.call(self._get_regsets, tids, sets)

    def resume(self) -> None:
        """Detach from every held thread and end the tracer thread. Never raises: the target's
        freedom comes first. Ctrl-C and SIGTERM wait until every thread is detached."""
        if self._thread is None:
            return
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED_SIGNALS)
        try:
            self._thread.call(self._detach_all)
        except Exception:   # resume must not fail; ending the tracer thread releases them all
            log.warning("detaching from process %d failed", self.pid, exc_info=True)
        finally:
            self._thread.close()
            self._thread = None
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    # Below: on the tracer thread only.

    def _pause(self) -> None:
        deadline = time.monotonic() + self.pause_timeout
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
            self._wait_for_stops(deadline)
        if not self.held or not procfs.alive(self.pid):
            raise TargetExitedError(f"process {self.pid} exited while being paused")

    def _seize(self, tid: int) -> bool:
        """True once held; False for a thread that is gone (or exiting, which refuses with EPERM)."""
        give_up = time.monotonic() + EPERM_RETRY_SECONDS
        while True:
            if libc.ptrace(PTRACE_SEIZE, tid, None, None) == 0:
                self.held[tid] = HeldThread(tid)
                return True
            err = ctypes.get_errno()
            if err == errno.ESRCH:
                self._gone.add(tid)
                return False
            if err != errno.EPERM:
                raise last_os_error("PTRACE_SEIZE", tid)
            # EPERM is also the answer of a thread, or a whole process, on its way out.
            if not procfs.alive(self.pid):
                raise TargetExitedError(f"process {self.pid} exited while being paused")
            if procfs.thread_state(self.pid, tid) in ("", "Z", "X", "x"):
                self._gone.add(tid)
                return False
            if time.monotonic() > give_up:
                raise self._permission_error()
            time.sleep(0.002)

    def _permission_error(self) -> Exception:
        try:
            tracer = int(procfs.status_fields(self.pid).get("TracerPid", "0"))
            kernel_thread = procfs.is_kernel_thread(self.pid)
        except OSError:
            return TargetExitedError(f"process {self.pid} exited while being paused")
        if tracer:
            return AccessDeniedError(
                f"process {self.pid} is already traced by process {tracer} (a debugger?)")
        if kernel_thread:
            return TargetNotFoundError(f"process {self.pid} is a kernel thread, not a user process")
        if os.geteuid() == 0:
            return AccessDeniedError(
                f"the kernel refuses to trace process {self.pid} even to root: "
                "/proc/sys/kernel/yama/ptrace_scope is 3, or a security module forbids it")
        return AccessDeniedError(
            f"access denied to process {self.pid}: run as its user or as root, "
            "and check /proc/sys/kernel/yama/ptrace_scope")

    def _interrupt(self, tid: int) -> None:
        if libc.ptrace(PTRACE_INTERRUPT, tid, None, None) != 0:
            if ctypes.get_errno() == errno.ESRCH:
                return   # the wait below sees it gone
            raise last_os_error("PTRACE_INTERRUPT", tid)

    def _wait_for_stops(self, deadline: float) -> None:
        """Waits until each held thread is stopped or gone, until the deadline.

        All at once, not one by one: a dying leader is reported only after every other thread
        has been collected, so waiting for it first would wait forever.
        """
        delay = 0.0001
        while True:
            pending = [t.tid for t in self.held.values() if not t.stopped]
            for tid in pending:
                self._poll_stop(tid)
            pending = [t.tid for t in self.held.values() if not t.stopped]
            if not pending:
                return
            # Threads stopped earlier may have died since (the target was killed): collect them,
            # or the leader's death is never reported.
            for thread in list(self.held.values()):
                if thread.stopped:
                    self._collect_if_dead(thread.tid)
            if time.monotonic() > deadline:
                self._fail_pause(pending)
            time.sleep(delay)
            delay = min(delay * 2, 0.005)

    def _fail_pause(self, pending: list[int]) -> None:
        if not procfs.alive(self.pid):
            raise TargetExitedError(f"process {self.pid} exited while being paused")
        stuck = [tid for tid in pending if procfs.thread_state(self.pid, tid) not in ("", "Z", "X")]
        if not stuck:
            return   # they were on their way out; the next poll forgets them
        described = ", ".join(
            f"{tid} ({procfs.thread_name(self.pid, tid) or '?'}, state "
            f"{procfs.thread_state(self.pid, tid) or '?'})" for tid in stuck)
        noun = "thread" if len(stuck) == 1 else "threads"
        raise PauseFailedError(
            f"{noun} {described} of process {self.pid} did not stop within "
            f"{self.pause_timeout:g} s (uninterruptible sleep, or frozen by a cgroup freezer such "
            "as docker pause); every thread was resumed")

    def _poll_stop(self, tid: int) -> None:
        """Marks the thread stopped once it is (or forgets it once it is gone)."""
        try:
            waited, status = os.waitpid(tid, os.WNOHANG | WALL)
        except ChildProcessError:
            self._forget(tid)
            return
        if waited != tid:
            return
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._forget(tid)
            return
        self.held[tid].stopped = True
        if os.WIFSTOPPED(status) and status >> 16 != PTRACE_EVENT_STOP:
            # A signal-delivery stop: the thread is stopped all the same. Keep the signal, so
            # that detaching delivers it as if we had never been here.
            self.held[tid].pending_signal = os.WSTOPSIG(status)

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

    def _get_regsets(self, tids: list[int], sets: list[tuple[int, int]]) -> dict[int, list[bytes | None]]:
        # One buffer and one iovec per set, reused for every thread: thousands of calls, in the pause.
        prepared = []
        for note_type, size in sets:
            buffer = ctypes.create_string_buffer(size)
            vector = iovec(ctypes.cast(buffer, ctypes.c_void_p), size)
            prepared.append((ctypes.c_void_p(note_type), size, vector, buffer))
        return {tid: [self._get_regset(tid, *set_) for set_ in prepared] for tid in tids}

    def _get_regset(self, tid: int, note_type: ctypes.c_void_p, size: int, vector: iovec,
                    buffer: ctypes.Array) -> bytes | None:
        vector.iov_len = size
        if libc.ptrace(PTRACE_GETREGSET, tid, note_type, ctypes.byref(vector)) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENODEV):
                return None
            if err == errno.ESRCH:
                raise TargetExitedError(f"thread {tid} of process {self.pid} exited mid-dump")
            raise last_os_error("PTRACE_GETREGSET", tid)
        return ctypes.string_at(buffer, vector.iov_len)

    def _detach_all(self) -> None:
        for thread in list(self.held.values()):
            if not thread.stopped:
                self._poll_stop(thread.tid)   # one that stopped late goes now; the others when
                if not thread.stopped:        # this thread ends
                    self.held.pop(thread.tid, None)
                    continue
            if libc.ptrace(PTRACE_DETACH, thread.tid, None, ctypes.c_void_p(thread.pending_signal)) != 0:
                err = ctypes.get_errno()
                if err == errno.ESRCH:
                    # Only SIGKILL makes a stopped tracee run: the target was killed meanwhile.
                    self.died_while_held = True
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
