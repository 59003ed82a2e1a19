"""The console script `minidumper` (and `python -m minidumper`) starts here.

Its first lines take SIGINT, SIGTERM and SIGHUP, before anything heavy is imported, so that a
signal at any moment of start-up ends with exit 130 and the JSON object, not a traceback; and
they put /dev/null where stdin, stdout or stderr was closed, so that no file the dump opens can
take their numbers (a line printed later would land in it).
"""

import os
import signal
import sys
import threading

TERMINATING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """SIGTERM or SIGHUP, unwound like Ctrl-C's KeyboardInterrupt so that the target is resumed
    on the way out. A BaseException, so that no `except Exception` swallows it."""


_caught: list[int] = []
_armed = False      # until main() runs, a signal is only noted: it is raised there, inside its try


def _on_signal(signum: int, frame: object) -> None:
    # Only the first signal unwinds the dump; a second must not break the unwinding
    # (the target's resume, the removal of the output) halfway.
    _caught.append(signum)
    if _armed and len(_caught) == 1:
        _raise_for(signum)


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signal.Signals(signum).name)


def _on_unraisable(unraisable) -> None:
    """A signal's exception raised where Python cannot unwind it (a callback, such as the import
    system's on a module lock) is only printed and dropped: the signal is sent again instead,
    from another thread a moment later, to be raised in ordinary code."""
    if isinstance(unraisable.exc_value, (KeyboardInterrupt, Interrupted)) and _caught:
        signum = _caught[0]
        _caught.clear()
        threading.Timer(0.001, os.kill, (os.getpid(), signum)).start()
        return
    sys.__unraisablehook__(unraisable)


sys.unraisablehook = _on_unraisable

for _signum in TERMINATING_SIGNALS:
    if signal.getsignal(_signum) != signal.SIG_IGN:   # ignored on purpose (nohup): left so
        try:
            signal.signal(_signum, _on_signal)
        except ValueError:   # imported outside the main thread: not the command line's start
            break


def _reopen_closed_standard_streams() -> frozenset[int]:
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):   # open() takes the lowest free number: the closed one
        opened = os.open(os.devnull, os.O_RDWR)
        if opened != fd:
            os.dup2(opened, fd)
            os.close(opened)
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
    return frozenset(closed)


CLOSED_STANDARD_STREAMS = _reopen_closed_standard_streams()


def block_signals() -> None:
    """From here on (reporting the outcome) a signal waits; the exit discards it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, TERMINATING_SIGNALS)


def main(argv: list[str] | None = None) -> None:
    global _armed
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        _armed = True
        if _caught:
            _raise_for(_caught[0])
        # A parent that blocked these signals around our start gets them handled from here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINATING_SIGNALS)
        from minidumper.cli import run   # click, and everything else, loads here

        code = run(args)
    except (KeyboardInterrupt, Interrupted):   # before run() could take it: during imports
        block_signals()
        from minidumper import report
        from minidumper.errors import ExitCode

        outcome = report.Outcome()
        outcome.failed(ExitCode.INTERRUPTED, "interrupted while starting; nothing was dumped")
        verbose = "-v" in args
        if "--json" in args:
            report.emit(outcome.to_json(), 1)
        if verbose or "--json" not in args:
            report.emit(f"minidumper: {outcome.error}", 2)
        code = ExitCode.INTERRUPTED
    sys.exit(code)
