"""minidumper: dumps of live .NET processes."""

__version__ = "0.1.0"

from minidumper.dump import DumpResult, write_dump
from minidumper.errors import ExitCode, MinidumperError
from minidumper.model import DumpMode

__all__ = [
    "DumpMode",
    "DumpResult",
    "ExitCode",
    "MinidumperError",
    "write_dump",
]
