"""One dump of one process on Linux: pause, gather, read, resume. Resume happens on every path."""

from __future__ import annotations

import logging
import signal
import struct
import time
from collections.abc import Iterator

from minidumper.engines.linux import namespaces, procfs
from minidumper.engines.linux.memory import ProcessMemory
from minidumper.engines.linux.ptrace import (
    NT_PRFPREG, NT_PRSTATUS, NT_X86_XSTATE, REG_RIP, REG_RSP, STOP_SIGNALS, USER_FPREGS_SIZE,
    USER_REGS_SIZE, XSTATE_MAX_SIZE, ThreadGroupTracer)
from minidumper.errors import AccessDeniedError, MinidumperError, TargetExitedError
from minidumper.model import DEFAULT_PAUSE_TIMEOUT, MemoryRange, ProcessSnapshot, ThreadState

log = logging.getLogger(__name__)

PIECE = tuple[int, memoryview]
FXSAVE_REGISTER_BYTES = 464


def fpregs_of_xstate(xstate: bytes) -> bytes:
    """NT_PRFPREG's user_fpregs_struct, from NT_X86_XSTATE: the XSAVE area starts with the same
    FXSAVE layout, but for its last 48 bytes, which XSAVE gives to software (the kernel's
    signature there) and the FXSAVE registers leave zero."""
    return xstate[:FXSAVE_REGISTER_BYTES] + bytes(USER_FPREGS_SIZE - FXSAVE_REGISTER_BYTES)


class PausedProcess:
    """Context manager: the target is stopped inside, and always resumed on the way out.

    While the target is held, Ctrl-Z (SIGTSTP), SIGTTIN and SIGTTOU wait: the dumper stops for
    them only once the target runs again.
    """

    def __init__(self, pid: int, pause_timeout: float = DEFAULT_PAUSE_TIMEOUT) -> None:
        self.pid = pid
        self.memory = ProcessMemory(pid)
        self._tracer = ThreadGroupTracer(pid, pause_timeout)
        self._paused_at: float | None = None
        self._signal_mask: set[int] | None = None
        self.paused_seconds = 0.0

    def __enter__(self) -> PausedProcess:
        try:
            self._paused_at = time.monotonic()
            self._signal_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            self._tracer.pause()
        except BaseException:
            self._release()
            raise
        log.debug("paused %d threads of process %d", len(self._tracer.held), self.pid)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            self._release()
        finally:
            self.memory.close()
        if self._tracer.died_while_held and (exc_type is None or issubclass(exc_type, Exception)):
            # Whatever failed while the target was being killed failed because of it.
            raise TargetExitedError(f"process {self.pid} was killed mid-dump")

    def resume(self) -> None:
        """Lets the target run again; TargetExitedError if it died while held (the memory read
        from it may then be incomplete)."""
        self._release()
        if self._tracer.died_while_held:
            raise TargetExitedError(f"process {self.pid} was killed mid-dump")

    def _release(self) -> None:
        if self._paused_at is None:
            return
        self._tracer.resume()
        self.paused_seconds = time.monotonic() - self._paused_at
        self._paused_at = None
        log.debug("resumed process %d after %.3f s", self.pid, self.paused_seconds)
        if self._signal_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._signal_mask)   # a held Ctrl-Z acts now
            self._signal_mask = None

    def snapshot(self) -> ProcessSnapshot:
        pid = self.pid
        try:
            stat = procfs.stat_fields(pid)
            status = procfs.status_fields(pid)
            namespace = namespaces.namespace_ids(status)
            snapshot = ProcessSnapshot(
                pid=pid, name=procfs.comm(pid), cmdline=procfs.cmdline(pid),
                uid=int(status["Uid"].split()[0]), gid=int(status["Gid"].split()[0]),
                ppid=int(stat[1]), pgrp=int(stat[2]), sid=int(stat[3]), state=stat[0],
                nice=int(stat[16]),
                threads=self._thread_states(namespace is not None),
                mappings=procfs.read_maps(pid), auxv=procfs.read_bytes(pid, "auxv"), namespace=namespace)
        except (FileNotFoundError, ProcessLookupError) as error:
            raise TargetExitedError(f"process {pid} exited mid-dump") from error
        except PermissionError as error:
            if not procfs.alive(pid):
                raise TargetExitedError(f"process {pid} exited mid-dump") from error
            raise AccessDeniedError(f"cannot read /proc/{pid}: {error.strerror}") from error
        return snapshot

    def _thread_states(self, in_other_namespace: bool) -> list[ThreadState]:
        tids = sorted(self._tracer.held)
        register_sets = self._tracer.get_regsets(tids, [(NT_PRSTATUS, USER_REGS_SIZE), (NT_X86_XSTATE, XSTATE_MAX_SIZE)])
        if any(xstate is None or len(xstate) < USER_FPREGS_SIZE for _, xstate in register_sets.values()):
            fpregs = self._tracer.get_regsets(tids, [(NT_PRFPREG, USER_FPREGS_SIZE)])
        else:   # one call per thread less, in the pause
            fpregs = {tid: [fpregs_of_xstate(xstate)] for tid, (_, xstate) in register_sets.items()}
        return [self._thread_state(tid, regs, fpregs[tid][0], xstate, in_other_namespace)
                for tid, (regs, xstate) in register_sets.items()]

    def _thread_state(self, tid: int, regs: bytes | None, fpregs: bytes | None, xstate: bytes | None,
                      in_other_namespace: bool) -> ThreadState:
        regs = regs or bytes(USER_REGS_SIZE)
        if len(regs) != USER_REGS_SIZE:
            raise MinidumperError(f"process {self.pid} is not a 64-bit x86 process; "
                                  "only x86-64 targets can be dumped on Linux")
        fpregs = fpregs or bytes(USER_FPREGS_SIZE)
        return ThreadState(
            tid=tid, prstatus_regs=regs, fpregs=fpregs, xstate=xstate,
            pending_signal=self._tracer.held[tid].pending_signal,
            instruction_pointer=struct.unpack_from("<Q", regs, REG_RIP * 8)[0],
            stack_pointer=struct.unpack_from("<Q", regs, REG_RSP * 8)[0],
            namespace_tid=namespaces.thread_id_in_namespace(self.pid, tid) if in_other_namespace else 0)

    def stream(self, ranges: list[MemoryRange]) -> Iterator[PIECE]:
        """The readable pieces of the ranges, read as they are asked for."""
        for memory_range in ranges:
            yield from self.memory.read_pieces(memory_range.start, memory_range.end)
