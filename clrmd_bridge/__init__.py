"""ClrMD in this Python process: what memory the CLR of a live .NET target owns and reads.

Importing this package loads nothing of .NET; the first read_clr() (or load()) does, in this
process. The dumper asks a ClrWalkerProcess instead, whose .NET lives in a process of its own.
"""

from .errors import BridgeCrashedError as BridgeCrashedError
from .errors import BridgeLoadError as BridgeLoadError
from .errors import ClrBridgeError as ClrBridgeError
from .errors import ClrReadError as ClrReadError
from .errors import NoClrRuntimeError as NoClrRuntimeError
from .host import load as load
from .process import ClrWalkerProcess as ClrWalkerProcess
from .runtime import ClrMemory as ClrMemory
from .runtime import ClrReadout as ClrReadout
from .runtime import MemoryCopy as MemoryCopy
from .runtime import read_clr as read_clr
from .runtime import threads_depth as threads_depth
