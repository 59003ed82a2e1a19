#!/usr/bin/env bash
# One command sets up a fresh machine: Debian packages, the venv, the .NET parts, the project.
set -euo pipefail
cd "$(dirname "$0")"

debian_packages=(python3-venv python3-click python3-pytest python3-pyelftools python3-setuptools python3-wheel gdb)
missing=()
for package in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v dotnet >/dev/null || { echo "setup: the .NET SDK (dotnet) is required" >&2; exit 1; }

[ -x .venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages .venv

# .NET parts: the bridge (ClrMD + pythonnet + our shim), the test reader, the fixture apps.
build() {  # project, output folder
  [ -f "$1" ] || return 0
  echo "setup: building $1" >&2
  dotnet build "$1" -c Release -o "$2" -nologo -v quiet -clp:ErrorsOnly
}
echo "setup: building the bridge (clrmd_bridge/Recorder/build.py)" >&2
.venv/bin/python clrmd_bridge/Recorder/build.py clrmd_bridge/_dotnet
build tests/clrmd_reader/ClrmdReader.csproj .build/clrmd_reader
for project in fixtures/*/*.csproj; do
  name=$(basename "$project" .csproj)
  build "$project" ".build/fixtures/$name"
done
# Published variants of the heap fixture: single-file apps (.NET 8 self-contained, and
# framework-dependent), a .NET 9 self-contained app. Their runtime packs come from NuGet and
# stay in its cache.
for project in fixtures/published/*/*.csproj; do
  name=$(basename "$project" .csproj)
  echo "setup: publishing $project" >&2
  dotnet publish "$project" -c Release -o ".build/fixtures/$name" -nologo -v quiet -clp:ErrorsOnly
done
if [ -f .config/dotnet-tools.json ]; then
  dotnet tool restore >/dev/null
fi
# PowerShell (a .NET global tool from NuGet) for the PowerShell test; that test skips without it.
if [ ! -x .build/pwsh/pwsh ]; then
  dotnet tool install --tool-path .build/pwsh PowerShell --version 7.6.9 >/dev/null 2>&1 \
    || echo "setup: PowerShell 7.6.9 could not be installed; its test will skip" >&2
fi

.venv/bin/pip install -q --no-deps --no-build-isolation -e .
echo "setup: done; run .venv/bin/minidumper --help" >&2
