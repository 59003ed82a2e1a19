"""Size and pause of heap and mini dumps against full, on the fixtures of the SOS battery
(tests/test_sos_battery.py) and on the heap fixture with 300 MiB of native memory.

    .venv/bin/python bench/method_questions.py [--rounds 3] [--baseline /path/to/other/checkout]

--baseline dumps with another checkout's minidumper too (its own .venv), alternating with this
one, for a before/after on the same process. Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import conftest  # noqa: E402
import test_sos_battery as battery  # noqa: E402


def dump(checkout: Path, pid: int, path: Path, mode: str) -> dict:
    import subprocess
    python = checkout / ".venv" / "bin" / "python"
    result = subprocess.run([str(python), "-m", "minidumper", "--pid", str(pid), "-f", str(path), f"--{mode}", "--json"],
                            capture_output=True, text=True, cwd=checkout, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{checkout} {mode}: {result.stderr}")
    path.unlink()
    return json.loads(result.stdout)


def start_fixture(name: str):
    if name == "methods (.NET 10)":
        return battery.start(["dotnet", str(battery.METHODS_FIXTURE)])[0], []
    if name == "methods (.NET 8 self-contained)":
        return battery.start([str(battery.METHODS_NET8 / "MethodsNet8")])[0], []
    if name == "heap fixture, 300 MiB native":
        return battery.start(["dotnet", str(conftest.HEAP_FIXTURE), "--native-mb", "300"])[0], []
    app, ready = battery.start(["dotnet", str(battery.WEB_FIXTURE)])
    port = int(ready[2])
    connections = []
    for number in range(battery.PARKED_REQUESTS):
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        connection.sendall(f"GET /park/{number} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        connections.append(connection)
    while battery._get(port, "/parked") != str(battery.PARKED_REQUESTS):
        time.sleep(0.1)
    time.sleep(2)
    return app, connections


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path)
    args = parser.parse_args()
    fixtures = ("methods (.NET 10)", "methods (.NET 8 self-contained)", "ASP.NET Core, 6 requests parked",
                "heap fixture, 300 MiB native")
    checkouts = [("this", REPO)] + ([("baseline", args.baseline)] if args.baseline else [])
    print("| fixture | dump | size MiB | pause s | heap-wide kinds added (MiB) |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as scratch:
        for fixture in fixtures:
            app, connections = start_fixture(fixture)
            try:
                rows: dict[str, list[dict]] = {}
                rows["full"] = [dump(REPO, app.pid, Path(scratch) / "d.core", "full")]
                for _ in range(args.rounds):
                    for label, checkout in checkouts:
                        for mode in ("heap", "mini"):
                            rows.setdefault(f"{mode} ({label})", []).append(
                                dump(checkout, app.pid, Path(scratch) / "d.core", mode))
            finally:
                for connection in connections:
                    connection.close()
                conftest.stop_app(app)
            for label, reports in rows.items():
                size = statistics.median(r["bytes_written"] for r in reports) / 2**20
                pause = statistics.median(r["paused_seconds"] for r in reports)
                kinds = reports[-1].get("ranges_by_kind", {})
                added = ", ".join(f"{k} {kinds[k] / 2**20:.1f}" for k in ("dac-enum", "ready-to-run", "module-metadata")
                                  if k in kinds)
                print(f"| {fixture} | {label} | {size:.1f} | {pause:.2f} | {added} |", flush=True)


if __name__ == "__main__":
    main()
