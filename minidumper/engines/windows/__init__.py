"""The Windows engine: dbghelp's MiniDumpWriteDump driven through ctypes.

Importable on every platform; dbghelp is loaded only when a dump is written.
"""

import sys

from minidumper.engines.windows.engine import FileHandle, WindowsDumpResult, write_minidump


def available() -> bool:
    """Whether this engine can run here."""
    return sys.platform == "win32"


__all__ = [
    "FileHandle",
    "WindowsDumpResult",
    "available",
    "write_minidump",
]
