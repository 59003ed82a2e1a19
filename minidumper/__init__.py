"""minidumper: dumps of live .NET processes.

The public names load on first use, so that the command line's entry module can take signals
before anything heavy is imported.
"""

__version__ = "0.1.0"

__all__ = [
    "DumpMode",
    "DumpResult",
    "ExitCode",
    "MinidumperError",
    "write_dump",
]

_HOMES = {
    "DumpMode": "minidumper.model",
    "DumpResult": "minidumper.dump",
    "ExitCode": "minidumper.errors",
    "MinidumperError": "minidumper.errors",
    "write_dump": "minidumper.dump",
}


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'minidumper' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
