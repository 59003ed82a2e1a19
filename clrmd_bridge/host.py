"""Start CoreCLR inside this Python process through hostfxr, and hand it pythonnet.

The steps: load the newest ``libhostfxr.so``, ``hostfxr_initialize_for_runtime_config`` with
the bridge's runtimeconfig, ``hostfxr_get_runtime_delegate`` for
hdt_load_assembly_and_get_function_pointer, then call ``Python.Runtime.Loader.Initialize``
(an ``int(IntPtr, int)`` entry point) with an empty argument. pythonnet then finds Python's own
symbols in this process, and ``import clr`` works.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

from .errors import BridgeLoadError

log = logging.getLogger(__name__)

ASSEMBLY_DIR = Path(__file__).resolve().parent / "_dotnet"
# The same assemblies compiled ahead of time for one runtime's major version (Recorder/build.py).
READY_TO_RUN_DIR = ASSEMBLY_DIR / "ready_to_run"
RUNTIME_CONFIG = "Recorder.runtimeconfig.json"
PYTHON_RUNTIME = "Python.Runtime.dll"
RECORDER = "Recorder.dll"
REQUIRED_FILES = (RUNTIME_CONFIG, PYTHON_RUNTIME, RECORDER, "Microsoft.Diagnostics.Runtime.dll")
DOTNET_ROOT_FALLBACKS = ((Path(os.environ.get("ProgramFiles", "C:/Program Files")) / "dotnet",)
                         if os.name == "nt" else (Path("/usr/share/dotnet"), Path("/usr/lib/dotnet")))
HOSTFXR = "hostfxr.dll" if os.name == "nt" else "libhostfxr.so"

HDT_LOAD_ASSEMBLY_AND_GET_FUNCTION_POINTER = 5  # enum hostfxr_delegate_type

_lock = threading.Lock()
_loaded_from: Path | None = None
_pythonnet_from: Path | None = None   # it cannot start twice in one process, even if loading Recorder failed


# hostfxr's char_t is UTF-16 wchar_t on Windows and UTF-8 char elsewhere.
char_t_p = ctypes.c_wchar_p if os.name == "nt" else ctypes.c_char_p


def _char_t(text: str) -> str | bytes:
    return text if os.name == "nt" else text.encode()


class hostfxr_initialize_parameters(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_size_t),
        ("host_path", char_t_p),
        ("dotnet_root", char_t_p),
    ]


hostfxr_error_writer_fn = ctypes.CFUNCTYPE(None, char_t_p)
load_assembly_and_get_function_pointer_fn = ctypes.CFUNCTYPE(
    ctypes.c_int32,
    char_t_p,                         # assembly_path
    char_t_p,                         # type_name (assembly-qualified)
    char_t_p,                         # method_name
    char_t_p,                         # delegate_type_name; NULL: int(IntPtr, int)
    ctypes.c_void_p,                  # reserved
    ctypes.POINTER(ctypes.c_void_p),  # out: the function pointer
)
component_entry_point_fn = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32)


def is_loaded() -> bool:
    return _loaded_from is not None


def load(assembly_dir: Path | None = None) -> None:
    """Start .NET in this process and load pythonnet and the bridge's assemblies (by default the
    build that suits the installed runtimes: choose_assemblies). Idempotent."""
    global _loaded_from, _pythonnet_from
    with _lock:
        if _loaded_from is not None:
            return
        started = time.perf_counter()
        if _pythonnet_from is None:
            dotnet_root = find_dotnet_root()
            assembly_dir = (assembly_dir or choose_assemblies(dotnet_root)).resolve()
            _check_assemblies(assembly_dir)
            hostfxr_path = find_hostfxr(dotnet_root)
            log.debug("starting .NET with %s and %s", hostfxr_path, assembly_dir / RUNTIME_CONFIG)
            _start_pythonnet(hostfxr_path, dotnet_root, assembly_dir)
            _pythonnet_from = assembly_dir
        else:   # a second try after the Recorder failed to load: the runtime is the first one's
            assembly_dir = (assembly_dir or _pythonnet_from).resolve()
            _check_assemblies(assembly_dir)
        _load_recorder(assembly_dir)
        _loaded_from = assembly_dir
        log.debug(".NET and ClrMD loaded from %s in %.3f s", assembly_dir, time.perf_counter() - started)


def find_dotnet_root() -> Path:
    """DOTNET_ROOT, else the folder of `dotnet` on PATH (symlinks resolved), else the usual places."""
    candidates: list[Path] = []
    if os.environ.get("DOTNET_ROOT"):
        candidates.append(Path(os.environ["DOTNET_ROOT"]))
    dotnet = shutil.which("dotnet")
    if dotnet:
        candidates.append(Path(dotnet).resolve().parent)
    candidates.extend(DOTNET_ROOT_FALLBACKS)
    for root in candidates:
        if (root / "host" / "fxr").is_dir():
            return root
    tried = ", ".join(str(c) for c in candidates)
    raise BridgeLoadError(f"no .NET runtime found (looked in {tried}); install .NET or set DOTNET_ROOT")


def choose_assemblies(dotnet_root: Path) -> Path:
    """The ReadyToRun build where the runtime it was compiled for is installed (hostfxr then
    picks that runtime, and any other would ignore the compiled code); else the IL build.
    MINIDUMPER_BRIDGE_IL=1 takes the IL build (a measuring knob: bench/)."""
    if os.environ.get("MINIDUMPER_BRIDGE_IL") == "1":
        return ASSEMBLY_DIR
    try:
        config = json.loads((READY_TO_RUN_DIR / RUNTIME_CONFIG).read_text())
        major = config["runtimeOptions"]["framework"]["version"].split(".")[0]
    except (OSError, ValueError, KeyError, AttributeError):
        return ASSEMBLY_DIR
    installed = dotnet_root / "shared" / "Microsoft.NETCore.App"
    if any(path.is_dir() for path in installed.glob(f"{major}.*")):
        return READY_TO_RUN_DIR
    return ASSEMBLY_DIR


def find_hostfxr(dotnet_root: Path) -> Path:
    """The newest <dotnet root>/host/fxr/<version>/libhostfxr.so (hostfxr.dll on Windows)."""
    found = list((dotnet_root / "host" / "fxr").glob(f"*/{HOSTFXR}"))
    if not found:
        raise BridgeLoadError(f"no {HOSTFXR} under {dotnet_root / 'host' / 'fxr'}")
    return max(found, key=lambda p: _version_key(p.parent.name))


def _version_key(version: str) -> tuple[tuple[int, ...], int]:
    """'10.0.12' > '10.0.2' > '10.0.2-preview.1'."""
    release, _, prerelease = version.partition("-")
    numbers = tuple(int(n) for n in re.findall(r"\d+", release))
    return numbers, 0 if prerelease else 1


def _check_assemblies(assembly_dir: Path) -> None:
    missing = [name for name in REQUIRED_FILES if not (assembly_dir / name).is_file()]
    if missing:
        raise BridgeLoadError(
            f"the bridge's .NET assemblies are not built ({', '.join(missing)} missing in "
            f"{assembly_dir}); in a clone of the repository run ./setup.sh; an installed "
            "minidumper gets them from its wheel (pip install builds them with the .NET SDK)"
        )


def _start_pythonnet(hostfxr_path: Path, dotnet_root: Path, assembly_dir: Path) -> None:
    try:
        hostfxr = ctypes.CDLL(str(hostfxr_path))
    except OSError as e:
        raise BridgeLoadError(f"cannot load {hostfxr_path}: {e}") from e

    hostfxr.hostfxr_set_error_writer.argtypes = [hostfxr_error_writer_fn]
    hostfxr.hostfxr_set_error_writer.restype = ctypes.c_void_p
    hostfxr.hostfxr_initialize_for_runtime_config.argtypes = [
        char_t_p, ctypes.POINTER(hostfxr_initialize_parameters), ctypes.POINTER(ctypes.c_void_p)]
    hostfxr.hostfxr_initialize_for_runtime_config.restype = ctypes.c_int32
    hostfxr.hostfxr_get_runtime_delegate.argtypes = [
        ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p)]
    hostfxr.hostfxr_get_runtime_delegate.restype = ctypes.c_int32
    hostfxr.hostfxr_close.argtypes = [ctypes.c_void_p]
    hostfxr.hostfxr_close.restype = ctypes.c_int32

    # hostfxr explains its failures (a missing framework, ...) through the error writer.
    messages: list[str] = []
    writer = hostfxr_error_writer_fn(
        lambda m: messages.append(m if isinstance(m, str) else m.decode(errors="replace")))
    hostfxr.hostfxr_set_error_writer(writer)

    def fail(what: str, rc: int) -> BridgeLoadError:
        detail = "; ".join(m.strip() for m in messages if m.strip())
        return BridgeLoadError(f"{what} failed with {rc & 0xFFFFFFFF:#010x}" + (f": {detail}" if detail else ""))

    params = hostfxr_initialize_parameters(
        ctypes.sizeof(hostfxr_initialize_parameters), None, _char_t(str(dotnet_root)))
    handle = ctypes.c_void_p()
    try:
        rc = hostfxr.hostfxr_initialize_for_runtime_config(
            _char_t(str(assembly_dir / RUNTIME_CONFIG)), ctypes.byref(params), ctypes.byref(handle))
        if rc < 0 or not handle:  # 0, 1 and 2 are the Success codes
            raise fail("hostfxr_initialize_for_runtime_config", rc)
        try:
            delegate = ctypes.c_void_p()
            rc = hostfxr.hostfxr_get_runtime_delegate(
                handle, HDT_LOAD_ASSEMBLY_AND_GET_FUNCTION_POINTER, ctypes.byref(delegate))
            if rc < 0 or not delegate:
                raise fail("hostfxr_get_runtime_delegate", rc)
        finally:
            hostfxr.hostfxr_close(handle)  # the runtime stays; only the init context goes

        load_assembly = load_assembly_and_get_function_pointer_fn(delegate.value)
        entry = ctypes.c_void_p()
        rc = load_assembly(_char_t(str(assembly_dir / PYTHON_RUNTIME)),
                           _char_t("Python.Runtime.Loader, Python.Runtime"), _char_t("Initialize"),
                           None, None, ctypes.byref(entry))
        if rc < 0 or not entry:
            raise fail("loading Python.Runtime.Loader.Initialize", rc)
    finally:
        hostfxr.hostfxr_set_error_writer(hostfxr_error_writer_fn())

    # ctypes releases the GIL around the call; Initialize takes it back with PyGILState_Ensure.
    empty = ctypes.create_string_buffer(0)
    if component_entry_point_fn(entry.value)(ctypes.addressof(empty), 0) != 0:
        raise BridgeLoadError("Python.Runtime.Loader.Initialize failed (pythonnet printed why on stderr)")


def _load_recorder(assembly_dir: Path) -> None:
    try:
        import clr  # registered by Loader.Initialize

        clr.AddReference(str(assembly_dir / RECORDER))
    except Exception as e:  # pythonnet raises .NET exceptions (FileLoadException, ...) as they are
        raise BridgeLoadError(f"cannot load {assembly_dir / RECORDER}: {e}") from e
