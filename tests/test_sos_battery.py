"""Heap and mini dumps answer SOS as a full dump of the same process does, command by command:
method and code questions too (ip2md, dumpmd, ehinfo, gcinfo, dumpmt -md, pe across ReadyToRun
frames, clrstack on an OSR frame), on the same machine and on another one (the app's files gone,
the DAC given with setclrpath).

Each process is dumped full, heap, mini, then full again: where the two full dumps differ the
process itself changed, and that command proves nothing."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import BUILD, READY_TIMEOUT, LiveApp, run_minidumper, stop_app
import sos_battery

METHODS_FIXTURE = BUILD / "fixtures" / "MethodsFixture" / "MethodsFixture.dll"
METHODS_NET8 = BUILD / "fixtures" / "MethodsNet8"
WEB_FIXTURE = BUILD / "fixtures" / "WebFixture" / "WebFixture.dll"
METHODS_TYPES = ("MethodsFixture.Dog", "MethodsFixture.Cat", "MethodsFixture.Animal", "System.FormatException")
WEB_TYPES = ("WebFixture.ParkedRequest", "Microsoft.AspNetCore.Http.DefaultHttpContext")
PARKED_REQUESTS = 6
# Tiered compilation's background worker exits after 4 s idle, which would change the threads
# between two dumps: keep it for an hour (the value is hexadecimal milliseconds).
QUIET_RUNTIME = {"DOTNET_TC_BackgroundWorkerTimeoutMs": "36EE80"}
DUMPS = ("full", "heap", "mini", "control")


@dataclass
class Dumped:
    battery: sos_battery.Battery
    outputs: dict[str, dict[str, str]]     # dump name -> command -> output
    reports: dict[str, dict]               # dump name -> minidumper's JSON

    def compare(self, name: str, commands: list[str]) -> sos_battery.Comparison:
        return sos_battery.compare(self.outputs[name], self.outputs["full"], self.outputs["control"], commands)


def start(argv: list[str], cwd: Path | None = None) -> tuple[LiveApp, list[str]]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, cwd=cwd,
                               env={**os.environ, **QUIET_RUNTIME})
    deadline = time.monotonic() + READY_TIMEOUT
    line = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("READY"):
            return LiveApp(int(line.split()[1]), process), line.split()
        if not line and process.poll() is not None:
            break
    process.kill()
    process.wait()
    pytest.fail(f"{argv} did not print READY (last line {line!r})")


def dump_all(app: LiveApp, directory: Path) -> dict[str, dict]:
    reports = {}
    for name in DUMPS:
        mode = "full" if name == "control" else name
        result = run_minidumper("--pid", str(app.pid), "-f", str(directory / f"{name}.core"), f"--{mode}", "--json")
        assert result.returncode == 0, result.stderr
        reports[name] = json.loads(result.stdout)
        app.assert_running()
    return reports


def ask(directory: Path, types: tuple[str, ...], clr_path: str | None = None) -> tuple[sos_battery.Battery, dict]:
    battery = sos_battery.discover(directory / "full.core", types=types, clr_path=clr_path)
    # A mini dump is asked only what it answers: off the machine dotnet-dump dies (it reaches for
    # a symbol server) when a read misses, and a mini dump has no heap or metadata to read.
    outputs = {name: sos_battery.session(directory / f"{name}.core",
                                         battery.stack_commands if name == "mini" else battery.commands,
                                         clr_path=clr_path)
               for name in DUMPS}
    return battery, outputs


def assert_same(dumped: Dumped, name: str, commands: list[str], volatile_share: float = 0.05) -> None:
    result = dumped.compare(name, commands)
    details = "\n".join(f"{c}: {sos_battery.first_difference(dumped.outputs['full'][c], dumped.outputs[name][c])}"
                        for c in result.differ[:5])
    assert result.differ == [], f"{name} differs from full on {result.differ}\n{details}"
    # The control: a process that changed between the dumps proves nothing. Keep it rare.
    assert len(result.volatile) <= len(commands) * volatile_share, result.volatile
    assert len(result.same) >= len(commands) - len(result.volatile)


@pytest.fixture(scope="module")
def methods_app(tmp_path_factory):
    if not METHODS_FIXTURE.exists():
        pytest.fail(f"{METHODS_FIXTURE} is missing: run ./setup.sh")
    directory = tmp_path_factory.mktemp("methods")
    app, _ = start(["dotnet", str(METHODS_FIXTURE)])
    try:
        reports = dump_all(app, directory)
    finally:
        stop_app(app)
    battery, outputs = ask(directory, METHODS_TYPES)
    return Dumped(battery, outputs, reports)


def test_the_methods_fixture_asks_what_it_claims(methods_app):
    """The fixture really has an OSR frame, ReadyToRun frames in a caught exception's trace,
    inherited methods, a held lock, a timer and an awaiting async method."""
    full = methods_app.outputs["full"]
    assert any("(OptimizedTier1OSR)" in text for c, text in full.items() if c.startswith("ip2md"))
    assert any("System.Int32.Parse" in text and "Number.ThrowFormatException" in text
               for c, text in full.items() if c.startswith("pe "))
    assert any("preJIT" in text for c, text in full.items() if c.startswith("gcinfo"))
    assert any("System.Object.Equals" in text for c, text in full.items() if c.startswith("dumpmt -md"))
    assert "MethodsFixture.Workers.HoldLock" in full["clrstack -all"]
    assert "System.Object" in full["syncblk"]
    assert "AwaitForever" in full["dumpasync"]


def test_heap_answers_every_command_as_full(methods_app):
    assert len(methods_app.battery.commands) > 100
    assert_same(methods_app, "heap", methods_app.battery.commands)


def test_mini_answers_stack_commands_as_full(methods_app):
    assert_same(methods_app, "mini", methods_app.battery.stack_commands)


def test_mini_answers_clrstack_a_as_full(methods_app):
    """Arguments and locals: the bridge asks the DAC for them as SOS does, so their signatures,
    names, IL headers and native var info are in the dump."""
    full = methods_app.outputs["full"]["clrstack -a -all"]
    assert "LOCALS:" in full and "sum (0x" in full   # ParkMain(Int64 sum), read from its stack
    assert_same(methods_app, "mini", ["clrstack -a -all"])


def test_heap_stays_small(methods_app):
    heap, full = methods_app.reports["heap"], methods_app.reports["full"]
    assert heap["bytes_written"] * 5 <= full["bytes_written"]
    assert heap["ranges_by_kind"]["dac-enum"] > 0
    assert methods_app.reports["mini"]["ranges_by_kind"]["dac-enum"] > 0


@pytest.fixture(scope="module")
def web_app(tmp_path_factory):
    if not WEB_FIXTURE.exists():
        pytest.fail(f"{WEB_FIXTURE} is missing: run ./setup.sh")
    directory = tmp_path_factory.mktemp("web")
    app, ready = start(["dotnet", str(WEB_FIXTURE)])
    port = int(ready[2])
    connections = []
    try:
        for number in range(PARKED_REQUESTS):
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            connection.sendall(f"GET /park/{number} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            connections.append(connection)
        deadline = time.monotonic() + 30
        while _get(port, "/parked") != str(PARKED_REQUESTS):
            assert time.monotonic() < deadline, "the requests were not parked"
            time.sleep(0.1)
        time.sleep(2)   # let the tier-up of what the requests ran settle
        reports = dump_all(app, directory)
    finally:
        for connection in connections:
            connection.close()
        stop_app(app)
    battery, outputs = ask(directory, WEB_TYPES)
    return Dumped(battery, outputs, reports)


def _get(port: int, path: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().read().decode().strip()
    finally:
        connection.close()


def test_web_app_heap_answers_as_full(web_app):
    assert "WebFixture.ParkedRequest" in web_app.outputs["full"]["dumpheap -stat"]
    # Kestrel's heartbeat allocates every second: commands over the whole heap may change from
    # one dump to the next; those about methods, types and stacks may not.
    assert_same(web_app, "heap", web_app.battery.commands, volatile_share=0.2)


def test_web_app_mini_answers_stack_commands_as_full(web_app):
    # The thread pool's gate thread wakes every half second, so whole-stack listings may change
    # between two dumps without the control seeing it; the methods on the stacks do not.
    methods = [c for c in web_app.battery.stack_commands if not c.startswith(("clrstack", "pstacks"))]
    assert_same(web_app, "mini", methods, volatile_share=0.2)


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """A .NET 8 self-contained app dumped here, read as on another machine: its files (the
    runtime, the ReadyToRun framework, the app) moved away, only the DAC given."""
    if not (METHODS_NET8 / "MethodsNet8").exists():
        pytest.fail(f"{METHODS_NET8} is missing: run ./setup.sh")
    directory = tmp_path_factory.mktemp("elsewhere")
    app_dir, dac_dir = directory / "app", directory / "dac"
    shutil.copytree(METHODS_NET8, app_dir)
    dac_dir.mkdir()
    shutil.copy(app_dir / "libmscordaccore.so", dac_dir)
    app, _ = start([str(app_dir / "MethodsNet8")], cwd=directory)
    try:
        reports = dump_all(app, directory)
    finally:
        stop_app(app)
    shutil.rmtree(app_dir)
    battery, outputs = ask(directory, METHODS_TYPES, clr_path=str(dac_dir))
    return Dumped(battery, outputs, reports)


def test_heap_answers_as_full_on_another_machine(elsewhere):
    full = elsewhere.outputs["full"]
    assert "MethodsFixture.Program.Main" in full["clrstack -all"]
    assert any("System.Int32.Parse" in text for c, text in full.items() if c.startswith("pe "))
    assert_same(elsewhere, "heap", elsewhere.battery.commands)


def test_mini_answers_stack_commands_as_full_on_another_machine(elsewhere):
    assert_same(elsewhere, "mini", elsewhere.battery.stack_commands)
