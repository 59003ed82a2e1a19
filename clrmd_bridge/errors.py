"""The bridge's errors. The bridge imports nothing of minidumper: minidumper maps these to its own."""


class ClrBridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class BridgeLoadError(ClrBridgeError):
    """.NET could not be started in this process, or the bridge's assemblies could not be loaded."""


class NoClrRuntimeError(ClrBridgeError):
    """The target process has no CLR loaded (it is not a .NET process, or not yet)."""


class ClrReadError(ClrBridgeError):
    """ClrMD failed while reading the target."""


class BridgeCrashedError(ClrBridgeError):
    """The bridge's process died (the DAC or .NET crashed or aborted) or did not answer in time."""
