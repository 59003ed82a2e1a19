"""The command line: the only place where errors become messages and exit codes.

Nothing here imports .NET: --help, --version and usage errors start fast.
"""

from __future__ import annotations

import json
import logging
import signal
import sys

import click

from minidumper import __version__
from minidumper.errors import ExitCode, MinidumperError, UsageError
from minidumper.model import DumpMode

log = logging.getLogger("minidumper")

EXIT_CODES_HELP = """\b
Exit codes:
  0    success
  1    internal error
  2    usage error
  3    target not found, or the name is ambiguous
  4    permission denied
  5    not a .NET process (heap and mini modes)
  6    output problem (exists, symlink, no directory, disk full)
  7    the target exited mid-dump
  130  interrupted (Ctrl-C, SIGTERM)
"""


class _Terminated(Exception):
    """SIGTERM or SIGHUP: unwound like Ctrl-C, so that the target is resumed."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(signal.Signals(signum).name)


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
@click.option("--pid", type=int, help="Process id of the target.")
@click.option("--pn", "process_name", metavar="NAME",
              help="Process name of the target (its comm, executable, or the app of `dotnet app.dll`).")
@click.option("-f", "output", required=True, metavar="FILE",
              help="Output file. Must not exist; its directory must.")
@click.option("--mini", is_flag=True, help="Threads, stacks, modules, managed call stacks.")
@click.option("--heap", is_flag=True,
              help="Mini plus the CLR's managed memory, without module code or native heap. "
                   "The default.")
@click.option("--full", is_flag=True, help="Every readable mapping of the address space.")
@click.option("--dac", "dac_path", metavar="PATH",
              help="The runtime's DAC (libmscordaccore.so, or its directory) for --heap and --mini, "
                   "where it is not found on this machine (see the README).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object describing the dump on stdout.")
@click.option("-v", "verbose", is_flag=True, help="Detailed diagnostics on stderr.")
@click.version_option(__version__, "--version", prog_name="minidumper")
def command(pid: int | None, process_name: str | None, output: str, mini: bool, heap: bool,
            full: bool, dac_path: str | None, as_json: bool, verbose: bool) -> None:
    """Write a dump of a running .NET process: --mini, --heap (default) or --full."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="minidumper: %(message)s" if not verbose else
                        "minidumper: %(asctime)s %(name)s: %(message)s")
    chosen = [name for name, on in (("mini", mini), ("heap", heap), ("full", full)) if on]
    if len(chosen) > 1:
        raise UsageError(f"choose one mode, not {' and '.join('--' + c for c in chosen)}")
    if (pid is None) == (process_name is None):
        raise UsageError("give the target with exactly one of --pid or --pn")
    mode = DumpMode(chosen[0]) if chosen else DumpMode.HEAP

    from minidumper import targets
    from minidumper.dump import write_dump

    if pid is None:
        pid = targets.find_by_name(process_name).pid
    progress = _ProgressBar() if sys.stderr.isatty() and not verbose else None
    try:
        result = write_dump(pid, output, mode, progress=progress, dac_path=dac_path)
    finally:
        if progress:
            progress.close()
    if as_json:
        click.echo(json.dumps(result.as_dict(), sort_keys=True))
    else:
        click.echo(f"{result.path}: {result.mode.value} dump of process {result.pid}, "
                   f"{result.bytes_written} bytes, {result.threads} threads, "
                   f"target paused {result.paused_seconds:.3f} s", err=False)


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGHUP, _raise_terminated)
    args = sys.argv[1:] if argv is None else argv
    try:
        command.main(args=args, prog_name="minidumper", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as error:
        error.show()
        _fail(args, ExitCode.USAGE, "usage error", error.format_message(), shown=True)
    except (KeyboardInterrupt, click.exceptions.Abort, _Terminated):
        _fail(args, ExitCode.INTERRUPTED, "interrupted",
              "the target was resumed and no dump was written")
    except MinidumperError as error:
        _fail(args, error.exit_code, "error", str(error))
    except Exception as error:  # the last line of defence: a message, not a traceback
        log.debug("internal error", exc_info=True)
        _fail(args, ExitCode.INTERNAL, "internal error",
              f"{type(error).__name__}: {error} (run with -v for details)")
    sys.exit(ExitCode.OK)


def _fail(args: list[str], code: int, label: str, message: str, shown: bool = False) -> None:
    """The message on stderr; with --json, also one JSON object on stdout for scripts."""
    if not shown:
        click.echo(f"minidumper: {label}: {message}", err=True)
    if "--json" in args:
        click.echo(json.dumps({"error": message, "exit_code": code}, sort_keys=True))
    sys.exit(code)
