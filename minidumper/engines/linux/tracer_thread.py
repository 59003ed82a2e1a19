"""The one thread that makes every ptrace request of a pause, and then ends.

The kernel ties a tracee to the thread that seized it, not to its process: when that thread ends,
every thread still attached to it is released (exit_ptrace), stopped or not. So a thread that
never stopped (frozen by a cgroup freezer, or in D state) and stops only later cannot stay stopped
under a library caller that lives on: the tracer thread has ended by then.

The thread blocks the asynchronous signals, so that they reach the caller's thread, where Python
handles them.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

# Never handled on this thread: Python runs handlers on the main thread, and the stop signals
# must not stop the dumper through it while the target is held.
BLOCKED_HERE = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP,
                signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD, signal.SIGALRM, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGPIPE}


class TracerThread:
    """Runs the calls given to call() one after the other, on one thread, until close()."""

    def __init__(self, name: str = "minidumper-tracer") -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._closed = False

    def call(self, function: Callable[..., T], *args: object) -> T:
        """function(*args) on the tracer thread; its exception is raised here."""
        if self._closed:
            raise RuntimeError("the tracer thread has ended")
        future: Future = Future()
        self._calls.put((future, function, args))
        return future.result()

    def close(self) -> None:
        """Ends the thread and waits for it: every tracee still attached is then released."""
        if self._closed:
            return
        self._closed = True
        self._calls.put(None)
        self._thread.join()

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_HERE)
        while True:
            item = self._calls.get()
            if item is None:
                return
            future, function, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as error:   # handed to the caller, whatever it is
                future.set_exception(error)
