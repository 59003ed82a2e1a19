"""Finds the DAC (libmscordaccore.so) that matches the target's runtime, on this machine only.

The DAC must be the very build of the runtime it reads. A candidate counts only when that is
checked: the build id the runtime names for its DAC (DotNetRuntimeInfo, which self-contained
single-file apps carry), else the runtime's "@(#)Version ... @Commit: ..." string, which the DAC
of the same build carries too. Nothing here touches the network.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterator, Mapping

from minidumper.errors import DacNotFoundError
from minidumper.runtime_files import TargetRuntime, gnu_build_id, version_line_of_file

DAC_NAME = "libmscordaccore.so"
ENVIRONMENT_VARIABLE = "MINIDUMPER_DAC_PATH"
RUNTIME_PACK = "microsoft.netcore.app.runtime.linux-x64"
BESIDE = "beside the runtime"
DOTNET_ROOTS = ("/usr/share/dotnet", "/usr/lib/dotnet", "/usr/local/share/dotnet", "/opt/dotnet")


def matches(runtime: TargetRuntime, dac_path: str) -> bool | None:
    """True or False where the runtime says which DAC it wants; None where it cannot be told."""
    if runtime.dac_build_id:
        return gnu_build_id(dac_path) == runtime.dac_build_id
    if runtime.version_line:
        return version_line_of_file(dac_path) == runtime.version_line
    return None


def locate(runtime: TargetRuntime, explicit: str | None = None,
           environ: Mapping[str, str] = os.environ) -> str:
    """The path of the DAC for `runtime`: `explicit` (--dac: a file or a directory), else the
    first match beside the runtime, in an installed .NET, in the NuGet cache's runtime packs,
    or in the directories of $MINIDUMPER_DAC_PATH. Raises DacNotFoundError naming where it looked."""
    if explicit:
        path = os.path.join(explicit, DAC_NAME) if os.path.isdir(explicit) else explicit
        if not os.path.isfile(path):
            raise DacNotFoundError(f"--dac {explicit}: no such file ({DAC_NAME} needed)")
        if matches(runtime, path) is False:
            raise DacNotFoundError(f"--dac {path} is not the DAC of the target's {runtime.describe()}")
        return path
    looked: list[str] = []
    for place, paths in _candidates(runtime, environ):
        looked.append(place)
        for path in paths:
            if not os.path.isfile(path):
                continue
            verdict = matches(runtime, path)
            # Where the runtime's build cannot be told, only the DAC shipped beside it is trusted.
            if verdict or (verdict is None and place.startswith(BESIDE)):
                return path
    raise DacNotFoundError(
        f"no DAC ({DAC_NAME}) for the target's {runtime.describe()}; looked in: "
        + "; ".join(looked)
        + f". Give it with --dac PATH (the runtime pack Microsoft.NETCore.App.Runtime.linux-x64 "
        f"of that version has it, in runtimes/linux-x64/native/), or dump with --full")


def _candidates(runtime: TargetRuntime,
                environ: Mapping[str, str]) -> Iterator[tuple[str, list[str]]]:
    """(where, paths) in the order of the search."""
    if runtime.reachable_dir:
        yield f"{BESIDE} ({runtime.reachable_dir})", [os.path.join(runtime.reachable_dir, DAC_NAME)]
    else:
        yield f"{BESIDE} (its directory is not reachable from here)", []
    roots = _dotnet_roots(environ)
    yield (f"installed .NET ({', '.join(roots) or 'none found'})",
           sorted(p for root in roots
                  for p in glob.glob(os.path.join(root, "shared", "Microsoft.NETCore.App", "*", DAC_NAME))))
    packages = environ.get("NUGET_PACKAGES") or os.path.expanduser("~/.nuget/packages")
    pack_glob = os.path.join(packages, RUNTIME_PACK, "*", "runtimes", "linux-x64", "native", DAC_NAME)
    yield f"the NuGet cache ({os.path.dirname(os.path.dirname(pack_glob))})", sorted(glob.glob(pack_glob))
    directories = [d for d in environ.get(ENVIRONMENT_VARIABLE, "").split(os.pathsep) if d]
    yield (f"${ENVIRONMENT_VARIABLE} ({os.pathsep.join(directories) if directories else 'not set'})",
           [d if d.endswith(DAC_NAME) else os.path.join(d, DAC_NAME) for d in directories])


def _dotnet_roots(environ: Mapping[str, str]) -> list[str]:
    roots = [environ.get("DOTNET_ROOT", "")]
    dotnet = shutil.which("dotnet", path=environ.get("PATH"))
    if dotnet:
        roots.append(os.path.dirname(os.path.realpath(dotnet)))
    roots += [*DOTNET_ROOTS, os.path.expanduser("~/.dotnet")]
    unique: list[str] = []
    for root in roots:
        if root and os.path.isdir(os.path.join(root, "shared")) and os.path.realpath(root) not in map(os.path.realpath, unique):
            unique.append(root)
    return unique
