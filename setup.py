"""setuptools, plus one build step: where the CLR bridge's .NET assemblies are missing (a clean
clone, or the sdist, which carries only their C# sources), clrmd_bridge/Recorder/build.py makes
them, so that every wheel holds them as package data. Everything else is in pyproject.toml."""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BRIDGE_BUILD = HERE / "clrmd_bridge" / "Recorder" / "build.py"
ASSEMBLIES = HERE / "clrmd_bridge" / "_dotnet"
REQUIRED = ("Recorder.dll", "Recorder.runtimeconfig.json", "Recorder.deps.json",
            "Python.Runtime.dll", "Microsoft.Diagnostics.Runtime.dll")


def build_bridge() -> None:
    if all((ASSEMBLIES / name).is_file() for name in REQUIRED):
        return
    spec = importlib.util.spec_from_file_location("bridge_build", BRIDGE_BUILD)
    bridge_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bridge_build)
    print(f"building {BRIDGE_BUILD.parent.relative_to(HERE)}", flush=True)
    bridge_build.build(ASSEMBLIES)


class BuildPyWithBridge(build_py):
    def run(self) -> None:
        build_bridge()
        self.__dict__.pop("data_files", None)   # listed again, now that the assemblies exist
        super().run()


setup(cmdclass={"build_py": BuildPyWithBridge})
