"""The one error tree of minidumper. Each class carries its exit code.

The exit codes are a contract with scripts: never renumber them.
"""


class ExitCode:
    OK = 0
    INTERNAL = 1
    USAGE = 2
    TARGET_NOT_FOUND = 3
    ACCESS_DENIED = 4
    NOT_DOTNET = 5
    OUTPUT = 6
    TARGET_EXITED = 7
    PAUSE_FAILED = 8
    CLR_READ_FAILED = 9
    INTERRUPTED = 130


class MinidumperError(Exception):
    """Root of every error minidumper reports on purpose."""

    exit_code = ExitCode.INTERNAL


class UsageError(MinidumperError):
    exit_code = ExitCode.USAGE


class TargetNotFoundError(MinidumperError):
    """No such pid, or a process name that matches none or several processes."""

    exit_code = ExitCode.TARGET_NOT_FOUND


class AccessDeniedError(MinidumperError):
    exit_code = ExitCode.ACCESS_DENIED


class NotDotnetError(MinidumperError):
    """The target has no CLR loaded, so heap and mini modes cannot read it."""

    exit_code = ExitCode.NOT_DOTNET


class DacNotFoundError(NotDotnetError):
    """No DAC (libmscordaccore.so) of the target runtime's exact build on this machine; heap and
    mini need one. --full does not."""


class OutputError(MinidumperError):
    """The output path is unusable, or writing to it failed (disk full, ...)."""

    exit_code = ExitCode.OUTPUT


class TargetExitedError(MinidumperError):
    exit_code = ExitCode.TARGET_EXITED


class PauseFailedError(MinidumperError):
    """A thread of the target would not stop in time (D state, a frozen cgroup); every thread
    that had stopped was resumed."""

    exit_code = ExitCode.PAUSE_FAILED


class ClrReadFailedError(MinidumperError):
    """The walk of the target's CLR (ClrMD and the runtime's DAC) crashed or failed; the target
    was resumed. --full does not need it."""

    exit_code = ExitCode.CLR_READ_FAILED


class InterruptedDumpError(MinidumperError):
    """Ctrl-C or SIGTERM arrived while dumping."""

    exit_code = ExitCode.INTERRUPTED


class RuntimeBridgeError(MinidumperError):
    """The .NET side (hostfxr, pythonnet, ClrMD) could not be loaded or failed."""

    exit_code = ExitCode.INTERNAL


class ProcessNameError(TargetNotFoundError):
    """--pn matched no process, or several: `matches` lists (pid, command line) of the
    candidates (the matching processes, or for no match the .NET processes running)."""

    def __init__(self, message: str, matches: list[tuple[int, str]]) -> None:
        super().__init__(message)
        self.matches = matches
