"""Build the bridge's .NET side into clrmd_bridge/_dotnet, for setup.sh and setup.py.

Two builds: IL for net8.0, which any runtime from .NET 8 on can host; and, in ready_to_run/, the
same assemblies compiled ahead of time (ReadyToRun) for the SDK's own runtime and this machine's
platform, which start a dump's bridge about twice as fast. A runtime of another major version
ignores ReadyToRun code, so clrmd_bridge.host takes that build only where its runtime is
installed. The second build is optional: without it (an SDK that cannot fetch its compiler) the
first one serves.

    python clrmd_bridge/Recorder/build.py [OUTPUT]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent / "Recorder.csproj"
DEFAULT_OUTPUT = PROJECT.parent.parent / "_dotnet"
READY_TO_RUN = "ready_to_run"
QUIET = ("-nologo", "-v", "quiet", "-clp:ErrorsOnly")


def build(output: Path = DEFAULT_OUTPUT) -> None:
    dotnet = shutil.which("dotnet")
    if dotnet is None:
        raise SystemExit(f"building {PROJECT.name} needs the .NET SDK (dotnet)")
    subprocess.run([dotnet, "build", str(PROJECT), "-c", "Release", "-o", str(output), *QUIET],
                   check=True)
    ahead = subprocess.run([dotnet, "publish", str(PROJECT), "-c", "Release", "-p:BridgeReadyToRun=true",
                            "-o", str(output / READY_TO_RUN), *QUIET])
    if ahead.returncode != 0:
        shutil.rmtree(output / READY_TO_RUN, ignore_errors=True)
        print(f"{PROJECT.name}: no ReadyToRun build (dotnet publish exited {ahead.returncode}); "
              "the bridge starts from IL, slower", file=sys.stderr)


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT)
