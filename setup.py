"""setuptools, plus one build step: where the CLR bridge's .NET assemblies are missing (a clean
clone, or the sdist, which carries only their C# sources), `dotnet build` makes them, so that
every wheel holds them as package data. Everything else is in pyproject.toml."""

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BRIDGE_PROJECT = HERE / "clrmd_bridge" / "Recorder" / "Recorder.csproj"
ASSEMBLIES = HERE / "clrmd_bridge" / "_dotnet"
REQUIRED = ("Recorder.dll", "Recorder.runtimeconfig.json", "Recorder.deps.json",
            "Python.Runtime.dll", "Microsoft.Diagnostics.Runtime.dll")


def build_bridge() -> None:
    if all((ASSEMBLIES / name).is_file() for name in REQUIRED):
        return
    dotnet = shutil.which("dotnet")
    if dotnet is None:
        raise SystemExit("building minidumper needs the .NET SDK (dotnet) to build "
                         f"{BRIDGE_PROJECT.relative_to(HERE)}; or build it first into "
                         f"{ASSEMBLIES.relative_to(HERE)}")
    print(f"building {BRIDGE_PROJECT.relative_to(HERE)} with {dotnet}", flush=True)
    subprocess.run([dotnet, "build", str(BRIDGE_PROJECT), "-c", "Release", "-o", str(ASSEMBLIES),
                    "-nologo", "-v", "quiet", "-clp:ErrorsOnly"], check=True)


class BuildPyWithBridge(build_py):
    def run(self) -> None:
        build_bridge()
        self.__dict__.pop("data_files", None)   # listed again, now that the assemblies exist
        super().run()


setup(cmdclass={"build_py": BuildPyWithBridge})
