"""The command line: the only place where errors become messages and exit codes.

Nothing here imports .NET: --help, --version and usage errors start fast. The flags are
minidumper's own (--pid, --pn, -f, --mini/--heap/--full) and dotnet-dump's beside them
(-p/--process-id, -n/--name, -o/--output, --type).
"""

from __future__ import annotations

import logging
import os
import sys

import click

from minidumper import __version__, report
from minidumper.entry import CLOSED_STANDARD_STREAMS, Interrupted, block_signals
from minidumper.errors import ExitCode, MinidumperError, OutputError, UsageError

log = logging.getLogger("minidumper")

EXIT_CODES_HELP = """\b
Exit codes:
  0    success
  1    internal error
  2    usage error
  3    target not found, or the name is ambiguous
  4    permission denied
  5    not a .NET process, or no DAC for its runtime (heap and mini modes)
  6    output problem (exists, symlink, no directory, not writable, disk full)
  7    the target exited mid-dump
  8    the target could not be paused (a thread would not stop)
  9    reading the target's CLR failed
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP)
"""

HEAP_HELP = ("The default. Mini plus the CLR's managed memory (GC heap, handles, loader and JIT "
             "heaps), without module code or native heap: a few percent of a full dump. Not "
             "dotnet-dump's Heap type, which holds nearly everything (that is --full here).")


class _ProgressBar:
    """click's progress bar on stderr, shown only when stderr is a terminal."""

    def __init__(self) -> None:
        self._bar = None

    def start(self, total_bytes: int) -> None:
        self._bar = click.progressbar(length=total_bytes, label="writing dump", file=sys.stderr,
                                      show_eta=True, width=30)
        self._bar.__enter__()

    def advance(self, count: int) -> None:
        self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


@click.command(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--pid", "-p", "--process-id", "pid", type=int, metavar="PID",
              help="Process id of the target.")
@click.option("--pn", "-n", "--name", "process_name", metavar="NAME",
              help="Process name of the target (its comm, executable, or the app of `dotnet app.dll`).")
@click.option("-f", "-o", "--output", "output", metavar="PATH",
              help="Output file, which must not exist; or a directory, where the file is named "
                   "core_<name>_<pid>_<YYYYMMDD_HHMMSS> (also the default, in the current "
                   "directory); or - to stream the core to stdout.")
@click.option("--type", "dump_type", type=click.Choice(["mini", "heap", "full"], case_sensitive=False),
              help="The mode, as dotnet-dump spells it (any case); the same as --mini, --heap, --full.")
@click.option("--mini", is_flag=True, help="Threads, stacks, modules, managed call stacks.")
@click.option("--heap", is_flag=True, help=HEAP_HELP)
@click.option("--full", is_flag=True, help="Every readable mapping of the address space.")
@click.option("--dac", "dac_path", metavar="PATH",
              help="The runtime's DAC (libmscordaccore.so, or its directory) for --heap and --mini, "
                   "where it is not found on this machine (see the README).")
@click.option("--pause-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Give up pausing the target when a thread has not stopped after this long "
                   "(default 1).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object describing the outcome (success or failure) on stdout; "
                   "stderr stays quiet unless -v.")
@click.option("-v", "verbose", is_flag=True, help="Detailed diagnostics on stderr.")
@click.version_option(__version__, "--version", prog_name="minidumper")
@click.pass_obj
def command(outcome: report.Outcome, pid: int | None, process_name: str | None,
            output: str | None, dump_type: str | None, mini: bool, heap: bool, full: bool,
            dac_path: str | None, pause_timeout: float | None, as_json: bool,
            verbose: bool) -> None:
    """Write a dump of a running .NET process: --mini, --heap (default) or --full."""
    chosen = {name for name, on in (("mini", mini), ("heap", heap), ("full", full)) if on}
    if dump_type:
        chosen.add(dump_type.lower())
    if len(chosen) > 1:
        raise UsageError(f"choose one mode, not {' and '.join(sorted(chosen))}")
    if (pid is None) == (process_name is None):
        raise UsageError("give the target with exactly one of --pid/-p or --pn/-n")
    if output == "":
        raise UsageError("the output name is empty; give a file or a directory with -o/-f, "
                         "or - for stdout")
    outcome.mode = chosen.pop() if chosen else "heap"
    streaming = output == "-"
    if streaming:
        if 1 in CLOSED_STANDARD_STREAMS:
            raise OutputError("stdout is closed: nowhere to stream the dump")
        if os.isatty(1):
            raise UsageError("refusing to write a binary dump to a terminal; pipe it "
                             "(| zstd > app.core.zst) or redirect it (> app.core)")

    from minidumper import targets
    from minidumper.dump import write_dump
    from minidumper.output import app_name, output_path

    if pid is None:
        pid = targets.find_by_name(process_name).pid
    outcome.host_pid = outcome.pid = pid
    pid = outcome.host_pid = outcome.pid = targets.process_of(pid)   # a thread's process
    target = targets.describe(pid)
    if not streaming:
        output = output_path(output, pid, app_name(target.name, target.cmdline))
        outcome.path = os.path.abspath(output)
    options = {"pause_timeout": pause_timeout} if pause_timeout is not None else {}
    progress = _ProgressBar() if sys.stderr.isatty() and not verbose and not as_json else None
    try:
        result = write_dump(pid, sys.stdout.buffer if streaming else output, outcome.mode,
                            progress=progress, dac_path=dac_path, **options)
    finally:
        if progress:
            progress.close()
    outcome.succeeded(result.as_dict())


def run(args: list[str]) -> int:
    """Runs the command; returns the exit code, after reporting the outcome."""
    outcome = report.Outcome()
    as_json, verbose = "--json" in args, "-v" in args
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="minidumper: %(asctime)s %(name)s: %(message)s" if verbose else
                        "minidumper: %(message)s")
    if as_json and not verbose:
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.CRITICAL)
    collector = _WarningCollector()
    logging.getLogger().addHandler(collector)
    try:
        code = command.main(args=args, prog_name="minidumper", standalone_mode=False, obj=outcome)
        if outcome.mode is None:               # --help, --version: click has answered
            return code or 0
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        block_signals()
        if verbose or not as_json:
            error.show()
        outcome.failed(ExitCode.USAGE, error.format_message())
        return _report(outcome, args, collector.messages, shown=True)
    except (KeyboardInterrupt, click.exceptions.Abort, Interrupted):
        block_signals()
        outcome.failed(ExitCode.INTERRUPTED, "interrupted; the target was resumed and no dump was written")
    except MinidumperError as error:
        block_signals()
        outcome.failed(error.exit_code, str(error))
        outcome.matches = [{"pid": pid, "cmdline": command_line}
                           for pid, command_line in getattr(error, "matches", ())]
    except Exception as error:  # the last line of defence: a message, not a traceback
        block_signals()
        log.debug("internal error", exc_info=True)
        outcome.failed(ExitCode.INTERNAL, f"internal error: {type(error).__name__}: {error} "
                                          "(run with -v for details)")
    else:
        block_signals()
    finally:
        logging.getLogger().removeHandler(collector)
    return _report(outcome, args, collector.messages)


class _WarningCollector(logging.Handler):
    """minidumper's logged warnings (a thread id given as --pid, ...), for the JSON's list."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _report(outcome: report.Outcome, args: list[str], logged: list[str],
            shown: bool = False) -> int:
    """The JSON object or the text line: on stdout, or on stderr where stdout carries the dump.
    A failure's message goes to stderr, unless --json is given without -v. Logged warnings were
    printed already (unless --json); they join the JSON's warnings."""
    as_json, verbose = "--json" in args, "-v" in args
    results_fd = 2 if _streaming(args) else 1
    if outcome.error is None:
        for warning in outcome.warnings:
            if (verbose or not as_json) and warning not in logged:
                report.emit(f"minidumper: warning: {warning}", 2)
        if not as_json:
            report.emit(outcome.text_line(), results_fd)
    elif not shown and (verbose or not as_json):
        report.emit(f"minidumper: {'' if outcome.error.startswith('internal') else 'error: '}"
                    f"{outcome.error}", 2)
    outcome.warnings = list(dict.fromkeys([*outcome.warnings, *logged]))
    if as_json:
        report.emit(outcome.to_json(), results_fd)
    return outcome.exit_code


def _streaming(args: list[str]) -> bool:
    for flag in ("-f", "-o", "--output"):
        for i, arg in enumerate(args[:-1]):
            if arg == flag and args[i + 1] == "-":
                return True
        if f"{flag}=-" in args or (flag == "-o" and "-o-" in args) or (flag == "-f" and "-f-" in args):
            return True
    return False


def main(argv: list[str] | None = None) -> None:
    """The console script's function, for those who import it from here."""
    from minidumper.entry import main as entry_main

    entry_main(argv)
